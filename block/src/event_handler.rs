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

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_device::activation::LoopEvent;

use crate::device::Block;
use crate::metrics::bump;

impl Block {
    /// Brings the event manager's registrations in line with the device,
    /// then processes the queue once (if active).
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        let queue = self.active.as_ref().map(|a| &a.queue.event);
        let failures = self.registrations.sync(ops, queue);
        self.metrics.event_errors = self.metrics.event_errors.saturating_add(failures);
        if self.active.is_some() {
            self.process_queue();
        }
    }
}

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        let failures = self.registrations.init(ops);
        self.metrics.event_errors = self.metrics.event_errors.saturating_add(failures);
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
        if self.active.as_ref().is_some_and(|a| a.queue.notified(fd)) {
            return self.process_queue();
        }
        // Not ours: stop it from waking the loop again.
        bump(&mut self.metrics.event_errors);
        let _ = ops.remove(events);
    }
}
