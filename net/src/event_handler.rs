//! Driving the device from an `event-manager` loop, Firecracker style.
//!
//! `init` registers the activate eventfd and the backend's descriptor,
//! edge-triggered (`EPOLLIN | EPOLLET`): the device reads the TAP until it
//! is empty or the guest has no receive chain left, and only new frames
//! make a new edge, so a TAP the device cannot drain does not spin the
//! loop. [`VirtioDevice::activate`] (on a vCPU thread) stores the queues
//! and writes the activate eventfd; the loop then registers both queue
//! eventfds and processes both queues once, which catches buffers the
//! driver posted, and frames the TAP queued, before the loop listened. A
//! receive-queue notification (the driver posted buffers) reads the TAP
//! again. A reset also writes the activate eventfd: the loop unregisters
//! the old queue eventfds and closes them.
//!
//! Syscalls on the loop's thread: `epoll_wait`, `epoll_ctl` (on
//! activation and reset), `read` (the TAP, eventfds) and `write` (the
//! TAP, eventfds, the irqfd). Opening the TAP (`openat`, `ioctl`) happens
//! on the main thread before boot.
//!
//! [`VirtioDevice::activate`]: virtio_device::VirtioDevice::activate

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_device::activation::LoopEvent;
use vmm_sys_util::epoll::EventSet;

use crate::backend::Backend;
use crate::device::Net;
use crate::metrics::bump;

impl<B: Backend> Net<B> {
    /// Brings the event manager's registrations in line with the device,
    /// then processes both queues once (if active).
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        let queues = self.active.iter().flat_map(|a| [&a.rx.event, &a.tx.event]);
        let failures = self.registrations.sync(ops, queues);
        self.metrics.event_errors = self.metrics.event_errors.saturating_add(failures);
        if self.active.is_some() {
            self.process_tx();
            self.process_rx();
        }
    }
}

impl<B: Backend> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps) {
        let failures = self.registrations.init(ops);
        self.metrics.event_errors = self.metrics.event_errors.saturating_add(failures);
        let tap = Events::new(&self.backend, EventSet::IN | EventSet::EDGE_TRIGGERED);
        if ops.add(tap).is_err() {
            bump(&mut self.metrics.event_errors);
        }
        // Subscribed after the driver activated the device: catch up.
        if self.active.is_some() {
            self.sync_registrations(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        match self.registrations.event(fd) {
            Some(LoopEvent::Changed) => return self.sync_registrations(ops),
            Some(LoopEvent::Retired) => return,
            None => {}
        }
        if fd == self.backend.as_raw_fd() {
            // Inactive: the frames wait in the kernel for the activation.
            return self.process_rx();
        }
        if let Some(a) = &self.active {
            if a.rx.notified(fd) {
                return self.process_rx();
            }
            if a.tx.notified(fd) {
                return self.process_tx();
            }
        }
        // Not ours: stop it from waking the loop again.
        bump(&mut self.metrics.event_errors);
        let _ = ops.remove(events);
    }
}
