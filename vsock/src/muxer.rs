//! The Unix-socket backend: Firecracker's hybrid model. It multiplexes the
//! guest's vsock connections onto host Unix streams.
//!
//! * Host-initiated: a host process connects to `uds_path` and writes
//!   `CONNECT <port>\n`; the muxer sends the guest a `REQUEST` to that port
//!   from a local port of its own (2^30 upwards), and on the guest's
//!   `RESPONSE` answers `OK <local port>\n` on the stream.
//! * Guest-initiated: a guest `REQUEST` to host port P becomes a
//!   non-blocking `connect` to `<uds_path>_P`; the guest gets `RESPONSE`
//!   if someone listens there and `RST` if not.
//!
//! Everything is driven from the VMM's event loop through one epoll
//! descriptor of the muxer's own ([`Muxer::as_raw_fd`]): the listener,
//! host streams still sending their `CONNECT` line, the established
//! streams (polled for reading only while the guest has credit, for
//! writing only while guest data waits) and a sweep timer for deadlines.
//! No call blocks.
//!
//! Bounds: at most `max_connections` connections and `max_pending_host`
//! handshakes in progress; each connection holds at most `conn_buf_size`
//! bytes of guest data; packets owed to the guest are per-connection flags
//! plus at most `max_stray_rsts + max_connections` `RST`s for connections
//! that no longer exist (tx processing pauses at `max_stray_rsts`; host-side
//! endings add at most one per connection; beyond the sum they are dropped
//! and counted, e.g. while no driver takes any). Everything the guest sends is checked
//! by the device (header) and the connection (state, credit) first.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

use crate::config::{port_path, Limits, VsockConfig};
use crate::connection::{Connection, Outcome, ResetCause, State};
use crate::handshake::{self, Line, MAX_LINE};
use crate::header::{Header, Op};
use crate::host_socket::{connect_nonblocking, peek};
use crate::metrics::{bump, VsockMetrics};

/// The first local port of host-initiated connections (as Firecracker).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How often deadlines are checked while any exists.
const SWEEP_PERIOD: Duration = Duration::from_millis(250);
/// Events taken from the muxer's epoll per call.
const EVENTS_PER_ROUND: usize = 64;
/// Host connections accepted per listener event.
const ACCEPTS_PER_ROUND: usize = 16;

/// A connection's key: (host-side port, guest-side port).
pub type ConnKey = (u32, u32);

struct Entry {
    conn: Connection,
    /// In `rx_queue`.
    queued: bool,
    /// What the stream is registered for in the epoll (empty: not
    /// registered; epoll reports hang-ups even with no events asked for).
    polled: EventSet,
}

/// A host stream that has not sent its `CONNECT` line yet.
struct PendingHost {
    stream: UnixStream,
    /// The line so far (never a newline, never more than `MAX_LINE`).
    line: Vec<u8>,
    deadline: Instant,
}

