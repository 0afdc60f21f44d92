//! Counters of what the device did, of every frame it dropped and of
//! everything it refused from the guest.
//!
//! Plain integers: the device is used behind a lock, and callers snapshot
//! the whole struct with [`crate::Net::metrics`].

/// Why the device refused a chain the driver sent. A refused chain is
/// returned with a used length of 0 (nothing written); a refused transmit
/// chain's frame never reaches the TAP, and a receive chain refused for
/// [`RejectReason::RxChainTooSmall`] costs the frame it was meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// A chain with no usable descriptor (bad head index, unreadable
    /// descriptor table, broken indirect table).
    EmptyChain,
    /// A chain that did not end within the queue size: it loops.
    LoopingChain,
    /// A chain whose `next` leads nowhere.
    BrokenChain,
    /// A descriptor whose buffer is not wholly inside guest memory.
    DescriptorOutsideMemory,
    /// A device-writable descriptor in a transmit chain.
    TxWritableDescriptor,
    /// A transmit chain longer than [`crate::MAX_BUFFER_LEN`] bytes.
    TxTooLarge,
    /// A transmit chain shorter than the 12-byte vnet header.
    TxHeaderTooShort,
    /// A transmit frame shorter than an Ethernet header.
    TxFrameTooShort,
    /// A transmit header asking for checksum or segmentation offload,
    /// which we do not offer.
    TxOffloadNotNegotiated,
    /// A device-readable descriptor in a receive chain.
    RxReadableDescriptor,
    /// A receive chain too small for the header and the frame waiting:
    /// the frame is dropped, the chain returned empty.
    RxChainTooSmall,
    /// The available ring is inconsistent: the queue was not processed
    /// further.
    QueueBroken,
    /// Writing the used ring failed: the queue was not processed further.
    UsedRingError,
    /// A chain head outside the descriptor table: it cannot be returned.
    BadHeadIndex,
}

macro_rules! rejections {
    ($($reason:ident => $field:ident),* $(,)?) => {
        impl RejectReason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [RejectReason] = &[$(RejectReason::$reason),*];
        }

        /// One counter per [`RejectReason`].
        #[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct Rejections {
            $(pub $field: u64,)*
        }

        impl Rejections {
            fn counter(&mut self, reason: RejectReason) -> &mut u64 {
                match reason {
                    $(RejectReason::$reason => &mut self.$field,)*
                }
            }

            /// The counter for `reason`.
            pub fn count(&self, reason: RejectReason) -> u64 {
                match reason {
                    $(RejectReason::$reason => self.$field,)*
                }
            }
        }
    };
}

rejections! {
    EmptyChain => empty_chain,
    LoopingChain => looping_chain,
    BrokenChain => broken_chain,
    DescriptorOutsideMemory => descriptor_outside_memory,
    TxWritableDescriptor => tx_writable_descriptor,
    TxTooLarge => tx_too_large,
    TxHeaderTooShort => tx_header_too_short,
    TxFrameTooShort => tx_frame_too_short,
    TxOffloadNotNegotiated => tx_offload_not_negotiated,
    RxReadableDescriptor => rx_readable_descriptor,
    RxChainTooSmall => rx_chain_too_small,
    QueueBroken => queue_broken,
    UsedRingError => used_ring_error,
    BadHeadIndex => bad_head_index,
}

impl Rejections {
    /// All rejections together.
    pub fn total(&self) -> u64 {
        RejectReason::ALL
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(self.count(*r)))
    }
}

/// What the device did. Counters only grow (saturating). Byte counts are
/// Ethernet frame bytes, without the 12-byte vnet header.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetMetrics {
    /// Successful activations by the driver.
    pub activations: u64,
    /// Resets by the driver after activation.
    pub resets: u64,
    /// Frames delivered to the guest, and their bytes.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames sent to the TAP, and their bytes.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Times a frame from the TAP waited for the guest to post a receive
    /// buffer (the TAP is not read meanwhile: the kernel queues, then
    /// drops, what follows).
    pub rx_no_buffer: u64,
    /// Reads from the TAP that failed (not counting "nothing to read").
    pub rx_tap_errors: u64,
    /// Frames from the TAP dropped because the kernel asked for an
    /// offload we did not negotiate, or because they were shorter than
    /// the vnet header.
    pub rx_bad_frames: u64,
    /// Frames the TAP did not take (the write failed): dropped.
    pub tx_tap_errors: u64,
    /// Chains taken from the transmit queue (valid or not).
    pub tx_chains: u64,
    /// Used-buffer interrupts raised.
    pub used_notifications: u64,
    /// Interrupts that could not be raised.
    pub interrupt_errors: u64,
    /// Driver writes to the (read-only) configuration space, in bytes.
    pub config_writes_ignored: u64,
    /// Events the device could not attribute, or could not (un)register.
    pub event_errors: u64,
    /// One counter per rejection reason.
    pub rejections: Rejections,
}

/// Adds one to a counter, saturating.
pub(crate) fn bump(counter: &mut u64) {
    *counter = counter.saturating_add(1);
}

impl NetMetrics {
    /// Counts one rejection for `reason`.
    pub(crate) fn reject(&mut self, reason: RejectReason) {
        bump(self.rejections.counter(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_counter() {
        let mut m = NetMetrics::default();
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            for _ in 0..=i {
                m.reject(*r);
            }
        }
        for (i, r) in RejectReason::ALL.iter().enumerate() {
            assert_eq!(m.rejections.count(*r), i as u64 + 1, "{r:?}");
        }
        let n = RejectReason::ALL.len() as u64;
        assert_eq!(m.rejections.total(), n * (n + 1) / 2);
    }
}
