//! The device's side of its queues: taking chains with bounds, walking a
//! chain as a whole, and copying bytes between a validated chain and host
//! buffers.
//!
//! The driver is untrusted: a chain is walked and validated (it ends, every
//! descriptor lies in guest memory) before a byte of it is used; the
//! directions of its buffers and what the frame holds are checked
//! afterwards ([`crate::header`], the device).

//!
//! The walking and copying are [`virtio_device::chain`]'s; this module
//! counts what they report under this device's reasons.

use crate::metrics::{bump, NetMetrics, RejectReason};
pub(crate) use virtio_device::chain::{ActiveQueue, Chain, MAX_CHAINS_PER_ROUND};
use virtio_device::chain::{ChainFault, RoundEnd};
use virtio_device::{GuestRam, VirtioInterrupt};
use virtio_queue::DescriptorChain;

impl From<ChainFault> for RejectReason {
    fn from(fault: ChainFault) -> Self {
        match fault {
            ChainFault::QueueBroken => RejectReason::QueueBroken,
            ChainFault::BadHeadIndex => RejectReason::BadHeadIndex,
            ChainFault::UsedRingError => RejectReason::UsedRingError,
            ChainFault::EmptyChain => RejectReason::EmptyChain,
            ChainFault::LoopingChain => RejectReason::LoopingChain,
            ChainFault::BrokenChain => RejectReason::BrokenChain,
            ChainFault::DescriptorOutsideMemory => RejectReason::DescriptorOutsideMemory,
        }
    }
}

/// Walks and validates a chain ([`virtio_device::chain::walk_chain`]).
pub(crate) fn walk_chain(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
) -> Result<Chain, RejectReason> {
    Ok(virtio_device::chain::walk_chain(chain, queue_size)?)
}

/// Ends a processing round ([`ActiveQueue::finish_round`]) and counts
/// what it did.
pub(crate) fn finish_round(
    q: &mut ActiveQueue,
    mem: &GuestRam,
    interrupt: &dyn VirtioInterrupt,
    metrics: &mut NetMetrics,
    more: bool,
) {
    let RoundEnd {
        interrupt: raised,
        event_failed,
    } = q.finish_round(mem, interrupt, more);
    match raised {
        Some(true) => bump(&mut metrics.used_notifications),
        Some(false) => bump(&mut metrics.interrupt_errors),
        None => {}
    }
    if event_failed {
        bump(&mut metrics.event_errors);
    }
}
