//! Driving the device from an `event-manager` loop, Firecracker style.
//!
//! `init` registers the activate eventfd. [`VirtioDevice::activate`] (on a
//! vCPU thread) stores the queue and writes it; the loop then registers the
//! queue eventfd and processes the queue once, which catches requests the
//! driver posted before the loop listened. A reset also writes it: the loop
//! unregisters the old queue eventfd and closes it.
//!
//! The I/O is synchronous, on the loop's thread: `pread64`, `pwrite64` and
//! `fdatasync` on the image, beside the loop's own `epoll_wait` and the
//! eventfd `read`s and `write`s (queue notifications, the irqfd).
//!
//! [`VirtioDevice::activate`]: virtio_device::VirtioDevice::activate

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use crate::device::Block;
use crate::metrics::bump;

impl Block {
    /// Brings the event manager's registrations in line with the device,
    /// then processes the queue once.
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
            if ops
                .add(Events::new(&active.queue.event, EventSet::IN))
                .is_err()
            {
                bump(&mut self.metrics.event_errors);
            }
        }
        self.process_queue();
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new(&self.activate_evt, EventSet::IN))
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
        if fd == self.activate_evt.as_raw_fd() {
            let _ = self.activate_evt.read();
            self.sync_registrations(ops);
            return;
        }
        let ours = self.active.as_ref().is_some_and(|a| {
            let hit = a.queue.event.as_raw_fd() == fd;
            if hit {
                let _ = a.queue.event.read();
            }
            hit
        });
        if ours {
            self.process_queue();
            return;
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