/// The backend of one device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    limits: Limits,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_armed: bool,
    pending: HashMap<RawFd, PendingHost>,
    conns: HashMap<ConnKey, Entry>,
    by_fd: HashMap<RawFd, ConnKey>,
    /// Connections that have a packet for the guest, each at most once
    /// (stale keys of removed connections are skipped).
    rx_queue: VecDeque<ConnKey>,
    /// `RST`s to connections that are gone or never existed.
    stray: VecDeque<Header>,
    next_port: u32,
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Muxer {
    /// A muxer for `cfg` serving host connections on `listener` (bound at
    /// `cfg.uds_path` by the caller).
    pub fn new(cfg: &VsockConfig, limits: Limits, listener: UnixListener) -> io::Result<Muxer> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        let timer = TimerFd::new()?;
        set_nonblocking(timer.as_raw_fd())?;
        for fd in [listener.as_raw_fd(), timer.as_raw_fd()] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )?;
        }
        Ok(Muxer {
            guest_cid: cfg.guest_cid,
            uds_path: cfg.uds_path.clone(),
            limits,
            listener,
            epoll,
            timer,
            timer_armed: false,
            pending: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            rx_queue: VecDeque::new(),
            stray: VecDeque::new(),
            next_port: FIRST_LOCAL_PORT,
        })
    }

    /// Handles what the muxer's epoll reports, without waiting.
    pub fn process_events(&mut self, metrics: &mut VsockMetrics) {
        let mut events = [EpollEvent::default(); EVENTS_PER_ROUND];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(_) => {
                bump(&mut metrics.event_errors);
                return;
            }
        };
        for ev in &events[..n] {
            let fd = ev.data() as RawFd;
            let set = ev.event_set();
            if fd == self.listener.as_raw_fd() {
                self.accept(metrics);
            } else if fd == self.timer.as_raw_fd() {
                let _ = self.timer.wait();
                self.sweep(Instant::now(), metrics);
            } else if self.pending.contains_key(&fd) {
                self.handshake(fd, metrics);
            } else if let Some(&key) = self.by_fd.get(&fd) {
                self.stream_event(key, set, metrics);
            } else {
                // Not ours (any more): make sure it stops waking us.
                bump(&mut metrics.event_errors);
                let _ = self
                    .epoll
                    .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            }
        }
    }

    fn accept(&mut self, metrics: &mut VsockMetrics) {
        for _ in 0..ACCEPTS_PER_ROUND {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    bump(&mut metrics.host_io_errors);
                    return;
                }
            };
            bump(&mut metrics.host_accepts);
            if self.pending.len() >= self.limits.max_pending_host {
                bump(&mut metrics.connection_limit_refusals);
                continue;
            }
            let fd = stream.as_raw_fd();
            let registered = stream.set_nonblocking(true).is_ok()
                && self
                    .epoll
                    .ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN, fd as u64),
                    )
                    .is_ok();
            if !registered {
                bump(&mut metrics.event_errors);
                continue;
            }
            self.pending.insert(
                fd,
                PendingHost {
                    stream,
                    line: Vec::with_capacity(MAX_LINE),
                    deadline: Instant::now() + self.limits.connect_line_timeout,
                },
            );
            self.arm_timer(metrics);
        }
    }

    /// Reads the `CONNECT` line of a pending host stream: peeks, takes
    /// bytes up to and including the newline (nothing after it), and opens
    /// the connection once the line is whole.
    fn handshake(&mut self, fd: RawFd, metrics: &mut VsockMetrics) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut buf = [0u8; MAX_LINE];
        let room = MAX_LINE - p.line.len();
        let n = match peek(&p.stream, &mut buf[..room]) {
            Ok(0) => {
                // The host gave up before saying anything useful.
                self.drop_pending(fd);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                bump(&mut metrics.host_io_errors);
                self.drop_pending(fd);
                return;
            }
        };
        let take = buf[..n]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(n, |i| i + 1);
        let mut taken = vec![0u8; take];
        // The bytes are there (peeked), so this read gets them all.
        match (&p.stream).read(&mut taken) {
            Ok(got) if got == take => p.line.extend_from_slice(&taken),
            _ => {
                bump(&mut metrics.host_io_errors);
                self.drop_pending(fd);
                return;
            }
        }
        match handshake::parse(&p.line) {
            Line::Incomplete => {}
            Line::Bad => {
                bump(&mut metrics.host_bad_connect_lines);
                self.drop_pending(fd);
            }
            Line::Connect { port, .. } => {
                if let Some(p) = self.drop_pending(fd) {
                    self.open_host_initiated(p.stream, port, metrics);
                }
            }
        }
    }

    fn drop_pending(&mut self, fd: RawFd) -> Option<PendingHost> {
        let p = self.pending.remove(&fd)?;
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        Some(p)
    }

    fn open_host_initiated(&mut self, stream: UnixStream, port: u32, metrics: &mut VsockMetrics) {
        if self.conns.len() >= self.limits.max_connections {
            bump(&mut metrics.connection_limit_refusals);
            return;
        }
        let local = self.alloc_port();
        let conn = Connection::host_initiated(
            stream,
            self.guest_cid,
            local,
            port,
            &self.limits,
            Instant::now(),
        );
        bump(&mut metrics.host_initiated);
        self.insert((local, port), conn, metrics);
    }

    /// The next free host-side port from 2^30 up (wrapping back to 2^30).
    fn alloc_port(&mut self) -> u32 {
        loop {
            let port = self.next_port;
            self.next_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            // At most max_connections ports are taken: this ends.
            if !self.conns.keys().any(|&(local, _)| local == port) {
                return port;
            }
        }
    }

    fn insert(&mut self, key: ConnKey, conn: Connection, metrics: &mut VsockMetrics) {
        self.by_fd.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(
            key,
            Entry {
                conn,
                queued: false,
                polled: EventSet::empty(),
            },
        );
        self.touch(key, metrics);
    }

    fn stream_event(&mut self, key: ConnKey, set: EventSet, metrics: &mut VsockMetrics) {
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        let trouble = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if set.contains(EventSet::IN) || (trouble && entry.polled.contains(EventSet::IN)) {
            entry.conn.on_readable();
        }
        if set.contains(EventSet::OUT) || (trouble && entry.conn.wants_write()) {
            let outcome = entry.conn.on_writable(Instant::now());
            if self.apply(key, outcome, false, metrics) {
                return;
            }
        }
        self.touch(key, metrics);
    }

    /// Handles a packet from the guest whose header passed the device's
    /// checks (`op` is its operation).
    pub fn send_pkt(&mut self, hdr: &Header, op: Op, payload: &[u8], metrics: &mut VsockMetrics) {
        let key = (hdr.dst_port, hdr.src_port);
        if op == Op::CreditRequest {
            bump(&mut metrics.credit_requests_received);
        }
        if let Some(entry) = self.conns.get_mut(&key) {
            let was_connecting = matches!(entry.conn.state(), State::Connecting { .. });
            let outcome = entry.conn.on_guest(op, hdr, payload, Instant::now());
            if op == Op::Rw && outcome == Outcome::Continue {
                metrics.tx_bytes = metrics.tx_bytes.saturating_add(payload.len() as u64);
            }
            if was_connecting && entry.conn.state() == State::Established {
                bump(&mut metrics.established);
            }
            if !self.apply(key, outcome, false, metrics) {
                self.touch(key, metrics);
            }
            return;
        }
        match op {
            Op::Request => self.open_guest_initiated(hdr, metrics),
            Op::Rst => bump(&mut metrics.unknown_connection_packets),
            _ => {
                bump(&mut metrics.unknown_connection_packets);
                self.stray_rst(key, metrics);
            }
        }
    }

    /// A packet from the guest that failed the header checks (already
    /// counted): answered with `RST` (unless it was one), and the
    /// connection it names, if any, is reset.
    pub fn reject_pkt(&mut self, hdr: &Header, metrics: &mut VsockMetrics) {
        if hdr.op == Op::Rst.wire() {
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            self.remove(key, metrics);
        }
        self.stray_rst(key, metrics);
    }

    fn open_guest_initiated(&mut self, req: &Header, metrics: &mut VsockMetrics) {
        let key = (req.dst_port, req.src_port);
        if self.conns.len() >= self.limits.max_connections {
            bump(&mut metrics.connection_limit_refusals);
            self.stray_rst(key, metrics);
            return;
        }
        match connect_nonblocking(&port_path(&self.uds_path, req.dst_port)) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(stream, req, &self.limits);
                bump(&mut metrics.guest_initiated);
                bump(&mut metrics.established);
                self.insert(key, conn, metrics);
            }
            Err(_) => {
                bump(&mut metrics.guest_connects_refused);
                self.stray_rst(key, metrics);
            }
        }
    }

    /// Carries out `outcome` for `key`; returns whether the connection is
    /// gone. `delivered_rst`: the outcome came with the `RST` packet itself
    /// (from [`Connection::next_rx`]), so none is queued.
    fn apply(
        &mut self,
        key: ConnKey,
        outcome: Outcome,
        delivered_rst: bool,
        metrics: &mut VsockMetrics,
    ) -> bool {
        let knows = self.conns.get(&key).is_some_and(|e| e.conn.guest_knows());
        let rst = match outcome {
            Outcome::Continue => return false,
            Outcome::ResetByGuest => {
                bump(&mut metrics.reset_by_guest);
                false
            }
            Outcome::RefusedByGuest => {
                bump(&mut metrics.refused_by_guest);
                false
            }
            Outcome::Closed => {
                bump(&mut metrics.closed_cleanly);
                true
            }
            Outcome::Reset(cause) => {
                match cause {
                    ResetCause::Protocol(reason) => metrics.reject(reason),
                    ResetCause::Host => bump(&mut metrics.reset_by_host),
                    ResetCause::Timeout => bump(&mut metrics.timeouts),
                }
                !delivered_rst
            }
        };
        self.remove(key, metrics);
        // A REQUEST never delivered needs no RST to undo it.
        if rst && knows {
            self.stray_rst(key, metrics);
        }
        true
    }

    /// Forgets a connection and closes its host stream.
    fn remove(&mut self, key: ConnKey, metrics: &mut VsockMetrics) {
        let Some(entry) = self.conns.remove(&key) else {
            return;
        };
        let fd = entry.conn.stream().as_raw_fd();
        self.by_fd.remove(&fd);
        if !entry.polled.is_empty()
            && self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                .is_err()
        {
            bump(&mut metrics.event_errors);
        }
    }

    fn stray_rst(&mut self, (local, peer): ConnKey, metrics: &mut VsockMetrics) {
        if self.stray.len() >= self.limits.max_stray_rsts + self.limits.max_connections {
            bump(&mut metrics.rsts_dropped);
            return;
        }
        self.stray
            .push_back(Header::host_to_guest(self.guest_cid, local, peer, Op::Rst));
    }

    /// After anything changed a connection: queue it if it owes the guest
    /// a packet, and poll its stream for what it needs now.
    fn touch(&mut self, key: ConnKey, metrics: &mut VsockMetrics) {
        let Some(entry) = self.conns.get_mut(&key) else {
            return;
        };
        if entry.conn.has_rx() && !entry.queued {
            entry.queued = true;
            self.rx_queue.push_back(key);
        }
        let mut want = EventSet::empty();
        if entry.conn.wants_read() {
            want |= EventSet::IN;
        }
        if entry.conn.wants_write() {
            want |= EventSet::OUT;
        }
        if want != entry.polled {
            let fd = entry.conn.stream().as_raw_fd();
            let op = if entry.polled.is_empty() {
                ControlOperation::Add
            } else if want.is_empty() {
                ControlOperation::Delete
            } else {
                ControlOperation::Modify
            };
            match self.epoll.ctl(op, fd, EpollEvent::new(want, fd as u64)) {
                Ok(()) => entry.polled = want,
                Err(_) => bump(&mut metrics.event_errors),
            }
        }
        if entry.conn.deadline().is_some() {
            self.arm_timer(metrics);
        }
    }

    fn arm_timer(&mut self, metrics: &mut VsockMetrics) {
        if self.timer_armed {
            return;
        }
        match self.timer.reset(SWEEP_PERIOD, Some(SWEEP_PERIOD)) {
            Ok(()) => self.timer_armed = true,
            Err(_) => bump(&mut metrics.event_errors),
        }
    }

    /// Ends handshakes and connections past their deadline; disarms the
    /// timer when nothing has one.
    pub fn sweep(&mut self, now: Instant, metrics: &mut VsockMetrics) {
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&fd, _)| fd)
            .collect();
        for fd in late {
            bump(&mut metrics.host_connect_line_timeouts);
            self.drop_pending(fd);
        }
        let late: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.deadline().is_some_and(|d| d <= now))
            .map(|(&k, _)| k)
            .collect();
        for key in late {
            self.apply(key, Outcome::Reset(ResetCause::Timeout), false, metrics);
        }
        let waiting =
            !self.pending.is_empty() || self.conns.values().any(|e| e.conn.deadline().is_some());
        if !waiting && self.timer_armed {
            match self.timer.clear() {
                Ok(()) => self.timer_armed = false,
                Err(_) => bump(&mut metrics.event_errors),
            }
        }
    }

    /// Whether a packet for the guest may be waiting.
    pub fn has_rx(&self) -> bool {
        !self.stray.is_empty() || !self.rx_queue.is_empty()
    }

    /// Whether the `RST`s waiting for rx buffers reached their bound: then
    /// the device takes no more tx packets until the guest posts rx
    /// buffers.
    pub fn stray_full(&self) -> bool {
        self.stray.len() >= self.limits.max_stray_rsts
    }

    /// The next packet for the guest: its header and the length of its
    /// payload, written to `buf` (at most `buf.len()` bytes). Queued `RST`s
    /// go first, then connections in turn.
    pub fn next_rx(
        &mut self,
        buf: &mut [u8],
        metrics: &mut VsockMetrics,
    ) -> Option<(Header, usize)> {
        if let Some(hdr) = self.stray.pop_front() {
            bump(&mut metrics.rst_sent);
            return Some((hdr, 0));
        }
        while let Some(key) = self.rx_queue.pop_front() {
            let Some(entry) = self.conns.get_mut(&key) else {
                continue;
            };
            entry.queued = false;
            let Some((hdr, len, outcome)) = entry.conn.next_rx(buf) else {
                self.touch(key, metrics);
                continue;
            };
            if hdr.op == Op::Rst.wire() {
                bump(&mut metrics.rst_sent);
            }
            if hdr.op == Op::CreditUpdate.wire() {
                bump(&mut metrics.credit_updates_sent);
            }
            if !self.apply(key, outcome, true, metrics) {
                self.touch(key, metrics);
            }
            return Some((hdr, len));
        }
        None
    }

    /// The driver reset the device: every connection is dropped (host
    /// streams closed) and nothing is owed to the old driver. The listener
    /// and handshakes in progress stay.
    pub fn reset(&mut self, metrics: &mut VsockMetrics) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            bump(&mut metrics.dropped_by_device_reset);
            self.remove(key, metrics);
        }
        self.rx_queue.clear();
        self.stray.clear();
    }

    /// Fills in the gauges of `metrics`.
    pub fn gauges(&self, metrics: &mut VsockMetrics) {
        metrics.connections = self.conns.len() as u64;
        metrics.pending_host_connections = self.pending.len() as u64;
        let (held, allocated) = self
            .conns
            .values()
            .map(|e| e.conn.buffered())
            .fold((0u64, 0u64), |(h, a), (eh, ea)| {
                (h + eh as u64, a + ea as u64)
            });
        metrics.buffered_bytes = held;
        metrics.buffer_capacity_bytes = allocated;
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }
}

impl AsRawFd for Muxer {
    /// The muxer's epoll descriptor: readable when it has work.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}

#[cfg(test)]
mod tests;
