//! Counters of what the device did and of everything it refused.
//!
//! Plain integers: the device is used behind a lock, and callers snapshot
//! the whole struct with [`crate::Block::metrics`].

/// Why the device refused a request the driver sent. A refused request
/// whose chain is valid and ends in a writable status byte gets
/// `VIRTIO_BLK_S_IOERR` (or `VIRTIO_BLK_S_UNSUPP` for an unknown type);
/// one without gets its chain back with nothing written.
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
    /// A device-readable descriptor after a device-writable one.
    ReadableAfterWritable,
    /// Fewer than 16 device-readable bytes: no room for the header.
    HeaderTooShort,
    /// The last descriptor is not device-writable, or empty: no status.
    NoStatus,
    /// Data in the wrong direction: device-readable data on a read or
    /// `GET_ID`, device-writable data on a write, data on a flush.
    WrongDataDirection,
    /// Data that is not a whole number of sectors (reads and writes).
    PartialSector,
    /// More data than [`crate::MAX_REQUEST_BYTES`].
    RequestTooLarge,
    /// A read or write that starts or ends past the image (or whose end
    /// overflows).
    SectorOutOfRange,
    /// A write to a read-only drive.
    WriteToReadOnly,
    /// A `GET_ID` with no room for the answer.
    IdBufferEmpty,
    /// A request type the device does not implement (`VIRTIO_BLK_S_UNSUPP`).
    UnsupportedType,
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
    ReadableAfterWritable => readable_after_writable,
    HeaderTooShort => header_too_short,
    NoStatus => no_status,
    WrongDataDirection => wrong_data_direction,
    PartialSector => partial_sector,
    RequestTooLarge => request_too_large,
    SectorOutOfRange => sector_out_of_range,
    WriteToReadOnly => write_to_read_only,
    IdBufferEmpty => id_buffer_empty,
    UnsupportedType => unsupported_type,
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

/// What the device did. Counters only grow (saturating).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BlockMetrics {
    /// Successful activations by the driver.
    pub activations: u64,
    /// Resets by the driver after activation.
    pub resets: u64,
    /// Chains taken from the queue (valid or not).
    pub requests: u64,
    /// Reads completed with `VIRTIO_BLK_S_OK`, and their bytes.
    pub read_ops: u64,
    pub read_bytes: u64,
    /// Writes completed with `VIRTIO_BLK_S_OK`, and their bytes.
    pub write_ops: u64,
    pub write_bytes: u64,
    /// Flushes completed (each an `fdatasync` on a read-write drive).
    pub flushes: u64,
    /// Writes synced at once because the driver did not negotiate
    /// `VIRTIO_BLK_F_FLUSH` (write-through).
    pub write_through_syncs: u64,
    /// `GET_ID` requests answered.
    pub get_ids: u64,
    /// Host I/O that failed (read, write, sync): answered with
    /// `VIRTIO_BLK_S_IOERR`.
    pub io_errors: u64,
    /// Used-buffer interrupts raised.
    pub used_notifications: u64,
    /// Interrupts that could not be raised.
    pub interrupt_errors: u64,
    /// Driver writes to the (read-only) configuration space.
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

impl BlockMetrics {
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
        let mut m = BlockMetrics::default();
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
