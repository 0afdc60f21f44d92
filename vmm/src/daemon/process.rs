//! A child VMM process held by a pidfd: signals go to exactly the process
//! we started (no pid reuse races), its exit is pollable, and its memory can
//! be reaped right after SIGKILL with `process_mrelease`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
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
        Ok(Pidfd {
            pid,
            // SAFETY: the kernel just gave us this fd; nobody else owns it.
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
        // SAFETY: siginfo_t is a plain C struct; all zeroes is valid.
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

// What a kill reports is part of the `oom_kill` event: the types live
// with the events, in the API layer.
pub use crate::daemon_api::events::{FreedBy, KillReport, ReapMethod};

/// How long the daemon waits for a VMM's answer to `ReleaseMemory` before
/// it kills instead: 250 ms plus 250 ms per GiB of guest RAM (the VMM
/// releases ~1 GiB per 50-200 ms on the development host, see
/// BENCHMARKS.md "Reap").
pub fn release_timeout(guest_ram_bytes: u64) -> Duration {
    Duration::from_millis(250 + guest_ram_bytes.saturating_mul(250) / (1 << 30))
}

/// How long a VMM that answered `ReleaseMemory` may take to exit before
/// it is killed (its memory is back already).
const EXIT_AFTER_RELEASE: Duration = Duration::from_secs(1);

/// The VM to kill: its process and, for [`ReapMethod::VmmRelease`], its
/// API socket and guest RAM size.
pub struct Victim<'a> {
    pub pidfd: &'a Pidfd,
    pub api_sock: Option<&'a Path>,
    pub guest_ram_bytes: u64,
}

/// Kills the VM behind `victim` with `method` and waits (up to `timeout`)
/// until its memory is back and the process has exited, measuring both.
///
/// With [`ReapMethod::VmmRelease`] the VMM is asked first; if it does not
/// answer within [`release_timeout`], answers an error, or has no socket,
/// the kill goes on as [`ReapMethod::SigkillMrelease`] (`fallback_from`
/// and `fallback_reason` say so), with times still counted from the first
/// request.
pub fn kill_and_reap(
    victim: &Victim<'_>,
    method: ReapMethod,
    timeout: Duration,
) -> io::Result<KillReport> {
    let pidfd = victim.pidfd;
    let before = crate::host::memstat::MmCounters::read(Some(pidfd.pid()))
        .ok()
        .flatten()
        .unwrap_or_default();
    let t0 = Instant::now();
    let us = |t: Instant| t.duration_since(t0).as_micros() as u64;
    let mut report = KillReport {
        method,
        fallback_from: None,
        fallback_reason: None,
        rss_before: before.rss_anon + before.rss_file + before.rss_shmem,
        bytes_freed: before.rss_anon + before.rss_shmem,
        vmm_answer_us: 0,
        vmm_madvise_us: 0,
        sigkill_us: 0,
        mrelease_us: 0,
        mrelease_raced: false,
        freed_us: 0,
        freed_by: FreedBy::NotSeen,
        exited_us: 0,
    };
    let mut kill_with = method;
    if method == ReapMethod::VmmRelease {
        let answer = match victim.api_sock {
            Some(sock) => {
                super::vm_client::release_memory(sock, release_timeout(victim.guest_ram_bytes))
                    .map_err(|e| e.to_string())
            }
            None => Err("the VM has no API socket".to_string()),
        };
        match answer {
            Ok(released) => {
                let now = Instant::now();
                report.vmm_answer_us = us(now);
                report.vmm_madvise_us = released.madvise_us;
                report.bytes_freed = released.released_bytes;
                report.freed_us = us(now);
                report.freed_by = FreedBy::VmmAnswer;
                if !pidfd.wait_exit(EXIT_AFTER_RELEASE) {
                    // Its memory is back; it only failed to go.
                    pidfd.send_signal(libc::SIGKILL)?;
                    report.sigkill_us = us(Instant::now());
                }
                if pidfd.wait_exit(timeout.saturating_sub(t0.elapsed())) {
                    report.exited_us = us(Instant::now());
                }
                return Ok(report);
            }
            Err(why) => {
                kill_with = ReapMethod::SigkillMrelease;
                report.method = kill_with;
                report.fallback_from = Some(ReapMethod::VmmRelease);
                report.fallback_reason = Some(why);
            }
        }
    }
    pidfd.send_signal(libc::SIGKILL)?;
    report.sigkill_us = us(Instant::now());
    if kill_with == ReapMethod::SigkillMrelease {
        match pidfd.mrelease() {
            Ok(()) => {
                let now = Instant::now();
                report.mrelease_us = us(now);
                report.freed_us = us(now);
                report.freed_by = FreedBy::MreleaseReturned;
            }
            // The exit path won the race: it frees the memory itself.
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                report.mrelease_us = us(Instant::now());
                report.mrelease_raced = true;
            }
            Err(e) => return Err(e),
        }
    }
    if pidfd.wait_exit(timeout.saturating_sub(t0.elapsed())) {
        let now = Instant::now();
        report.exited_us = us(now);
        if report.freed_by == FreedBy::NotSeen {
            report.freed_us = us(now);
            report.freed_by = FreedBy::ProcessExited;
        }
    }
    Ok(report)
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
            let victim = Victim {
                pidfd: &pidfd,
                api_sock: None,
                guest_ram_bytes: 0,
            };
            let report = kill_and_reap(&victim, method, Duration::from_secs(5)).unwrap();
            assert!(report.rss_before >= 64 << 20, "{report:?}");
            assert!(report.bytes_freed >= 64 << 20, "{report:?}");
            assert!(report.freed_us <= report.exited_us, "{report:?}");
            assert!(report.exited_us < 5_000_000, "{report:?}");
            let expected = match method {
                ReapMethod::Sigkill => [FreedBy::ProcessExited; 2],
                // mrelease may lose the race to the exit path.
                _ => [FreedBy::MreleaseReturned, FreedBy::ProcessExited],
            };
            assert!(expected.contains(&report.freed_by), "{report:?}");
            assert_eq!(report.fallback_from, None);
            assert!(pidfd.wait_exit(Duration::from_secs(5)));
            assert_eq!(
                pidfd.try_reap().unwrap(),
                Some(ExitReport::Signaled(libc::SIGKILL))
            );
            // Reaped: no zombie left behind.
            assert!(!std::path::Path::new(&format!("/proc/{}", child.id())).exists());
        }
    }

    /// A VMM that does not answer `ReleaseMemory` (here: a socket nobody
    /// accepts on) costs the release timeout, then the kill goes on as
    /// SIGKILL + process_mrelease, and the report says so.
    #[test]
    #[allow(clippy::zombie_processes)]
    fn an_unanswered_release_falls_back_to_sigkill_and_mrelease() {
        let dir = std::env::temp_dir().join(format!("vmm-reap-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let _deaf = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        for (api_sock, why) in [(Some(sock.as_path()), "api.sock"), (None, "no API socket")] {
            let child = hog(32);
            let pidfd = Pidfd::open(child.id()).unwrap();
            let victim = Victim {
                pidfd: &pidfd,
                api_sock,
                guest_ram_bytes: 0,
            };
            let report =
                kill_and_reap(&victim, ReapMethod::VmmRelease, Duration::from_secs(5)).unwrap();
            assert_eq!(report.method, ReapMethod::SigkillMrelease, "{report:?}");
            assert_eq!(report.fallback_from, Some(ReapMethod::VmmRelease));
            let reason = report.fallback_reason.clone().unwrap();
            assert!(reason.contains(why), "{reason}");
            if api_sock.is_some() {
                // It waited out the timeout before killing.
                assert!(report.sigkill_us >= 250_000, "{report:?}");
            }
            assert_eq!(report.vmm_answer_us, 0);
            assert!(report.bytes_freed >= 32 << 20, "{report:?}");
            assert!(report.exited_us > 0, "{report:?}");
            assert_eq!(
                pidfd.try_reap().unwrap(),
                Some(ExitReport::Signaled(libc::SIGKILL))
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn release_timeout_grows_with_guest_ram() {
        assert_eq!(release_timeout(0), Duration::from_millis(250));
        assert_eq!(release_timeout(1 << 30), Duration::from_millis(500));
        assert_eq!(release_timeout(16 << 30), Duration::from_millis(4250));
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
