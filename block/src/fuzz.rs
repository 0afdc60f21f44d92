//! A fuzzed guest driver against the device's real queue handling and a
//! real image file, on stable Rust: a seeded generator (no dependency)
//! writes descriptor chains into a real split queue in guest memory and
//! drives the device as the event loop does.
//!
//! Each chain is either *known* (valid, or broken in exactly one way the
//! generator chose, so its outcome is certain) or *unknown* (random
//! addresses, lengths, flags, links and header). After every step the
//! harness checks, whatever the guest did:
//!
//! - nothing panicked, and every chain came back exactly once;
//! - known chains got the status and used length they must get, reads
//!   returned the image's bytes, and each refusal was counted once under
//!   its reason (exactly, in steps without unknown chains);
//! - the image holds exactly what the known writes put there (unknown
//!   chains never write on a read-write image: their type is never
//!   `OUT` there) and keeps its size;
//! - guest memory changed only inside device-writable descriptors.
//!
//! `VMM_FUZZ_CASES=N` runs N cases (default [`DEFAULT_CASES`]),
//! `VMM_FUZZ_SEED=S` another seed, `VMM_FUZZ_CASE=C` replays one case.

use std::collections::BTreeMap;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_device::testing::fuzz::{run_cases, Rng};
use virtio_device::testing::memory::Snapshot;
use virtio_device::testing::ring::RawRing;
use virtio_device::{Activation, GuestRam, VirtioDevice, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO};
use crate::request::*;
use crate::test_utils::{config, RecordingInterrupt, TempImage};
use crate::*;

/// Cases when `VMM_FUZZ_CASES` is not set: about a second in a debug build.
const DEFAULT_CASES: u64 = 40;
const DEFAULT_SEED: u64 = 0xb10c_f022;

// Guest memory: RAM [0, 2 MiB) and [3 MiB, 4 MiB), a hole between. The
// queue's three parts live below DATA, far apart, the step's buffers from
// DATA.
const DESC: u64 = 0;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x4000;
const HOLE: u64 = 2 << 20;
const RAM2: u64 = 3 << 20;
const END: u64 = 4 << 20;
const DATA: u64 = 0x1_0000;
/// Unknown chains point into [WILD, HOLE) and RAM2 (or anywhere), never
/// at the known chains' buffers below WILD, which the device could
/// otherwise overwrite before it reads them.
const WILD: u64 = 1 << 20;
const QSIZE: u16 = 64;
const SECTORS: u64 = 256; // a 128 KiB image

/// What a known chain must get.
#[derive(Clone, Debug)]
struct Expect {
    status: Option<u8>,
    used_len: u32,
    reason: Option<RejectReason>,
    /// A valid read: (image offset, the chain's data buffers).
    read: Option<(u64, Vec<(u64, u32)>)>,
    /// A valid write: (image offset, the bytes).
    write: Option<(u64, Vec<u8>)>,
}

/// One step's chains as descriptors, and what known ones expect.
struct Step {
    descs: Vec<(u64, u32, u16, u16)>,
    heads: Vec<u16>,
    expect: BTreeMap<u16, (Expect, u64)>,
    unknown: bool,
    data_next: u64,
}

impl Step {
    fn alloc(&mut self, len: u64) -> u64 {
        let at = self.data_next;
        self.data_next += len.next_multiple_of(16);
        assert!(self.data_next <= WILD, "fuzz data area full");
        at
    }

    /// Adds a chain of `(addr, len, device writes)`; `loops` makes its
    /// last descriptor point to itself with `NEXT`.
    fn chain(&mut self, bufs: &[(u64, u32, bool)], loops: bool) -> u16 {
        let head = self.descs.len() as u16;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == bufs.len();
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last || loops {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let next = if last && loops { idx } else { idx + 1 };
            self.descs.push((addr, len, flags, next));
        }
        self.heads.push(head);
        head
    }
}

fn header(mem: &GuestRam, step: &mut Step, t: u32, sector: u64) -> (u64, u32, bool) {
    let at = step.alloc(16);
    let h = Header {
        request_type: t,
        reserved: 0,
        sector,
    };
    mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
    (at, 16, false)
}

