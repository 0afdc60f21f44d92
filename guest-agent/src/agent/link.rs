//! The connection to the host: connect (non-blocking) with back-off, hello,
//! send the queue, read acks, notice the host going away.
//!
//! Acks are read lazily: on the tick (one `recv`), or at once when many
//! messages wait for one. In the steady state that saves a wake-up and a
//! `recv` per summary; the summary it acks is replaced by the next one
//! anyway.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::protocol::MAX_HOST_LINE;

use super::outbox::{Outbox, MAX_BYTES};
use super::sys::{self, Connect, Target};
use super::wire::parse_ack;

pub const BACKOFF_MIN_MS: u64 = 100;
pub const BACKOFF_MAX_MS: u64 = 5000;
pub const CONNECT_TIMEOUT_MS: u64 = 5000;
/// Messages in flight before the agent waits for acks actively.
pub const EAGER_ACKS_IN_FLIGHT: usize = 16;

#[derive(Debug)]
enum State {
    Down { retry_at: u64 },
    Connecting { fd: OwnedFd, deadline: u64 },
    Up { fd: OwnedFd, hello_off: usize },
}

#[derive(Debug)]
pub struct Link {
    target: Target,
    hello: Vec<u8>,
    state: State,
    backoff_ms: u64,
    backoff_min_ms: u64,
    backoff_max_ms: u64,
    rx: Vec<u8>,
    rx_skipping: bool,
    /// Connections made.
    pub connects: u64,
    /// Host lines that were not acks.
    pub bad_lines: u64,
    verbose: bool,
    /// The last failure was logged (log one per outage, not per retry).
    quiet: bool,
}

impl Link {
    pub fn new(target: Target, hello: Vec<u8>, verbose: bool) -> Self {
        Link {
            target,
            hello,
            state: State::Down { retry_at: 0 },
            backoff_ms: BACKOFF_MIN_MS,
            backoff_min_ms: BACKOFF_MIN_MS,
            backoff_max_ms: BACKOFF_MAX_MS,
            rx: Vec::with_capacity(MAX_HOST_LINE),
            rx_skipping: false,
            connects: 0,
            bad_lines: 0,
            verbose,
            quiet: false,
        }
    }

    /// Other reconnect back-off bounds (tests).
    pub fn with_backoff(mut self, min_ms: u64, max_ms: u64) -> Self {
        self.backoff_min_ms = min_ms.max(1);
        self.backoff_max_ms = max_ms.max(self.backoff_min_ms);
        self.backoff_ms = self.backoff_min_ms;
        self
    }

    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// When [`Link::maintain`] has something to do next, if it waits for a
    /// time.
    pub fn deadline(&self) -> Option<u64> {
        match &self.state {
            State::Down { retry_at } => Some(*retry_at),
            State::Connecting { deadline, .. } => Some(*deadline),
            State::Up { .. } => None,
        }
    }

    /// Starts a connection when one is due; gives up on a slow one.
    pub fn maintain(&mut self, now: u64, outbox: &mut Outbox) {
        match &self.state {
            State::Down { retry_at } if now >= *retry_at => self.connect(now, outbox),
            State::Connecting { deadline, .. } if now >= *deadline => {
                self.down(now, "connect timed out")
            }
            _ => {}
        }
    }

    fn connect(&mut self, now: u64, outbox: &mut Outbox) {
        match sys::connect(&self.target) {
            Ok(Connect::Done(fd)) => self.up(fd, now, outbox),
            Ok(Connect::InProgress(fd)) => {
                self.state = State::Connecting {
                    fd,
                    deadline: now + CONNECT_TIMEOUT_MS,
                }
            }
            Err(e) => self.down(now, &e.to_string()),
        }
    }

    fn up(&mut self, fd: OwnedFd, now: u64, outbox: &mut Outbox) {
        self.connects += 1;
        self.quiet = false;
        if self.verbose {
            eprintln!(
                "guest-agent: connected to {} ({} queued)",
                self.target,
                outbox.len()
            );
        }
        outbox.rewind();
        self.rx.clear();
        self.rx_skipping = false;
        self.state = State::Up { fd, hello_off: 0 };
        self.flush(now, outbox);
    }

    fn down(&mut self, now: u64, why: &str) {
        if self.verbose && !self.quiet {
            eprintln!(
                "guest-agent: {}: {why}; retrying with back-off",
                self.target
            );
        }
        self.quiet = true;
        self.state = State::Down {
            retry_at: now + self.backoff_ms,
        };
        self.backoff_ms = (self.backoff_ms * 2).min(self.backoff_max_ms);
    }

