//! Counters of what the balloon did and of everything it refused.
//!
//! Plain integers: the device is used behind a lock, and callers snapshot
//! the whole struct with `metrics().clone()`.

virtio_device::rejections! {
    /// Why the device refused (part of) something the driver sent.
    pub enum RejectReason {
        /// An inflate or deflate PFN whose 4 KiB page is not wholly inside one
        /// guest RAM region (beyond RAM, or in an MMIO hole). Counted per PFN.
        PfnOutsideRam => pfn_outside_ram,
        /// A chain with no usable descriptor (bad head index, unreadable
        /// descriptor table, broken indirect table).
        EmptyChain => empty_chain,
        /// A chain that did not end within the queue size: it loops.
        LoopingChain => looping_chain,
        /// A chain whose `next` leads nowhere (index past the table, unreadable
        /// descriptor, bad indirect table).
        BrokenChain => broken_chain,
        /// A descriptor whose buffer is not wholly inside guest memory.
        DescriptorOutsideMemory => descriptor_outside_memory,
        /// A device-writable descriptor where a device-readable one is expected,
        /// or the reverse.
        WrongDirection => wrong_direction,
        /// A PFN buffer whose length is not a multiple of 4 bytes.
        LengthNotMultipleOf4 => length_not_multiple_of_4,
        /// A PFN buffer larger than the device accepts.
        BufferTooLarge => buffer_too_large,
        /// A statistics buffer longer than [`crate::MAX_STATS_ENTRIES`] entries:
        /// only the first ones were read.
        StatsTruncated => stats_truncated,
        /// A statistics buffer whose length is not a multiple of 10 bytes: the
        /// trailing partial entry was ignored.
        StatsPartialEntry => stats_partial_entry,
        /// A reported free range that was not 4 KiB aligned at either end: only
        /// its aligned middle was released.
        ReportRangeUnaligned => report_range_unaligned,
        /// The available ring is inconsistent (the driver published more
        /// buffers than the queue holds): the queue was not processed further.
        QueueBroken => queue_broken,
        /// Writing the used ring failed: the queue was not processed further.
        UsedRingError => used_ring_error,
        /// A chain head outside the descriptor table: it cannot be returned.
        BadHeadIndex => bad_head_index,
    }
    /// One counter per [`RejectReason`].
    pub struct Rejections;
}

/// What the device did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct BalloonMetrics {
    /// Successful activations by the driver.
    pub activations: u64,
    /// Resets by the driver after activation.
    pub resets: u64,
    /// Inflate buffers processed (valid or not).
    pub inflate_requests: u64,
    /// Valid PFNs inflated (a PFN listed twice counts twice).
    pub inflate_pages: u64,
    /// Deflate buffers processed (valid or not).
    pub deflate_requests: u64,
    /// Valid PFNs deflated.
    pub deflate_pages: u64,
    /// Deflated PFNs the device had not seen inflated since activation (a
    /// confused driver, or one that outlived a reset).
    pub deflate_pages_not_inflated: u64,
    /// Free page reporting buffers processed (valid or not).
    pub report_requests: u64,
    /// Reported ranges (descriptors) in valid buffers.
    pub report_ranges: u64,
    /// Bytes released on behalf of free page reporting.
    pub report_bytes: u64,
    /// Bytes released to the host (inflate and reporting).
    pub bytes_released: u64,
    /// Release calls (`madvise`), one per contiguous host range.
    pub madvise_calls: u64,
    /// Release calls that failed.
    pub madvise_errors: u64,
    /// Rounds of inflate requests whose pages were handed to the release
    /// worker (with `MUST_TELL_HOST`) instead of being released before the
    /// buffers were returned.
    pub deferred_releases: u64,
    /// Times the device waited for the release worker to finish before it
    /// gave pages back to the driver (deflate, free page reporting, reset).
    pub release_waits: u64,
    /// Statistics buffers parsed.
    pub stats_updates: u64,
    /// Statistics buffers returned to the driver to ask for fresh values.
    pub stats_requests: u64,
    /// Statistics entries with a tag this device does not know (ignored).
    pub stats_unknown_tags: u64,
    /// Configuration change interrupts raised (new target).
    pub config_notifications: u64,
    /// Used-buffer interrupts raised.
    pub used_notifications: u64,
    /// Interrupts that could not be raised.
    pub interrupt_errors: u64,
    /// Driver writes to read-only or non-existent configuration bytes.
    pub config_writes_ignored: u64,
    /// Events the device could not attribute, or could not (un)register.
    pub event_errors: u64,
    /// One counter per rejection reason.
    pub rejections: Rejections,
}

virtio_device::queue_counters!(BalloonMetrics);

impl BalloonMetrics {
    /// Counts `n` rejections for `reason`.
    pub(crate) fn reject_n(&mut self, reason: RejectReason, n: u64) {
        self.rejections.add(reason, n);
    }

    /// Counts one rejection for `reason`.
    pub(crate) fn reject(&mut self, reason: RejectReason) {
        self.reject_n(reason, 1);
    }
}
