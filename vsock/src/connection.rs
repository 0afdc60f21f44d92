//! One connection between a guest stream socket and a host Unix stream:
//! its state machine, credit, buffered guest data and the packets it owes
//! the guest.
//!
//! States:
//!
//! ```text
//!  host CONNECT ─► Connecting ──RESPONSE──► Established ──SHUTDOWN(RCV|SEND)──► Closing
//!                      │                      ▲    │                               │
//!                      └──RST / timeout──► gone    │ RST, lie, host error         │ buffer drained
//!  guest REQUEST (host listens) ──────────────┘    └──────────────► gone ◄────────┘ (or timeout)
//! ```
//!
//! The connection never blocks: the host stream is non-blocking, data from
//! the guest that the host does not take at once waits in a [`TxBuf`]
//! bounded by our `buf_alloc`, and data for the guest is read from the host
//! stream only when the guest has credit and an rx buffer is being filled
//! ([`Connection::next_rx`]), so nothing host → guest is ever buffered here.
//!
//! Packets owed to the guest are flags, not a queue: at most one each of
//! `REQUEST`, `RESPONSE`, `SHUTDOWN` and `CREDIT_UPDATE`, plus data while
//! the host stream is readable. The muxer owns the `RST`s: every outcome
//! that ends a connection says whether the guest must get one.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::credit::Credit;
use crate::handshake::ok_line;
use crate::header::{Header, Op, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND};
use crate::metrics::RejectReason;
use crate::txbuf::TxBuf;

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: our `REQUEST` is owed or sent, the guest has not
    /// answered. Ends at the deadline.
    Connecting { deadline: Instant },
    /// Data flows both ways (as far as shutdowns allow).
    Established,
    /// The guest shut down both directions while guest data still waited
    /// for the host reader; ends when it is written or at the deadline.
    Closing { deadline: Instant },
}

/// Why a connection ends with an `RST` to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetCause {
    /// The guest broke the protocol.
    Protocol(RejectReason),
    /// The host stream failed (closed for writing, socket error), or would
    /// not take the `OK` line.
    Host,
    /// A handshake or a shutdown took too long.
    Timeout,
}

/// What the muxer does after the connection handled something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The connection goes on.
    Continue,
    /// The guest reset it: remove it, send nothing.
    ResetByGuest,
    /// The guest refused our `REQUEST`: remove it, send nothing.
    RefusedByGuest,
    /// Both sides are done: send the final `RST` and remove it.
    Closed,
    /// Send `RST` and remove it.
    Reset(ResetCause),
}

/// Packets owed to the guest (besides data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Owed {
    request: bool,
    response: bool,
    /// Shutdown flags to send; 0 when none.
    shutdown: u32,
    credit_update: bool,
}

/// One connection.
#[derive(Debug)]
pub struct Connection {
    stream: UnixStream,
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    state: State,
    credit: Credit,
    /// Guest data waiting for the host reader; never more than `buf_alloc`.
    txbuf: TxBuf,
    owed: Owed,
    /// The host stream may have data for the guest (it polled readable, or
    /// the last read filled its buffer).
    host_readable: bool,
    /// The host stream reached end of file.
    host_eof: bool,
    /// We shut the host stream for writing (after the guest's `SEND`
    /// shutdown and the buffer drained).
    host_write_shut: bool,
    /// Shutdown flags the guest sent.
    peer_shutdown: u32,
    /// Shutdown flags we sent.
    local_shutdown: u32,
    /// How long `Closing` may last.
    close_timeout: Duration,
}

impl Connection {
    /// A connection the host asked for with `CONNECT <peer_port>`; owes the
    /// guest a `REQUEST` and must be answered by `deadline`.
    pub fn host_initiated(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        limits: &Limits,
        now: Instant,
    ) -> Connection {
        let mut c = Connection::new(stream, guest_cid, local_port, peer_port, limits);
        c.state = State::Connecting {
            deadline: now + limits.connect_timeout,
        };
        c.owed.request = true;
        c
    }

    /// A connection the guest asked for with `request`, to a host socket
    /// that accepted `stream`; established, owes the guest a `RESPONSE`.
    pub fn guest_initiated(stream: UnixStream, request: &Header, limits: &Limits) -> Connection {
        let mut c = Connection::new(
            stream,
            request.src_cid,
            request.dst_port,
            request.src_port,
            limits,
        );
        c.credit.update_peer(request);
        c.owed.response = true;
        c
    }