    /// What to poll for, if anything.
    pub fn interest(&self, outbox: &Outbox) -> Option<libc::pollfd> {
        let (fd, events) = match &self.state {
            State::Down { .. } => return None,
            State::Connecting { fd, .. } => (fd.as_raw_fd(), libc::POLLOUT),
            State::Up { fd, hello_off } => {
                let mut ev = libc::POLLRDHUP;
                if *hello_off < self.hello.len() || outbox.pending().is_some() {
                    ev |= libc::POLLOUT;
                }
                if outbox.in_flight() >= EAGER_ACKS_IN_FLIGHT || outbox.bytes() > MAX_BYTES / 4 {
                    ev |= libc::POLLIN;
                }
                (fd.as_raw_fd(), ev)
            }
        };
        Some(libc::pollfd {
            fd,
            events,
            revents: 0,
        })
    }

    /// poll() said `revents` for the fd of [`Link::interest`].
    pub fn ready(&mut self, revents: libc::c_short, now: u64, outbox: &mut Outbox) {
        if revents == 0 {
            return;
        }
        match &self.state {
            State::Connecting { fd, .. } => {
                let r = sys::take_socket_error(fd.as_raw_fd());
                let State::Connecting { fd, .. } =
                    std::mem::replace(&mut self.state, State::Down { retry_at: now })
                else {
                    unreachable!()
                };
                match r {
                    Ok(()) => self.up(fd, now, outbox),
                    Err(e) => self.down(now, &e.to_string()),
                }
            }
            State::Up { .. } => {
                if revents & (libc::POLLIN | libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
                    self.read_acks(now, outbox);
                }
                if revents & libc::POLLOUT != 0 {
                    self.flush(now, outbox);
                }
            }
            State::Down { .. } => {}
        }
    }

    fn up_fd(&self) -> Option<RawFd> {
        match &self.state {
            State::Up { fd, .. } => Some(fd.as_raw_fd()),
            _ => None,
        }
    }

    /// Writes the hello and queued messages until done or the socket is
    /// full.
    pub fn flush(&mut self, now: u64, outbox: &mut Outbox) {
        while let Some(fd) = self.up_fd() {
            let State::Up { hello_off, .. } = self.state else {
                return;
            };
            let mut bufs: [IoSlice<'_>; 16] = [IoSlice::new(&[]); 16];
            let mut n = 0;
            if hello_off < self.hello.len() {
                bufs[0] = IoSlice::new(&self.hello[hello_off..]);
                n = 1;
            }
            for s in outbox.pending_slices(16 - n) {
                bufs[n] = IoSlice::new(s);
                n += 1;
            }
            if n == 0 {
                return;
            }
            match sys::send_vectored(fd, &bufs[..n]) {
                Ok(mut sent) => {
                    if let State::Up { hello_off, .. } = &mut self.state {
                        let h = (self.hello.len() - *hello_off).min(sent);
                        *hello_off += h;
                        sent -= h;
                    }
                    outbox.advance(sent);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return self.down(now, &format!("send: {e}")),
            }
        }
    }

    /// Reads what the host sent (acks) without blocking; notices EOF.
    pub fn read_acks(&mut self, now: u64, outbox: &mut Outbox) {
        let mut buf = [0u8; 512];
        for _ in 0..8 {
            let Some(fd) = self.up_fd() else {
                return;
            };
            match sys::recv(fd, &mut buf) {
                Ok(0) => return self.down(now, "the host closed the connection"),
                Ok(n) => {
                    self.take_lines(&buf[..n], outbox);
                    if n < buf.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return self.down(now, &format!("recv: {e}")),
            }
        }
    }

    fn take_lines(&mut self, mut bytes: &[u8], outbox: &mut Outbox) {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let (part, rest, complete) = match nl {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.rx_skipping {
                self.rx_skipping = !complete;
                continue;
            }
            if self.rx.len() + part.len() > MAX_HOST_LINE {
                self.rx.clear();
                self.bad_lines += 1;
                self.rx_skipping = !complete;
                continue;
            }
            self.rx.extend_from_slice(part);
            if !complete {
                continue;
            }
            match parse_ack(&self.rx) {
                Some(seq) => {
                    outbox.ack(seq);
                    // The host takes our messages: the next outage starts
                    // with a short back-off again.
                    self.backoff_ms = self.backoff_min_ms;
                }
                None if self.rx.trim_ascii().is_empty() => {}
                None => self.bad_lines += 1,
            }
            self.rx.clear();
        }
    }
}
