//! The backend with real Unix sockets in a temporary directory, driven
//! the way the device drives it, without a VM.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::header::{HOST_CID, SHUTDOWN_BOTH, TYPE_STREAM};
use crate::test_utils::TempDir;

const CID: u64 = 3;

struct Harness {
    dir: TempDir,
    cfg: VsockConfig,
    mux: Muxer,
    m: VsockMetrics,
}

fn harness_with(limits: Limits) -> Harness {
    let dir = TempDir::new("mux");
    let cfg = VsockConfig {
        guest_cid: CID,
        uds_path: dir.path().join("v.sock"),
    };
    let listener = UnixListener::bind(&cfg.uds_path).unwrap();
    let mux = Muxer::new(&cfg, limits, listener).unwrap();
    Harness {
        dir,
        cfg,
        mux,
        m: VsockMetrics::default(),
    }
}

fn harness() -> Harness {
    harness_with(Limits::default())
}

/// A packet from the guest port `src` to host port `dst`.
fn pkt(op: Op, src: u32, dst: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        len: 0,
        type_: TYPE_STREAM,
        op: op.wire(),
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

impl Harness {
    fn send(&mut self, hdr: &Header, payload: &[u8]) {
        let mut hdr = *hdr;
        hdr.len = payload.len() as u32;
        let op = hdr.check_from_guest(CID, payload.len() as u64).unwrap();
        self.mux.send_pkt(&hdr, op, payload, &mut self.m);
    }

    /// Runs the muxer's events until `next_rx` gives a packet (5 s at
    /// most).
    fn rx(&mut self) -> (Header, Vec<u8>) {
        for _ in 0..500 {
            let mut buf = vec![0u8; 65536];
            if let Some((h, n)) = self.mux.next_rx(&mut buf, &mut self.m) {
                buf.truncate(n);
                return (h, buf);
            }
            self.mux.process_events(&mut self.m);
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no packet for the guest; metrics {:?}", self.m);
    }

    /// Runs the muxer's events for `ms` and says whether a packet came.
    fn quiet_for(&mut self, ms: u64) -> Option<Header> {
        for _ in 0..ms / 10 {
            self.mux.process_events(&mut self.m);
            if let Some((h, _)) = self.mux.next_rx(&mut [0u8; 64], &mut self.m) {
                return Some(h);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    fn host_connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.cfg.uds_path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 {
        line.push(b[0]);
        if b[0] == b'\n' {
            break;
        }
    }
    String::from_utf8(line).unwrap()
}

fn listen_at(path: &Path) -> UnixListener {
    let l = UnixListener::bind(path).unwrap();
    l.set_nonblocking(false).unwrap();
    l
}

#[test]
fn host_initiated_connect_ok_and_bytes_both_ways() {
    let mut h = harness();
    let mut host = h.host_connect();
    // The first data follows the line at once: it must not be lost.
    host.write_all(b"CONNECT 1024\nhello").unwrap();
    let (req, _) = h.rx();
    assert_eq!(req.op(), Some(Op::Request));
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
    assert_eq!((req.src_port, req.dst_port), (FIRST_LOCAL_PORT, 1024));
    assert_eq!(h.m.host_initiated, 1);
    h.send(&pkt(Op::Response, 1024, FIRST_LOCAL_PORT), &[]);
    assert_eq!(read_line(&mut host), "OK 1073741824\n");
    assert_eq!(h.m.established, 1);
    let (data, payload) = h.rx();
    assert_eq!(
        (data.op(), payload.as_slice()),
        (Some(Op::Rw), &b"hello"[..])
    );
    h.send(&pkt(Op::Rw, 1024, FIRST_LOCAL_PORT), b"world");
    let mut back = [0u8; 5];
    host.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"world");
    assert_eq!(h.m.tx_bytes, 5);
    // A second host connection gets the next port.
    let mut host2 = h.host_connect();
    host2.write_all(b"CONNECT 1024\n").unwrap();
    let (req2, _) = h.rx();
    assert_eq!(req2.src_port, FIRST_LOCAL_PORT + 1);
}

#[test]
fn the_guest_refusing_closes_the_host_stream() {
    let mut h = harness();
    let mut host = h.host_connect();
    host.write_all(b"CONNECT 7\n").unwrap();
    let (req, _) = h.rx();
    h.send(&pkt(Op::Rst, 7, req.src_port), &[]);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "no OK line: {rest:?}");
    assert_eq!((h.m.refused_by_guest, h.mux.connections()), (1, 0));
}

#[test]
fn bad_lines_slow_hosts_and_too_many_pending_hosts_are_closed() {
    let mut h = harness_with(Limits {
        max_pending_host: 2,
        connect_line_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let mut bad = h.host_connect();
    bad.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let mut slow = h.host_connect();
    slow.write_all(b"CONN").unwrap();
    assert_eq!(h.quiet_for(100), None);
    let mut rest = Vec::new();
    bad.read_to_end(&mut rest).unwrap();
    assert_eq!(h.m.host_bad_connect_lines, 1);
    // Two pending (the slow one and this one); the third is refused.
    let _second = h.host_connect();
    let mut third = h.host_connect();
    assert_eq!(h.quiet_for(100), None);
    third.read_to_end(&mut rest).unwrap();
    assert_eq!(h.m.connection_limit_refusals, 1);
    assert_eq!(h.quiet_for(600), None);
    slow.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(h.m.host_connect_line_timeouts, 2);
    h.mux.gauges(&mut h.m);
    assert_eq!(h.m.pending_host_connections, 0);
}

#[test]
fn a_guest_that_never_answers_times_out_with_rst() {
    let mut h = harness_with(Limits {
        connect_timeout: Duration::from_millis(200),
        ..Limits::default()
    });
    let mut host = h.host_connect();
    host.write_all(b"CONNECT 9\n").unwrap();
    let (req, _) = h.rx();
    assert_eq!(req.op(), Some(Op::Request));
    let (rst, _) = h.rx();
    assert_eq!(
        (rst.op(), rst.src_port, rst.dst_port),
        (Some(Op::Rst), req.src_port, 9)
    );
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!((h.m.timeouts, h.mux.connections()), (1, 0));
}

#[test]
fn guest_initiated_to_a_listener_and_to_nobody() {
    let mut h = harness();
    let listener = listen_at(&h.cfg.port_path(1024));
    h.send(&pkt(Op::Request, 5000, 1024), &[]);
    let (resp, _) = h.rx();
    assert_eq!(
        (resp.op(), resp.src_port, resp.dst_port),
        (Some(Op::Response), 1024, 5000)
    );
    let (mut host, _) = listener.accept().unwrap();
    h.send(&pkt(Op::Rw, 5000, 1024), b"ping");
    let mut got = [0u8; 4];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    host.write_all(b"pong").unwrap();
    let (data, payload) = h.rx();
    assert_eq!(
        (data.op(), payload.as_slice()),
        (Some(Op::Rw), &b"pong"[..])
    );
    // Nobody at port 1025.
    h.send(&pkt(Op::Request, 5001, 1025), &[]);
    let (rst, _) = h.rx();
    assert_eq!(
        (rst.op(), rst.src_port, rst.dst_port),
        (Some(Op::Rst), 1025, 5001)
    );
    assert_eq!((h.m.guest_initiated, h.m.guest_connects_refused), (1, 1));
}

#[test]
fn the_connection_bound_holds_for_both_sides() {
    let mut h = harness_with(Limits {
        max_connections: 2,
        ..Limits::default()
    });
    let _listener = listen_at(&h.cfg.port_path(1024));
    for port in [5000, 5001, 5002] {
        h.send(&pkt(Op::Request, port, 1024), &[]);
    }
    let ops: Vec<_> = (0..3)
        .map(|_| h.rx().0)
        .map(|p| (p.op(), p.dst_port))
        .collect();
    // The RST for the third goes first (stray RSTs lead).
    assert_eq!(
        ops,
        [
            (Some(Op::Rst), 5002),
            (Some(Op::Response), 5000),
            (Some(Op::Response), 5001)
        ]
    );
    let mut host = h.host_connect();
    host.write_all(b"CONNECT 1\n").unwrap();
    assert_eq!(h.quiet_for(100), None);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(h.m.connection_limit_refusals, 2);
    assert_eq!(h.mux.connections(), 2);
}

#[test]
fn packets_for_unknown_connections_get_rst_but_rst_gets_nothing() {
    let mut h = harness();
    h.send(&pkt(Op::Rw, 5000, 1024), b"x");
    let (rst, _) = h.rx();
    assert_eq!(rst.op(), Some(Op::Rst));
    h.send(&pkt(Op::Rst, 5000, 1024), &[]);
    assert_eq!(h.quiet_for(50), None);
    assert_eq!(h.m.unknown_connection_packets, 2);
}

#[test]
fn a_bad_header_resets_the_connection_it_names() {
    let mut h = harness();
    let listener = listen_at(&h.cfg.port_path(1024));
    h.send(&pkt(Op::Request, 5000, 1024), &[]);
    h.rx();
    let (mut host, _) = listener.accept().unwrap();
    let mut bad = pkt(Op::Rw, 5000, 1024);
    bad.src_cid = 99;
    h.mux.reject_pkt(&bad, &mut h.m);
    let (rst, _) = h.rx();
    assert_eq!(
        (rst.op(), rst.dst_cid, rst.dst_port),
        (Some(Op::Rst), CID, 5000)
    );
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(h.mux.connections(), 0);
}

#[test]
fn stray_rsts_are_bounded() {
    let mut h = harness_with(Limits {
        max_stray_rsts: 3,
        ..Limits::default()
    });
    for port in 0..3 {
        assert!(!h.mux.stray_full());
        h.send(&pkt(Op::Request, port, 77), &[]);
    }
    assert!(h.mux.stray_full());
    h.rx();
    assert!(!h.mux.stray_full());
}

#[test]
fn clean_close_and_device_reset() {
    let mut h = harness();
    let listener = listen_at(&h.cfg.port_path(1024));
    for port in [5000, 5001] {
        h.send(&pkt(Op::Request, port, 1024), &[]);
        h.rx();
    }
    let (mut a, _) = listener.accept().unwrap();
    let (mut b, _) = listener.accept().unwrap();
    let mut sh = pkt(Op::Shutdown, 5000, 1024);
    sh.flags = SHUTDOWN_BOTH;
    h.send(&sh, &[]);
    let (rst, _) = h.rx();
    assert_eq!((rst.op(), rst.dst_port), (Some(Op::Rst), 5000));
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).unwrap();
    assert_eq!(h.m.closed_cleanly, 1);
    h.mux.reset(&mut h.m);
    b.read_to_end(&mut rest).unwrap();
    assert_eq!((h.mux.connections(), h.m.dropped_by_device_reset), (0, 1));
    assert!(!h.mux.has_rx());
    let _ = &h.dir;
}

#[test]
fn a_request_never_delivered_needs_no_rst() {
    let mut h = harness_with(Limits {
        connect_timeout: Duration::from_millis(200),
        ..Limits::default()
    });
    let mut host = h.host_connect();
    host.write_all(b"CONNECT 9\n").unwrap();
    // No driver takes packets: the REQUEST is never delivered.
    for _ in 0..60 {
        h.mux.process_events(&mut h.m);
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!((h.m.timeouts, h.mux.connections()), (1, 0));
    // The owed REQUEST went with the connection; nothing else is owed.
    assert_eq!(h.quiet_for(20), None);
}

#[test]
fn stray_rsts_have_a_hard_bound_even_without_a_driver() {
    let mut h = harness_with(Limits {
        max_stray_rsts: 2,
        max_connections: 2,
        ..Limits::default()
    });
    for port in 0..10 {
        h.send(&pkt(Op::Rw, port, 1024), b"x");
    }
    assert_eq!(h.m.rsts_dropped, 6);
    let mut n = 0;
    while h.mux.next_rx(&mut [0u8; 64], &mut h.m).is_some() {
        n += 1;
    }
    assert_eq!(n, 4);
}
