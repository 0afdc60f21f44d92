//! The device through its queues, with a test driver on real split queues
//! and real Unix sockets; no VM.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::config::{Limits, RX_QUEUE, TX_QUEUE};
use crate::header::{Header, Op, HOST_CID, SHUTDOWN_BOTH, TYPE_STREAM};
use crate::test_utils::{test_mem, Driver, TempDir, MEM_END};

const CID: u64 = 3;

fn device_with(limits: Limits) -> (Vsock, TempDir) {
    let dir = TempDir::new("dev");
    let cfg = VsockConfig {
        guest_cid: CID,
        uds_path: dir.path().join("v.sock"),
    };
    let listener = UnixListener::bind(&cfg.uds_path).unwrap();
    (Vsock::with_limits(cfg, limits, listener).unwrap(), dir)
}

fn device() -> (Vsock, TempDir) {
    device_with(Limits::default())
}

fn pkt(op: Op, src: u32, dst: u32, len: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        len,
        type_: TYPE_STREAM,
        op: op.wire(),
        flags: 0,
        buf_alloc: 65536,
        fwd_cnt: 0,
    }
}

fn listen(dev: &Vsock, port: u32) -> UnixListener {
    UnixListener::bind(dev.config().port_path(port)).unwrap()
}

/// Runs the backend until the driver has `n` rx packets (5 s at most).
fn wait_rx(dev: &mut Vsock, drv: &Driver, n: usize) -> Vec<(Header, Vec<u8>)> {
    for _ in 0..500 {
        let got = drv.rx_packets();
        if got.len() >= n {
            return got;
        }
        dev.process_backend();
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!(
        "only {} rx packets: {:?}",
        drv.rx_packets().len(),
        dev.metrics()
    );
}

#[test]
fn identifies_as_vsock_with_the_cid_in_config_space() {
    let (mut dev, _d) = device();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.device_features(), VIRTIO_F_VERSION_1 | 1);
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID);
    dev.write_config(0, &[9; 8]);
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), CID, "read-only");
    assert_eq!(dev.metrics().config_writes_ignored, 8);
}

#[test]
fn a_guest_connection_carries_bytes_both_ways_and_closes_cleanly() {
    let (mut dev, _d) = device();
    let listener = listen(&dev, 1024);
    let mem = test_mem();
    let mut drv = Driver::new(&mem);
    drv.activate(&mut dev);
    for _ in 0..8 {
        drv.post_rx(4096 + 44);
    }
    drv.post_tx(&pkt(Op::Request, 5000, 1024, 0), &[]);
    dev.process_tx();
    let rx = drv.rx_packets();
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].0.op(), Some(Op::Response));
    assert_eq!(drv.used(TX_QUEUE), vec![(0, 0)]);
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();

    drv.post_tx(&pkt(Op::Rw, 5000, 1024, 5), b"hello");
    dev.process_tx();
    let mut got = [0u8; 5];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    host.write_all(b"world!").unwrap();
    let rx = wait_rx(&mut dev, &drv, 2);
    assert_eq!(rx[1].0.op(), Some(Op::Rw));
    assert_eq!(rx[1].1, b"world!");
    assert_eq!((rx[1].0.src_port, rx[1].0.dst_port), (1024, 5000));

    let mut sh = pkt(Op::Shutdown, 5000, 1024, 0);
    sh.flags = SHUTDOWN_BOTH;
    drv.post_tx(&sh, &[]);
    dev.process_tx();
    let rx = drv.rx_packets();
    assert_eq!(rx.last().unwrap().0.op(), Some(Op::Rst));
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    let m = dev.metrics();
    assert_eq!(
        (m.closed_cleanly, m.connections, m.tx_bytes, m.rx_bytes),
        (1, 0, 5, 6)
    );
    assert_eq!(m.rejections.total(), 0, "{m:?}");
}

#[test]
fn a_host_connection_through_connect_and_ok() {
    let (mut dev, _d) = device();
    let mem = test_mem();
    let mut drv = Driver::new(&mem);
    drv.activate(&mut dev);
    drv.post_rx(4096 + 44);
    drv.post_rx(4096 + 44);
    let mut host = UnixStream::connect(&dev.config().uds_path).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    host.write_all(b"CONNECT 52\n").unwrap();
    let rx = wait_rx(&mut dev, &drv, 1);
    let req = rx[0].0;
    assert_eq!(
        (req.op(), req.dst_port, req.dst_cid),
        (Some(Op::Request), 52, CID)
    );
    drv.post_tx(&pkt(Op::Response, 52, req.src_port, 0), &[]);
    dev.process_tx();
    let mut ok = [0u8; 14];
    host.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"OK 1073741824\n");
}

