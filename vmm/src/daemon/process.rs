//! A child VMM process held by a pidfd: signals go to exactly the process
//! we started (no pid reuse races), its exit is pollable, and its memory can
//! be reaped right after SIGKILL with `process_mrelease`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Syscall numbers (x86_64); libc 0.2 names them but older glibc lacks
/// wrappers.
const SYS_PIDFD_OPEN: libc::c_long = 434;
const SYS_PIDFD_SEND_SIGNAL: libc::c_long = 424;
const SYS_PROCESS_MRELEASE: libc::c_long = 448;

/// A process we started, by pidfd.
#[derive(Debug)]
pub struct Pidfd {
    pid: u32,
    fd: OwnedFd,
}

impl Pidfd {
    /// Opens a pidfd for `pid`, which must be our child (so it cannot be
    /// reaped and reused before we hold the fd).
    pub fn open(pid: u32) -> io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(SYS_PIDFD_OPEN, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd.
        Ok(Pidfd {
            pid,
            fd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A second handle on the same process.
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Pidfd {
            pid: self.pid,
            fd: self.fd.try_clone()?,
        })
    }

    /// Sends `signal` to the process itself, never to a reused pid.
    pub fn send_signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: valid pidfd, no siginfo, no flags.
        let ret = unsafe {
            libc::syscall(
                SYS_PIDFD_SEND_SIGNAL,
                self.fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reaps the address space of a process that is dying (SIGKILLed):
    /// its anonymous memory is freed now, by us, instead of when its last
    /// thread gets around to exit_mm(). EINVAL if it is not dying; ESRCH if
    /// its memory is already gone (both mean there is nothing to do).
    pub fn mrelease(&self) -> io::Result<()> {
        // SAFETY: valid pidfd, flags 0.
        let ret = unsafe { libc::syscall(SYS_PROCESS_MRELEASE, self.fd.as_raw_fd(), 0) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the process has exited (the pidfd polls readable).
    pub fn has_exited(&self) -> bool {
        self.wait_exit(Duration::ZERO)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
    }

    /// Collects the exit status of our exited child without blocking;
    /// `None` while it runs. The status is as `waitpid` reports it.
    pub fn try_reap(&self) -> io::Result<Option<ExitReport>> {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child's pidfd into a zeroed siginfo.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                self.fd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: si_pid/si_status are valid for CLD_* siginfo from waitid.
        let (pid, status, code) = unsafe { (info.si_pid(), info.si_status(), info.si_code) };
        if pid == 0 {
            return Ok(None);
        }
        Ok(Some(match code {
            libc::CLD_EXITED => ExitReport::Exited(status),
            _ => ExitReport::Signaled(status),
        }))
    }

    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitReport {
    Exited(i32),
    Signaled(i32),
}

impl std::fmt::Display for ExitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitReport::Exited(code) => write!(f, "exited with status {code}"),
            ExitReport::Signaled(sig) => write!(f, "killed by signal {sig}"),
        }
    }
}

/// How the memory of a killed VM was reclaimed, and how fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReapMethod {
    /// SIGKILL only: the dying process frees its own memory.
    Sigkill,
    /// SIGKILL, then `process_mrelease` from the daemon.
    SigkillMrelease,
}

/// What a kill observed.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct KillReport {
    pub method: ReapMethod,
    /// Resident bytes just before the kill.
    pub rss_before: u64,
    /// SIGKILL sent → mrelease returned (zero for SIGKILL only).
    pub mrelease_us: u64,
    /// SIGKILL sent → the process's memory was gone (smaps_rollup shows
    /// no Rss, or the process disappeared).
    pub freed_us: u64,
    /// Whether mrelease found the memory already gone.
    pub mrelease_raced: bool,
}

/// Kills the process behind `pidfd` and waits (up to `timeout`) until its
/// memory is released, measuring how long that took.
pub fn kill_and_reap(
    pidfd: &Pidfd,
    method: ReapMethod,
    timeout: Duration,
) -> io::Result<KillReport> {
    let rss_before = crate::memstat::ProcessMemory::read(Some(pidfd.pid()))
        .map(|m| m.rss)
        .unwrap_or(0);
    let t0 = Instant::now();
    pidfd.send_signal(libc::SIGKILL)?;
    let mut report = KillReport {
        method,
        rss_before,
        mrelease_us: 0,
        freed_us: 0,
        mrelease_raced: false,
    };
    if method == ReapMethod::SigkillMrelease {
        match pidfd.mrelease() {
            Ok(()) => {}
            // The exit path won the race: the memory is already gone.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => report.mrelease_raced = true,
            Err(e) => return Err(e),
        }
        report.mrelease_us = t0.elapsed().as_micros() as u64;
    }
    while t0.elapsed() < timeout {
        if memory_released(pidfd.pid()) {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    report.freed_us = t0.elapsed().as_micros() as u64;
    Ok(report)
}

/// Whether process `pid` holds no resident memory any more.
fn memory_released(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
        // A zombie's smaps_rollup is empty: its mm is gone.
        Ok(text) => !text
            .lines()
            .any(|l| l.starts_with("Rss:") && !l.trim_end().ends_with(" 0 kB")),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A child that touches `mib` MiB and sleeps.
    fn hog(mib: u32) -> std::process::Child {
        let script = format!("import time; b = bytearray({mib} << 20); b[::4096] = b'x' * len(b[::4096]); print('ok', flush=True); time.sleep(60)");
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ok");
        child
    }

    #[test]
    // The child is reaped through its pidfd (waitid P_PIDFD), which is
    // what this test checks; clippy cannot see that.
    #[allow(clippy::zombie_processes)]
    fn sigkill_then_mrelease_frees_and_reaps() {
        for method in [ReapMethod::Sigkill, ReapMethod::SigkillMrelease] {
            let child = hog(64);
            let pidfd = Pidfd::open(child.id()).unwrap();
            assert!(!pidfd.has_exited());
            assert_eq!(pidfd.try_reap().unwrap(), None);
            let report = kill_and_reap(&pidfd, method, Duration::from_secs(5)).unwrap();
            assert!(report.rss_before >= 64 << 20, "{report:?}");
            assert!(report.freed_us < 5_000_000, "{report:?}");
            assert!(pidfd.wait_exit(Duration::from_secs(5)));
            assert_eq!(
                pidfd.try_reap().unwrap(),
                Some(ExitReport::Signaled(libc::SIGKILL))
            );
            // Reaped: no zombie left behind.
            assert!(!std::path::Path::new(&format!("/proc/{}", child.id())).exists());
        }
    }

    #[test]
    fn mrelease_refuses_a_live_process() {
        let mut child = hog(1);
        let pidfd = Pidfd::open(child.id()).unwrap();
        assert_eq!(
            pidfd.mrelease().unwrap_err().raw_os_error(),
            Some(libc::EINVAL)
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
