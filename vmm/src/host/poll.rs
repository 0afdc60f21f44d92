//! Waiting on several kernel notifications at once: one `poll(2)` over
//! PSI triggers (`POLLPRI`), memory-cgroup watchers (`POLLIN`) and
//! whatever else wakes the daemon.

use std::io;
use std::time::{Duration, Instant};

/// Blocks until one of `fds` reports one of its `events` (or an error,
/// `POLLERR`/`POLLNVAL`/`POLLHUP`), or `timeout` passes; each entry's
/// `revents` says what happened. Returns how many entries have any.
/// Retries on `EINTR` with the time that is left.
pub fn wait(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up: a timeout cut short by rounding would spin once more.
        let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a live, writable array of `fds.len()` pollfds
        // for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A `pollfd` for `fd` and `events`, nothing reported yet.
pub fn pollfd(fd: std::os::fd::RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Whether an entry reports an error rather than an event: the fd is
/// closed, or its object gone (a PSI trigger whose cgroup was removed).
pub fn failed(p: &libc::pollfd) -> bool {
    p.revents & (libc::POLLERR | libc::POLLNVAL) != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn waits_for_the_first_event_or_the_timeout() {
        let a = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let b = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut fds = [
            pollfd(a.as_raw_fd(), libc::POLLIN),
            pollfd(b.as_raw_fd(), libc::POLLIN),
        ];
        let t = Instant::now();
        assert_eq!(wait(&mut fds, Duration::from_millis(30)).unwrap(), 0);
        assert!(t.elapsed() >= Duration::from_millis(30));
        b.write(1).unwrap();
        assert_eq!(wait(&mut fds, Duration::from_secs(5)).unwrap(), 1);
        assert_eq!(
            (fds[0].revents, fds[1].revents & libc::POLLIN),
            (0, libc::POLLIN)
        );
        assert!(!failed(&fds[1]));
    }
}
