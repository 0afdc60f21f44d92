//! The device's side of its queue: taking chains with bounds, walking a
//! chain as a whole, and copying bytes between a validated chain and host
//! buffers.
//!
//! The driver is untrusted: a chain is walked and validated (it ends, every
//! descriptor lies in guest memory) before a byte of it is used; what the
//! request means is checked afterwards, in [`crate::request`].

use virtio_device::{GuestRam, Queue, QueueT, VirtioInterrupt};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::metrics::{bump, BlockMetrics, RejectReason};

/// Chains taken per processing round, so a driver that keeps refilling
/// cannot hold the event loop.
pub(crate) const MAX_CHAINS_PER_ROUND: usize = 256;

/// Descriptors read per chain at most (only indirect tables can make a
/// chain longer than the queue).
const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// A queue the driver enabled, with its transport index and notification.
pub(crate) struct ActiveQueue {
    pub queue: Queue,
    /// Index on the transport, for [`VirtioInterrupt::notify_used`].
    pub index: u16,
    /// Written by the transport (an ioeventfd) when the driver notifies.
    pub event: EventFd,
    /// Buffers were returned since the last interrupt.
    pub needs_interrupt: bool,
}

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

    /// Ends a processing round: raises the used-buffer interrupt if
    /// buffers were returned and the driver wants it; if chains were left
    /// for fairness, signals the queue again so the event loop comes back.
    pub fn finish_round(
        &mut self,
        mem: &GuestRam,
        interrupt: &dyn VirtioInterrupt,
        metrics: &mut BlockMetrics,
        more: bool,
    ) {
        if std::mem::take(&mut self.needs_interrupt) {
            // A spurious interrupt is harmless, a lost one stalls the driver.
            if self.queue.needs_notification(mem).unwrap_or(true) {
                match interrupt.notify_used(self.index) {
                    Ok(()) => bump(&mut metrics.used_notifications),
                    Err(_) => bump(&mut metrics.interrupt_errors),
                }
            } else {
                // A polling driver may be asleep waiting for these buffers.
                interrupt.used_without_interrupt(self.index);
            }
        }
        if more && self.event.write(1).is_err() {
            bump(&mut metrics.event_errors);
        }
    }
}

/// One buffer of a validated chain: wholly inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
    /// `VRING_DESC_F_WRITE`: the device writes it.
    pub device_writes: bool,
}

/// A validated chain: its buffers in order.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    pub buffers: Vec<Buffer>,
}

/// Walks a chain and validates it as a whole: it must end (no loop, no
/// `next` into nowhere), and every descriptor must lie in guest memory.
/// `queue_size`: a chain that still has `NEXT` after that many descriptors
/// loops.
pub(crate) fn walk_chain(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
) -> Result<Chain, RejectReason> {
    let mem = chain.memory();
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut too_long = false;
    // The iterator stops by itself after `queue_size` descriptors, on an
    // out-of-table index and on an unreadable descriptor; it does not say
    // which, hence the checks below.
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
    let mut out = Chain {
        buffers: Vec::with_capacity(descs.len()),
    };
    for d in &descs {
        let len = usize::try_from(d.len()).map_err(|_| RejectReason::DescriptorOutsideMemory)?;
        if len > 0 && !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            return Err(RejectReason::DescriptorOutsideMemory);
        }
        out.buffers.push(Buffer {
            addr: d.addr(),
            len: d.len(),
            device_writes: d.is_write_only(),
        });
    }
    Ok(out)
}

impl Chain {
    /// Total bytes of the chain's buffers (at most 1024 × 4 GiB: no
    /// overflow in u64).
    pub fn total(&self) -> u64 {
        self.buffers.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Copies `out.len()` bytes starting `offset` bytes into the chain.
    /// The chain was validated, so only a range past its end fails.
    pub fn read_at(&self, mem: &GuestRam, offset: u64, out: &mut [u8]) -> Result<(), ()> {
        self.visit(offset, out.len(), |addr, range| {
            mem.read_slice(&mut out[range], addr).is_ok()
        })
    }

    /// Copies `data` into the chain starting `offset` bytes into it.
    pub fn write_at(&self, mem: &GuestRam, offset: u64, data: &[u8]) -> Result<(), ()> {
        self.visit(offset, data.len(), |addr, range| {
            mem.write_slice(&data[range], addr).is_ok()
        })
    }

    /// Calls `f(guest address, range of the caller's bytes)` for each
    /// piece of `[offset, offset + len)` in chain order.
    fn visit(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> Result<(), ()> {
        let end = offset.checked_add(len as u64).ok_or(())?;
        if end > self.total() {
            return Err(());
        }
        let mut skip = offset;
        let mut done = 0usize;
        for b in &self.buffers {
            if done == len {
                break;
            }
            let blen = u64::from(b.len);
            if skip >= blen {
                skip -= blen;
                continue;
            }
            let n = ((blen - skip) as usize).min(len - done);
            if !f(b.addr.unchecked_add(skip), done..done + n) {
                return Err(());
            }
            done += n;
            skip = 0;
        }
        Ok(())
    }
}
