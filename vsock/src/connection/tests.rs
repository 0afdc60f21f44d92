//! The state machine on real socket pairs, without a VM: `host` is the
//! host process's end, the connection holds the other.

use std::io::{Read, Write};
use std::time::Duration;

use super::*;
use crate::header::{HOST_CID, TYPE_STREAM};

const CID: u64 = 3;

fn limits(buf: u32) -> Limits {
    Limits {
        conn_buf_size: buf,
        ..Limits::default()
    }
}

/// A guest packet on connection (host port 1024, guest port 5000).
fn pkt(op: Op, len: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: 5000,
        dst_port: 1024,
        len,
        type_: TYPE_STREAM,
        op: op.wire(),
        flags: 0,
        buf_alloc,
        fwd_cnt,
    }
}

fn pair() -> (UnixStream, UnixStream) {
    let (ours, host) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (ours, host)
}

/// An established guest-initiated connection whose RESPONSE was taken;
/// the guest has `guest_buf` bytes of receive buffer.
fn established(buf: u32, guest_buf: u32) -> (Connection, UnixStream) {
    let (ours, host) = pair();
    let req = pkt(Op::Request, 0, guest_buf, 0);
    let mut c = Connection::guest_initiated(ours, &req, &limits(buf));
    let (h, len, out) = c.next_rx(&mut [0u8; 64]).unwrap();
    assert_eq!(
        (h.op(), len, out),
        (Some(Op::Response), 0, Outcome::Continue)
    );
    (c, host)
}

