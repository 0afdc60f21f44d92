//! The free page reporting queue (virtio 1.2, 5.5.6.6).
//!
//! Each buffer is a chain of device-writable descriptors; each descriptor's
//! address and length are a guest-physical range of free guest pages (the
//! pages themselves, not a list). The device releases the whole 4 KiB
//! pages of every range, coalesced, and returns the chain; the guest may
//! reuse the pages once it is back, so the release is always synchronous
//! (and waits for the release worker first, see
//! [`crate::release_worker`]).

use virtio_device::chain::Direction;
use virtio_device::GuestRam;
use virtio_queue::DescriptorChain;

use crate::metrics::{BalloonMetrics, RejectReason};
use crate::queues::walk;
use crate::release::{coalesce, release_ranges, GuestRange, Releaser};
use crate::release_worker::MAX_RELEASE_CALL;
use crate::BALLOON_PAGE_SIZE;

/// The whole 4 KiB pages of `[addr, addr + len)`; `None` if there are none.
fn aligned_pages(addr: u64, len: u64) -> Option<GuestRange> {
    let end = addr.checked_add(len)?;
    let start = addr.checked_next_multiple_of(BALLOON_PAGE_SIZE)?;
    let end = end - end % BALLOON_PAGE_SIZE;
    // Lazily: `end - start` underflows when the range lies inside one page.
    (start < end).then(|| GuestRange {
        start,
        len: end - start,
    })
}

/// One reporting request: releases the free ranges it describes.
pub(crate) fn handle_report(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    releaser: &dyn Releaser,
    metrics: &mut BalloonMetrics,
) {
    metrics.report_requests += 1;
    let mem = chain.memory();
    // No byte limit: nothing is read, and each range is checked against
    // guest memory by the walk.
    let buffers = match walk(chain.clone(), queue_size, Direction::DeviceWrites, None) {
        Ok(c) => c.buffers,
        Err(reason) => {
            metrics.reject(reason);
            return;
        }
    };
    metrics.report_ranges += buffers.len() as u64;
    let mut ranges = Vec::with_capacity(buffers.len());
    for b in &buffers {
        let whole = aligned_pages(b.addr.0, u64::from(b.len));
        if whole.is_none_or(|w| w.start != b.addr.0 || w.len != u64::from(b.len)) {
            metrics.reject(RejectReason::ReportRangeUnaligned);
        }
        ranges.extend(whole);
    }
    let tally = release_ranges(mem, &coalesce(ranges), releaser, MAX_RELEASE_CALL);
    tally.add_to(metrics);
    metrics.report_bytes = metrics.report_bytes.saturating_add(tally.bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_pages_are_released() {
        assert_eq!(
            aligned_pages(0x1000, 0x2000),
            Some(GuestRange {
                start: 0x1000,
                len: 0x2000
            })
        );
        assert_eq!(
            aligned_pages(0x1001, 0x2fff),
            Some(GuestRange {
                start: 0x2000,
                len: 0x2000
            })
        );
        assert_eq!(aligned_pages(0x1001, 0x1000), None);
        assert_eq!(aligned_pages(0x1000, 0), None);
        assert_eq!(aligned_pages(u64::MAX - 0x1000, 0x2000), None);
    }

    /// Found by the fuzzed guest (`crate::fuzz`): a reported range inside
    /// one page (start rounded up past end rounded down) computed
    /// `end - start` before checking it, which panics on overflow in debug
    /// builds: a guest could take the device thread down.
    #[test]
    fn a_report_inside_one_page_has_no_whole_page_and_does_not_overflow() {
        assert_eq!(aligned_pages(0x1001, 0x10), None);
        assert_eq!(aligned_pages(0x1fff, 1), None);
        assert_eq!(aligned_pages(0x1001, 0), None);
    }
}