/// The header and the payload may be split anywhere across descriptors.
#[test]
fn headers_split_across_descriptors_are_fine() {
    let (mut dev, _d) = device();
    let listener = listen(&dev, 1024);
    let mem = test_mem();
    let mut drv = Driver::new(&mem);
    drv.activate(&mut dev);
    drv.post_rx(100);
    drv.post_tx(&pkt(Op::Request, 5000, 1024, 0), &[]);
    dev.process_tx();
    let (mut host, _) = listener.accept().unwrap();
    let mut bytes = pkt(Op::Rw, 5000, 1024, 6).to_bytes().to_vec();
    bytes.extend_from_slice(b"abcdef");
    let at = drv.alloc(bytes.len() as u64);
    mem.write_slice(&bytes, GuestAddress(at)).unwrap();
    drv.post(
        TX_QUEUE,
        &[(at, 10, false), (at + 10, 37, false), (at + 47, 3, false)],
    );
    dev.process_tx();
    let mut got = [0u8; 6];
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abcdef");
    assert_eq!(dev.metrics().rejections.total(), 0);
}

/// Each lie is counted under its reason, answered with RST when it names
/// a connection, and leaves the device serving.
#[test]
fn every_lie_is_refused_counted_and_answered() {
    let (mut dev, _d) = device();
    let listener = listen(&dev, 1024);
    let mem = test_mem();
    let mut drv = Driver::new(&mem);
    drv.activate(&mut dev);
    for _ in 0..32 {
        drv.post_rx(4096 + 44);
    }
    let with = |f: &dyn Fn(&mut Header)| {
        let mut h = pkt(Op::Rw, 6000, 1024, 0);
        f(&mut h);
        h
    };
    let cases: Vec<(Header, RejectReason)> = vec![
        (with(&|h| h.len = 10), RejectReason::LenBeyondChain),
        (with(&|h| h.src_cid = 7), RejectReason::WrongSrcCid),
        (with(&|h| h.dst_cid = 3), RejectReason::WrongDstCid),
        (with(&|h| h.type_ = 2), RejectReason::UnsupportedType),
        (with(&|h| h.op = 42), RejectReason::UnknownOp),
        (
            with(&|h| {
                h.op = Op::Shutdown.wire();
                h.flags = 8
            }),
            RejectReason::BadShutdownFlags,
        ),
    ];
    for (h, _) in &cases {
        drv.post_tx(h, &[]);
    }
    // A header cut short, one beyond guest memory, one device-writable.
    let short = drv.alloc(20);
    drv.post(TX_QUEUE, &[(short, 20, false)]);
    drv.post(TX_QUEUE, &[(MEM_END + 0x1000, 44, false)]);
    let w = drv.alloc(44);
    drv.post(TX_QUEUE, &[(w, 44, true)]);
    dev.process_tx();
    let m = dev.metrics();
    for (_, reason) in &cases {
        assert_eq!(m.rejections.count(*reason), 1, "{reason:?}: {m:?}");
    }
    assert_eq!(m.rejections.header_too_short, 1);
    assert_eq!(m.rejections.descriptor_outside_memory, 1);
    assert_eq!(m.rejections.wrong_direction, 1);
    assert_eq!(
        drv.used(TX_QUEUE).len(),
        cases.len() + 3,
        "every chain returned"
    );
    let rsts = drv
        .rx_packets()
        .iter()
        .filter(|(h, _)| h.op() == Some(Op::Rst) && h.dst_port == 6000)
        .count();
    assert_eq!(
        rsts,
        cases.len(),
        "one RST per header that names a connection"
    );

    // Still serving.
    drv.post_tx(&pkt(Op::Request, 5000, 1024, 0), &[]);
    dev.process_tx();
    assert!(listener.accept().is_ok());
    assert_eq!(drv.rx_packets().last().unwrap().0.op(), Some(Op::Response));
}

