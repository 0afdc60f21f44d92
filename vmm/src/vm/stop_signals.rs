//! SIGTERM and SIGINT stop the VM cleanly: they are blocked in every thread
//! and read from a signalfd in the VM's event loop, so `vmm run` unlinks
//! its API socket and reports the signal in its exit status instead of
//! dying mid-write.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::exit::{ExitSignal, VmExit};

const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread and every thread it
/// starts afterwards. Call first thing in `main`, before any thread exists.
pub fn block_stop_signals() -> std::io::Result<()> {
    let set = stop_set();
    // SAFETY: `set` is a valid, initialised signal set.
    let ret = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if ret != 0 {
        return Err(std::io::Error::from_raw_os_error(ret));
    }
    Ok(())
}

/// A stop signal already pending for this process, taken (before the VM
/// and its event loop exist).
pub fn take_pending() -> Option<u8> {
    let set = stop_set();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid set and timeout; a null siginfo pointer is allowed.
    let signo = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
    (signo > 0).then_some(signo as u8)
}

/// A signalfd that polls readable while a stop signal is pending, for a
/// loop that sleeps in `poll` and takes signals with [`take_pending`]
/// (the daemon): a stop then ends the sleep at once.
pub fn pending_fd() -> std::io::Result<OwnedFd> {
    let set = stop_set();
    // SAFETY: a fresh signalfd for a valid set; we own the returned fd.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Ends the VM with [`VmExit::Signal`] when a stop signal arrives.
pub struct StopSignals {
    fd: OwnedFd,
    exit: Arc<ExitSignal>,
}

impl StopSignals {
    pub fn new(exit: Arc<ExitSignal>) -> std::io::Result<Self> {
        let set = stop_set();
        // SAFETY: a fresh signalfd for a valid set; we own the returned fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(StopSignals {
            // SAFETY: `fd` was just returned to us and is owned by nobody else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            exit,
        })
    }
}

impl MutEventSubscriber for StopSignals {
    fn init(&mut self, ops: &mut EventOps) {
        // Registration fails only on a closed fd, which we own: a bug.
        ops.add(Events::new(&self.fd, EventSet::IN))
            .expect("register the signalfd");
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // SAFETY: signalfd_siginfo is a plain C struct; zeroes are valid.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, a plain C struct.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n as usize == size {
            self.exit.request(VmExit::Signal(info.ssi_signo as u8));
        }
    }
}
