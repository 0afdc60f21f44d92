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
use vmm_sys_util::epoll::EventSet;

use crate::device::Vsock;
use crate::metrics::bump;

impl Vsock {
    /// Brings the event manager's registrations in line with the device,
    /// then processes the queues once.
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        for event in self.retired_events.drain(..) {
            if ops.remove(Events::new(&event, EventSet::IN)).is_err() {
                bump(&mut self.metrics.event_errors);
            }
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !active.events_registered {
            active.events_registered = true;
            let mut failed = 0;
            for q in active.queues() {
                if ops.add(Events::new(&q.event, EventSet::IN)).is_err() {
                    failed += 1;
                }
            }
            for _ in 0..failed {
                bump(&mut self.metrics.event_errors);
            }
        }
        self.process_tx();
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.activate_evt.as_raw_fd(), self.muxer.as_raw_fd()] {
            if ops.add(Events::new_raw(fd, EventSet::IN)).is_err() {
                bump(&mut self.metrics.event_errors);
            }
        }
        // Subscribed after the driver activated the device: catch up.
        if self.active.is_some() {
            self.sync_registrations(ops);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.sync_registrations(ops);
            return;
        }
        if fd == self.muxer.as_raw_fd() {
            self.process_backend();
            return;
        }
        let which = self.active.as_ref().and_then(|a| {
            let i = a.queues().iter().position(|q| q.event.as_raw_fd() == fd)?;
            let _ = a.queues()[i].event.read();
            Some(i)
        });
        match which {
            Some(crate::config::RX_QUEUE) => self.process_rx(),
            Some(crate::config::TX_QUEUE) => self.process_tx(),
            Some(_) => {}
            None => {
                if let Some(old) = self.retired_events.iter().find(|e| e.as_raw_fd() == fd) {
                    // Left from before a reset; removed at the next sync.
                    let _ = old.read();
                    return;
                }
                // Not ours: stop it from waking the loop again.
                bump(&mut self.metrics.event_errors);
                let _ = ops.remove(events);
            }
        }
    }
}