#[test]
fn credit_overrun_resets_the_connection() {
    let (mut dev, _d) = device_with(Limits {
        conn_buf_size: 4096,
        ..Limits::default()
    });
    let listener = listen(&dev, 1024);
    let mem = test_mem();
    let mut drv = Driver::new(&mem);
    drv.activate(&mut dev);
    for _ in 0..4 {
        drv.post_rx(4096 + 44);
    }
    drv.post_tx(&pkt(Op::Request, 5000, 1024, 0), &[]);
    dev.process_tx();
    let (host, _) = listener.accept().unwrap();
    // The host reads nothing; fill its socket so our buffer is used.
    let junk = vec![0u8; 4096];
    let mut sent = 0;
    while sent < 4 << 20 {
        drv.post_tx(&pkt(Op::Rw, 5000, 1024, 4096), &junk);
        dev.process_tx();
        sent += 4096;
        if dev.connections() == 0 {
            break;
        }
    }
    let m = dev.metrics();
    assert_eq!(m.rejections.credit_exceeded, 1, "{m:?}");
    assert_eq!(m.connections, 0);
    assert!(m.buffered_bytes == 0 && m.buffer_capacity_bytes == 0);
    for _ in 0..8 {
        drv.post_rx(4096 + 44);
    }
    dev.process_rx();
    let rx = drv.rx_packets();
    assert_eq!(rx.last().unwrap().0.op(), Some(Op::Rst), "{rx:?}");
    drop(host);
}

#[test]
fn bad_rx_buffers_are_returned_unused_and_the_packet_waits() {
    let (mut dev, _d) = device();
    let mem = test_mem();
    let mut drv = Driver::new(&mem);
    drv.activate(&mut dev);
    let ro = drv.alloc(100);
    drv.post(RX_QUEUE, &[(ro, 100, false)]);
    drv.post_rx(20);
    // A REQUEST to nobody: answered with RST, which must wait for a good
    // buffer.
    drv.post_tx(&pkt(Op::Request, 5000, 4242, 0), &[]);
    dev.process_tx();
    assert_eq!(drv.used(RX_QUEUE), vec![(0, 0), (1, 0)]);
    let m = dev.metrics();
    assert_eq!(
        (
            m.rejections.wrong_direction,
            m.rejections.rx_buffer_too_short
        ),
        (1, 1)
    );
    drv.post_rx(44);
    dev.process_rx();
    let rx = drv.rx_packets();
    assert_eq!(rx.len(), 1);
    assert_eq!(rx[0].0.op(), Some(Op::Rst));
}

/// A flood of REQUESTs to nobody: the device answers each with RST as
/// rx buffers allow, holds at most `max_stray_rsts` of them, and stops
/// taking tx packets meanwhile; nothing is lost.
#[test]
fn a_request_flood_is_answered_at_the_pace_of_rx_buffers() {
    let (mut dev, _d) = device_with(Limits {
        max_stray_rsts: 8,
        ..Limits::default()
    });
    let mem = test_mem();
    let mut drv = Driver::new(&mem);
    drv.activate(&mut dev);
    for port in 0..100 {
        drv.post_tx(&pkt(Op::Request, port, 4242, 0), &[]);
    }
    dev.process_tx();
    assert_eq!(drv.used(TX_QUEUE).len(), 8, "stalled at the bound");
    assert!(dev.metrics().tx_stalls >= 1);
    for _ in 0..100 {
        drv.post_rx(44);
    }
    dev.process_rx();
    // The device works through the flood a few rounds per event and
    // signals its tx queue to come back: the event loop's part here.
    for _ in 0..20 {
        dev.process_tx();
    }
    assert_eq!(drv.used(TX_QUEUE).len(), 100);
    let rx = drv.rx_packets();
    assert_eq!(rx.len(), 100);
    assert!(rx.iter().all(|(h, _)| h.op() == Some(Op::Rst)));
    let m = dev.metrics();
    assert_eq!((m.guest_connects_refused, m.rst_sent), (100, 100));
}

#[test]
fn a_reset_drops_connections_and_a_new_driver_starts_clean() {
    let (mut dev, _d) = device();
    let listener = listen(&dev, 1024);
    let mem = test_mem();
    let mut drv = Driver::new(&mem);
    drv.activate(&mut dev);
    drv.post_rx(100);
    drv.post_tx(&pkt(Op::Request, 5000, 1024, 0), &[]);
    dev.process_tx();
    let (mut host, _) = listener.accept().unwrap();
    dev.reset();
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert!(!dev.is_activated());
    let m = dev.metrics();
    assert_eq!(
        (m.resets, m.dropped_by_device_reset, m.connections),
        (1, 1, 0)
    );
    let mem2 = test_mem();
    let drv2 = Driver::new(&mem2);
    drv2.activate(&mut dev);
    assert_eq!(dev.metrics().activations, 2);
}
