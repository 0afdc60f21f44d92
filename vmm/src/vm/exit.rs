//! How a VM ends, and the one-shot signal vCPU threads use to say so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::pv_idle::IdleWake;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset or powered off the machine (i8042 reset, ACPI or
    /// KVM system event). A clean end.
    Reset,
    /// The guest wrote `code` to the debug-exit port.
    DebugExit(u8),
    /// The guest cannot continue: triple fault, an instruction KVM could not
    /// emulate, a failed VM entry.
    GuestCrash(String),
    /// The VMM itself failed while the VM ran.
    VmmError(String),
    /// The VMM was asked to stop (SIGTERM or SIGINT).
    Signal(u8),
    /// The per-VM API's `ReleaseMemory` action stopped the vCPUs and
    /// released guest RAM; the VMM exits after answering.
    Released,
}

/// Process exit statuses (see the README's table). Guest debug-exit codes
/// pass through unchanged, so the VMM's own statuses sit at the top.
pub mod status {
    /// The VMM could not start the VM: bad arguments, no KVM, bad kernel.
    pub const START_FAILED: u8 = 250;
    /// The guest crashed (triple fault, emulation failure, entry failure).
    pub const GUEST_CRASH: u8 = 251;
    /// The VMM failed while the VM ran.
    pub const VMM_ERROR: u8 = 252;
    /// Guest RAM was released on request (`ReleaseMemory`), then the VMM
    /// exited.
    pub const RELEASED: u8 = 253;
}

impl VmExit {
    /// The process exit status that reports this end.
    pub fn exit_status(&self) -> u8 {
        match self {
            VmExit::Reset => 0,
            VmExit::DebugExit(code) => *code,
            VmExit::GuestCrash(_) => status::GUEST_CRASH,
            VmExit::VmmError(_) => status::VMM_ERROR,
            VmExit::Released => status::RELEASED,
            // The shell's convention for a death by signal.
            VmExit::Signal(n) => 128 + n,
        }
    }
}

/// First writer wins: later requests (other vCPUs racing to report the same
/// end) are dropped, so the reported reason is the one that happened first.
pub struct ExitSignal {
    reason: Mutex<Option<VmExit>>,
    /// Set once `reason` is: lets vCPUs check on every VM exit without
    /// taking the lock.
    requested: AtomicBool,
    event: EventFd,
    /// vCPUs sleeping in the idle port must see the end at once.
    wake: Arc<IdleWake>,
}

impl ExitSignal {
    /// A signal that also wakes the vCPUs sleeping on `wake`.
    pub fn new(wake: Arc<IdleWake>) -> std::io::Result<Self> {
        Ok(ExitSignal {
            reason: Mutex::new(None),
            requested: AtomicBool::new(false),
            event: EventFd::new(0)?,
            wake,
        })
    }

    /// Records `exit` unless an earlier one is recorded, and wakes the waiter.
    pub fn request(&self, exit: VmExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if reason.is_none() {
            *reason = Some(exit);
            self.requested.store(true, Ordering::Release);
            // A full counter (impossible with one write per VM) would only
            // mean the waiter is already woken.
            let _ = self.event.write(1);
            self.wake.wake();
        }
    }

    /// Whether an end has been requested.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// The end, once one has been requested.
    pub fn requested(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The eventfd written when the end is requested, for event loops.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}
