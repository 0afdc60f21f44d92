//! Counters of what the balloon did and of everything it refused.
//!
//! Plain integers: the device is used behind a lock, and callers snapshot
//! the whole struct with `metrics().clone()`.

/// Why the device refused (part of) something the driver sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// An inflate or deflate PFN whose 4 KiB page is not wholly inside one
    /// guest RAM region (beyond RAM, or in an MMIO hole). Counted per PFN.
    PfnOutsideRam,
    /// A chain with no usable descriptor (bad head index, unreadable
    /// descriptor table, broken indirect table).
    EmptyChain,
    /// A chain that did not end within the queue size: it loops.
    LoopingChain,
    /// A chain whose `next` leads nowhere (index past the table, unreadable
    /// descriptor, bad indirect table).
    BrokenChain,
    /// A descriptor whose buffer is not wholly inside guest memory.
    DescriptorOutsideMemory,
    /// A device-writable descriptor where a device-readable one is expected,
    /// or the reverse.
    WrongDirection,
    /// A PFN buffer whose length is not a multiple of 4 bytes.
    LengthNotMultipleOf4,
    /// A PFN buffer larger than the device accepts.
    BufferTooLarge,
    /// A statistics buffer longer than [`crate::MAX_STATS_ENTRIES`] entries:
    /// only the first ones were read.
    StatsTruncated,
    /// A statistics buffer whose length is not a multiple of 10 bytes: the
    /// trailing partial entry was ignored.
    StatsPartialEntry,
    /// A reported free range that was not 4 KiB aligned at either end: only
    /// its aligned middle was released.
    ReportRangeUnaligned,
    /// The available ring is inconsistent (the driver published more
    /// buffers than the queue holds): the queue was not processed further.
    QueueBroken,
    /// Writing the used ring failed: the queue was not processed further.
    UsedRingError,
    /// A chain head outside the descriptor table: it cannot be returned.
    BadHeadIndex,
}

impl RejectReason {
    /// Every reason, in declaration order.
    pub const ALL: [RejectReason; 14] = [
        RejectReason::PfnOutsideRam,
        RejectReason::EmptyChain,
        RejectReason::LoopingChain,
        RejectReason::BrokenChain,
        RejectReason::DescriptorOutsideMemory,
        RejectReason::WrongDirection,
        RejectReason::LengthNotMultipleOf4,
        RejectReason::BufferTooLarge,
        RejectReason::StatsTruncated,
        RejectReason::StatsPartialEntry,
        RejectReason::ReportRangeUnaligned,
        RejectReason::QueueBroken,
        RejectReason::UsedRingError,
        RejectReason::BadHeadIndex,
    ];
}

/// One counter per [`RejectReason`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Rejections {
    pub pfn_outside_ram: u64,
    pub empty_chain: u64,
    pub looping_chain: u64,
    pub broken_chain: u64,
    pub descriptor_outside_memory: u64,
    pub wrong_direction: u64,
    pub length_not_multiple_of_4: u64,
    pub buffer_too_large: u64,
    pub stats_truncated: u64,
    pub stats_partial_entry: u64,
    pub report_range_unaligned: u64,
    pub queue_broken: u64,
    pub used_ring_error: u64,
    pub bad_head_index: u64,
}

impl Rejections {
    fn counter(&mut self, reason: RejectReason) -> &mut u64 {
        match reason {
            RejectReason::PfnOutsideRam => &mut self.pfn_outside_ram,
            RejectReason::EmptyChain => &mut self.empty_chain,
            RejectReason::LoopingChain => &mut self.looping_chain,
            RejectReason::BrokenChain => &mut self.broken_chain,
            RejectReason::DescriptorOutsideMemory => &mut self.descriptor_outside_memory,
            RejectReason::WrongDirection => &mut self.wrong_direction,
            RejectReason::LengthNotMultipleOf4 => &mut self.length_not_multiple_of_4,
            RejectReason::BufferTooLarge => &mut self.buffer_too_large,
            RejectReason::StatsTruncated => &mut self.stats_truncated,
            RejectReason::StatsPartialEntry => &mut self.stats_partial_entry,
            RejectReason::ReportRangeUnaligned => &mut self.report_range_unaligned,
            RejectReason::QueueBroken => &mut self.queue_broken,
            RejectReason::UsedRingError => &mut self.used_ring_error,
            RejectReason::BadHeadIndex => &mut self.bad_head_index,
        }
    }

    /// The counter for `reason`.
    pub fn count(&self, reason: RejectReason) -> u64 {
        match reason {
            RejectReason::PfnOutsideRam => self.pfn_outside_ram,
            RejectReason::EmptyChain => self.empty_chain,
            RejectReason::LoopingChain => self.looping_chain,
            RejectReason::BrokenChain => self.broken_chain,
            RejectReason::DescriptorOutsideMemory => self.descriptor_outside_memory,
            RejectReason::WrongDirection => self.wrong_direction,
            RejectReason::LengthNotMultipleOf4 => self.length_not_multiple_of_4,
            RejectReason::BufferTooLarge => self.buffer_too_large,
            RejectReason::StatsTruncated => self.stats_truncated,
            RejectReason::StatsPartialEntry => self.stats_partial_entry,
            RejectReason::ReportRangeUnaligned => self.report_range_unaligned,
            RejectReason::QueueBroken => self.queue_broken,
            RejectReason::UsedRingError => self.used_ring_error,
            RejectReason::BadHeadIndex => self.bad_head_index,
        }
    }

    /// All rejections together.
    pub fn total(&self) -> u64 {
        RejectReason::ALL
            .iter()
            .fold(0u64, |sum, r| sum.saturating_add(self.count(*r)))
    }
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

impl BalloonMetrics {
    /// Counts `n` rejections for `reason`.
    pub(crate) fn reject_n(&mut self, reason: RejectReason, n: u64) {
        let c = self.rejections.counter(reason);
        *c = c.saturating_add(n);
    }

    /// Counts one rejection for `reason`.
    pub(crate) fn reject(&mut self, reason: RejectReason) {
        self.reject_n(reason, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_own_counter() {
        let reasons = RejectReason::ALL;
        let mut m = BalloonMetrics::default();
        for (i, r) in reasons.iter().enumerate() {
            m.reject_n(*r, i as u64 + 1);
        }
        for (i, r) in reasons.iter().enumerate() {
            assert_eq!(m.rejections.count(*r), i as u64 + 1, "{r:?}");
        }
        let n = reasons.len() as u64;
        assert_eq!(m.rejections.total(), n * (n + 1) / 2);
    }
}