/// Data buffers of `len` bytes in `segs` pieces; written with random
/// bytes when the device reads them.
fn data(
    mem: &GuestRam,
    step: &mut Step,
    rng: &mut Rng,
    len: u32,
    segs: u32,
    w: bool,
) -> Vec<(u64, u32, bool)> {
    let mut out = Vec::new();
    let mut left = len;
    for i in 0..segs {
        let n = if i + 1 == segs {
            left
        } else {
            (left / (segs - i)) & !1
        };
        let at = step.alloc(u64::from(n));
        let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        out.push((at, n, w));
        left -= n;
    }
    out
}

/// A known chain: valid or broken one way.
fn known(mem: &GuestRam, step: &mut Step, rng: &mut Rng, ro: bool) {
    let status_at = step.alloc(1);
    mem.write_obj(0xeeu8, GuestAddress(status_at)).unwrap();
    let status = (status_at, 1, true);
    let ioerr = |reason| Expect {
        status: Some(VIRTIO_BLK_S_IOERR),
        used_len: 1,
        reason: Some(reason),
        read: None,
        write: None,
    };
    let sectors = 1 + rng.below(16);
    let sector = rng.below(SECTORS - sectors + 1);
    let len = (sectors * 512) as u32;
    let segs = 1 + rng.below(4) as u32;
    let (bufs, loops, e) = match rng.below(14) {
        0..=2 => {
            let h = header(mem, step, VIRTIO_BLK_T_IN, sector);
            let d = data(mem, step, rng, len, segs, true);
            let read = d.iter().map(|&(a, l, _)| (a, l)).collect();
            let bufs = [vec![h], d, vec![status]].concat();
            let e = Expect {
                status: Some(VIRTIO_BLK_S_OK),
                used_len: len + 1,
                reason: None,
                read: Some((sector * 512, read)),
                write: None,
            };
            (bufs, false, e)
        }
        3..=4 => {
            let h = header(mem, step, VIRTIO_BLK_T_OUT, sector);
            let d = data(mem, step, rng, len, segs, false);
            let mut bytes = Vec::new();
            for &(a, l, _) in &d {
                let mut b = vec![0u8; l as usize];
                mem.read_slice(&mut b, GuestAddress(a)).unwrap();
                bytes.extend(b);
            }
            let bufs = [vec![h], d, vec![status]].concat();
            let e = if ro {
                ioerr(RejectReason::WriteToReadOnly)
            } else {
                Expect {
                    status: Some(VIRTIO_BLK_S_OK),
                    used_len: 1,
                    reason: None,
                    read: None,
                    write: Some((sector * 512, bytes)),
                }
            };
            (bufs, false, e)
        }
        5 => {
            let h = header(mem, step, VIRTIO_BLK_T_FLUSH, 0);
            let e = Expect {
                status: Some(VIRTIO_BLK_S_OK),
                used_len: 1,
                reason: None,
                read: None,
                write: None,
            };
            (vec![h, status], false, e)
        }
        6 => {
            let t = [2, 3, 11, 13, 14, 99, u32::MAX][rng.below(7) as usize];
            let h = header(mem, step, t, sector);
            let e = Expect {
                status: Some(VIRTIO_BLK_S_UNSUPP),
                used_len: 1,
                reason: Some(RejectReason::UnsupportedType),
                read: None,
                write: None,
            };
            (vec![h, status], false, e)
        }
        7 => {
            let far =
                [SECTORS, SECTORS + 1, u64::MAX, 1 << 55, u64::MAX / 512][rng.below(5) as usize];
            let t = if rng.one_in(2) {
                VIRTIO_BLK_T_IN
            } else {
                VIRTIO_BLK_T_OUT
            };
            let h = header(mem, step, t, far);
            let d = data(mem, step, rng, 512, 1, t == VIRTIO_BLK_T_IN);
            let reason = if ro && t == VIRTIO_BLK_T_OUT {
                RejectReason::WriteToReadOnly
            } else {
                RejectReason::SectorOutOfRange
            };
            ([vec![h], d, vec![status]].concat(), false, ioerr(reason))
        }
        8 => {
            let h = header(mem, step, VIRTIO_BLK_T_IN, sector);
            let short = len - 1 - rng.below(511) as u32;
            let d = data(mem, step, rng, short, 1, true);
            (
                [vec![h], d, vec![status]].concat(),
                false,
                ioerr(RejectReason::PartialSector),
            )
        }
        9 => {
            // The header cut short.
            let h = header(mem, step, VIRTIO_BLK_T_IN, sector);
            let cut = (h.0, rng.below(16) as u32, false);
            (
                vec![cut, status],
                false,
                ioerr(RejectReason::HeaderTooShort),
            )
        }
        10 => {
            // A write whose last descriptor is data: no status.
            let h = header(mem, step, VIRTIO_BLK_T_OUT, sector);
            let d = data(mem, step, rng, len, segs, false);
            let e = Expect {
                status: None,
                used_len: 0,
                reason: Some(RejectReason::NoStatus),
                read: None,
                write: None,
            };
            ([vec![h], d].concat(), false, e)
        }
        11 => {
            // Data in the hole, or across its start.
            let h = header(mem, step, VIRTIO_BLK_T_IN, sector);
            let at = [HOLE, HOLE - 256, END, u64::MAX - 100][rng.below(4) as usize];
            let e = Expect {
                status: None,
                used_len: 0,
                reason: Some(RejectReason::DescriptorOutsideMemory),
                read: None,
                write: None,
            };
            (vec![h, (at, 512, true), status], false, e)
        }
        12 => {
            let h = header(mem, step, VIRTIO_BLK_T_IN, sector);
            let e = Expect {
                status: None,
                used_len: 0,
                reason: Some(RejectReason::LoopingChain),
                read: None,
                write: None,
            };
            (vec![h, status], true, e)
        }
        _ => {
            // Too large: overlapping descriptors over the data area.
            let h = header(mem, step, VIRTIO_BLK_T_IN, 0);
            let big = (DATA, (HOLE - DATA) as u32 & !511, true);
            let n = (MAX_REQUEST_BYTES / u64::from(big.1)) as usize + 1;
            let bufs = [vec![h], vec![big; n], vec![status]].concat();
            (bufs, false, ioerr(RejectReason::RequestTooLarge))
        }
    };
    let head = step.chain(&bufs, loops);
    step.expect.insert(head, (e, status_at));
}

