//! Pausing the vCPUs (`PATCH /vm {"state": "Paused"}`): unlike parking
//! ([`super::vcpu::Park`]) a pause ends, and the vCPUs run on where they
//! stopped. Guest RAM and devices are untouched; the guest's clocks jump
//! by the time it was paused.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How often a held vCPU thread looks whether the VM ends or parks.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// What the vCPU threads of one VM share with whoever pauses them.
#[derive(Default)]
pub struct Pause {
    requested: AtomicBool,
    /// vCPU threads held out of `KVM_RUN` now.
    held: Mutex<usize>,
    changed: Condvar,
}

impl Pause {
    /// A pause is asked for: vCPU threads should [`hold`](Pause::hold).
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn held_guard(&self) -> MutexGuard<'_, usize> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// vCPU threads held now.
    pub fn held(&self) -> usize {
        *self.held_guard()
    }

    /// Asks the vCPU threads to stop; the caller kicks them out of
    /// `KVM_RUN` and waits for [`held`](Pause::held).
    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    /// Ends the pause: held threads go back to `KVM_RUN`.
    pub fn resume(&self) {
        self.requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// A vCPU thread: waits outside `KVM_RUN` while the pause lasts and
    /// `stop()` (the VM ends or parks) is false.
    pub fn hold(&self, stop: impl Fn() -> bool) {
        let mut held = self.held_guard();
        *held += 1;
        self.changed.notify_all();
        while self.is_requested() && !stop() {
            held = self
                .changed
                .wait_timeout(held, HOLD_POLL)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *held -= 1;
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for a change in the held count.
    pub fn wait_change(&self, timeout: Duration) {
        let held = self.held_guard();
        let _ = self.changed.wait_timeout(held, timeout);
    }
}
