//! A vCPU: its configuration and the `KVM_RUN` loop that turns exits into
//! device accesses or into the end of the VM; and [`VcpuThreads`], which
//! stops the vCPU threads for good and lends them out as workers (to
//! release guest RAM without creating a thread).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::boot::BootSetup;
use super::exit::{ExitSignal, VmExit};
use super::memory::GuestRam;
use super::pause::Pause;
use super::regs::{self, RegsError};
use crate::devices::pv_idle::{self, IdleWake, Sleeper, IDLE_PORT, IDLE_PORT_LEN};
use crate::devices::IoBuses;

/// KVM_INTERNAL_ERROR_EMULATION: the instruction emulator gave up.
const INTERNAL_ERROR_EMULATION: u32 = 1;

pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
}

impl Vcpu {
    pub fn new(fd: VcpuFd, index: u8) -> Self {
        Vcpu { fd, index }
    }

    /// Loads CPUID, MSRs, FPU and LAPIC wiring; the boot CPU also gets the
    /// entry state of `boot`. Other vCPUs wait in KVM for INIT/SIPI from the
    /// guest, as on real hardware.
    pub fn configure(
        &self,
        cpuid: &CpuId,
        mem: &GuestRam,
        boot: Option<&BootSetup>,
    ) -> Result<(), RegsError> {
        self.fd.set_cpuid2(cpuid).map_err(|source| RegsError::Kvm {
            what: "CPUID",
            source,
        })?;
        regs::setup_msrs(&self.fd)?;
        regs::setup_fpu(&self.fd)?;
        regs::setup_lapic_lint(&self.fd)?;
        if let Some(boot) = boot {
            regs::setup_sregs(&self.fd, mem, boot.entry)?;
            regs::setup_regs(&self.fd, boot.entry, boot.boot_info)?;
        }
        Ok(())
    }

    /// The guest TSC frequency KVM runs this vCPU at, if it tells.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|&khz| khz > 0)
    }

    /// Runs the vCPU on its own thread, under its seccomp filter (installed
    /// before the first `KVM_RUN`), until the VM ends, or until `park`
    /// is requested: then the thread leaves `KVM_RUN` for good and serves
    /// `park`'s jobs instead (see [`VcpuThreads::park_all`]).
    /// While `pause` is requested the thread waits outside `KVM_RUN`. A
    /// guest write to the idle port sleeps on `park`'s [`IdleWake`].
    pub fn spawn(
        self,
        buses: Arc<IoBuses>,
        exit: Arc<ExitSignal>,
        park: Arc<Park>,
        pause: Arc<Pause>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || {
                let mut vcpu = self;
                // In a full memory cgroup, KVM_RUN fails instead of waiting
                // for memory; this waits and runs again (see its
                // documentation). It opens its files here, before the
                // filter that forbids opening files.
                let charge = crate::vm::charge_wait::ChargeWait::for_this_process();
                if let Err(e) = crate::seccomp::apply(crate::seccomp::ThreadKind::Vcpu) {
                    // The guest never runs on an unfiltered vCPU.
                    exit.request(VmExit::VmmError(format!("vcpu{}: {e}", vcpu.index)));
                    return;
                }
                match vcpu.run_loop(&buses, &exit, &park, &pause, charge) {
                    Some(end) => exit.request(end),
                    None => park.serve(),
                }
            })
    }

    /// `None` when parked.
    fn run_loop(
        &mut self,
        buses: &IoBuses,
        exit: &ExitSignal,
        park: &Park,
        pause: &Pause,
        mut charge: crate::vm::charge_wait::ChargeWait,
    ) -> Option<VmExit> {
        let me = format!("vcpu{}", self.index);
        let mut sleeper = Sleeper::default();
        loop {
            if park.is_requested() {
                return None;
            }
            if exit.is_requested() {
                // Another vCPU ended the VM; its reason is the one reported.
                return Some(VmExit::Reset);
            }
            if pause.is_requested() {
                pause.hold(|| exit.is_requested() || park.is_requested());
                continue;
            }
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data))
                    if (IDLE_PORT..IDLE_PORT + IDLE_PORT_LEN).contains(&port) =>
                {
                    pv_idle::read(data);
                    None
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    buses.pio.read(port, data);
                    None
                }
                Ok(VcpuExit::IoOut(port, data))
                    if (IDLE_PORT..IDLE_PORT + IDLE_PORT_LEN).contains(&port) =>
                {
                    // The guest is idle: block this thread, not the VM's
                    // devices, until an event for this VM or the deadline.
                    park.wake
                        .sleep(&mut sleeper, pv_idle::requested_sleep(data));
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    buses.pio.write(port, data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    buses.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    buses.mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => Some(system_event(kind)),
                Ok(VcpuExit::Shutdown) => Some(VmExit::GuestCrash(
                    self.describe("triple fault (KVM_EXIT_SHUTDOWN)"),
                )),
                Ok(VcpuExit::Hlt) => Some(VmExit::GuestCrash(
                    self.describe("halted with no interrupt source (KVM_EXIT_HLT)"),
                )),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmExit::GuestCrash(self.describe(
                    &format!("VM entry failed: reason {reason:#x} on host cpu {cpu}"),
                ))),
                Ok(VcpuExit::InternalError) => Some(VmExit::GuestCrash(self.internal_error())),
                Ok(VcpuExit::Intr) => None,
                Ok(other) => {
                    let what = format!("unhandled exit {other:?}");
                    Some(VmExit::VmmError(self.describe(&what)))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e)
                    if charge.retry_after(e.errno(), &me, &|| {
                        exit.is_requested() || park.is_requested()
                    }) =>
                {
                    None
                }
                Err(e) => Some(VmExit::VmmError(format!(
                    "vcpu{}: KVM_RUN failed: {e}",
                    self.index
                ))),
            };
            if let Some(end) = outcome {
                return Some(end);
            }
        }
    }

    /// KVM_EXIT_INTERNAL_ERROR with its sub-error; on PVM hosts this is how
    /// an instruction the emulator lacks shows up.
    fn internal_error(&mut self) -> String {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the active member of the kvm_run union.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let kind = if internal.suberror == INTERNAL_ERROR_EMULATION {
            "instruction emulation failed"
        } else {
            "KVM internal error"
        };
        self.describe(&format!(
            "{kind} (suberror {}, data {:x?})",
            internal.suberror,
            &internal.data[..n]
        ))
    }

    /// `what`, with the vCPU's instruction pointer for the post-mortem.
    fn describe(&self, what: &str) -> String {
        match self.fd.get_regs() {
            Ok(r) => format!("vcpu{}: {what} at rip {:#x}", self.index, r.rip),
            Err(_) => format!("vcpu{}: {what}", self.index),
        }
    }
}

