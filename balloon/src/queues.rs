//! Which queue is which, and walking the driver's descriptor chains with
//! the balloon's bounds (the walking is [`virtio_device::chain`]'s).
//!
//! Queue indices are dense (virtio 1.2, 5.5.2): inflateq 0, deflateq 1,
//! then statsq if `STATS_VQ` was negotiated, then free_page_vq if
//! `FREE_PAGE_HINT` was (never offered here), then reporting_vq if
//! `FREE_PAGE_REPORTING` was. So the reporting queue is 3 with stats and 2
//! without, and the mapping must come from the *acked* features.

use virtio_device::chain::{walk_chain_expecting, Chain, Direction, Expect};
use virtio_device::queue::ActiveQueue;
use virtio_device::GuestRam;
use virtio_queue::DescriptorChain;

use crate::config::{
    VIRTIO_BALLOON_F_FREE_PAGE_HINT, VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use crate::metrics::{BalloonMetrics, RejectReason};

/// Where each queue is, for a set of negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLayout {
    pub inflate: usize,
    pub deflate: usize,
    pub stats: Option<usize>,
    /// Present only with `FREE_PAGE_HINT`, which this device never offers;
    /// kept so the numbering of what follows is right.
    pub free_page_hint: Option<usize>,
    pub reporting: Option<usize>,
}

impl QueueLayout {
    /// The layout the driver uses after negotiating `features`.
    pub fn from_features(features: u64) -> Self {
        let mut next = 2;
        let mut take = |bit: u64| {
            (features & bit != 0).then(|| {
                next += 1;
                next - 1
            })
        };
        let stats = take(VIRTIO_BALLOON_F_STATS_VQ);
        let free_page_hint = take(VIRTIO_BALLOON_F_FREE_PAGE_HINT);
        let reporting = take(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
        QueueLayout {
            inflate: 0,
            deflate: 1,
            stats,
            free_page_hint,
            reporting,
        }
    }

    /// Number of queues in use.
    pub fn len(&self) -> usize {
        2 + [self.stats, self.free_page_hint, self.reporting]
            .iter()
            .filter(|q| q.is_some())
            .count()
    }

    /// Never true: inflate and deflate always exist.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// At most this many chains are taken from a queue per processing round,
/// so a driver that keeps refilling cannot hold the event loop.
pub(crate) const MAX_CHAINS_PER_ROUND: usize = 2 * crate::QUEUE_SIZE as usize;

/// Takes every available chain of `q` (at most [`MAX_CHAINS_PER_ROUND`]),
/// hands each to `handle` and returns it to the driver with used length 0
/// (the balloon writes nothing the driver reads), valid or not, so the
/// driver is never left waiting ([`ActiveQueue::drain`]). Returns whether
/// chains may be left for another round.
pub(crate) fn drain(
    q: &mut ActiveQueue,
    mem: &GuestRam,
    metrics: &mut BalloonMetrics,
    mut handle: impl FnMut(DescriptorChain<&GuestRam>, u16, &mut BalloonMetrics),
) -> bool {
    q.drain(mem, MAX_CHAINS_PER_ROUND, metrics, |chain, size, m| {
        handle(chain, size, m);
        0
    })
}

/// Walks a chain and validates it as a whole before anything is used
/// ([`walk_chain_expecting`]): it must end (no loop, no `next` into
/// nowhere), every descriptor must go `direction` and lie in guest memory,
/// and the total length must not exceed `max_bytes` (if any).
///
/// `queue_size` is the size of the queue the chain came from: a chain that
/// still has `NEXT` set after that many descriptors loops.
pub(crate) fn walk(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    direction: Direction,
    max_bytes: Option<u64>,
) -> Result<Chain, RejectReason> {
    let mut expect = Expect::nothing().direction(direction, RejectReason::WrongDirection);
    if let Some(max) = max_bytes {
        expect = expect.at_most(max, RejectReason::BufferTooLarge);
    }
    walk_chain_expecting(chain, queue_size, expect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporting_index_follows_the_acked_stats_feature() {
        let both = QueueLayout::from_features(
            VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
        );
        assert_eq!(
            (both.stats, both.reporting, both.len()),
            (Some(2), Some(3), 4)
        );
        let no_stats = QueueLayout::from_features(VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
        assert_eq!(
            (no_stats.stats, no_stats.reporting, no_stats.len()),
            (None, Some(2), 3)
        );
        let with_hint = QueueLayout::from_features(
            VIRTIO_BALLOON_F_STATS_VQ
                | VIRTIO_BALLOON_F_FREE_PAGE_HINT
                | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
        );
        assert_eq!(
            (with_hint.free_page_hint, with_hint.reporting),
            (Some(3), Some(4))
        );
        let none = QueueLayout::from_features(0);
        assert_eq!((none.inflate, none.deflate, none.len()), (0, 1, 2));
        assert!(!none.is_empty());
    }
}