/// Writes into the connection's (non-blocking) stream until it would
/// block; returns how much.
fn fill(s: &UnixStream) -> usize {
    let junk = [0u8; 4096];
    let mut n = 0;
    loop {
        match (&*s).write(&junk) {
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    n
}

fn drain(host: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    host.read_exact(&mut v).unwrap();
    v
}

#[test]
fn guest_initiated_answers_response_with_our_credit() {
    let (ours, _host) = pair();
    let req = pkt(Op::Request, 0, 8192, 0);
    let mut c = Connection::guest_initiated(ours, &req, &limits(65536));
    assert!(c.has_rx());
    let (h, len, _) = c.next_rx(&mut [0u8; 64]).unwrap();
    assert_eq!(
        (h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (HOST_CID, CID, 1024, 5000)
    );
    assert_eq!(
        (h.op(), len, h.buf_alloc, h.fwd_cnt),
        (Some(Op::Response), 0, 65536, 0)
    );
    assert!(!c.has_rx());
    assert!(
        c.wants_read(),
        "the guest gave credit: poll the host stream"
    );
    assert!(!c.wants_write());
}

#[test]
fn guest_data_reaches_the_host_and_credit_flows_back() {
    let (mut c, mut host) = established(4096, 65536);
    let now = Instant::now();
    let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    assert_eq!(
        c.on_guest(Op::Rw, &pkt(Op::Rw, 3000, 65536, 0), &data, now),
        Outcome::Continue
    );
    assert_eq!(drain(&mut host, 3000), data);
    // The guest thinks 1096 of 4096 bytes are left: a credit update is due.
    assert!(c.has_rx());
    let (h, _, _) = c.next_rx(&mut [0u8; 64]).unwrap();
    assert_eq!(
        (h.op(), h.buf_alloc, h.fwd_cnt),
        (Some(Op::CreditUpdate), 4096, 3000)
    );
    assert!(!c.has_rx());
}

#[test]
fn a_slow_host_reader_costs_at_most_buf_alloc_and_then_gets_it_all() {
    let (mut c, mut host) = established(8192, 65536);
    let stuffed = fill(c.stream());
    let now = Instant::now();
    let a = [1u8; 5000];
    let b = [2u8; 3192];
    assert_eq!(
        c.on_guest(Op::Rw, &pkt(Op::Rw, 5000, 65536, 0), &a, now),
        Outcome::Continue
    );
    assert_eq!(
        c.on_guest(Op::Rw, &pkt(Op::Rw, 3192, 65536, 0), &b, now),
        Outcome::Continue
    );
    assert_eq!(c.buffered(), (8192, 8192));
    assert!(c.wants_write());
    // One byte more than the credit we gave: the guest lied.
    assert_eq!(
        c.on_guest(Op::Rw, &pkt(Op::Rw, 1, 65536, 0), &[3], now),
        Outcome::Reset(ResetCause::Protocol(RejectReason::CreditExceeded))
    );
    drain(&mut host, stuffed);
    assert_eq!(c.on_writable(now), Outcome::Continue);
    assert_eq!(c.buffered(), (0, 0), "drained buffers are freed");
    let got = drain(&mut host, 8192);
    assert_eq!(&got[..5000], &a[..]);
    assert_eq!(&got[5000..], &b[..]);
    let (h, _, _) = c.next_rx(&mut [0u8; 64]).unwrap();
    assert_eq!((h.op(), h.fwd_cnt), (Some(Op::CreditUpdate), 8192));
}

#[test]
fn host_data_goes_to_the_guest_within_its_credit_then_shutdown_send() {
    let (mut c, mut host) = established(4096, 100);
    host.write_all(&[7u8; 250]).unwrap();
    drop(host.shutdown(Shutdown::Write));
    c.on_readable();
    let mut buf = [0u8; 4096];
    let (h, len, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op(), len, h.len), (Some(Op::Rw), 100, 100));
    assert!(buf[..100].iter().all(|&b| b == 7));
    // No credit left: nothing to send, nothing to poll.
    assert!(!c.has_rx() && !c.wants_read());
    let upd = pkt(Op::CreditUpdate, 0, 100, 100);
    assert_eq!(
        c.on_guest(Op::CreditUpdate, &upd, &[], Instant::now()),
        Outcome::Continue
    );
    assert!(c.has_rx());
    let (_, len, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!(len, 100);
    let upd = pkt(Op::CreditUpdate, 0, 100, 200);
    c.on_guest(Op::CreditUpdate, &upd, &[], Instant::now());
    let (_, len, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!(len, 50, "the rest");
    c.on_readable();
    // End of file: the guest learns the host sends no more.
    let (h, len, out) = c.next_rx(&mut buf).unwrap();
    assert_eq!(
        (h.op(), h.flags, len, out),
        (Some(Op::Shutdown), SHUTDOWN_SEND, 0, Outcome::Continue)
    );
    assert!(!c.has_rx() && !c.wants_read());
}

#[test]
fn a_guest_that_lies_about_its_fwd_cnt_stalls_only_itself() {
    let (mut c, host) = established(4096, 100);
    (&host).write_all(&[1u8; 10]).unwrap();
    let lie = pkt(Op::CreditUpdate, 0, 100, 5000);
    c.on_guest(Op::CreditUpdate, &lie, &[], Instant::now());
    c.on_readable();
    assert!(!c.has_rx(), "no credit: nothing sent");
}

#[test]
fn host_initiated_request_then_response_says_ok_to_the_host() {
    let (ours, mut host) = pair();
    let now = Instant::now();
    let mut c = Connection::host_initiated(ours, CID, 1 << 30, 1024, &limits(4096), now);
    assert!(c.deadline().is_some());
    assert!(!c.wants_read(), "nothing is read before the guest accepts");
    let (h, _, _) = c.next_rx(&mut [0u8; 64]).unwrap();
    assert_eq!(
        (h.op(), h.src_port, h.dst_port),
        (Some(Op::Request), 1 << 30, 1024)
    );
    let mut resp = pkt(Op::Response, 0, 4096, 0);
    (resp.src_port, resp.dst_port) = (1024, 1 << 30);
    assert_eq!(c.on_guest(Op::Response, &resp, &[], now), Outcome::Continue);
    assert_eq!(c.state(), State::Established);
    assert_eq!(c.deadline(), None);
    let mut line = [0u8; 14];
    host.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
}

#[test]
fn host_initiated_refused_or_confused() {
    let now = Instant::now();
    let (ours, _h) = pair();
    let mut c = Connection::host_initiated(ours, CID, 1 << 30, 1024, &limits(4096), now);
    assert_eq!(
        c.on_guest(Op::Rst, &pkt(Op::Rst, 0, 0, 0), &[], now),
        Outcome::RefusedByGuest
    );
    let (ours, _h) = pair();
    let mut c = Connection::host_initiated(ours, CID, 1 << 30, 1024, &limits(4096), now);
    assert_eq!(
        c.on_guest(Op::Rw, &pkt(Op::Rw, 1, 0, 0), &[1], now),
        Outcome::Reset(ResetCause::Protocol(RejectReason::UnexpectedOp))
    );
}

#[test]
fn established_connections_refuse_handshake_ops() {
    for op in [Op::Request, Op::Response] {
        let (mut c, _host) = established(4096, 4096);
        assert_eq!(
            c.on_guest(op, &pkt(op, 0, 4096, 0), &[], Instant::now()),
            Outcome::Reset(ResetCause::Protocol(RejectReason::UnexpectedOp))
        );
    }
    let (mut c, _host) = established(4096, 4096);
    assert_eq!(
        c.on_guest(Op::Rst, &pkt(Op::Rst, 0, 0, 0), &[], Instant::now()),
        Outcome::ResetByGuest
    );
}

#[test]
fn credit_request_is_answered() {
    let (mut c, _host) = established(4096, 4096);
    assert!(!c.has_rx());
    c.on_guest(
        Op::CreditRequest,
        &pkt(Op::CreditRequest, 0, 4096, 0),
        &[],
        Instant::now(),
    );
    let (h, _, _) = c.next_rx(&mut [0u8; 64]).unwrap();
    assert_eq!((h.op(), h.buf_alloc), (Some(Op::CreditUpdate), 4096));
}

#[test]
fn guest_shutdown_send_gives_the_host_eof_and_no_more_data_is_allowed() {
    let (mut c, mut host) = established(4096, 4096);
    let now = Instant::now();
    c.on_guest(Op::Rw, &pkt(Op::Rw, 3, 4096, 0), b"abc", now);
    let mut sh = pkt(Op::Shutdown, 0, 4096, 0);
    sh.flags = SHUTDOWN_SEND;
    assert_eq!(c.on_guest(Op::Shutdown, &sh, &[], now), Outcome::Continue);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abc");
    assert_eq!(
        c.on_guest(Op::Rw, &pkt(Op::Rw, 1, 4096, 0), b"d", now),
        Outcome::Reset(ResetCause::Protocol(RejectReason::DataAfterShutdown))
    );
}

#[test]
fn full_guest_shutdown_closes_once_the_host_has_everything() {
    let now = Instant::now();
    // Nothing buffered: closed at once (the muxer sends the final RST).
    let (mut c, _host) = established(4096, 4096);
    let mut sh = pkt(Op::Shutdown, 0, 4096, 0);
    sh.flags = SHUTDOWN_BOTH;
    assert_eq!(c.on_guest(Op::Shutdown, &sh, &[], now), Outcome::Closed);
    // Data waiting for a slow reader: closing until it is written.
    let (mut c, mut host) = established(4096, 4096);
    let stuffed = fill(c.stream());
    c.on_guest(Op::Rw, &pkt(Op::Rw, 10, 4096, 0), &[9u8; 10], now);
    assert_eq!(c.on_guest(Op::Shutdown, &sh, &[], now), Outcome::Continue);
    assert!(matches!(c.state(), State::Closing { .. }));
    assert!(c.deadline().unwrap() > now);
    assert!(!c.wants_read());
    drain(&mut host, stuffed);
    assert_eq!(c.on_writable(now), Outcome::Closed);
    assert_eq!(drain(&mut host, 10), [9u8; 10]);
}

#[test]
fn a_host_that_went_away_resets_the_connection() {
    let (mut c, host) = established(4096, 4096);
    drop(host);
    assert_eq!(
        c.on_guest(Op::Rw, &pkt(Op::Rw, 1, 4096, 0), b"x", Instant::now()),
        Outcome::Reset(ResetCause::Host)
    );
    // Reading a reset stream: the RST is the packet.
    let (mut c, host) = established(4096, 4096);
    (&host).write_all(b"bye").unwrap();
    drop(host);
    c.on_readable();
    let mut buf = [0u8; 64];
    let (h, len, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op(), len), (Some(Op::Rw), 3), "data first");
    c.on_readable();
    let (h, _, _) = c.next_rx(&mut buf).unwrap();
    assert_eq!((h.op(), h.flags), (Some(Op::Shutdown), SHUTDOWN_SEND));
}

#[test]
fn guest_shutdown_rcv_stops_reading_the_host() {
    let (mut c, host) = established(4096, 4096);
    (&host).write_all(b"unwanted").unwrap();
    let mut sh = pkt(Op::Shutdown, 0, 4096, 0);
    sh.flags = SHUTDOWN_RCV;
    assert_eq!(
        c.on_guest(Op::Shutdown, &sh, &[], Instant::now()),
        Outcome::Continue
    );
    c.on_readable();
    assert!(!c.has_rx() && !c.wants_read());
}
