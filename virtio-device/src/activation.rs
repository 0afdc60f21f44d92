//! What every device does when the driver activates or resets it: check
//! the acked features, take the queues it needs, and keep its event loop's
//! registrations in step with its queues.
//!
//! [`crate::VirtioDevice::activate`] and [`crate::VirtioDevice::reset`]
//! run on a vCPU thread; the queue eventfds are registered with the event
//! manager on the device's event loop. [`Registrations`] is the bridge:
//! the device signals the loop on activation and reset, and the loop then
//! registers the new queue eventfds or removes the old ones.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use event_manager::{EventOps, Events};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::queue::ActiveQueue;
use crate::{ActivateError, Queue, QueueT};

/// Checks that the driver acked only features `device` offered.
pub fn check_acked_features(device: &str, offered: u64, acked: u64) -> Result<(), ActivateError> {
    let unknown = acked & !offered;
    if unknown != 0 {
        return Err(ActivateError(format!(
            "the driver acked features {unknown:#x} the {device} did not offer"
        )));
    }
    Ok(())
}

/// The queues of an activation with their notification eventfds, for a
/// device to take by transport index, each at most once.
pub struct QueueSlots(Vec<Option<(Queue, EventFd)>>);

impl QueueSlots {
    /// The queues in device order and one eventfd each (as in
    /// [`crate::Activation`]); extra ones of either are dropped.
    pub fn new(queues: Vec<Queue>, events: Vec<EventFd>) -> Self {
        QueueSlots(queues.into_iter().zip(events).map(Some).collect())
    }

    /// Queue `index` (`name` in errors) as an [`ActiveQueue`]. The driver
    /// must have enabled it, which means the transport validated it
    /// against guest memory.
    pub fn take(&mut self, index: usize, name: &str) -> Result<ActiveQueue, ActivateError> {
        let (queue, event) = self
            .0
            .get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| ActivateError(format!("no {name} queue at index {index}")))?;
        if !queue.ready() {
            return Err(ActivateError(format!(
                "the driver did not enable the {name} queue (index {index})"
            )));
        }
        let index = u16::try_from(index)
            .map_err(|_| ActivateError(format!("no {name} queue at index {index}")))?;
        Ok(ActiveQueue::new(queue, index, event))
    }
}

/// A device event the loop must handle itself (see [`Registrations::event`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopEvent {
    /// The device was activated or reset: call [`Registrations::sync`].
    Changed,
    /// A queue eventfd of an activation since reset, still registered
    /// until the next sync: nothing to do.
    Retired,
}

/// Keeps an event loop's registrations in step with a device's queues.
///
/// Invariants: the queue eventfds of the current activation are registered
/// at most once (from the first sync after [`Self::activated`]); those of a
/// reset activation that were registered stay open (in `retired`) until a
/// sync has removed them, so their descriptor numbers cannot be reused
/// meanwhile; the changed eventfd is written on every activation and
/// reset, so the loop always syncs after one.
pub struct Registrations {
    /// Written on activation and reset, so the loop syncs.
    changed: EventFd,
    /// The current activation's queue eventfds are registered.
    registered: bool,
    /// Queue eventfds of reset activations, registered until the next sync.
    retired: Vec<EventFd>,
}

impl Registrations {
    /// No activation yet.
    pub fn new() -> io::Result<Self> {
        Ok(Registrations {
            changed: EventFd::new(libc::EFD_NONBLOCK)?,
            registered: false,
            retired: Vec::new(),
        })
    }

    /// The `device` stored a new activation: the loop registers its queue
    /// eventfds at the next sync. On an error the loop will not learn of
    /// it, so the device must drop the activation again.
    pub fn activated(&mut self, device: &str) -> Result<(), ActivateError> {
        self.registered = false;
        self.changed
            .write(1)
            .map_err(|e| ActivateError(format!("cannot signal the {device}'s event loop: {e}")))
    }

    /// The device dropped its activation, whose queue eventfds were
    /// `events`: those registered stay open until the loop removed them.
    /// Signals the loop; an error means it does not know yet (count it).
    pub fn reset(&mut self, events: impl IntoIterator<Item = EventFd>) -> io::Result<()> {
        if std::mem::take(&mut self.registered) {
            self.retired.extend(events);
        }
        self.changed.write(1)
    }

    /// Queue eventfds of reset activations not removed from the loop yet.
    pub fn retired(&self) -> usize {
        self.retired.len()
    }

    /// On the loop: registers the changed eventfd. Returns the failures.
    pub fn init(&self, ops: &mut EventOps) -> u64 {
        u64::from(ops.add(Events::new(&self.changed, EventSet::IN)).is_err())
    }

