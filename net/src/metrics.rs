//! Counters of what the device did, of every frame it dropped and of
//! everything it refused from the guest.
//!
//! Plain integers: the device is used behind a lock, and callers snapshot
//! the whole struct with [`crate::Net::metrics`].

virtio_device::rejections! {
    /// Why the device refused a chain the driver sent. A refused chain is
    /// returned with a used length of 0 (nothing written); a refused transmit
    /// chain's frame never reaches the TAP, and a receive chain refused for
    /// [`RejectReason::RxChainTooSmall`] costs the frame it was meant for.
    pub enum RejectReason {
        /// A chain with no usable descriptor (bad head index, unreadable
        /// descriptor table, broken indirect table).
        EmptyChain => empty_chain,
        /// A chain that did not end within the queue size: it loops.
        LoopingChain => looping_chain,
        /// A chain whose `next` leads nowhere.
        BrokenChain => broken_chain,
        /// A descriptor whose buffer is not wholly inside guest memory.
        DescriptorOutsideMemory => descriptor_outside_memory,
        /// A device-writable descriptor in a transmit chain.
        TxWritableDescriptor => tx_writable_descriptor,
        /// A transmit chain longer than [`crate::MAX_BUFFER_LEN`] bytes.
        TxTooLarge => tx_too_large,
        /// A transmit chain shorter than the 12-byte vnet header.
        TxHeaderTooShort => tx_header_too_short,
        /// A transmit frame shorter than an Ethernet header.
        TxFrameTooShort => tx_frame_too_short,
        /// A transmit header asking for checksum or segmentation offload,
        /// which we do not offer.
        TxOffloadNotNegotiated => tx_offload_not_negotiated,
        /// A device-readable descriptor in a receive chain.
        RxReadableDescriptor => rx_readable_descriptor,
        /// A receive chain too small for the header and the frame waiting:
        /// the frame is dropped, the chain returned empty.
        RxChainTooSmall => rx_chain_too_small,
        /// The available ring is inconsistent: the queue was not processed
        /// further.
        QueueBroken => queue_broken,
        /// Writing the used ring failed: the queue was not processed further.
        UsedRingError => used_ring_error,
        /// A chain head outside the descriptor table: it cannot be returned.
        BadHeadIndex => bad_head_index,
    }
    /// One counter per [`RejectReason`].
    pub struct Rejections;
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

pub(crate) use virtio_device::metrics::bump;

virtio_device::queue_counters!(NetMetrics);

impl NetMetrics {
    /// Counts one rejection for `reason`.
    pub(crate) fn reject(&mut self, reason: RejectReason) {
        self.rejections.add(reason, 1);
    }
}
