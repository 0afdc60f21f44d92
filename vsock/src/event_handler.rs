//! Driving the device from an `event-manager` loop, Firecracker style.
//!
//! `init` registers the activate eventfd and the muxer's epoll descriptor
//! (the host socket listens from creation, before the guest's driver is
//! up). [`VirtioDevice::activate`] (on a vCPU thread) stores the queues
//! and writes the activate eventfd; the loop then registers the queue
//! eventfds and processes both data queues once, which catches buffers the
//! driver posted before the loop listened. A reset also writes it: the
//! loop unregisters the old queue eventfds and closes them.
//!
//! Events: the tx queue (packets from the guest), the rx queue (the guest
//! posted buffers), the event queue (ignored: the device sends no
//! events), the muxer (host sockets and deadlines).
//!
//! [`VirtioDevice::activate`]: virtio_device::VirtioDevice::activate

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_device::activation::LoopEvent;
use vmm_sys_util::epoll::EventSet;

use crate::device::Vsock;
use crate::metrics::bump;

impl Vsock {
    /// Brings the event manager's registrations in line with the device,
    /// then processes the queues once (if active).
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        let queues = self
            .active
            .iter()
            .flat_map(|a| a.queues().map(|q| &q.event));
        let failures = self.registrations.sync(ops, queues);
        self.metrics.event_errors = self.metrics.event_errors.saturating_add(failures);
        if self.active.is_some() {
            self.process_tx();
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        let failures = self.registrations.init(ops);
        self.metrics.event_errors = self.metrics.event_errors.saturating_add(failures);
        if ops
            .add(Events::new_raw(self.muxer.as_raw_fd(), EventSet::IN))
            .is_err()
        {
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
        if fd == self.muxer.as_raw_fd() {
            return self.process_backend();
        }
        if let Some(a) = &self.active {
            if a.rx.notified(fd) {
                return self.process_rx();
            }
            if a.tx.notified(fd) {
                return self.process_tx();
            }
            if a.event.notified(fd) {
                // The device sends no events: nothing to do.
                return;
            }
        }
        // Not ours: stop it from waking the loop again.
        bump(&mut self.metrics.event_errors);
        let _ = ops.remove(events);
    }
}
