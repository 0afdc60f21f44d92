//! A fuzzed guest driver and host network against the device's real
//! queue handling and header checks, on stable Rust: a seeded generator
//! (no dependency) writes descriptor chains into two real split queues in
//! guest memory, sends frames (some with headers asking for offloads, some
//! shorter than a header) from the "host" end of a datagram socket pair,
//! and drives the device as the event loop does (transmit, then receive).
//!
//! Each chain is either *known* (valid, or broken in exactly one way the
//! generator chose, so its outcome is certain) or *unknown* (random
//! addresses, lengths, flags, links). After every step the harness checks,
//! whatever the guest did:
//!
//! - nothing panicked; every transmit chain came back exactly once, with
//!   used length 0; no receive chain came back twice or before it was
//!   posted;
//! - the host got exactly the known valid transmit frames, in order,
//!   behind a plain header (in steps with unknown chains: in order, maybe
//!   among others), and each refusal was counted once under its reason;
//! - receive: a model of the device (one frame waiting at most, chains in
//!   order, a frame only into a chain that holds it) predicts every used
//!   element, the bytes each chain got and every counter, until the first
//!   unknown receive chain; after that, used lengths are 0 or a frame the
//!   host sent plus the header;
//! - guest memory changed only inside device-writable descriptors of
//!   receive chains used in that step (transmit changes nothing).
//!
//! `VMM_FUZZ_CASES=N` runs N cases (default [`DEFAULT_CASES`]),
//! `VMM_FUZZ_SEED=S` another seed, `VMM_FUZZ_CASE=C` replays one case.

