//! A device's side of one of its queues: taking chains with bounds,
//! returning them, and ending a processing round (interrupt, fairness).
//! Shared by every device.
//!
//! Invariants: at most a bound of chains ([`MAX_CHAINS_PER_ROUND`] unless
//! the device says otherwise) are taken per round, so a driver that keeps
//! refilling cannot hold the event loop (the queue is signalled again when
//! chains may be left); only a head index inside the queue is put in the
//! used ring; every fault is counted through the device's
//! [`QueueCounters`].

use std::os::fd::{AsRawFd, RawFd};

use virtio_queue::{DescriptorChain, QueueOwnedT};
use vmm_sys_util::eventfd::EventFd;

use crate::chain::ChainFault;
use crate::{GuestRam, Queue, QueueT, VirtioInterrupt};

/// Chains taken per processing round, so a driver that keeps refilling
/// cannot hold the event loop.
pub const MAX_CHAINS_PER_ROUND: usize = 256;

/// What the shared queue code counts in a device's metrics. Implemented
/// with [`crate::queue_counters!`].
pub trait QueueCounters {
    /// Counts `fault` under the device's own reason for it.
    fn chain_fault(&mut self, fault: ChainFault);
    /// Counts what the end of a round did.
    fn round_end(&mut self, end: RoundEnd);
}

/// What the end of a round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundEnd {
    /// A used-buffer interrupt was raised (`Some(true)`) or failed
    /// (`Some(false)`); `None` when none was due.
    pub interrupt: Option<bool>,
    /// Signalling the queue again (chains left for fairness) failed.
    pub event_failed: bool,
}

impl RoundEnd {
    /// Adds this round's end to a device's counters of used-buffer
    /// interrupts raised, interrupts that failed, and events that could
    /// not be signalled (saturating).
    pub fn count(
        self,
        used_notifications: &mut u64,
        interrupt_errors: &mut u64,
        event_errors: &mut u64,
    ) {
        match self.interrupt {
            Some(true) => crate::metrics::bump(used_notifications),
            Some(false) => crate::metrics::bump(interrupt_errors),
            None => {}
        }
        if self.event_failed {
            crate::metrics::bump(event_errors);
        }
    }
}

/// A queue the driver enabled, with its transport index and notification.
pub struct ActiveQueue {
    pub queue: Queue,
    /// Index on the transport, for [`VirtioInterrupt::notify_used`].
    pub index: u16,
    /// Written by the transport (an ioeventfd) when the driver notifies.
    pub event: EventFd,
    /// Buffers were returned since the last interrupt.
    pub needs_interrupt: bool,
}

impl ActiveQueue {
    /// A queue the driver enabled at transport index `index`, with its
    /// notification eventfd; no buffer returned yet.
    pub fn new(queue: Queue, index: u16, event: EventFd) -> Self {
        ActiveQueue {
            queue,
            index,
            event,
            needs_interrupt: false,
        }
    }

    /// Whether `fd` is this queue's notification eventfd; if so, reads it
    /// (the event loop took the notification).
    pub fn notified(&self, fd: RawFd) -> bool {
        let hit = self.event.as_raw_fd() == fd;
        if hit {
            let _ = self.event.read();
        }
        hit
    }

    /// The size the driver set (a chain longer than this loops).
    pub fn queue_size(&self) -> u16 {
        self.queue.size()
    }

    /// The next available chain. `Err(QueueBroken)` when the available ring
    /// is inconsistent.
    pub fn next_chain<'m>(
        &mut self,
        mem: &'m GuestRam,
    ) -> Result<Option<DescriptorChain<&'m GuestRam>>, ChainFault> {
        match self.queue.iter(mem) {
            Ok(mut it) => Ok(it.next()),
            Err(_) => Err(ChainFault::QueueBroken),
        }
    }

    /// Puts the last chain taken back, unused (nothing was written to it):
    /// the driver still owns it, and the next [`Self::next_chain`] takes
    /// it again.
    pub fn undo_take(&mut self) {
        self.queue.go_to_previous_position();
    }

    /// Puts chain `head` in the used ring with `len` bytes written.
    /// `Err(BadHeadIndex)` if it cannot be a chain of this queue (the queue
    /// is fine), `Err(UsedRingError)` if the used ring cannot be written
    /// (the queue is not).
    pub fn return_chain(&mut self, mem: &GuestRam, head: u16, len: u32) -> Result<(), ChainFault> {
        if head >= self.queue.size() {
            return Err(ChainFault::BadHeadIndex);
        }
        self.queue
            .add_used(mem, head, len)
            .map_err(|_| ChainFault::UsedRingError)?;
        self.needs_interrupt = true;
        Ok(())
    }

    /// [`Self::return_chain`], counting a fault; returns whether the queue
    /// can be processed further ([`ChainFault::stops_queue`]).
    pub fn give_back(
        &mut self,
        mem: &GuestRam,
        head: u16,
        len: u32,
        counters: &mut impl QueueCounters,
    ) -> bool {
        match self.return_chain(mem, head, len) {
            Ok(()) => true,
            Err(fault) => {
                counters.chain_fault(fault);
                !fault.stops_queue()
            }
        }
    }

    /// Takes every available chain, at most `max_chains` (normally
    /// [`MAX_CHAINS_PER_ROUND`]), hands each to `handle` (with the queue
    /// size) and returns it with the used length `handle` gives, valid or
    /// not, so the driver is never left waiting. Stops, counted, when the
    /// queue itself is broken. Returns whether chains may be left for
    /// another round.
    pub fn drain<C: QueueCounters>(
        &mut self,
        mem: &GuestRam,
        max_chains: usize,
        counters: &mut C,
        mut handle: impl FnMut(DescriptorChain<&GuestRam>, u16, &mut C) -> u32,
    ) -> bool {
        for _ in 0..max_chains {
            let chain = match self.next_chain(mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => return false,
                Err(fault) => {
                    counters.chain_fault(fault);
                    return false;
                }
            };
            let head = chain.head_index();
            let len = handle(chain, self.queue.size(), counters);
            if !self.give_back(mem, head, len, counters) {
                return false;
            }
        }
        true
    }

    /// Ends a processing round: raises the used-buffer interrupt if
    /// buffers were returned and the driver wants it; if chains were left
    /// for fairness (`more`), signals the queue again so the event loop
    /// comes back. Counts what happened.
    pub fn finish_round(
        &mut self,
        mem: &GuestRam,
        interrupt: &dyn VirtioInterrupt,
        more: bool,
        counters: &mut impl QueueCounters,
    ) {
        let mut end = RoundEnd::default();
        if std::mem::take(&mut self.needs_interrupt) {
            // A spurious interrupt is harmless, a lost one stalls the driver.
            if self.queue.needs_notification(mem).unwrap_or(true) {
                end.interrupt = Some(interrupt.notify_used(self.index).is_ok());
            } else {
                // A polling driver may be asleep waiting for these buffers.
                interrupt.used_without_interrupt(self.index);
            }
        }
        end.event_failed = more && self.event.write(1).is_err();
        counters.round_end(end);
    }
}