/// An unknown chain: random everything (never `OUT` on a read-write
/// image, so the image stays predictable).
fn unknown(mem: &GuestRam, step: &mut Step, rng: &mut Rng, ro: bool) {
    step.unknown = true;
    let mut t = rng.below(10) as u32;
    if t == VIRTIO_BLK_T_OUT && !ro {
        t = VIRTIO_BLK_T_IN;
    }
    // The header too lies in the wild area: its descriptor may be
    // writable and longer than 16 bytes.
    let at = WILD + rng.below(HOLE - WILD - 64);
    let hdr = Header {
        request_type: t,
        reserved: 0,
        sector: rng.below(SECTORS + 4),
    };
    mem.write_slice(&hdr.to_bytes(), GuestAddress(at)).unwrap();
    let h = (at, 16u32, false);
    let n = 1 + rng.below(5) as usize;
    let head = step.descs.len() as u16;
    step.descs
        .push((h.0, rng.below(40) as u32, rng.below(4) as u16, head + 1));
    for i in 0..n {
        let addr = if rng.one_in(8) {
            rng.next()
        } else {
            WILD + rng.below(HOLE - WILD + (END - RAM2))
        };
        let len = if rng.one_in(8) {
            rng.next() as u32
        } else {
            rng.below(4096) as u32
        };
        let mut flags = rng.below(4) as u16 & (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16;
        if i + 1 < n && !rng.one_in(6) {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        // Links stay inside the chain, or go to the never-used end of the
        // table or past it: never into another chain, whose buffers the
        // device could then legitimately write.
        let next = if rng.one_in(6) {
            if rng.one_in(2) {
                head + rng.below(n as u64 + 1) as u16
            } else {
                QSIZE - 4 + rng.below(12) as u16
            }
        } else if i + 1 < n {
            head + 2 + i as u16
        } else {
            QSIZE - 1
        };
        step.descs.push((addr, len, flags, next));
    }
    step.heads.push(head);
}

/// The memory the device may write into: the step's buffers and the
/// unknown chains' targets.
fn snapshot(mem: &GuestRam) -> Snapshot {
    Snapshot::take(mem, &[(DATA, HOLE), (RAM2, END)])
}

fn case(rng: &mut Rng) {
    let ro = rng.one_in(3);
    let img = TempImage::new("fuzz", (SECTORS * 512) as usize);
    let mut shadow = img.contents();
    let mut dev = Block::new(config(&img, ro)).unwrap();
    let mem = GuestRam::from_ranges(&[
        (GuestAddress(0), HOLE as usize),
        (GuestAddress(RAM2), (END - RAM2) as usize),
    ])
    .unwrap();
    let mut ring = RawRing::new(DESC, AVAIL, USED, QSIZE);
    let interrupt = std::sync::Arc::new(RecordingInterrupt::default());
    let mut features = VIRTIO_F_VERSION_1;
    if rng.one_in(2) {
        features |= VIRTIO_BLK_F_FLUSH;
    }
    if ro {
        features |= VIRTIO_BLK_F_RO;
    }
    dev.activate(Activation {
        mem: mem.clone(),
        acked_features: features,
        queues: vec![ring.queue()],
        queue_events: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
        interrupt: interrupt.clone(),
    })
    .unwrap();
    for _ in 0..1 + rng.below(12) {
        let mut step = Step {
            descs: Vec::new(),
            heads: Vec::new(),
            expect: BTreeMap::new(),
            unknown: false,
            data_next: DATA,
        };
        for _ in 0..1 + rng.below(6) {
            if rng.one_in(4) {
                unknown(&mem, &mut step, rng, ro);
            } else {
                known(&mem, &mut step, rng, ro);
            }
            if step.descs.len() > usize::from(QSIZE) - 40 {
                break;
            }
        }
        for i in 0..QSIZE {
            let d = step
                .descs
                .get(usize::from(i))
                .copied()
                .unwrap_or((0, 0, 0, 0));
            ring.write_desc(&mem, i, d);
        }
        for &h in &step.heads {
            ring.push(&mem, h);
        }
        let before = snapshot(&mem);
        let m0 = dev.metrics();
        dev.process_queue();
        let m1 = dev.metrics();

        // Every chain back once.
        let mut back = BTreeMap::new();
        for (id, len) in ring.take_used(&mem) {
            assert!(back.insert(id, len).is_none(), "id {id} twice");
        }
        let mut posted = step.heads.clone();
        posted.sort();
        assert_eq!(
            back.keys().copied().collect::<Vec<_>>(),
            posted,
            "{:?}",
            step.descs
        );
        assert_eq!(m1.requests - m0.requests, step.heads.len() as u64);
        if !back.is_empty() {
            assert!(!interrupt.used().is_empty(), "no interrupt");
        }

        // Known chains: status, length, data, counters.
        let mut want_reasons: BTreeMap<String, u64> = BTreeMap::new();
        for (head, (e, status_at)) in &step.expect {
            let got: u8 = mem.read_obj(GuestAddress(*status_at)).unwrap();
            assert_eq!(
                got,
                e.status.unwrap_or(0xee),
                "chain {head}: {:?} {:?}",
                e.reason,
                e.status
            );
            assert_eq!(
                back[head], e.used_len,
                "chain {head}: {:?} {:?}",
                e.reason, e.status
            );
            if let Some(r) = e.reason {
                *want_reasons.entry(format!("{r:?}")).or_default() += 1;
            }
            if let Some((off, bufs)) = &e.read {
                let mut o = *off as usize;
                for &(a, l) in bufs {
                    let mut b = vec![0u8; l as usize];
                    mem.read_slice(&mut b, GuestAddress(a)).unwrap();
                    assert!(b == shadow[o..o + l as usize], "read data differs");
                    o += l as usize;
                }
            }
            if let Some((off, bytes)) = &e.write {
                shadow[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
            }
        }
        for r in RejectReason::ALL {
            let delta = m1.rejections.count(*r) - m0.rejections.count(*r);
            let want = want_reasons.get(&format!("{r:?}")).copied().unwrap_or(0);
            if step.unknown {
                assert!(delta >= want, "{r:?}: {delta} < {want}");
            } else {
                assert_eq!(delta, want, "{r:?}");
            }
        }

        // The image: exactly the known writes, same size.
        assert!(
            img.contents() == shadow,
            "the image differs from the known writes"
        );

        // Memory changed only inside device-writable descriptors.
        let after = snapshot(&mem);
        let writable: Vec<(u64, u64)> = step
            .descs
            .iter()
            .filter(|d| d.2 & VRING_DESC_F_WRITE as u16 != 0)
            .map(|d| (d.0, d.0.saturating_add(u64::from(d.1))))
            .collect();
        before.assert_changed_only_inside(&after, &writable);
    }
}

#[test]
fn fuzz_block_requests() {
    run_cases("block", DEFAULT_SEED, DEFAULT_CASES, case);
}