use std::collections::{BTreeMap, VecDeque};
use std::os::unix::net::UnixDatagram;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_device::testing::driver::activation;
use virtio_device::testing::fuzz::{run_cases, Rng};
use virtio_device::testing::memory::Snapshot;
use virtio_device::testing::ring::RawRing;
use virtio_device::{GuestRam, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

use crate::header::{VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM};
use crate::test_utils::{config, RecordingInterrupt};
use crate::*;

/// Cases when `VMM_FUZZ_CASES` is not set: about a second in a debug build.
const DEFAULT_CASES: u64 = 60;
const DEFAULT_SEED: u64 = 0x0e7_f022;

// Guest memory: RAM [0, 2 MiB) and [3 MiB, 4 MiB), a hole between.
const RX_DESC: u64 = 0;
const RX_AVAIL: u64 = 0x1000;
const RX_USED: u64 = 0x2000;
const TX_DESC: u64 = 0x3000;
const TX_AVAIL: u64 = 0x4000;
const TX_USED: u64 = 0x5000;
/// Receive descriptor `i` of a known chain points at its own slot here.
const RX_DATA: u64 = 0x1_0000;
const RX_SLOT: u64 = 2048;
/// Transmit buffers, allocated anew each step (all are used each step).
const TX_DATA: u64 = 0x4_0000;
/// Unknown chains point into [WILD, HOLE) and RAM2 (or anywhere), never
/// at known chains' buffers below WILD.
const WILD: u64 = 1 << 20;
const HOLE: u64 = 2 << 20;
const RAM2: u64 = 3 << 20;
const END: u64 = 4 << 20;
const QSIZE: u16 = 64;
/// Descriptors at the end of the receive table never handed out: unknown
/// chains may link there (zero descriptors).
const RX_RESERVED: u16 = 4;
const PLAIN: [u8; 12] = [0; 12];
/// Datagram lengths (header included) the host often sends; receive
/// chains are often one byte shorter, as long, or one byte longer.
const EDGES: [usize; 8] = [12, 13, 26, 72, 73, 1526, 1527, 1612];

/// A chain's buffers: (address, length).
type GuestBufs = Vec<(u64, u32)>;

/// What a known receive chain is.
#[derive(Clone, Debug)]
enum RxKind {
    /// Valid, with this many writable bytes over these buffers.
    Valid { cap: u64, bufs: GuestBufs },
    /// Broken: refused for this reason whatever the frame.
    Broken(RejectReason),
}

/// A posted receive chain.
#[derive(Clone, Debug)]
struct RxChain {
    head: u16,
    slots: Vec<u16>,
    /// `None`: unknown.
    kind: Option<RxKind>,
    writable: Vec<(u64, u64)>,
}

/// The device's receive side as the harness predicts it.
#[derive(Default)]
struct RxModel {
    /// Frames the host sent that the device has not read; `false`: one the
    /// device must drop (offload header, too short).
    queued: VecDeque<(Vec<u8>, bool)>,
    pending: Option<Vec<u8>>,
    exact: bool,
}

struct Case {
    mem: GuestRam,
    dev: Net<UnixDatagram>,
    host: UnixDatagram,
    rx: RawRing,
    tx: RawRing,
    rx_free: Vec<u16>,
    rx_outstanding: BTreeMap<u16, RxChain>,
    rx_order: VecDeque<u16>,
    model: RxModel,
    /// Lengths of every usable frame the host sent.
    sent_lens: Vec<usize>,
    tx_next: u64,
}

impl Case {
    fn tx_alloc(&mut self, len: u64) -> u64 {
        let at = self.tx_next;
        self.tx_next += len.next_multiple_of(16);
        assert!(self.tx_next <= WILD, "fuzz transmit area full");
        at
    }

    /// A known receive chain of 1 to 3 buffers in its slots.
    fn rx_known(&mut self, rng: &mut Rng) {
        let n = 1 + rng.below(3) as usize;
        if self.rx_free.len() < n {
            return;
        }
        let slots: Vec<u16> = (0..n).map(|_| self.rx_free.pop().unwrap()).collect();
        let edge = rng.one_in(2);
        let mut bufs: Vec<(u64, u32, bool)> = slots
            .iter()
            .map(|&s| {
                let len = 1 + rng.below(RX_SLOT) as u32;
                (RX_DATA + u64::from(s) * RX_SLOT, len, true)
            })
            .collect();
        if edge {
            // Sizes at the frames' boundaries, split over the buffers.
            let mut left =
                EDGES[rng.below(EDGES.len() as u64) as usize] as u32 + 1 - rng.below(3) as u32;
            for (i, b) in bufs.iter_mut().enumerate() {
                b.1 = if i + 1 == n { left } else { left / 2 };
                left -= b.1;
            }
        }
        let mut loops = false;
        let kind = match rng.below(8) {
            0 => {
                let i = rng.below(n as u64) as usize;
                bufs[i].2 = false;
                RxKind::Broken(RejectReason::RxReadableDescriptor)
            }
            1 => {
                let i = rng.below(n as u64) as usize;
                bufs[i].0 = [HOLE, HOLE - 16, END, u64::MAX - 8][rng.below(4) as usize];
                bufs[i].1 = bufs[i].1.max(32);
                RxKind::Broken(RejectReason::DescriptorOutsideMemory)
            }
            2 => {
                loops = true;
                RxKind::Broken(RejectReason::LoopingChain)
            }
            _ => RxKind::Valid {
                cap: bufs.iter().map(|b| u64::from(b.1)).sum(),
                bufs: bufs.iter().map(|b| (b.0, b.1)).collect(),
            },
        };
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            // Preset so a missing or stray write shows.
            if addr.saturating_add(u64::from(len)) <= WILD {
                self.mem
                    .write_slice(&vec![0xee; len as usize], GuestAddress(addr))
                    .unwrap();
            }
            let last = i + 1 == n;
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last || loops {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last { slots[0] } else { slots[i + 1] };
            self.rx
                .write_desc(&self.mem, slots[i], (addr, len, flags, next));
        }
        let writable = bufs
            .iter()
            .filter(|b| b.2)
            .map(|b| (b.0, b.0.saturating_add(u64::from(b.1))))
            .collect();
        self.post_rx(RxChain {
            head: slots[0],
            slots,
            kind: Some(kind),
            writable,
        });
    }

    /// An unknown receive chain: random everything, links inside itself
    /// or to the reserved end of the table.
    fn rx_unknown(&mut self, rng: &mut Rng) {
        let n = 1 + rng.below(4) as usize;
        if self.rx_free.len() < n {
            return;
        }
        self.model.exact = false;
        let slots: Vec<u16> = (0..n).map(|_| self.rx_free.pop().unwrap()).collect();
        let mut writable = Vec::new();
        for i in 0..n {
            let addr = if rng.one_in(8) {
                rng.next()
            } else {
                WILD + rng.below(HOLE - WILD + (END - RAM2))
            };
            let len = if rng.one_in(8) {
                rng.next() as u32
            } else {
                rng.below(3000) as u32
            };
            let mut flags = rng.below(4) as u16 & (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16;
            if i + 1 < n && !rng.one_in(6) {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if rng.one_in(6) {
                if rng.one_in(2) {
                    slots[rng.below(n as u64) as usize]
                } else {
                    QSIZE - RX_RESERVED + rng.below(8) as u16
                }
            } else if i + 1 < n {
                slots[i + 1]
            } else {
                QSIZE - 1
            };
            if flags & VRING_DESC_F_WRITE as u16 != 0 {
                writable.push((addr, addr.saturating_add(u64::from(len))));
            }
            self.rx
                .write_desc(&self.mem, slots[i], (addr, len, flags, next));
        }
        self.post_rx(RxChain {
            head: slots[0],
            slots,
            kind: None,
            writable,
        });
    }

    fn post_rx(&mut self, c: RxChain) {
        self.rx.push(&self.mem, c.head);
        self.rx_order.push_back(c.head);
        self.rx_outstanding.insert(c.head, c);
    }

    /// The host sends a frame: usable, or one the device must drop.
    fn host_send(&mut self, rng: &mut Rng) {
        let (bytes, usable) = match rng.below(6) {
            0 => {
                let mut h = PLAIN;
                if rng.one_in(2) {
                    h[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
                } else {
                    h[1] = 1 + rng.below(5) as u8;
                }
                ([&h[..], &rng.bytes(60)].concat(), false)
            }
            1 => {
                let n = rng.below(12) as usize;
                (rng.bytes(n), false)
            }
            _ => {
                let mut h = PLAIN;
                if rng.one_in(3) {
                    h[0] = VIRTIO_NET_HDR_F_DATA_VALID;
                }
                h[10] = rng.next() as u8;
                // Often a length at a boundary of the chains' sizes.
                let len = if rng.one_in(2) {
                    EDGES[rng.below(EDGES.len() as u64) as usize] - 12
                } else {
                    rng.below(1600) as usize
                };
                ([&h[..], &rng.bytes(len)].concat(), true)
            }
        };
        // A full socket is the host's problem; the frame was not sent.
        if self.host.send(&bytes).is_ok() {
            if usable {
                self.sent_lens.push(bytes.len());
            }
            self.model.queued.push_back((bytes, usable));
        }
    }
}

/// A known transmit chain: valid, or broken one way. Returns the frame
/// the host must get, if any, and the reason it must be refused, if any.
fn tx_known(
    c: &mut Case,
    rng: &mut Rng,
    descs: &mut Vec<(u64, u32, u16, u16)>,
) -> (Option<Vec<u8>>, Option<RejectReason>) {
    let len = 14 + rng.below(1000) as usize;
    let mut hdr = PLAIN;
    if rng.one_in(4) {
        // Meaningless on transmit: ignored.
        hdr[0] = VIRTIO_NET_HDR_F_DATA_VALID;
        hdr[2] = rng.next() as u8;
    }
    let frame = rng.bytes(len);
    let mut expect = (Some(frame.clone()), None);
    let mut wire = [&hdr[..], &frame].concat();
    let mut loops = false;
    let mut extra: Vec<(u64, u32, bool)> = Vec::new();
    match rng.below(12) {
        0 => {
            // Over the limit: descriptors overlapping one buffer.
            let at = c.tx_alloc(4096);
            let n = MAX_BUFFER_LEN / 4096 + 1;
            extra = vec![(at, 4096, false); n];
            wire.clear();
            expect = (None, Some(RejectReason::TxTooLarge));
        }
        1 => {
            extra.push((c.tx_alloc(64), 64, true));
            expect = (None, Some(RejectReason::TxWritableDescriptor));
        }
        2 => {
            wire.truncate(rng.below(12) as usize);
            expect = (None, Some(RejectReason::TxHeaderTooShort));
        }
        3 => {
            wire.truncate(12 + rng.below(14) as usize);
            expect = (None, Some(RejectReason::TxFrameTooShort));
        }
        4 => {
            if rng.one_in(2) {
                wire[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            } else {
                wire[1] = 1 + rng.below(4) as u8;
            }
            expect = (None, Some(RejectReason::TxOffloadNotNegotiated));
        }
        5 => {
            let at = [HOLE, HOLE - 8, END, u64::MAX - 50][rng.below(4) as usize];
            extra.push((at, 100, false));
            expect = (None, Some(RejectReason::DescriptorOutsideMemory));
        }
        6 => {
            loops = true;
            expect = (None, Some(RejectReason::LoopingChain));
        }
        _ => {}
    }
    // The wire bytes in 1 to 4 pieces, then the extra descriptors.
    let mut bufs = Vec::new();
    let pieces = 1 + rng.below(4) as usize;
    let mut off = 0;
    for i in 0..pieces {
        let n = if i + 1 == pieces {
            wire.len() - off
        } else {
            rng.below((wire.len() - off) as u64 + 1) as usize
        };
        if n == 0 && i + 1 < pieces {
            continue;
        }
        let at = c.tx_alloc(n as u64);
        c.mem
            .write_slice(&wire[off..off + n], GuestAddress(at))
            .unwrap();
        bufs.push((at, n as u32, false));
        off += n;
    }
    bufs.extend(extra);
    let head = descs.len() as u16;
    for (i, &(addr, len, w)) in bufs.iter().enumerate() {
        let idx = head + i as u16;
        let last = i + 1 == bufs.len();
        let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
        if !last || loops {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        descs.push((addr, len, flags, if last && loops { idx } else { idx + 1 }));
    }
    expect
}

/// An unknown transmit chain: random everything, links inside itself or
/// past what this step uses.
fn tx_unknown(rng: &mut Rng, descs: &mut Vec<(u64, u32, u16, u16)>) {
    let n = 1 + rng.below(5) as u16;
    let head = descs.len() as u16;
    for i in 0..n {
        let addr = if rng.one_in(8) {
            rng.next()
        } else {
            WILD + rng.below(HOLE - WILD + (END - RAM2))
        };
        let len = if rng.one_in(8) {
            rng.next() as u32
        } else {
            rng.below(3000) as u32
        };
        let mut flags = rng.below(4) as u16 & (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16;
        if i + 1 < n && !rng.one_in(6) {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        let next = if rng.one_in(6) {
            head + rng.below(u64::from(n) + 1) as u16
        } else if i + 1 < n {
            head + i + 1
        } else {
            QSIZE - 1
        };
        descs.push((addr, len, flags, next));
    }
}

/// The memory the device may write into: the receive buffers and the
/// unknown chains' targets (transmit must write none of it).
fn snapshot(mem: &GuestRam) -> Snapshot {
    Snapshot::take(mem, &[(RX_DATA, HOLE), (RAM2, END)])
}

fn host_frames(host: &UnixDatagram) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 70_000];
    while let Ok(n) = host.recv(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// The transmit half of a step.
fn tx_step(c: &mut Case, rng: &mut Rng) {
    let mut descs = Vec::new();
    let mut heads = Vec::new();
    let mut want_frames = Vec::new();
    let mut want_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut unknown = false;
    c.tx_next = TX_DATA;
    for _ in 0..rng.below(8) {
        if descs.len() + 30 > usize::from(QSIZE) {
            break;
        }
        heads.push(descs.len() as u16);
        if rng.one_in(4) {
            unknown = true;
            tx_unknown(rng, &mut descs);
        } else {
            let (frame, reason) = tx_known(c, rng, &mut descs);
            want_frames.extend(frame);
            if let Some(r) = reason {
                *want_reasons.entry(format!("{r:?}")).or_default() += 1;
            }
        }
    }
    for i in 0..QSIZE {
        let d = descs.get(usize::from(i)).copied().unwrap_or((0, 0, 0, 0));
        c.tx.write_desc(&c.mem, i, d);
    }
    for &h in &heads {
        c.tx.push(&c.mem, h);
    }
    let before = snapshot(&c.mem);
    let m0 = c.dev.metrics();
    c.dev.process_tx();
    let m1 = c.dev.metrics();
    assert!(before == snapshot(&c.mem), "transmit wrote guest memory");
    let used = c.tx.take_used(&c.mem);
    assert_eq!(
        used,
        heads.iter().map(|&h| (h, 0)).collect::<Vec<_>>(),
        "{descs:?}"
    );
    let got = host_frames(&c.host);
    let plain = |f: &Vec<u8>| [&PLAIN[..], f].concat();
    let mut it = got.iter();
    for f in &want_frames {
        assert!(
            it.any(|g| *g == plain(f)),
            "a valid frame did not reach the host in order"
        );
    }
    assert!(got.iter().all(|g| g[..12] == PLAIN), "a header not ours");
    assert_eq!(m1.tx_chains - m0.tx_chains, heads.len() as u64);
    assert_eq!(m1.tx_tap_errors, 0);
    for r in RejectReason::ALL {
        let delta = m1.rejections.count(*r) - m0.rejections.count(*r);
        let want = want_reasons.get(&format!("{r:?}")).copied().unwrap_or(0);
        if unknown {
            assert!(delta >= want, "{r:?}: {delta} < {want}");
        } else {
            assert_eq!(delta, want, "{r:?}");
        }
    }
    if !unknown {
        assert_eq!(got.len(), want_frames.len());
        assert_eq!(m1.tx_packets - m0.tx_packets, want_frames.len() as u64);
    }
}

/// The receive half of a step.
fn rx_step(c: &mut Case, rng: &mut Rng) {
    for _ in 0..rng.below(5) {
        c.host_send(rng);
    }
    for _ in 0..rng.below(6) {
        if rng.one_in(5) {
            c.rx_unknown(rng);
        } else {
            c.rx_known(rng);
        }
    }
    let before = snapshot(&c.mem);
    let m0 = c.dev.metrics();
    // What the model predicts, while it can.
    let exact = c.model.exact;
    let mut want_used = Vec::new();
    // (the chain's buffers, the bytes they must hold)
    let mut want_data: Vec<(GuestBufs, Vec<u8>)> = Vec::new();
    let mut want_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let (mut packets, mut bytes, mut bad, mut no_buffer) = (0u64, 0u64, 0u64, 0u64);
    if exact {
        let mut order = c.rx_order.clone();
        loop {
            let frame = match c.model.pending.take() {
                Some(f) => f,
                None => loop {
                    match c.model.queued.pop_front() {
                        Some((f, true)) => break Some(f),
                        Some((_, false)) => bad += 1,
                        None => break None,
                    }
                }
                .unwrap_or_default(),
            };
            if frame.is_empty() {
                break;
            }
            let Some(head) = order.pop_front() else {
                no_buffer += 1;
                c.model.pending = Some(frame);
                break;
            };
            match c.rx_outstanding[&head].kind.clone().unwrap() {
                RxKind::Broken(r) => {
                    *want_reasons.entry(format!("{r:?}")).or_default() += 1;
                    want_used.push((head, 0));
                    c.model.pending = Some(frame);
                }
                RxKind::Valid { cap, bufs } => {
                    if cap >= frame.len() as u64 {
                        packets += 1;
                        bytes += frame.len() as u64 - 12;
                        want_used.push((head, frame.len() as u32));
                        let mut h = PLAIN;
                        h[10] = 1;
                        want_data.push((bufs, [&h[..], &frame[12..]].concat()));
                    } else {
                        let r = RejectReason::RxChainTooSmall;
                        *want_reasons.entry(format!("{r:?}")).or_default() += 1;
                        want_used.push((head, 0));
                    }
                }
            }
        }
    }
    c.dev.process_rx();
    let m1 = c.dev.metrics();
    let used = c.rx.take_used(&c.mem);
    let mut writable = Vec::new();
    for &(id, len) in &used {
        assert_eq!(c.rx_order.pop_front(), Some(id), "used out of order");
        let chain = c.rx_outstanding.remove(&id).expect("a chain used twice");
        assert!(
            len == 0 || c.sent_lens.contains(&(len as usize)),
            "used length {len} is no frame the host sent"
        );
        writable.extend(chain.writable);
        c.rx_free.extend(chain.slots);
    }
    before.assert_changed_only_inside(&snapshot(&c.mem), &writable);
    if exact {
        assert_eq!(used, want_used);
        for (bufs, data) in want_data {
            let mut got = Vec::new();
            for (a, l) in bufs {
                let mut b = vec![0u8; l as usize];
                c.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
                got.extend(b);
            }
            assert!(got[..data.len()] == data[..], "received bytes differ");
            assert!(
                got[data.len()..].iter().all(|&b| b == 0xee),
                "past the frame"
            );
        }
        for r in RejectReason::ALL {
            let delta = m1.rejections.count(*r) - m0.rejections.count(*r);
            let want = want_reasons.get(&format!("{r:?}")).copied().unwrap_or(0);
            assert_eq!(delta, want, "{r:?}");
        }
        assert_eq!(m1.rx_packets - m0.rx_packets, packets);
        assert_eq!(m1.rx_bytes - m0.rx_bytes, bytes);
        assert_eq!(m1.rx_bad_frames - m0.rx_bad_frames, bad);
        assert_eq!(m1.rx_no_buffer - m0.rx_no_buffer, no_buffer);
    }
    assert_eq!(m1.rx_tap_errors, 0);
}

fn case(rng: &mut Rng) {
    let (ours, host) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let mem = GuestRam::from_ranges(&[
        (GuestAddress(0), HOLE as usize),
        (GuestAddress(RAM2), (END - RAM2) as usize),
    ])
    .unwrap();
    let mut c = Case {
        dev: Net::with_backend(config(), ours).unwrap(),
        host,
        rx: RawRing::new(RX_DESC, RX_AVAIL, RX_USED, QSIZE),
        tx: RawRing::new(TX_DESC, TX_AVAIL, TX_USED, QSIZE),
        rx_free: (0..QSIZE - RX_RESERVED).rev().collect(),
        rx_outstanding: BTreeMap::new(),
        rx_order: VecDeque::new(),
        model: RxModel {
            exact: true,
            ..Default::default()
        },
        sent_lens: Vec::new(),
        tx_next: TX_DATA,
        mem,
    };
    let interrupt = std::sync::Arc::new(RecordingInterrupt::default());
    let queues = vec![c.rx.queue(), c.tx.queue()];
    let (activation, _) = activation(&c.mem, OFFERED_FEATURES, queues, interrupt);
    c.dev.activate(activation).unwrap();
    for _ in 0..1 + rng.below(16) {
        tx_step(&mut c, rng);
        rx_step(&mut c, rng);
    }
}

#[test]
fn fuzz_net_queues_and_headers() {
    run_cases("net", DEFAULT_SEED, DEFAULT_CASES, case);
}
