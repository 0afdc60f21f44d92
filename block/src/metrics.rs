//! Counters of what the device did and of everything it refused.
//!
//! Plain integers: the device is used behind a lock, and callers snapshot
//! the whole struct with [`crate::Block::metrics`].

virtio_device::rejections! {
    /// Why the device refused a request the driver sent. A refused request
    /// whose chain is valid and ends in a writable status byte gets
    /// `VIRTIO_BLK_S_IOERR` (or `VIRTIO_BLK_S_UNSUPP` for an unknown type);
    /// one without gets its chain back with nothing written.
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
        /// A device-readable descriptor after a device-writable one.
        ReadableAfterWritable => readable_after_writable,
        /// Fewer than 16 device-readable bytes: no room for the header.
        HeaderTooShort => header_too_short,
        /// The last descriptor is not device-writable, or empty: no status.
        NoStatus => no_status,
        /// Data in the wrong direction: device-readable data on a read or
        /// `GET_ID`, device-writable data on a write, data on a flush.
        WrongDataDirection => wrong_data_direction,
        /// Data that is not a whole number of sectors (reads and writes).
        PartialSector => partial_sector,
        /// More data than [`crate::MAX_REQUEST_BYTES`].
        RequestTooLarge => request_too_large,
        /// A read or write that starts or ends past the image (or whose end
        /// overflows).
        SectorOutOfRange => sector_out_of_range,
        /// A write to a read-only drive.
        WriteToReadOnly => write_to_read_only,
        /// A `GET_ID` with no room for the answer.
        IdBufferEmpty => id_buffer_empty,
        /// A request type the device does not implement (`VIRTIO_BLK_S_UNSUPP`).
        UnsupportedType => unsupported_type,
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

pub(crate) use virtio_device::metrics::bump;

virtio_device::queue_counters!(BlockMetrics);

impl BlockMetrics {
    /// Counts one rejection for `reason`.
    pub(crate) fn reject(&mut self, reason: RejectReason) {
        self.rejections.add(reason, 1);
    }
}
