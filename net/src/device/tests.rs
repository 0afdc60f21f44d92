//! The device against a driver on real split queues in guest memory and
//! a real datagram socket standing for the TAP: what the guest sees
//! (frames, headers, used lengths, interrupts) and what the host sees
//! (frames, the counters).

use std::os::unix::net::UnixDatagram;

use super::*;
use crate::header::{VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM};
use crate::test_utils::*;
use vmm_sys_util::eventfd::EventFd;

fn active() -> (Net<UnixDatagram>, UnixDatagram, GuestRam) {
    let (dev, host) = device();
    (dev, host, test_mem())
}

/// Everything the host side has received, frame by frame.
fn host_frames(host: &UnixDatagram) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    while let Ok(n) = host.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

const PLAIN: [u8; 12] = [0; 12];

#[test]
fn features_and_configuration_space() {
    let (dev, _host) = device();
    assert_eq!(dev.device_type(), 1);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(dev.device_features(), VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, MAC.0);
    let (ours, _h) = UnixDatagram::pair().unwrap();
    let no_mac = NetConfig {
        guest_mac: None,
        ..config()
    };
    let dev = Net::with_backend(no_mac, ours).unwrap();
    assert_eq!(dev.device_features(), VIRTIO_F_VERSION_1);
    let (ours, _h) = UnixDatagram::pair().unwrap();
    let bad = NetConfig {
        iface_id: "a b".into(),
        ..config()
    };
    assert!(matches!(
        Net::with_backend(bad, ours),
        Err(NetError::Config(_))
    ));
}

#[test]
fn activation_needs_both_queues_and_offered_features() {
    let (mut dev, _host, mem) = active();
    let d = Driver::new(&mem);
    let act = |features, ready: bool| Activation {
        mem: mem.clone(),
        acked_features: features,
        queues: vec![d.rx.queue(), {
            let mut q = d.tx.queue();
            virtio_device::QueueT::set_ready(&mut q, ready);
            q
        }],
        queue_events: vec![
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        ],
        interrupt: d.interrupt.clone(),
    };
    assert!(dev.activate(act(VIRTIO_F_VERSION_1 | 1, true)).is_err());
    assert!(dev.activate(act(VIRTIO_F_VERSION_1, false)).is_err());
    assert!(dev.activate(act(VIRTIO_F_VERSION_1, true)).is_ok());
    assert!(dev.activate(act(VIRTIO_F_VERSION_1, true)).is_err());
    dev.reset();
    assert!(!dev.is_activated());
    assert_eq!((dev.metrics().activations, dev.metrics().resets), (1, 1));
}

#[test]
fn a_transmitted_frame_reaches_the_host_behind_a_plain_header() {
    let (mut dev, host, mem) = active();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES);
    let f = frame(1000, 7);
    // Header and frame split unevenly over three buffers.
    let a = d.bytes(&with_header(PLAIN, &f[..5]), false);
    let b = d.bytes(&f[5..600], false);
    let c = d.bytes(&f[600..], false);
    let head = d.tx.post(&[a, b, c]);
    dev.process_tx();
    assert_eq!(host_frames(&host), vec![with_header(PLAIN, &f)]);
    assert_eq!(d.tx.used(), vec![(u32::from(head), 0)]);
    assert_eq!(d.interrupt.used(), vec![1]);
    let m = dev.metrics();
    assert_eq!((m.tx_packets, m.tx_bytes, m.tx_chains), (1, 1000, 1));
    assert_eq!(m.rejections.total(), 0);
}

#[test]
fn a_received_frame_reaches_the_guest_with_our_header() {
    let (mut dev, host, mem) = active();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES);
    let f = frame(1500, 3);
    // The kernel's header says DATA_VALID and leaves num_buffers as junk:
    // the guest gets ours.
    let mut kernel_hdr = PLAIN;
    kernel_hdr[0] = VIRTIO_NET_HDR_F_DATA_VALID;
    kernel_hdr[10] = 0xee;
    host.send(&with_header(kernel_hdr, &f)).unwrap();
    let a = d.fill(800, 0xaa, true);
    let b = d.fill(800, 0xaa, true);
    let head = d.rx.post(&[a, b]);
    dev.process_rx();
    assert_eq!(d.rx.used(), vec![(u32::from(head), 1512)]);
    let got = [d.read_bytes(a), d.read_bytes(b)].concat();
    let mut hdr = [0u8; 12];
    hdr[10] = 1;
    assert_eq!(&got[..1512], &with_header(hdr, &f)[..]);
    assert!(got[1512..].iter().all(|&x| x == 0xaa), "past the frame");
    assert_eq!(d.interrupt.used(), vec![0]);
    let m = dev.metrics();
    assert_eq!((m.rx_packets, m.rx_bytes), (1, 1500));
}

#[test]
fn a_frame_waits_for_a_receive_buffer_and_the_tap_is_not_read_meanwhile() {
    let (mut dev, host, mem) = active();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES);
    for tag in 0..3 {
        host.send(&with_header(PLAIN, &frame(100, tag))).unwrap();
    }
    dev.process_rx();
    assert_eq!(dev.metrics().rx_no_buffer, 1);
    assert!(d.interrupt.used().is_empty());
    let bufs: Vec<Buf> = (0..2).map(|_| d.fill(1526, 0, true)).collect();
    for b in &bufs {
        d.rx.post(&[*b]);
    }
    dev.process_rx();
    assert_eq!(d.rx.used().len(), 2);
    for (tag, b) in bufs.iter().enumerate() {
        assert_eq!(&d.read_bytes(*b)[12..112], &frame(100, tag as u8)[..]);
    }
    // The third frame waits; the socket is empty now.
    let m = dev.metrics();
    assert_eq!((m.rx_packets, m.rx_no_buffer), (2, 2));
    let b = d.fill(1526, 0, true);
    d.rx.post(&[b]);
    dev.process_rx();
    assert_eq!(&d.read_bytes(b)[12..112], &frame(100, 2)[..]);
}

