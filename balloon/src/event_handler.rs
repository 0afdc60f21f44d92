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
use vmm_sys_util::epoll::EventSet;

use crate::device::Balloon;

impl Balloon {
    /// Brings the event manager's registrations in line with the device:
    /// retired eventfds out, the active queues' eventfds and the timer in;
    /// then processes every queue once.
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        for event in self.retired_events.drain(..) {
            if ops.remove(Events::new(&event, EventSet::IN)).is_err() {
                self.metrics.event_errors += 1;
            }
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !active.events_registered {
            active.events_registered = true;
            for (_, q) in active.queues() {
                if ops.add(Events::new(&q.event, EventSet::IN)).is_err() {
                    self.metrics.event_errors += 1;
                }
            }
        }
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
        if ops
            .add(Events::new(&self.activate_evt, EventSet::IN))
            .is_err()
        {
            self.metrics.event_errors += 1;
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
        if fd == self.stats_timer.as_raw_fd() {
            // Non-blocking: the tick may have been cancelled since epoll saw
            // it (interval changed), then there is nothing to read.
            if self.stats_timer.wait().is_ok() && self.config.stats_polling_interval_s > 0 {
                let _ = self.request_stats();
            }
            return;
        }
        let role = self.active.as_ref().and_then(|a| {
            let (role, q) = a.queues().find(|(_, q)| q.event.as_raw_fd() == fd)?;
            let _ = q.event.read();
            Some(role)
        });
        if let Some(role) = role {
            // Only fails for a queue that is not negotiated, which this one is.
            let _ = self.process_queue(role);
            return;
        }
        if let Some(old) = self.retired_events.iter().find(|e| e.as_raw_fd() == fd) {
            // Left from before a reset; removed at the next sync.
            let _ = old.read();
            return;
        }
        // Not ours: stop it from waking the loop again.
        self.metrics.event_errors += 1;
        let _ = ops.remove(events);
    }
}
