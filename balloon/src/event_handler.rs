//! Driving the balloon from an `event-manager` loop, Firecracker style.
//!
//! `init` registers the activate eventfd. [`VirtioDevice::activate`] (on a
//! vCPU thread) stores the queues and writes it; the loop then registers
//! the queue eventfds and the statistics timer and processes every queue
//! once, which catches notifications sent before it listened (Linux posts
//! its first statistics buffer before `DRIVER_OK`). A queue event
//! processes that queue; a timer tick returns the held statistics buffer.
//! A reset also writes the activate eventfd: the loop then unregisters the
//! old queue eventfds and closes them.
//!
//! [`VirtioDevice::activate`]: virtio_device::VirtioDevice::activate

use std::os::fd::AsRawFd;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_device::activation::LoopEvent;
use vmm_sys_util::epoll::EventSet;

use crate::device::Balloon;

impl Balloon {
    /// Brings the event manager's registrations in line with the device:
    /// retired eventfds out, the active queues' eventfds and the timer in;
    /// then processes every queue once (if active).
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        let queues = self
            .active
            .iter()
            .flat_map(|a| a.queues().map(|(_, q)| &q.event));
        let failures = self.registrations.sync(ops, queues);
        self.metrics.event_errors += failures;
        let Some(active) = self.active.as_ref() else {
            return;
        };
        if active.stats.is_some() && !self.timer_registered {
            self.timer_registered = true;
            if ops
                .add(Events::new(&self.stats_timer, EventSet::IN))
                .is_err()
            {
                self.metrics.event_errors += 1;
            }
        }
        // Only fails when not active, which it is.
        let _ = self.process_all_queues();
    }
}

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        self.metrics.event_errors += self.registrations.init(ops);
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
        if fd == self.stats_timer.as_raw_fd() {
            // Non-blocking: the tick may have been cancelled since epoll saw
            // it (interval changed), then there is nothing to read.
            if self.stats_timer.wait().is_ok() && self.config.stats_polling_interval_s > 0 {
                let _ = self.request_stats();
            }
            return;
        }
        let role = self.active.as_ref().and_then(|a| {
            let (role, _) = a.queues().find(|(_, q)| q.notified(fd))?;
            Some(role)
        });
        if let Some(role) = role {
            // Only fails for a queue that is not negotiated, which this one is.
            let _ = self.process_queue(role);
            return;
        }
        // Not ours: stop it from waking the loop again.
        self.metrics.event_errors += 1;
        let _ = ops.remove(events);
    }
}
