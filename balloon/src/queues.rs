//! Which queue is which, and reading the driver's descriptor chains with
//! bounds.
//!
//! Queue indices are dense (virtio 1.2, 5.5.2): inflateq 0, deflateq 1,
//! then statsq if `STATS_VQ` was negotiated, then free_page_vq if
//! `FREE_PAGE_HINT` was (never offered here), then reporting_vq if
//! `FREE_PAGE_REPORTING` was. So the reporting queue is 3 with stats and 2
//! without, and the mapping must come from the *acked* features.

use virtio_device::{GuestRam, Queue, QueueT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

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

/// A queue the driver enabled, with its transport index and notification.
pub(crate) struct ActiveQueue {
    pub queue: Queue,
    /// Index on the transport, for [`virtio_device::VirtioInterrupt::notify_used`].
    pub index: u16,
    /// Written by the transport (an ioeventfd) when the driver notifies.
    pub event: EventFd,
    /// Buffers were returned since the last interrupt.
    pub needs_interrupt: bool,
}

/// At most this many chains are taken from a queue per processing round,
/// so a driver that keeps refilling cannot hold the event loop.
pub(crate) const MAX_CHAINS_PER_ROUND: usize = 2 * crate::QUEUE_SIZE as usize;

/// Descriptors are read up to this many per chain (only indirect tables can
/// make a chain longer than the queue size).
const MAX_CHAIN_DESCRIPTORS: usize = 1024;

impl ActiveQueue {
    /// The next available chain. `Err(QueueBroken)` when the available ring
    /// is inconsistent.
    pub fn next_chain<'m>(
        &mut self,
        mem: &'m GuestRam,
    ) -> Result<Option<DescriptorChain<&'m GuestRam>>, RejectReason> {
        match self.queue.iter(mem) {
            Ok(mut it) => Ok(it.next()),
            Err(_) => Err(RejectReason::QueueBroken),
        }
    }

    /// Puts chain `head` in the used ring with `len` bytes written.
    /// `Err(BadHeadIndex)` if it cannot be a chain of this queue (the queue
    /// is fine), `Err(UsedRingError)` if the used ring cannot be written
    /// (the queue is not).
    pub fn return_chain(
        &mut self,
        mem: &GuestRam,
        head: u16,
        len: u32,
    ) -> Result<(), RejectReason> {
        if head >= self.queue.size() {
            return Err(RejectReason::BadHeadIndex);
        }
        self.queue
            .add_used(mem, head, len)
            .map_err(|_| RejectReason::UsedRingError)?;
        self.needs_interrupt = true;
        Ok(())
    }

    /// Raises the used-buffer interrupt if buffers were returned and the
    /// driver wants to hear about it.
    pub fn notify(
        &mut self,
        mem: &GuestRam,
        interrupt: &dyn virtio_device::VirtioInterrupt,
        metrics: &mut BalloonMetrics,
    ) {
        if !std::mem::take(&mut self.needs_interrupt) {
            return;
        }
        // On a failure to read the driver's suppression, interrupt anyway:
        // a spurious interrupt is harmless, a lost one stalls the driver.
        if self.queue.needs_notification(mem).unwrap_or(true) {
            match interrupt.notify_used(self.index) {
                Ok(()) => metrics.used_notifications += 1,
                Err(_) => metrics.interrupt_errors += 1,
            }
        } else {
            // A polling driver may be asleep waiting for these buffers.
            interrupt.used_without_interrupt(self.index);
        }
    }

    /// Ends a processing round: interrupts if buffers were returned and, if
    /// chains were left for fairness, re-signals the queue so the event loop
    /// comes back to it.
    pub fn finish_round(
        &mut self,
        mem: &GuestRam,
        interrupt: &dyn virtio_device::VirtioInterrupt,
        metrics: &mut BalloonMetrics,
        more: bool,
    ) {
        self.notify(mem, interrupt, metrics);
        if more && self.event.write(1).is_err() {
            metrics.event_errors += 1;
        }
    }

    /// Takes every available chain (up to [`MAX_CHAINS_PER_ROUND`]), hands
    /// each to `handle` and returns it to the driver with length 0, valid or
    /// not, so the driver is never left waiting. Stops when the queue itself
    /// is broken. Returns whether chains may be left for another round.
    pub fn drain(
        &mut self,
        mem: &GuestRam,
        metrics: &mut BalloonMetrics,
        mut handle: impl FnMut(DescriptorChain<&GuestRam>, u16, &mut BalloonMetrics),
    ) -> bool {
        for _ in 0..MAX_CHAINS_PER_ROUND {
            let chain = match self.next_chain(mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => return false,
                Err(reason) => {
                    metrics.reject(reason);
                    return false;
                }
            };
            let head = chain.head_index();
            handle(chain, self.queue.size(), metrics);
            match self.return_chain(mem, head, 0) {
                Ok(()) => {}
                Err(RejectReason::BadHeadIndex) => metrics.reject(RejectReason::BadHeadIndex),
                Err(reason) => {
                    metrics.reject(reason);
                    return false;
                }
            }
        }
        true
    }
}

/// Which way the device uses a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// The device reads it (`VRING_DESC_F_WRITE` clear).
    DeviceReadable,
    /// The device may write it (`VRING_DESC_F_WRITE` set).
    DeviceWritable,
}

/// One buffer of a validated chain: wholly inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// Walks a chain and validates it as a whole before anything is used:
/// it must end (no loop, no `next` into nowhere), every descriptor must have
/// the expected direction and lie in guest memory, and the total length
/// must not exceed `max_bytes`.
///
/// `queue_size` is the size of the queue the chain came from: a chain that
/// still has `NEXT` set after that many descriptors loops.
pub(crate) fn walk_chain(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    access: Access,
    max_bytes: u64,
) -> Result<Vec<Buffer>, RejectReason> {
    let mem = chain.memory();
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut too_long = false;
    // The iterator stops by itself after `queue_size` descriptors (or the
    // indirect table's length), on an out-of-table index and on an
    // unreadable descriptor; it does not say which, hence the checks below.
    for d in chain.clone() {
        if descs.len() == MAX_CHAIN_DESCRIPTORS {
            too_long = true;
            break;
        }
        descs.push(d);
    }
    let last = descs.last().ok_or(RejectReason::EmptyChain)?;
    if too_long || (last.has_next() && descs.len() >= usize::from(queue_size)) {
        return Err(RejectReason::LoopingChain);
    }
    if last.has_next() {
        return Err(RejectReason::BrokenChain);
    }
    let mut total = 0u64;
    let mut out = Vec::with_capacity(descs.len());
    for d in &descs {
        let writable = d.is_write_only();
        if writable != (access == Access::DeviceWritable) {
            return Err(RejectReason::WrongDirection);
        }
        let len = usize::try_from(d.len()).map_err(|_| RejectReason::DescriptorOutsideMemory)?;
        if len > 0 && !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            return Err(RejectReason::DescriptorOutsideMemory);
        }
        total += u64::from(d.len());
        if total > max_bytes {
            return Err(RejectReason::BufferTooLarge);
        }
        out.push(Buffer {
            addr: d.addr(),
            len: d.len(),
        });
    }
    Ok(out)
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