#[test]
fn receive_chains_that_do_not_fit_or_are_readable_are_refused() {
    let (mut dev, host, mem) = active();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES);
    host.send(&with_header(PLAIN, &frame(1000, 1))).unwrap();
    host.send(&with_header(PLAIN, &frame(1000, 2))).unwrap();
    // Readable: refused, the frame waits for the next chain.
    let readable = d.fill(1526, 0x55, false);
    let r = d.rx.post(&[readable]);
    // Too small for frame 1: the frame is dropped, the chain returned.
    let small = d.fill(1011, 0x55, true);
    let s = d.rx.post(&[small]);
    // Outside memory: refused; frame 2 waits.
    let outside = d.rx.post(&[(MEM_END - 100, 1526, true)]);
    let good = d.fill(1526, 0, true);
    let g = d.rx.post(&[good]);
    dev.process_rx();
    assert_eq!(
        d.rx.used(),
        vec![
            (u32::from(r), 0),
            (u32::from(s), 0),
            (u32::from(outside), 0),
            (u32::from(g), 1012)
        ]
    );
    assert!(d.read_bytes(readable).iter().all(|&x| x == 0x55));
    assert!(d.read_bytes(small).iter().all(|&x| x == 0x55));
    assert_eq!(&d.read_bytes(good)[12..1012], &frame(1000, 2)[..]);
    let m = dev.metrics();
    assert_eq!(m.rejections.rx_readable_descriptor, 1);
    assert_eq!(m.rejections.rx_chain_too_small, 1);
    assert_eq!(m.rejections.descriptor_outside_memory, 1);
    assert_eq!((m.rx_packets, m.rx_bytes), (1, 1000));
}

#[test]
fn frames_the_kernel_marks_for_offloads_are_dropped() {
    let (mut dev, host, mem) = active();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES);
    let mut csum = PLAIN;
    csum[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    host.send(&with_header(csum, &frame(100, 1))).unwrap();
    host.send(&[0u8; 5]).unwrap();
    host.send(&with_header(PLAIN, &frame(100, 2))).unwrap();
    let b = d.fill(1526, 0, true);
    d.rx.post(&[b]);
    dev.process_rx();
    assert_eq!(&d.read_bytes(b)[12..112], &frame(100, 2)[..]);
    assert_eq!(dev.metrics().rx_bad_frames, 2);
}

#[test]
fn malformed_transmit_chains_are_refused_counted_and_the_queue_goes_on() {
    let (mut dev, host, mem) = active();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES);
    let page = d.fill(4096, 0, false);
    // 17 descriptors over one page: 69632 bytes > 65562.
    let too_long = d.tx.post(&[page; 17]);
    // Exactly the limit passes.
    let mut at_limit = vec![page; 16];
    at_limit.push((page.0, (MAX_BUFFER_LEN - 16 * 4096) as u32, false));
    let limit = d.tx.post(&at_limit);
    let writable = d.fill(100, 0, true);
    let w = d.tx.post(&[page, writable]);
    let short = d.fill(11, 0, false);
    let s = d.tx.post(&[short]);
    let tiny = d.fill(12 + 13, 0, false);
    let t = d.tx.post(&[tiny]);
    let mut gso = PLAIN;
    gso[1] = 1;
    let offload = d.bytes(&with_header(gso, &frame(60, 0)), false);
    let o = d.tx.post(&[offload]);
    let outside = d.tx.post(&[page, (u64::MAX - 10, 100, false)]);
    let good = d.bytes(&with_header(PLAIN, &frame(60, 9)), false);
    let g = d.tx.post(&[good]);
    dev.process_tx();
    let heads = [too_long, limit, w, s, t, o, outside, g];
    assert_eq!(
        d.tx.used(),
        heads.iter().map(|&h| (u32::from(h), 0)).collect::<Vec<_>>()
    );
    let frames = host_frames(&host);
    assert_eq!(frames.len(), 2, "only the limit and the good one");
    assert_eq!(frames[0].len(), MAX_BUFFER_LEN);
    assert_eq!(frames[1], with_header(PLAIN, &frame(60, 9)));
    let m = dev.metrics();
    let r = &m.rejections;
    assert_eq!(
        (
            r.tx_too_large,
            r.tx_writable_descriptor,
            r.tx_header_too_short,
            r.tx_frame_too_short,
            r.tx_offload_not_negotiated,
            r.descriptor_outside_memory
        ),
        (1, 1, 1, 1, 1, 1)
    );
    assert_eq!((m.tx_chains, m.tx_packets), (8, 2));
    assert_eq!(m.tx_bytes, (MAX_BUFFER_LEN - 12 + 60) as u64);
}

#[test]
fn a_reset_drops_the_waiting_frame_and_queues() {
    let (mut dev, host, mem) = active();
    let d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES);
    host.send(&with_header(PLAIN, &frame(100, 1))).unwrap();
    dev.process_rx();
    assert!(dev.rx_pending.is_some());
    dev.reset();
    assert!(dev.rx_pending.is_none() && dev.active.is_none());
    // Inactive: nothing is read.
    host.send(&with_header(PLAIN, &frame(100, 2))).unwrap();
    dev.process_rx();
    dev.process_tx();
    assert_eq!(dev.metrics().rx_packets, 0);
}
