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

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::backend::Backend;
use crate::device::Net;
use crate::metrics::bump;

impl<B: Backend> Net<B> {
    /// Brings the event manager's registrations in line with the device,
    /// then processes both queues once.
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
            for q in [&active.rx, &active.tx] {
                if ops.add(Events::new(&q.event, EventSet::IN)).is_err() {
                    bump(&mut self.metrics.event_errors);
                }
            }
        }
        self.process_tx();
        self.process_rx();
    }

    /// Which queue eventfd `fd` is, if the device is active: reads it.
    fn queue_event(&self, fd: i32) -> Option<usize> {
        let a = self.active.as_ref()?;
        [&a.rx, &a.tx].into_iter().position(|q| {
            let hit = q.event.as_raw_fd() == fd;
            if hit {
                let _ = q.event.read();
            }
            hit
        })
    }
}

impl<B: Backend> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new(&self.activate_evt, EventSet::IN))
            .is_err()
        {
            bump(&mut self.metrics.event_errors);
        }
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
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.sync_registrations(ops);
            return;
        }
        if fd == self.backend.as_raw_fd() {
            // Inactive: the frames wait in the kernel for the activation.
            self.process_rx();
            return;
        }
        match self.queue_event(fd) {
            Some(0) => {
                self.process_rx();
                return;
            }
            Some(_) => {
                self.process_tx();
                return;
            }
            None => {}
        }
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