    /// On the loop: what `fd` is, if it is this device's own (the changed
    /// eventfd or a retired one; it is read). `None`: a queue eventfd or
    /// another of the device's, or not the device's at all.
    pub fn event(&self, fd: RawFd) -> Option<LoopEvent> {
        if fd == self.changed.as_raw_fd() {
            let _ = self.changed.read();
            return Some(LoopEvent::Changed);
        }
        let old = self.retired.iter().find(|e| e.as_raw_fd() == fd)?;
        let _ = old.read();
        Some(LoopEvent::Retired)
    }

    /// On the loop, after [`LoopEvent::Changed`]: removes the retired
    /// eventfds (closing them), then registers `queues`, the current
    /// activation's eventfds (none when inactive), unless they are
    /// already. Returns the failures.
    pub fn sync<'q>(
        &mut self,
        ops: &mut EventOps,
        queues: impl IntoIterator<Item = &'q EventFd>,
    ) -> u64 {
        let mut failures = 0;
        for event in self.retired.drain(..) {
            failures += u64::from(ops.remove(Events::new(&event, EventSet::IN)).is_err());
        }
        let mut queues = queues.into_iter().peekable();
        if !self.registered && queues.peek().is_some() {
            self.registered = true;
            for event in queues {
                failures += u64::from(ops.add(Events::new(event, EventSet::IN)).is_err());
            }
        }
        failures
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use super::*;

    /// A device with one queue eventfd, driven as the devices are.
    struct Device {
        registrations: Registrations,
        queue: Option<EventFd>,
        notified: usize,
        strangers: usize,
        failures: u64,
    }

    impl MutEventSubscriber for Device {
        fn init(&mut self, ops: &mut EventOps) {
            self.failures += self.registrations.init(ops);
        }

        fn process(&mut self, events: Events, ops: &mut EventOps) {
            let fd = events.fd();
            match self.registrations.event(fd) {
                Some(LoopEvent::Changed) => {
                    self.failures += self.registrations.sync(ops, self.queue.iter());
                }
                Some(LoopEvent::Retired) => {}
                None => match &self.queue {
                    Some(q) if q.as_raw_fd() == fd => {
                        let _ = q.read();
                        self.notified += 1;
                    }
                    _ => {
                        self.strangers += 1;
                        let _ = ops.remove(events);
                    }
                },
            }
        }
    }

    fn event() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn queue_eventfds_are_registered_once_and_removed_after_a_reset() {
        let dev = Arc::new(Mutex::new(Device {
            registrations: Registrations::new().unwrap(),
            queue: None,
            notified: 0,
            strangers: 0,
            failures: 0,
        }));
        let mut em = EventManager::<Arc<Mutex<Device>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let run = |em: &mut EventManager<Arc<Mutex<Device>>>| {
            while em.run_with_timeout(0).unwrap() > 0 {}
        };

        // Activation: registered at the loop's next sync, and only then.
        let queue = event();
        let driver = queue.try_clone().unwrap();
        {
            let mut d = dev.lock().unwrap();
            d.queue = Some(queue);
            d.registrations.activated("test device").unwrap();
        }
        run(&mut em);
        driver.write(1).unwrap();
        run(&mut em);
        assert_eq!(dev.lock().unwrap().notified, 1);

        // Reset: the eventfd stays open (and registered) until the sync.
        {
            let mut d = dev.lock().unwrap();
            let old = d.queue.take();
            d.registrations.reset(old).unwrap();
            assert_eq!(d.registrations.retired(), 1);
        }
        driver.write(1).unwrap();
        run(&mut em);
        let d = dev.lock().unwrap();
        assert_eq!(d.registrations.retired(), 0);
        assert_eq!((d.notified, d.strangers, d.failures), (1, 0, 0));
        drop(d);
        // Removed from the loop: a late notification wakes nothing.
        driver.write(1).unwrap();
        assert_eq!(em.run_with_timeout(0).unwrap(), 0);
    }

    #[test]
    fn a_reset_before_the_loop_registered_closes_at_once() {
        let mut r = Registrations::new().unwrap();
        r.activated("test device").unwrap();
        r.reset([event()]).unwrap();
        assert_eq!(r.retired(), 0);
    }

    #[test]
    fn queue_slots_hand_out_enabled_queues_once() {
        let mut ready = Queue::new(16).unwrap();
        ready.set_ready(true);
        let idle = Queue::new(16).unwrap();
        let mut slots = QueueSlots::new(vec![ready, idle], vec![event(), event()]);
        assert_eq!(slots.take(0, "first").unwrap().index, 0);
        let err = slots.take(0, "first").err().unwrap();
        assert!(err.0.contains("no first queue at index 0"), "{err}");
        let err = slots.take(1, "second").err().unwrap();
        assert!(err.0.contains("did not enable the second queue"), "{err}");
        assert!(slots.take(2, "third").is_err());
        let err = check_acked_features("test device", 0b01, 0b11).unwrap_err();
        assert!(err.0.contains("0x2 the test device did not offer"), "{err}");
        assert!(check_acked_features("test device", 0b11, 0b01).is_ok());
    }
}
