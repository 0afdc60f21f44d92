//! The device's side of its queues: taking chains with bounds, reading a
//! tx packet out of a chain and writing an rx packet into one.
//!
//! Queue indices are fixed (virtio 1.2, 5.10.2): rx 0, tx 1, event 2.
//! The driver is untrusted: a chain is walked and validated as a whole
//! (it ends, every descriptor has the direction the queue needs and lies
//! in guest memory) before a byte of it is used, and lengths are taken
//! from the validated chain, never from the header.

use virtio_device::{GuestRam, Queue, QueueT, VirtioInterrupt};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, QueueOwnedT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use crate::header::{Header, HEADER_SIZE};
use crate::metrics::{bump, RejectReason, VsockMetrics};

/// Chains taken from a queue per processing round, so a driver that keeps
/// refilling cannot hold the event loop.
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

    /// Puts the last chain taken back, unused (nothing was written to it).
    pub fn undo_take(&mut self) {
        self.queue.go_to_previous_position();
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
        metrics: &mut VsockMetrics,
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

/// Which way the device uses a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// tx: the device reads (`VRING_DESC_F_WRITE` clear).
    DeviceReadable,
    /// rx: the device writes (`VRING_DESC_F_WRITE` set).
    DeviceWritable,
}

/// One buffer of a validated chain: wholly inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated chain: its buffers in order and their total length.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    pub buffers: Vec<Buffer>,
    pub total: u64,
}

/// Walks a chain and validates it as a whole: it must end (no loop, no
/// `next` into nowhere), and every descriptor must have the direction
/// `access` and lie in guest memory. `queue_size`: a chain that still has
/// `NEXT` after that many descriptors loops.
pub(crate) fn walk_chain(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    access: Access,
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
        total: 0,
    };
    for d in &descs {
        if d.is_write_only() != (access == Access::DeviceWritable) {
            return Err(RejectReason::WrongDirection);
        }
        let len = usize::try_from(d.len()).map_err(|_| RejectReason::DescriptorOutsideMemory)?;
        if len > 0 && !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            return Err(RejectReason::DescriptorOutsideMemory);
        }
        out.total += u64::from(d.len());
        out.buffers.push(Buffer {
            addr: d.addr(),
            len: d.len(),
        });
    }
    Ok(out)
}

impl Chain {
    /// Copies `out.len()` bytes starting `offset` bytes into the chain.
    /// The chain was validated, so only a range past its end fails.
    pub fn read_at(&self, mem: &GuestRam, offset: u64, out: &mut [u8]) -> Result<(), RejectReason> {
        self.visit(offset, out.len(), |addr, range| {
            mem.read_slice(&mut out[range], addr).is_ok()
        })
    }

    /// Copies `data` into the chain starting `offset` bytes into it.
    pub fn write_at(&self, mem: &GuestRam, offset: u64, data: &[u8]) -> Result<(), RejectReason> {
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
    ) -> Result<(), RejectReason> {
        if offset + len as u64 > self.total {
            return Err(RejectReason::LenBeyondChain);
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
                return Err(RejectReason::DescriptorOutsideMemory);
            }
            done += n;
            skip = 0;
        }
        Ok(())
    }
}

/// Reads the header of a validated tx chain; the payload is checked
/// (against `total - HEADER_SIZE`) by the caller.
pub(crate) fn read_header(chain: &Chain, mem: &GuestRam) -> Result<Header, RejectReason> {
    if chain.total < HEADER_SIZE as u64 {
        return Err(RejectReason::HeaderTooShort);
    }
    let mut bytes = [0u8; HEADER_SIZE];
    chain.read_at(mem, 0, &mut bytes)?;
    Ok(Header::from_bytes(&bytes))
}

/// Writes a packet (header and payload) into a validated rx chain of at
/// least `HEADER_SIZE + payload.len()` bytes; returns the bytes written.
pub(crate) fn write_packet(
    chain: &Chain,
    mem: &GuestRam,
    hdr: &Header,
    payload: &[u8],
) -> Result<u32, RejectReason> {
    chain.write_at(mem, 0, &hdr.to_bytes())?;
    chain.write_at(mem, HEADER_SIZE as u64, payload)?;
    Ok((HEADER_SIZE + payload.len()) as u32)
}
