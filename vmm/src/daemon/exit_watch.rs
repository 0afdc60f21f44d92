//! One epoll set over the pidfds of the live VMMs: the supervisor learns
//! which VMMs exited with one `epoll_wait` per tick, not one `poll` per VM
//! per tick (with 100 VMs at 10 ticks a second those polls were a tenth of
//! the daemon's idle CPU, issue 11).
//!
//! A pidfd polls readable once its process has exited, and stays so: the
//! set is level-triggered, so an exit the supervisor leaves for later (a
//! VM still `Starting`, whose exit `create_vm` handles) is reported again
//! next tick, and one it handled must be [`ExitWatch::forget`]-ten.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::process::Pidfd;

/// The epoll set; entries are keyed by pid.
pub struct ExitWatch {
    epoll: OwnedFd,
}

impl ExitWatch {
    pub fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes flags and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ExitWatch { epoll })
    }

    /// Adds `pidfd` to the set.
    pub fn watch(&self, pidfd: &Pidfd) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: u64::from(pidfd.pid()),
        };
        // SAFETY: both fds are valid; `event` is read by the kernel only.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                pidfd.as_raw_fd(),
                &mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes `pidfd` from the set (its exit was handled). Closing the
    /// last descriptor of a pidfd removes it too.
    pub fn forget(&self, pidfd: &Pidfd) {
        // SAFETY: both fds are valid; DEL ignores the event argument.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                pidfd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        };
    }

    /// Polls readable while a watched process has exited.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.epoll.as_raw_fd()
    }

    /// The pids of the watched processes that have exited, now (no wait).
    pub fn exited(&self) -> BTreeSet<u32> {
        let mut pids = BTreeSet::new();
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: `events` has room for the count given.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    0,
                )
            };
            if n <= 0 {
                return pids;
            }
            let before = pids.len();
            pids.extend(events[..n as usize].iter().map(|e| e.u64 as u32));
            // Level-triggered: the same ready entries come back first, so
            // a full batch with nothing new means all have been seen.
            if (n as usize) < events.len() || pids.len() == before {
                return pids;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_exits_until_forgotten() {
        let watch = ExitWatch::new().unwrap();
        let mut a = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let mut b = std::process::Command::new("true").spawn().unwrap();
        let pa = Pidfd::open(a.id()).unwrap();
        let pb = Pidfd::open(b.id()).unwrap();
        watch.watch(&pa).unwrap();
        watch.watch(&pb).unwrap();
        assert!(pb.wait_exit(std::time::Duration::from_secs(10)));
        assert_eq!(watch.exited(), BTreeSet::from([b.id()]));
        // Level-triggered: still there until forgotten.
        assert_eq!(watch.exited(), BTreeSet::from([b.id()]));
        watch.forget(&pb);
        assert!(watch.exited().is_empty());
        b.wait().unwrap();
        a.kill().unwrap();
        assert!(pa.wait_exit(std::time::Duration::from_secs(10)));
        assert_eq!(watch.exited(), BTreeSet::from([a.id()]));
        a.wait().unwrap();
    }
}