fn system_event(kind: u32) -> VmExit {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
        KVM_SYSTEM_EVENT_CRASH => {
            VmExit::GuestCrash("guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into())
        }
        other => VmExit::VmmError(format!("unknown KVM system event {other}")),
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`: the first
/// real-time signal glibc leaves to programs. Its handler does nothing;
/// its arrival makes `KVM_RUN` return `EINTR`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler of [`kick_signal`] for the process. Call
/// before any vCPU thread runs; without a handler the signal would kill
/// the process.
pub fn install_kick_handler() -> std::io::Result<()> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// A job for a parked vCPU thread.
pub type Job = Box<dyn FnOnce() + Send>;

/// What the vCPU threads of one VM share with whoever parks them.
///
/// Invariant: once `requested` is set it is never cleared; a vCPU thread
/// that has seen it never enters `KVM_RUN` again.
pub struct Park {
    requested: AtomicBool,
    state: Mutex<ParkState>,
    changed: Condvar,
    /// Where the VM's vCPUs sleep when the guest is idle; a park request
    /// wakes them.
    wake: Arc<IdleWake>,
}

#[derive(Default)]
struct ParkState {
    /// vCPU threads that left `KVM_RUN` for good and serve jobs.
    parked: usize,
    jobs: VecDeque<Job>,
    /// Jobs taken and not finished yet.
    running: usize,
    /// No more jobs will come: parked threads end.
    closed: bool,
}

impl Park {
    /// A park for vCPUs that sleep on `wake` when idle.
    pub fn new(wake: Arc<IdleWake>) -> Self {
        Park {
            requested: AtomicBool::new(false),
            state: Mutex::default(),
            changed: Condvar::new(),
            wake,
        }
    }

    fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    fn state(&self) -> MutexGuard<'_, ParkState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A parked vCPU thread: runs jobs until the park is closed.
    pub(crate) fn serve(&self) {
        let mut state = self.state();
        state.parked += 1;
        self.changed.notify_all();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                state.running += 1;
                drop(state);
                job();
                state = self.state();
                state.running -= 1;
                self.changed.notify_all();
            } else if state.closed {
                return;
            } else {
                state = self
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }
}

/// Why the vCPUs could not be parked.
#[derive(Debug, thiserror::Error)]
pub enum ParkError {
    #[error("{running} of {total} vCPU threads were still in KVM_RUN after {waited:?}")]
    Timeout {
        running: usize,
        total: usize,
        waited: Duration,
    },
    #[error("cannot kick vCPU thread {index} out of KVM_RUN")]
    Kick {
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// The vCPU threads of a VM.
pub struct VcpuThreads {
    handles: Vec<JoinHandle<()>>,
    park: Arc<Park>,
    pause: Arc<Pause>,
}

impl VcpuThreads {
    /// The threads `spawn` started with `park` and `pause`.
    pub fn new(handles: Vec<JoinHandle<()>>, park: Arc<Park>, pause: Arc<Pause>) -> Self {
        VcpuThreads {
            handles,
            park,
            pause,
        }
    }

    /// Pauses every vCPU: asks them to stop, then kicks each thread out
    /// of `KVM_RUN` (again every 200 µs, as [`park_all`](Self::park_all)
    /// does) until every thread is held or ended. Undo with
    /// [`resume_all`](Self::resume_all), also after an error.
    pub fn pause_all(&self, timeout: Duration) -> Result<Duration, ParkError> {
        let t0 = Instant::now();
        self.pause.request();
        // A vCPU asleep in the idle port sits in no KVM_RUN to kick.
        self.park.wake.wake();
        loop {
            let ended = self.handles.iter().filter(|h| h.is_finished()).count();
            let running = self.handles.len().saturating_sub(self.pause.held() + ended);
            if running == 0 {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() >= timeout {
                return Err(ParkError::Timeout {
                    running,
                    total: self.handles.len(),
                    waited: t0.elapsed(),
                });
            }
            self.kick()?;
            self.pause.wait_change(Duration::from_micros(200));
        }
    }

    /// Ends a pause.
    pub fn resume_all(&self) {
        self.pause.resume();
    }

    /// Sends [`kick_signal`] to every thread that has not ended.
    fn kick(&self) -> Result<(), ParkError> {
        use vmm_sys_util::signal::Killable;
        for (index, handle) in self.handles.iter().enumerate() {
            // The handles are never joined or detached, so their pthread
            // ids stay valid even after the threads end.
            if !handle.is_finished() {
                handle.kill(kick_signal()).map_err(|e| ParkError::Kick {
                    index,
                    source: std::io::Error::from_raw_os_error(e.errno()),
                })?;
            }
        }
        Ok(())
    }

    /// Stops every vCPU for good: asks them to park, then kicks each
    /// thread out of `KVM_RUN` with [`kick_signal`] (again every 200 µs,
    /// since a kick that lands just before a thread re-enters `KVM_RUN` is
    /// lost) until every thread has parked or ended. Afterwards no vCPU
    /// touches guest memory. Returns the time it took.
    pub fn park_all(&self, timeout: Duration) -> Result<Duration, ParkError> {
        let t0 = Instant::now();
        self.park.requested.store(true, Ordering::Release);
        // A vCPU asleep in the idle port sits in no KVM_RUN to kick.
        self.park.wake.wake();
        loop {
            let parked = self.park.state().parked;
            let ended = self.handles.iter().filter(|h| h.is_finished()).count();
            let running = self.handles.len().saturating_sub(parked + ended);
            if running == 0 {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() >= timeout {
                return Err(ParkError::Timeout {
                    running,
                    total: self.handles.len(),
                    waited: t0.elapsed(),
                });
            }
            self.kick()?;
            let state = self.park.state();
            let _ = self
                .park
                .changed
                .wait_timeout(state, Duration::from_micros(200));
        }
    }

    /// vCPU threads parked and ready for jobs.
    pub fn parked(&self) -> usize {
        self.park.state().parked
    }

    /// Runs `jobs` on the parked vCPU threads, the calling thread helping,
    /// and returns once every one has finished.
    pub fn run_parked(&self, jobs: Vec<Job>) {
        let mut state = self.park.state();
        state.jobs.extend(jobs);
        self.park.changed.notify_all();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                job();
                state = self.park.state();
            } else if state.running == 0 {
                return;
            } else {
                state = self
                    .park
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        }
    }

    /// Lets the parked threads end.
    pub fn close(&self) {
        self.park.state().closed = true;
        self.park.changed.notify_all();
    }
}