    fn new(
        stream: UnixStream,
        guest_cid: u64,
        local_port: u32,
        peer_port: u32,
        limits: &Limits,
    ) -> Connection {
        let buf_alloc = limits.conn_buf_size;
        Connection {
            stream,
            guest_cid,
            local_port,
            peer_port,
            state: State::Established,
            // The guest's credit is unknown (zero) until its first packet.
            credit: Credit::new(buf_alloc, &Header::default()),
            txbuf: TxBuf::new(buf_alloc as usize),
            owed: Owed::default(),
            host_readable: false,
            host_eof: false,
            host_write_shut: false,
            peer_shutdown: 0,
            local_shutdown: 0,
            close_timeout: limits.close_timeout,
        }
    }

    /// The host stream.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Whether the guest has heard of this connection: a host-initiated
    /// one whose `REQUEST` was never delivered needs no `RST` to end.
    pub fn guest_knows(&self) -> bool {
        !self.owed.request
    }

    /// The state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Guest bytes waiting for the host reader, and the memory holding
    /// them.
    pub fn buffered(&self) -> (usize, usize) {
        (self.txbuf.len(), self.txbuf.allocated())
    }

    /// When the connection must have moved on, if it waits for something.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Connecting { deadline } | State::Closing { deadline } => Some(deadline),
            State::Established => None,
        }
    }

    /// Whether to poll the host stream for reading: only while data could
    /// go to the guest now (established, no EOF yet, the guest still
    /// receives and has credit) and we do not already know it is readable.
    pub fn wants_read(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && !self.host_readable
            && self.credit.peer_credit() > 0
    }

    /// Whether to poll the host stream for writing: guest data waits.
    pub fn wants_write(&self) -> bool {
        !self.txbuf.is_empty()
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_rx(&self) -> bool {
        self.owed.request
            || self.owed.response
            || self.owed.shutdown != 0
            || self.owed.credit_update
            || self.data_ready()
    }

    fn data_ready(&self) -> bool {
        self.state == State::Established
            && self.host_readable
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.credit.peer_credit() > 0
    }

    /// Handles a packet from the guest whose header passed
    /// [`Header::check_from_guest`]; `payload` is its data (`RW` only).
    pub fn on_guest(&mut self, op: Op, hdr: &Header, payload: &[u8], now: Instant) -> Outcome {
        self.credit.update_peer(hdr);
        match (self.state, op) {
            (State::Connecting { .. }, Op::Rst) => Outcome::RefusedByGuest,
            (_, Op::Rst) => Outcome::ResetByGuest,
            (State::Connecting { .. }, Op::Response) => self.accepted(),
            (State::Connecting { .. }, _) | (_, Op::Request | Op::Response) => {
                Outcome::Reset(ResetCause::Protocol(RejectReason::UnexpectedOp))
            }
            (_, Op::Rw) => self.guest_data(payload),
            (_, Op::CreditUpdate) => Outcome::Continue,
            (_, Op::CreditRequest) => {
                self.owed.credit_update = true;
                Outcome::Continue
            }
            (_, Op::Shutdown) => {
                let new = hdr.flags & !self.peer_shutdown;
                self.peer_shutdown |= hdr.flags;
                if new & SHUTDOWN_RCV != 0 {
                    // The host's further writes fail; nothing more is read.
                    let _ = self.stream.shutdown(Shutdown::Read);
                    self.host_readable = false;
                }
                self.settle_shutdown(now)
            }
        }
    }

    /// The guest accepted our `REQUEST`: tell the host `OK <port>`. The
    /// stream is fresh and empty, so the short line fits at once; if it
    /// does not, the host is not reading as it should.
    fn accepted(&mut self) -> Outcome {
        self.state = State::Established;
        let line = ok_line(self.local_port);
        match (&self.stream).write(line.as_bytes()) {
            Ok(n) if n == line.len() => Outcome::Continue,
            _ => Outcome::Reset(ResetCause::Host),
        }
    }

    fn guest_data(&mut self, payload: &[u8]) -> Outcome {
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            return Outcome::Reset(ResetCause::Protocol(RejectReason::DataAfterShutdown));
        }
        let len = payload.len() as u32;
        if !self.credit.may_receive(len) {
            return Outcome::Reset(ResetCause::Protocol(RejectReason::CreditExceeded));
        }
        self.credit.received(len);
        let mut rest = payload;
        if self.txbuf.is_empty() {
            match write_some(&self.stream, payload) {
                Ok(n) => {
                    self.credit.forwarded(n as u32);
                    rest = &payload[n..];
                }
                Err(_) => return Outcome::Reset(ResetCause::Host),
            }
        }
        // Cannot overflow: credit keeps held bytes within buf_alloc, the
        // buffer's capacity.
        if self.txbuf.push(rest).is_err() {
            return Outcome::Reset(ResetCause::Protocol(RejectReason::CreditExceeded));
        }
        if self.credit.update_due() {
            self.owed.credit_update = true;
        }
        Outcome::Continue
    }

    /// The host stream polled writable (or hung up): writes buffered guest
    /// data.
    pub fn on_writable(&mut self, now: Instant) -> Outcome {
        match self.txbuf.flush_to(&mut &self.stream) {
            Ok(n) => self.credit.forwarded(n as u32),
            Err(_) => return Outcome::Reset(ResetCause::Host),
        }
        if self.credit.update_due() {
            self.owed.credit_update = true;
        }
        self.settle_shutdown(now)
    }

    /// The host stream polled readable (or hung up).
    pub fn on_readable(&mut self) {
        self.host_readable = true;
    }

    /// After a guest shutdown or a drained buffer: shut the host stream for
    /// writing once the guest sends no more and everything it sent was
    /// written; end the connection once the guest shut down both ways and
    /// nothing waits.
    fn settle_shutdown(&mut self, now: Instant) -> Outcome {
        if !self.txbuf.is_empty() {
            if self.peer_shutdown == SHUTDOWN_BOTH && !matches!(self.state, State::Closing { .. }) {
                self.state = State::Closing {
                    deadline: now + self.close_timeout,
                };
            }
            return Outcome::Continue;
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            return Outcome::Closed;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Outcome::Continue
    }

    /// The next packet for the guest, if any: its header, and its payload
    /// in `buf[..len]` (at most `buf.len()` bytes); and what happens to the
    /// connection once it is delivered. When the outcome is a reset, the
    /// packet is that `RST`. `None`: nothing to send after all (the host
    /// stream had no data).
    ///
    /// Order: `REQUEST`/`RESPONSE`, data, `SHUTDOWN` (only after the host's
    /// end of file, so after all its data), `CREDIT_UPDATE` (which every
    /// other packet makes unnecessary, as each carries our credit).
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<(Header, usize, Outcome)> {
        let mut hdr =
            Header::host_to_guest(self.guest_cid, self.local_port, self.peer_port, Op::Rw);
        let (op, len, outcome) = if std::mem::take(&mut self.owed.request) {
            (Op::Request, 0, Outcome::Continue)
        } else if std::mem::take(&mut self.owed.response) {
            (Op::Response, 0, Outcome::Continue)
        } else if let Some((len, outcome)) = self.read_data(buf) {
            (Op::Rw, len, outcome)
        } else if self.owed.shutdown != 0 {
            hdr.flags = std::mem::take(&mut self.owed.shutdown);
            self.local_shutdown |= hdr.flags;
            (Op::Shutdown, 0, Outcome::Continue)
        } else if self.owed.credit_update {
            (Op::CreditUpdate, 0, Outcome::Continue)
        } else {
            return None;
        };
        if let Outcome::Reset(_) = outcome {
            hdr.op = Op::Rst.wire();
            return Some((hdr, 0, outcome));
        }
        hdr.op = op.wire();
        hdr.len = len as u32;
        self.credit.stamp(&mut hdr);
        self.owed.credit_update = false;
        Some((hdr, len, outcome))
    }

    /// Reads host data for the guest, within its credit. `None` when there
    /// is none now; at end of file a `SHUTDOWN(SEND)` becomes owed.
    fn read_data(&mut self, buf: &mut [u8]) -> Option<(usize, Outcome)> {
        if !self.data_ready() {
            return None;
        }
        let want = buf.len().min(self.credit.peer_credit() as usize);
        if want == 0 {
            return None;
        }
        loop {
            return match (&self.stream).read(&mut buf[..want]) {
                Ok(0) => {
                    self.host_readable = false;
                    self.host_eof = true;
                    if self.local_shutdown & SHUTDOWN_SEND == 0 {
                        self.owed.shutdown |= SHUTDOWN_SEND;
                    }
                    None
                }
                Ok(n) => {
                    // A full read suggests more is waiting: keep going
                    // without another trip through epoll.
                    self.host_readable = n == want;
                    self.credit.sent(n as u32);
                    Some((n, Outcome::Continue))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    None
                }
                Err(_) => Some((0, Outcome::Reset(ResetCause::Host))),
            };
        }
    }
}

/// Writes as much of `data` as the stream takes now.
fn write_some(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match (&*stream).write(&data[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
