//! A fuzzed guest driver against the balloon's real queue handling, on
//! stable Rust: a seeded generator (no dependency) writes descriptor
//! chains, PFN arrays, statistics buffers and free page reports into real
//! split queues in guest memory and drives the device the way the VMM does
//! (queue processing, statistics ticks, resets, target changes, the event
//! loop).
//!
//! Each published chain is either *known* (valid, or broken in exactly one
//! way the generator chose, so its outcome is certain) or *unknown* (random
//! addresses, lengths, flags, links, indirect tables, head indices). After
//! every step the harness checks, whatever the guest did:
//!
//! - nothing panicked;
//! - the used ring only ever gets ids the driver made available and the
//!   device had not returned yet, each exactly once, with length 0; every
//!   consumed chain with a valid head comes back (the statistics buffer the
//!   device holds excepted), and an interrupt is raised only for a queue
//!   whose used ring grew;
//! - every rejected known chain is counted once under its reason, and
//!   valid ones under none; request counters count every consumed chain;
//! - the device releases exactly the pages of the known chains it accepted,
//!   and never a byte outside a guest RAM region, whatever it was sent;
//! - its host-side book of ballooned pages matches the driver's;
//! - memory stays bounded: the release worker's queue (with the releaser
//!   stalled, so nothing drains it) and the retired eventfds stay under a
//!   bound derived from guest RAM, not from how long the guest keeps going.
//!
//! `VMM_FUZZ_CASES=N` runs N cases (default [`DEFAULT_CASES`]),
//! `VMM_FUZZ_SEED=S` another seed, `VMM_FUZZ_CASE=C` replays one case.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_device::{Activation, GuestRam, Queue, QueueT, VirtioDevice, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::device::Active;
use crate::release::{HostRange, Releaser};
use crate::test_utils::{
    test_mem, RecordingInterrupt, HOLE_START, MEM_END, REGION_B_START, REGION_C_START,
};
use crate::*;
use virtio_device::queue::ActiveQueue;
use virtio_device::testing::fuzz::{run_cases, Rng};

/// Cases per test when `VMM_FUZZ_CASES` is not set: about a second in a
/// debug build.
const DEFAULT_CASES: u64 = 150;
const DEFAULT_SEED: u64 = 0xba11_00f0_22ed;

// Guest memory (see test_utils): A [0, 4 MiB) and B [4, 8 MiB) are RAM and
// adjacent, [8, 12 MiB) is a hole, C [12, 16 MiB) is RAM. The queues live
// at the start of A, the driver's buffers after them.
const QSIZE: u16 = QUEUE_SIZE;
const QUEUE_AREA: u64 = 0x1_0000;
const QUEUE_STRIDE: u64 = 0x1_0000;
const DATA_START: u64 = 0x8_0000;
const DATA_END: u64 = 0x10_0000;
const PAGE: u64 = BALLOON_PAGE_SIZE;
/// Guest RAM pages of the test memory.
const RAM_PAGES: u64 = (HOLE_START + MEM_END - REGION_C_START) / PAGE;

/// Offsets in one queue's area, as `MockSplitQueue::create` lays it out.
const AVAIL_OFF: u64 = 16 * QSIZE as u64;
const USED_OFF: u64 = (AVAIL_OFF + 6 + 2 * QSIZE as u64).next_multiple_of(4);

fn queue_base(index: usize) -> u64 {
    QUEUE_AREA + index as u64 * QUEUE_STRIDE
}

fn is_ram_pfn(pfn: u64) -> bool {
    pfn < HOLE_START / PAGE || (REGION_C_START / PAGE..MEM_END / PAGE).contains(&pfn)
}

fn random_ram_pfn(rng: &mut Rng) -> u32 {
    let pfn = if rng.one_in(3) {
        rng.range(REGION_C_START / PAGE, MEM_END / PAGE - 1)
    } else {
        rng.below(HOLE_START / PAGE)
    };
    pfn as u32
}

fn random_non_ram_pfn(rng: &mut Rng) -> u32 {
    match rng.below(4) {
        0 => rng.range(HOLE_START / PAGE, REGION_C_START / PAGE - 1) as u32,
        1 => rng.range(MEM_END / PAGE, MEM_END / PAGE + 16) as u32,
        2 => u32::MAX - rng.below(4) as u32,
        _ => rng.range(MEM_END / PAGE, u64::from(u32::MAX)) as u32,
    }
}

/// A set of pages of the test memory, one bit each (the harness's own
/// books must not be what makes a case slow).
#[derive(Clone, PartialEq, Eq)]
struct PageSet(Vec<u64>);

impl Default for PageSet {
    fn default() -> Self {
        PageSet::new()
    }
}

impl PageSet {
    fn new() -> Self {
        PageSet(vec![0; (MEM_END / PAGE).div_ceil(64) as usize])
    }

    /// Adds `page`; whether it was new.
    fn insert(&mut self, page: u64) -> bool {
        let (w, bit) = ((page / 64) as usize, 1u64 << (page % 64));
        let new = self.0[w] & bit == 0;
        self.0[w] |= bit;
        new
    }

    /// Removes `page`; whether it was there.
    fn remove(&mut self, page: u64) -> bool {
        let (w, bit) = ((page / 64) as usize, 1u64 << (page % 64));
        let was = self.0[w] & bit != 0;
        self.0[w] &= !bit;
        was
    }

    fn extend(&mut self, pages: impl IntoIterator<Item = u64>) {
        for p in pages {
            self.insert(p);
        }
    }

    fn union(&mut self, other: &PageSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }

    fn len(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.0.len() as u64 * 64).filter(|p| self.0[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
}

impl std::fmt::Debug for PageSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// What a chain's processing must come to.
#[derive(Clone, Debug)]
enum Expect {
    /// An accepted PFN request: the PFNs that are RAM (duplicates kept),
    /// and how many are not.
    Pfns { ram: Vec<u32>, outside: u64 },
    /// An accepted statistics buffer: its bytes.
    Stats { bytes: Vec<u8> },
    /// An accepted free page report: its ranges.
    Report { ranges: Vec<(u64, u64)> },
    /// Rejected: one rejection, of one of these reasons.
    Reject(&'static [RejectReason]),
    /// A head outside the descriptor table: an empty chain that cannot be
    /// returned.
    BadHead,
    /// Anything may happen (but see the invariants).
    Unknown,
}

/// The role of each transport queue index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

/// One descriptor as the generator writes it.
#[derive(Clone, Copy, Debug)]
struct D {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// The driver's side of one queue.
struct DrvQueue {
    role: Role,
    index: usize,
    /// The driver's available index (what it has published).
    avail_idx: u16,
    /// Next free descriptor slot; slots are reused once nothing is pending.
    table_next: u16,
    /// Published and not yet consumed, by available ring position.
    pending: BTreeMap<u16, Expect>,
    /// Consumed by the device (heads inside the table) and not returned.
    outstanding: Vec<u16>,
    /// The available index in memory is off by more than the queue size.
    jumped: bool,
    /// The driver scribbled over its descriptors or ring: what is pending
    /// is unknown.
    tainted: bool,
    /// The driver asked for no interrupts (`VRING_AVAIL_F_NO_INTERRUPT`).
    no_interrupt: bool,
}

impl DrvQueue {
    fn base(&self) -> u64 {
        queue_base(self.index)
    }
}

/// A releaser that records what it is handed and can be stalled, so that
/// the release worker cannot keep up.
#[derive(Clone, Default)]
struct StallReleaser {
    inner: Arc<(Mutex<StallState>, Condvar)>,
}

#[derive(Default)]
struct StallState {
    stalled: bool,
    released: Vec<(u64, u64)>,
}

impl StallReleaser {
    fn set_stalled(&self, stalled: bool) {
        self.inner.0.lock().unwrap().stalled = stalled;
        self.inner.1.notify_all();
    }

    fn take(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.inner.0.lock().unwrap().released)
    }
}

impl Releaser for StallReleaser {
    fn release(&self, range: &HostRange<'_>) -> std::io::Result<u64> {
        let (lock, cv) = &*self.inner;
        let mut s = cv.wait_while(lock.lock().unwrap(), |s| s.stalled).unwrap();
        s.released.push((range.guest_addr().0, range.len() as u64));
        Ok(range.len() as u64)
    }
}

/// The state of the device as the checks compare it, before a step.
struct Snapshot {
    /// Per driver queue: the device's next_avail and next_used, and the
    /// available ring's entries.
    queues: Vec<Option<(u16, u16, Vec<u16>)>>,
    metrics: BalloonMetrics,
    interrupts: usize,
    /// Used-ring updates the driver heard of without an interrupt.
    quiet: usize,
}

/// What the consumed chains of one step add up to.
#[derive(Default)]
struct Tally {
    /// Some consumed chain was unknown: only bounds hold.
    inexact: bool,
    requests: [u64; 4],
    inflate_pages: u64,
    deflate_pages: u64,
    deflate_not_inflated: u64,
    stats_updates: u64,
    stats_unknown_tags: u64,
    report_ranges: u64,
    /// Rejections certain to be counted, by reason.
    sure: BTreeMap<&'static str, u64>,
    /// Rejections of known chains with a choice of reasons.
    either: Vec<&'static [RejectReason]>,
    /// Pages the device must release.
    releases: PageSet,
}

impl Tally {
    fn reject(&mut self, r: RejectReason, n: u64) {
        if n > 0 {
            *self.sure.entry(reason_name(r)).or_default() += n;
        }
    }
}

fn reason_name(r: RejectReason) -> &'static str {
    // Debug names are stable enough for a map key.
    match r {
        RejectReason::PfnOutsideRam => "PfnOutsideRam",
        RejectReason::EmptyChain => "EmptyChain",
        RejectReason::LoopingChain => "LoopingChain",
        RejectReason::BrokenChain => "BrokenChain",
        RejectReason::DescriptorOutsideMemory => "DescriptorOutsideMemory",
        RejectReason::WrongDirection => "WrongDirection",
        RejectReason::LengthNotMultipleOf4 => "LengthNotMultipleOf4",
        RejectReason::BufferTooLarge => "BufferTooLarge",
        RejectReason::StatsTruncated => "StatsTruncated",
        RejectReason::StatsPartialEntry => "StatsPartialEntry",
        RejectReason::ReportRangeUnaligned => "ReportRangeUnaligned",
        RejectReason::QueueBroken => "QueueBroken",
        RejectReason::UsedRingError => "UsedRingError",
        RejectReason::BadHeadIndex => "BadHeadIndex",
    }
}

/// The whole 4 KiB pages of `[addr, addr + len)`, and whether the range is
/// exactly those pages.
fn aligned_pages(addr: u64, len: u64) -> (Option<(u64, u64)>, bool) {
    let whole = addr.checked_add(len).and_then(|end| {
        let start = addr.checked_next_multiple_of(PAGE)?;
        let end = end - end % PAGE;
        (start < end).then_some((start, end))
    });
    let exact = whole.is_some_and(|(s, e)| s == addr && e == addr + len);
    (whole, exact)
}

/// The statistics a buffer holds, as the device must parse it: at most 64
/// entries, a later tag wins, tags it does not know are counted.
fn parse_stats_model(bytes: &[u8]) -> (BTreeMap<u16, u64>, u64) {
    let mut values = BTreeMap::new();
    let mut unknown = 0;
    for e in bytes.chunks_exact(STATS_ENTRY_SIZE) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let val = u64::from_le_bytes(e[2..10].try_into().unwrap());
        if tag < 16 {
            values.insert(tag, val);
        } else {
            unknown += 1;
        }
    }
    (values, unknown)
}

/// One fuzzed device with its driver.
struct World {
    mem: GuestRam,
    dev: Arc<Mutex<Balloon>>,
    rel: StallReleaser,
    em: Option<EventManager<Arc<Mutex<Balloon>>>>,
    /// The queues of the current activation.
    queues: Vec<DrvQueue>,
    irq: Option<Arc<RecordingInterrupt>>,
    events: Vec<EventFd>,
    /// Next free byte of the data area.
    data_next: u64,
    /// The driver's book of ballooned pages; `None` once an unknown chain
    /// may have changed the device's.
    ballooned: Option<PageSet>,
    /// The last statistics buffer the device accepted; `None` when unknown.
    last_stats: Option<Option<Vec<u8>>>,
    /// The driver's `actual`.
    actual: u32,
    activations: u64,
    resets: u64,
    /// Resets since the event loop last ran.
    resets_unsynced: usize,
    /// Pages the device must have released by the next check, and whether
    /// that is certain (no unknown chain was consumed meanwhile).
    expected_releases: PageSet,
    releases_exact: bool,
    /// The releaser is stalled: releases are checked once it runs again.
    stalled: bool,
    /// The step may process the queues in any order (the event loop).
    any_order: bool,
}

impl World {
    fn new(rng: &mut Rng) -> World {
        let cfg = BalloonConfig {
            amount_mib: rng.below(20) as u32,
            deflate_on_oom: rng.bool(),
            stats_polling_interval_s: rng.pick(&[0, 0, 1, 5, 3600]),
            free_page_reporting: rng.bool(),
        };
        let rel = StallReleaser::default();
        let dev = Arc::new(Mutex::new(
            Balloon::with_releaser(cfg, Arc::new(rel.clone())).unwrap(),
        ));
        let em = rng.one_in(3).then(|| {
            let mut em = EventManager::<Arc<Mutex<Balloon>>>::new().unwrap();
            em.add_subscriber(dev.clone());
            em
        });
        World {
            mem: test_mem(),
            dev,
            rel,
            em,
            queues: Vec::new(),
            irq: None,
            events: Vec::new(),
            data_next: DATA_START,
            ballooned: None,
            last_stats: Some(None),
            actual: 0,
            activations: 0,
            resets: 0,
            resets_unsynced: 0,
            expected_releases: PageSet::new(),
            releases_exact: true,
            stalled: false,
            any_order: false,
        }
    }

    fn dev(&self) -> std::sync::MutexGuard<'_, Balloon> {
        self.dev.lock().unwrap()
    }

    fn write_desc(&self, table: u64, index: u16, d: D) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&d.addr.to_le_bytes());
        b[8..12].copy_from_slice(&d.len.to_le_bytes());
        b[12..14].copy_from_slice(&d.flags.to_le_bytes());
        b[14..].copy_from_slice(&d.next.to_le_bytes());
        let _ = self
            .mem
            .write_slice(&b, GuestAddress(table + 16 * u64::from(index)));
    }

    fn store_u16(&self, addr: u64, v: u16) {
        self.mem.write_obj(v, GuestAddress(addr)).unwrap();
    }

    /// Room for `len` bytes in the data area, 16-aligned, or `None` when it
    /// is full (it is reused once nothing is pending).
    fn alloc(&mut self, len: u64) -> Option<u64> {
        let addr = self.data_next;
        let end = addr.checked_add(len)?.next_multiple_of(16);
        (end <= DATA_END).then(|| {
            self.data_next = end;
            addr
        })
    }

    fn buffer(&mut self, bytes: &[u8]) -> Option<u64> {
        let addr = self.alloc(bytes.len() as u64)?;
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        Some(addr)
    }

    // ---- activation and reset ------------------------------------------

    /// The driver negotiates (sometimes wrongly) and activates the device.
    fn activate(&mut self, rng: &mut Rng) {
        if self.dev().is_activated() {
            self.reset();
        }
        let (offered, nqueues) = {
            let d = self.dev();
            (d.device_features(), d.queue_max_sizes().len())
        };
        let mut acked = offered & rng.next();
        if rng.bool() {
            acked |= VIRTIO_F_VERSION_1;
        }
        // Sometimes a driver error the device must refuse.
        let fault = rng.below(8);
        if fault == 0 {
            acked |= 1 << rng.below(64);
        }
        let layout = QueueLayout::from_features(acked);
        let start_idx = match rng.below(4) {
            0 => 0,
            1 => u16::MAX - rng.below(300) as u16,
            _ => rng.next() as u16,
        };
        // Fresh rings (a rebooted driver starts over).
        for i in 0..nqueues {
            let zeros = vec![0u8; QUEUE_STRIDE as usize];
            self.mem
                .write_slice(&zeros, GuestAddress(queue_base(i)))
                .unwrap();
        }
        let mut ready = vec![true; nqueues];
        let mut count = nqueues;
        if fault == 1 {
            ready[rng.below(layout.len() as u64) as usize] = false;
        } else if fault == 2 {
            count = rng.below(layout.len() as u64) as usize;
        }
        let mut queues = Vec::new();
        for (i, &ready) in ready.iter().enumerate().take(count) {
            let base = queue_base(i);
            let mut q = Queue::new(QSIZE).unwrap();
            q.set_size(QSIZE);
            q.set_desc_table_address(Some(base as u32), Some(0));
            q.set_avail_ring_address(Some((base + AVAIL_OFF) as u32), Some(0));
            q.set_used_ring_address(Some((base + USED_OFF) as u32), Some(0));
            q.set_next_avail(start_idx);
            q.set_next_used(start_idx);
            q.set_ready(ready);
            self.store_u16(base + AVAIL_OFF + 2, start_idx);
            self.store_u16(base + USED_OFF + 2, start_idx);
            queues.push(q);
        }
        let irq = Arc::new(RecordingInterrupt::default());
        let events: Vec<EventFd> = (0..count)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let result = self.dev().activate(Activation {
            mem: self.mem.clone(),
            acked_features: acked,
            queues,
            queue_events: events.iter().map(|e| e.try_clone().unwrap()).collect(),
            interrupt: irq.clone(),
        });
        let should_fail = acked & !offered != 0 || fault == 1 || fault == 2;
        assert_eq!(result.is_err(), should_fail, "activation with {acked:#x}");
        assert_eq!(self.dev().is_activated(), !should_fail);
        if should_fail {
            return;
        }
        self.activations += 1;
        let mut roles = vec![
            (layout.inflate, Role::Inflate),
            (layout.deflate, Role::Deflate),
        ];
        roles.extend(layout.stats.map(|i| (i, Role::Stats)));
        roles.extend(layout.reporting.map(|i| (i, Role::Reporting)));
        self.queues = roles
            .into_iter()
            .map(|(index, role)| DrvQueue {
                role,
                index,
                avail_idx: start_idx,
                table_next: 0,
                pending: BTreeMap::new(),
                outstanding: Vec::new(),
                jumped: false,
                tainted: false,
                no_interrupt: false,
            })
            .collect();
        self.irq = Some(irq);
        self.events = events;
        self.data_next = DATA_START;
        self.ballooned = Some(PageSet::new());
        let actual = self.dev().actual_pages();
        self.actual = actual;
    }

    fn reset(&mut self) {
        self.dev().reset();
        // Reset clears `actual` whether or not the device was active.
        self.actual = 0;
        if self.queues.is_empty() {
            return;
        }
        self.resets += 1;
        self.resets_unsynced += 1;
        self.queues.clear();
        self.irq = None;
        self.events.clear();
        self.ballooned = None;
        self.actual = 0;
        let d = self.dev();
        assert!(!d.is_activated());
        assert_eq!(d.inflated_pages(), 0);
        assert_eq!(d.actual_pages(), 0);
        drop(d);
        // Reset drained the release worker: everything is released.
        self.check_releases();
    }

    // ---- what the driver posts -----------------------------------------

    /// Writes a chain of `descs` into queue `qi` (directly or through an
    /// indirect table), publishes it with `head` (default: its first slot)
    /// and records what its processing must come to.
    fn post(
        &mut self,
        qi: usize,
        descs: &[D],
        indirect: bool,
        head: Option<u16>,
        expect: Expect,
    ) -> bool {
        let q = &self.queues[qi];
        let slots = if indirect { 1 } else { descs.len() as u16 };
        if q.pending.len() >= usize::from(QSIZE) || q.table_next + slots > QSIZE {
            return false;
        }
        let base = q.table_next;
        let table = q.base();
        if indirect {
            let Some(itable) = self.alloc(16 * descs.len() as u64) else {
                return false;
            };
            for (i, d) in descs.iter().enumerate() {
                self.write_desc(itable, i as u16, *d);
            }
            let head_desc = D {
                addr: itable,
                len: 16 * descs.len() as u32,
                flags: VRING_DESC_F_INDIRECT as u16,
                next: 0,
            };
            self.write_desc(table, base, head_desc);
        } else {
            for (i, d) in descs.iter().enumerate() {
                // Links inside the chain are relative to its first slot.
                let mut d = *d;
                if d.flags & VRING_DESC_F_NEXT as u16 != 0 && d.next < QSIZE {
                    d.next = d.next.wrapping_add(base);
                }
                self.write_desc(table, base + i as u16, d);
            }
        }
        self.publish(qi, head.unwrap_or(base), expect);
        self.queues[qi].table_next = base + slots;
        true
    }

    /// Puts `head` in the next available ring slot and moves the index.
    fn publish(&mut self, qi: usize, head: u16, expect: Expect) {
        let q = &self.queues[qi];
        let pos = q.avail_idx;
        let ring = q.base() + AVAIL_OFF + 4 + 2 * u64::from(pos % QSIZE);
        self.store_u16(ring, head);
        let q = &mut self.queues[qi];
        q.avail_idx = pos.wrapping_add(1);
        q.pending.insert(pos, expect);
        if !q.jumped {
            let (base, idx) = (q.base(), q.avail_idx);
            self.store_u16(base + AVAIL_OFF + 2, idx);
        }
    }

    /// Links `n` descriptors in order (relative `next`), all with `flags`.
    fn link(descs: &mut [D]) {
        let n = descs.len();
        for (i, d) in descs.iter_mut().enumerate() {
            if i + 1 < n {
                d.flags |= VRING_DESC_F_NEXT as u16;
                d.next = i as u16 + 1;
            }
        }
    }

    /// A chain with exactly one defect the generator knows the outcome of,
    /// or none.
    fn post_known(&mut self, rng: &mut Rng, qi: usize) {
        let role = self.queues[qi].role;
        let writable = role == Role::Reporting;
        let dir = if writable {
            VRING_DESC_F_WRITE as u16
        } else {
            0
        };
        let k = rng.range(1, 4) as usize;
        let mut descs = Vec::with_capacity(k);
        let mut expect;
        match role {
            Role::Inflate | Role::Deflate => {
                let mut all = Vec::new();
                for _ in 0..k {
                    let n = rng.below(40) as usize;
                    let pfns: Vec<u32> = (0..n).map(|_| random_ram_pfn(rng)).collect();
                    all.extend(&pfns);
                    let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
                    // Three bytes of slack for a length that is off.
                    let Some(addr) = self.alloc(bytes.len() as u64 + 3) else {
                        return;
                    };
                    self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
                    descs.push(D {
                        addr,
                        len: bytes.len() as u32,
                        flags: dir,
                        next: 0,
                    });
                }
                expect = Expect::Pfns {
                    ram: all,
                    outside: 0,
                };
            }
            Role::Stats => {
                let mut all = Vec::new();
                for _ in 0..k {
                    let entries = rng.below(30) as usize;
                    let mut bytes = Vec::new();
                    for _ in 0..entries {
                        let tag = rng.pick(&[0u16, 4, 5, 6, 10, 15, 16, 0xffff]);
                        bytes.extend(tag.to_le_bytes());
                        bytes.extend(rng.next().to_le_bytes());
                    }
                    if rng.one_in(4) {
                        bytes.truncate(bytes.len().saturating_sub(rng.range(1, 9) as usize));
                    }
                    let Some(addr) = self.buffer(&bytes) else {
                        return;
                    };
                    all.extend(&bytes);
                    descs.push(D {
                        addr,
                        len: bytes.len() as u32,
                        flags: dir,
                        next: 0,
                    });
                }
                if rng.one_in(6) {
                    // A long buffer in RAM: only 64 entries are read.
                    let addr = REGION_B_START + PAGE * rng.below(100);
                    let len = rng.range(641, 0x2_0000) as u32;
                    let mut bytes = vec![0u8; len as usize];
                    self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
                    all.extend(&bytes);
                    descs.push(D {
                        addr,
                        len,
                        flags: dir,
                        next: 0,
                    });
                }
                expect = Expect::Stats { bytes: all };
            }
            Role::Reporting => {
                let mut ranges = Vec::new();
                for _ in 0..k {
                    let pfn = u64::from(random_ram_pfn(rng));
                    // Stay inside the RAM the page is in.
                    let end = if pfn < HOLE_START / PAGE {
                        HOLE_START
                    } else {
                        MEM_END
                    };
                    let (addr, len) = if rng.one_in(4) {
                        // Unaligned (or empty), still in RAM.
                        let addr = pfn * PAGE + rng.below(PAGE);
                        (addr, rng.below(3 * PAGE).min(end - addr) as u32)
                    } else {
                        let pages = rng.range(1, 8).min(end / PAGE - pfn);
                        (pfn * PAGE, (pages * PAGE) as u32)
                    };
                    ranges.push((addr, u64::from(len)));
                    descs.push(D {
                        addr,
                        len,
                        flags: dir,
                        next: 0,
                    });
                }
                expect = Expect::Report { ranges };
            }
        }
        let indirect = rng.one_in(4);
        let mut head = None;
        // One defect, or none.
        match rng.below(16) {
            0 if matches!(role, Role::Inflate | Role::Deflate) => {
                // Some PFNs that are not RAM: dropped and counted.
                if let Expect::Pfns { ram, outside } = &mut expect {
                    let d = rng.below(k as u64) as usize;
                    let n = descs[d].len / 4;
                    for _ in 0..rng.range(1, 4) {
                        if n == 0 {
                            break;
                        }
                        let i = rng.below(u64::from(n));
                        let at = descs[d].addr + 4 * i;
                        let old: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                        if !is_ram_pfn(u64::from(old)) {
                            continue;
                        }
                        let bad = random_non_ram_pfn(rng);
                        self.mem.write_obj(bad, GuestAddress(at)).unwrap();
                        let pos = ram.iter().position(|p| *p == old).unwrap();
                        ram.remove(pos);
                        *outside += 1;
                    }
                }
            }
            1 => {
                let d = rng.below(k as u64) as usize;
                descs[d].flags ^= VRING_DESC_F_WRITE as u16;
                expect = Expect::Reject(&[RejectReason::WrongDirection]);
            }
            2 if matches!(role, Role::Inflate | Role::Deflate) => {
                let d = rng.below(k as u64) as usize;
                descs[d].len += rng.range(1, 3) as u32;
                expect = Expect::Reject(&[RejectReason::LengthNotMultipleOf4]);
            }
            3 => {
                let d = rng.below(k as u64) as usize;
                let (addr, len) = match rng.below(5) {
                    0 => (HOLE_START + rng.below(0x40_0000 - 64), rng.range(1, 64)),
                    1 => (HOLE_START - 4 * rng.range(1, 4), rng.range(17, 64) * 4),
                    2 => (MEM_END - 4, 8),
                    3 => (u64::MAX - 3, 8),
                    _ => (MEM_END + rng.below(1 << 40), rng.range(1, 4096)),
                };
                descs[d].addr = addr;
                descs[d].len = (len as u32) & !3;
                if descs[d].len == 0 {
                    descs[d].len = 4;
                }
                expect = Expect::Reject(&[RejectReason::DescriptorOutsideMemory]);
            }
            4 if matches!(role, Role::Inflate | Role::Deflate) => {
                let d = rng.below(k as u64) as usize;
                descs[d].addr = REGION_B_START + PAGE * rng.below(64);
                descs[d].len = (inflate_max_bytes() + 4 * rng.range(1, 1000)) as u32;
                expect = Expect::Reject(&[RejectReason::BufferTooLarge]);
            }
            5 => {
                // The last descriptor links back into the chain.
                let last = descs.len() - 1;
                descs[last].flags |= VRING_DESC_F_NEXT as u16;
                descs[last].next = rng.below(k as u64) as u16;
                // A loop in an indirect table ends with the table (its
                // length is the bound): a chain that does not end.
                expect = Expect::Reject(if indirect {
                    &[RejectReason::BrokenChain]
                } else {
                    &[RejectReason::LoopingChain]
                });
            }
            6 => {
                // The last descriptor links past the table.
                let last = descs.len() - 1;
                descs[last].flags |= VRING_DESC_F_NEXT as u16;
                descs[last].next = if indirect {
                    k as u16 + rng.below(1000) as u16
                } else {
                    QSIZE + rng.below(u64::from(u16::MAX - QSIZE)) as u16
                };
                expect = Expect::Reject(&[RejectReason::BrokenChain]);
            }
            7 => {
                head = Some(QSIZE + rng.below(u64::from(u16::MAX - QSIZE)) as u16);
                expect = Expect::BadHead;
            }
            8 => {
                // An indirect table that cannot be walked at all.
                let head_desc = match rng.below(3) {
                    0 => D {
                        addr: DATA_START,
                        len: 0,
                        flags: VRING_DESC_F_INDIRECT as u16,
                        next: 0,
                    },
                    1 => D {
                        addr: DATA_START,
                        len: rng.range(1, 15) as u32 + 16 * rng.below(4) as u32,
                        flags: VRING_DESC_F_INDIRECT as u16,
                        next: 0,
                    },
                    _ => D {
                        addr: HOLE_START + 16 * rng.below(1000),
                        len: 16 * rng.range(1, 4) as u32,
                        flags: VRING_DESC_F_INDIRECT as u16,
                        next: 0,
                    },
                };
                self.post(
                    qi,
                    &[head_desc],
                    false,
                    None,
                    Expect::Reject(&[RejectReason::EmptyChain]),
                );
                return;
            }
            _ => {}
        }
        Self::link(&mut descs);
        self.post(qi, &descs, indirect, head, expect);
    }

    /// A chain of random descriptors: random addresses (in and out of RAM,
    /// in the rings, past the end), lengths, flags, links and indirect
    /// tables.
    fn post_unknown(&mut self, rng: &mut Rng, qi: usize) {
        let k = rng.range(1, 8) as usize;
        let mut descs = Vec::with_capacity(k);
        for i in 0..k {
            let addr = match rng.below(9) {
                0 | 1 => DATA_START + rng.below(DATA_END - DATA_START),
                2 => rng.below(HOLE_START),
                3 => HOLE_START + rng.below(0x40_0000),
                4 => MEM_END - rng.below(64),
                5 => u64::MAX - rng.below(64),
                6 => QUEUE_AREA + rng.below(4 * QUEUE_STRIDE),
                7 => rng.below(1 << 40),
                _ => rng.next(),
            };
            let len = match rng.below(8) {
                0 => 0,
                1 => rng.range(1, 16) as u32,
                2 => 4 * rng.range(1, 64) as u32,
                3 => (PAGE * rng.range(1, 16)) as u32,
                4 => 0x1_0000 + 4 * rng.below(4) as u32,
                5 => u32::MAX - rng.below(16) as u32,
                6 => 10 * rng.range(1, 80) as u32,
                _ => rng.next() as u32,
            };
            let mut flags = match rng.below(4) {
                0 => rng.next() as u16,
                _ => {
                    (rng.next() as u16)
                        & (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE | VRING_DESC_F_INDIRECT) as u16
                }
            };
            if rng.one_in(3) {
                flags &= !(VRING_DESC_F_INDIRECT as u16);
            }
            let next = match rng.below(5) {
                0 => i as u16 + 1,
                1 => i as u16,
                2 => 0,
                3 => rng.below(u64::from(QSIZE)) as u16,
                _ => rng.next() as u16,
            };
            descs.push(D {
                addr,
                len,
                flags,
                next,
            });
        }
        // Random PFNs and statistics where buffers may point.
        if rng.bool() {
            let n = rng.below(256) as usize;
            let mut bytes = Vec::with_capacity(4 * n);
            for _ in 0..n {
                let pfn = if rng.bool() {
                    random_ram_pfn(rng)
                } else {
                    random_non_ram_pfn(rng)
                };
                bytes.extend(pfn.to_le_bytes());
            }
            if let Some(addr) = self.buffer(&bytes) {
                descs[0].addr = addr;
                descs[0].len = rng.below(bytes.len() as u64 + 8) as u32;
            }
        }
        // An indirect table of garbage somewhere.
        if rng.one_in(3) {
            let n = rng.range(1, 64);
            let mut table = vec![0u8; 16 * n as usize];
            for chunk in table.chunks_exact_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
            if let Some(addr) = self.buffer(&table) {
                let d = rng.below(k as u64) as usize;
                descs[d].addr = addr;
                descs[d].len = 16 * rng.below(n + 2) as u32 + rng.below(2) as u32 * 7;
                descs[d].flags |= VRING_DESC_F_INDIRECT as u16;
            }
        }
        let head = match rng.below(6) {
            0 => Some(rng.below(u64::from(QSIZE)) as u16),
            1 => Some(rng.next() as u16),
            _ => None,
        };
        // Links stay as generated (absolute in the table), so write them
        // directly.
        let q = &self.queues[qi];
        if q.pending.len() >= usize::from(QSIZE) || q.table_next + k as u16 > QSIZE {
            return;
        }
        let (table, base) = (q.base(), q.table_next);
        for (i, d) in descs.iter().enumerate() {
            self.write_desc(table, base + i as u16, *d);
        }
        self.queues[qi].table_next += k as u16;
        self.publish(qi, head.unwrap_or(base), Expect::Unknown);
    }

    /// The driver scribbles over its own descriptors or available ring:
    /// what is pending there becomes unknown.
    fn scribble(&mut self, rng: &mut Rng, qi: usize) {
        let q = &mut self.queues[qi];
        q.tainted = true;
        let base = q.base();
        for _ in 0..rng.range(1, 16) {
            let at = if rng.bool() {
                base + rng.below(AVAIL_OFF)
            } else {
                base + AVAIL_OFF + 4 + rng.below(2 * u64::from(QSIZE))
            };
            self.mem
                .write_obj(rng.next() as u8, GuestAddress(at))
                .unwrap();
        }
    }

    /// Moves the available index in memory more than a queue size away
    /// from the device's (forwards, backwards, by up to 65535), or puts it
    /// back.
    fn jump(&mut self, rng: &mut Rng, qi: usize) {
        let device_next = self.device_queue(self.queues[qi].index, |q| q.queue.next_avail());
        let q = &mut self.queues[qi];
        let idx = if q.jumped {
            q.jumped = false;
            q.avail_idx
        } else {
            q.jumped = true;
            let d = QSIZE + 1 + rng.below(u64::from(u16::MAX - QSIZE)) as u16;
            device_next.wrapping_add(d)
        };
        let base = q.base();
        self.store_u16(base + AVAIL_OFF + 2, idx);
    }

    fn set_no_interrupt(&mut self, rng: &mut Rng, qi: usize) {
        let q = &mut self.queues[qi];
        q.no_interrupt = rng.bool();
        let flags = if q.no_interrupt {
            VRING_AVAIL_F_NO_INTERRUPT as u16
        } else {
            0
        };
        let base = q.base();
        self.store_u16(base + AVAIL_OFF, flags);
    }

    // ---- the checks ------------------------------------------------------

    fn device_queue<T>(&self, index: usize, f: impl FnOnce(&ActiveQueue) -> T) -> T {
        let d = self.dev();
        let a = d.active.as_ref().expect("active");
        f(find_queue(a, index))
    }

    fn snapshot(&self) -> Snapshot {
        let d = self.dev();
        let queues = self
            .queues
            .iter()
            .map(|q| {
                let a = d.active.as_ref()?;
                let dq = find_queue(a, q.index);
                let mut raw = vec![0u8; 2 * usize::from(QSIZE)];
                self.mem
                    .read_slice(&mut raw, GuestAddress(q.base() + AVAIL_OFF + 4))
                    .unwrap();
                let ring = raw
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                Some((dq.queue.next_avail(), dq.queue.next_used(), ring))
            })
            .collect();
        Snapshot {
            queues,
            metrics: d.metrics(),
            interrupts: self.irq.as_ref().map_or(0, |i| i.used().len()),
            quiet: self.irq.as_ref().map_or(0, |i| i.quiet().len()),
        }
    }

    /// Checks everything the step between `before` and now did.
    /// `explicit` is the queue a step processed once, on its own: then a
    /// queue with a broken available index must count exactly one
    /// `QueueBroken`.
    fn settle(&mut self, before: Snapshot, explicit: Option<usize>) {
        let mut tally = Tally::default();
        let mut used_grew = BTreeSet::new();
        let (stats_held, active) = {
            let d = self.dev();
            (
                d.active.as_ref().and_then(|a| a.stats_held),
                d.active.is_some(),
            )
        };
        let mut broken_sure = 0;
        let mut broken_possible = false;
        let mut consumed_unknown = false;
        let mut consumed_roles = Vec::new();
        for (qi, snap) in before.queues.iter().enumerate() {
            let Some((na_before, nu_before, ring)) = snap else {
                continue;
            };
            if !active {
                break;
            }
            let (na, nu) = self.device_queue(self.queues[qi].index, |q| {
                (q.queue.next_avail(), q.queue.next_used())
            });
            let q = &mut self.queues[qi];
            let consumed = na.wrapping_sub(*na_before);
            assert!(consumed <= QSIZE, "consumed {consumed} chains at once");
            if consumed > 0 {
                consumed_roles.push(q.role);
            }
            if q.jumped {
                assert_eq!(consumed, 0, "a broken queue was processed");
                if explicit == Some(qi) {
                    broken_sure += 1;
                } else {
                    broken_possible = true;
                }
            }
            for k in 0..consumed {
                let pos = na_before.wrapping_add(k);
                let head = ring[usize::from(pos % QSIZE)];
                let expect = q.pending.remove(&pos).expect("consumed what was published");
                let expect = if q.tainted { Expect::Unknown } else { expect };
                if head < QSIZE {
                    q.outstanding.push(head);
                }
                account(
                    &mut tally,
                    q.role,
                    &expect,
                    &mut self.ballooned,
                    &mut self.last_stats,
                );
                if matches!(q.role, Role::Inflate | Role::Reporting)
                    && matches!(expect, Expect::Unknown)
                {
                    consumed_unknown = true;
                }
            }
            if q.pending.is_empty() {
                q.tainted = false;
            }
            // The used ring: ids that are outstanding, each once.
            let returned = nu.wrapping_sub(*nu_before);
            for k in 0..returned {
                let slot = u64::from(nu_before.wrapping_add(k) % QSIZE);
                let at = q.base() + USED_OFF + 4 + 8 * slot;
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                assert_eq!(len, 0, "used length");
                let pos = q
                    .outstanding
                    .iter()
                    .position(|h| u32::from(*h) == id)
                    .unwrap_or_else(|| {
                        panic!(
                            "{:?} queue: used id {id} was not outstanding ({:?})",
                            q.role, q.outstanding
                        )
                    });
                q.outstanding.swap_remove(pos);
            }
            let idx: u16 = self
                .mem
                .read_obj(GuestAddress(q.base() + USED_OFF + 2))
                .unwrap();
            assert_eq!(idx, nu, "used index in memory");
            if returned > 0 {
                used_grew.insert(q.index as u16);
            }
            match q.role {
                Role::Stats => {
                    assert!(q.outstanding.len() <= 1, "{:?}", q.outstanding);
                    assert_eq!(q.outstanding.first().copied(), stats_held);
                }
                _ => assert!(
                    q.outstanding.is_empty(),
                    "{:?} queue kept {:?}",
                    q.role,
                    q.outstanding
                ),
            }
        }
        // The event loop may deflate before it inflates: then the driver's
        // book (kept inflate first) is no longer the device's.
        if self.any_order
            && consumed_roles.contains(&Role::Inflate)
            && consumed_roles.contains(&Role::Deflate)
        {
            self.ballooned = None;
        }
        self.check_metrics(&before, &tally, broken_sure, broken_possible);
        self.check_interrupts(&before, &used_grew);
        self.expected_releases.union(&tally.releases);
        if consumed_unknown || tally.inexact {
            self.releases_exact = false;
        }
        self.check_releases();
        self.check_books();
        // Descriptors, buffers and ring slots of consumed chains are the
        // driver's again.
        for q in &mut self.queues {
            if q.pending.is_empty() {
                q.table_next = 0;
            }
        }
        if self.queues.iter().all(|q| q.pending.is_empty()) {
            self.data_next = DATA_START;
        }
    }

    fn check_metrics(&self, before: &Snapshot, t: &Tally, broken_sure: u64, broken_possible: bool) {
        let m = self.dev().metrics();
        let b = &before.metrics;
        let delta = |f: fn(&BalloonMetrics) -> u64| f(&m) - f(b);
        assert_eq!(
            delta(|m| m.inflate_requests),
            t.requests[0],
            "inflate requests"
        );
        assert_eq!(
            delta(|m| m.deflate_requests),
            t.requests[1],
            "deflate requests"
        );
        assert_eq!(
            delta(|m| m.report_requests),
            t.requests[3],
            "report requests"
        );
        assert_eq!(m.rejections.used_ring_error, 0, "the used rings are valid");
        let mut sure = t.sure.clone();
        *sure.entry("QueueBroken").or_default() += broken_sure;
        for &r in RejectReason::ALL {
            let d = m.rejections.count(r) - b.rejections.count(r);
            let at_least = sure.get(reason_name(r)).copied().unwrap_or(0);
            let may = t.either.iter().filter(|set| set.contains(&r)).count() as u64;
            assert!(
                d >= at_least,
                "{r:?}: {d} counted, {at_least} expected at least"
            );
            let loose = r == RejectReason::QueueBroken && broken_possible;
            if !t.inexact && !loose {
                assert!(
                    d <= at_least + may,
                    "{r:?}: {d} counted, {} at most",
                    at_least + may
                );
            }
        }
        if !t.inexact {
            let total = m.rejections.total() - b.rejections.total();
            let expected: u64 = sure.values().sum::<u64>() + t.either.len() as u64;
            if !broken_possible {
                assert_eq!(total, expected, "rejections counted");
            }
            assert_eq!(delta(|m| m.inflate_pages), t.inflate_pages, "inflate pages");
            assert_eq!(delta(|m| m.deflate_pages), t.deflate_pages, "deflate pages");
            assert_eq!(delta(|m| m.stats_updates), t.stats_updates, "stats updates");
            assert_eq!(
                delta(|m| m.stats_unknown_tags),
                t.stats_unknown_tags,
                "unknown tags"
            );
            assert_eq!(delta(|m| m.report_ranges), t.report_ranges, "report ranges");
            if self.ballooned.is_some() {
                assert_eq!(
                    delta(|m| m.deflate_pages_not_inflated),
                    t.deflate_not_inflated,
                    "deflated pages not inflated"
                );
            }
        }
        assert_eq!(m.activations, self.activations);
        assert_eq!(m.resets, self.resets);
        assert_eq!(m.madvise_errors, 0);
    }

    fn check_interrupts(&self, before: &Snapshot, used_grew: &BTreeSet<u16>) {
        let Some(irq) = &self.irq else {
            return;
        };
        let all = irq.used();
        let new: BTreeSet<u16> = all[before.interrupts..].iter().copied().collect();
        for q in &new {
            assert!(
                used_grew.contains(q),
                "interrupt for queue {q} with nothing used"
            );
        }
        let quiet: BTreeSet<u16> = irq.quiet()[before.quiet..].iter().copied().collect();
        for q in &quiet {
            assert!(
                used_grew.contains(q),
                "idle wake for queue {q} with nothing used"
            );
        }
        for q in &self.queues {
            if used_grew.contains(&(q.index as u16)) && !q.no_interrupt {
                assert!(
                    new.contains(&(q.index as u16)),
                    "no interrupt for queue {}",
                    q.index
                );
            }
            // A polling driver that sleeps in the VMM must be woken by
            // every used-ring update, suppressed or not.
            if used_grew.contains(&(q.index as u16)) {
                assert!(
                    new.contains(&(q.index as u16)) || quiet.contains(&(q.index as u16)),
                    "neither interrupt nor idle wake for queue {}",
                    q.index
                );
            }
        }
    }

    /// What was released must be guest RAM, region by region, and for
    /// known chains exactly their pages.
    fn check_releases(&mut self) {
        if self.stalled {
            return;
        }
        self.dev().wait_for_releases();
        let mut pages = PageSet::new();
        for (addr, len) in self.rel.take() {
            let region = self
                .mem
                .find_region(GuestAddress(addr))
                .unwrap_or_else(|| panic!("released {addr:#x} outside RAM"));
            let end = region.start_addr().0 + region.len();
            assert!(
                addr + len <= end,
                "released [{addr:#x}, +{len:#x}) across a region's end"
            );
            assert!(addr % PAGE == 0 && len % PAGE == 0 && len > 0);
            pages.extend((addr / PAGE)..(addr + len) / PAGE);
        }
        let expected = std::mem::take(&mut self.expected_releases);
        if std::mem::replace(&mut self.releases_exact, true) {
            assert_eq!(pages, expected, "released pages");
        } else {
            assert!(pages.iter().all(is_ram_pfn));
        }
    }

    /// The device's own books against the driver's.
    fn check_books(&self) {
        let d = self.dev();
        if let Some(b) = &self.ballooned {
            assert_eq!(d.inflated_pages(), b.len(), "ballooned pages");
        }
        assert!(d.inflated_pages() <= RAM_PAGES);
        if let Some(Some(bytes)) = &self.last_stats {
            let read = &bytes[..bytes.len().min(MAX_STATS_ENTRIES * STATS_ENTRY_SIZE)];
            let (values, _) = parse_stats_model(read);
            let s = d.stats().expect("statistics were accepted");
            for tag in StatTag::ALL {
                assert_eq!(s.get(tag), values.get(&(tag as u16)).copied(), "{tag:?}");
            }
        }
        assert_eq!(d.actual_pages(), self.actual);
        // Bounded host memory.
        assert!(
            d.registrations.retired() <= 4 * self.resets_unsynced,
            "{} retired eventfds after {} resets",
            d.registrations.retired(),
            self.resets_unsynced
        );
        if let Some(w) = d.active.as_ref().and_then(|a| a.release_worker.as_ref()) {
            assert!(
                w.queued_ranges() <= worker_queue_bound(),
                "the release worker holds {} ranges",
                w.queued_ranges()
            );
        }
    }

    // ---- steps -------------------------------------------------------------

    fn pick_queue(&self, rng: &mut Rng) -> Option<usize> {
        (!self.queues.is_empty()).then(|| rng.below(self.queues.len() as u64) as usize)
    }

    /// Processes one queue by its role, as the event loop does on a
    /// notification; a role the driver did not negotiate is refused.
    fn process(&mut self, rng: &mut Rng) {
        let role = rng.pick(&[Role::Inflate, Role::Deflate, Role::Stats, Role::Reporting]);
        let qi = self.queues.iter().position(|q| q.role == role);
        let before = self.snapshot();
        let r = {
            let mut d = self.dev();
            match role {
                Role::Inflate => d.process_inflate_queue(),
                Role::Deflate => d.process_deflate_queue(),
                Role::Stats => d.process_stats_queue(),
                Role::Reporting => d.process_reporting_queue(),
            }
        };
        assert_eq!(r.is_ok(), qi.is_some(), "processing {role:?}: {r:?}");
        self.settle(before, qi);
    }

    fn step(&mut self, rng: &mut Rng) {
        match rng.below(24) {
            0..=7 => {
                if let Some(qi) = self.pick_queue(rng) {
                    for _ in 0..rng.range(1, 6) {
                        self.post_known(rng, qi);
                    }
                }
            }
            8..=9 => {
                if let Some(qi) = self.pick_queue(rng) {
                    self.post_unknown(rng, qi);
                }
            }
            10..=14 => self.process(rng),
            15 => {
                let before = self.snapshot();
                let r = self.dev().process_all_queues();
                assert_eq!(r.is_ok(), !self.queues.is_empty());
                self.settle(before, None);
            }
            16 => {
                if let Some(qi) = self.pick_queue(rng) {
                    match rng.below(3) {
                        0 => self.scribble(rng, qi),
                        1 => self.jump(rng, qi),
                        _ => self.set_no_interrupt(rng, qi),
                    }
                }
            }
            17 => {
                let before = self.snapshot();
                let has_stats = self.queues.iter().any(|q| q.role == Role::Stats);
                let r = self.dev().request_stats();
                assert_eq!(r.is_ok(), has_stats);
                self.settle(before, None);
            }
            18 => {
                let mib = if rng.bool() {
                    rng.below(64) as u32
                } else {
                    rng.next() as u32
                };
                let before = self.dev().metrics().config_notifications;
                let active = !self.queues.is_empty();
                let r = self.dev().set_target_mib(mib);
                assert_eq!(r.is_ok(), mib <= u32::MAX / PAGES_PER_MIB);
                let after = self.dev().metrics().config_notifications;
                assert_eq!(after - before, u64::from(r.is_ok() && active));
                if r.is_ok() {
                    assert_eq!(self.dev().target_pages(), mib * PAGES_PER_MIB);
                }
                if rng.bool() {
                    let before = self.snapshot();
                    let secs = rng.pick(&[0, 1, 7, u16::MAX]);
                    let _ = self.dev().set_stats_interval(secs);
                    self.settle(before, None);
                }
            }
            19 => {
                // The driver writes and reads configuration space.
                let offset = rng.pick(&[0, 1, 3, 4, 5, 7, 8, 100, u64::MAX - 2]);
                let len = rng.range(0, 9) as usize;
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                self.dev().write_config(offset, &data);
                let mut actual = self.actual.to_le_bytes();
                for (i, b) in data.iter().enumerate() {
                    if let Some(p) = offset.checked_add(i as u64).filter(|p| (4..8).contains(p)) {
                        actual[p as usize - 4] = *b;
                    }
                }
                self.actual = u32::from_le_bytes(actual);
                let mut read = vec![0xa5u8; rng.range(1, 16) as usize];
                let at = rng.pick(&[0u64, 2, 4, 6, 8, 1 << 40]);
                self.dev().read_config(at, &mut read);
                let d = self.dev();
                let mut space = d.target_pages().to_le_bytes().to_vec();
                space.extend(self.actual.to_le_bytes());
                for (i, b) in read.iter().enumerate() {
                    let want = usize::try_from(at)
                        .ok()
                        .and_then(|a| space.get(a + i))
                        .copied()
                        .unwrap_or(0);
                    assert_eq!(*b, want, "config byte {}", at + i as u64);
                }
            }
            20 => self.run_event_loop(rng),
            21 => self.stall_burst(rng),
            22 => {
                // A second activation while active is refused.
                if !self.queues.is_empty() {
                    let before = self.snapshot();
                    let n = self.dev().queue_max_sizes().len();
                    let r = self.dev().activate(Activation {
                        mem: self.mem.clone(),
                        acked_features: 0,
                        queues: (0..n).map(|_| Queue::new(QSIZE).unwrap()).collect(),
                        queue_events: (0..n).map(|_| EventFd::new(0).unwrap()).collect(),
                        interrupt: Arc::new(RecordingInterrupt::default()),
                    });
                    assert!(r.is_err());
                    self.settle(before, None);
                }
            }
            _ => {
                if rng.one_in(3) {
                    self.reset();
                }
            }
        }
    }

    /// Runs the event loop once (it catches up with activations and
    /// resets and processes every queue), optionally after notifying a
    /// queue.
    fn run_event_loop(&mut self, rng: &mut Rng) {
        let Some(mut em) = self.em.take() else {
            return;
        };
        if !self.events.is_empty() && rng.bool() {
            let i = rng.below(self.events.len() as u64) as usize;
            self.events[i].write(1).unwrap();
        }
        let before = self.snapshot();
        em.run_with_timeout(0).unwrap();
        self.em = Some(em);
        self.resets_unsynced = 0;
        self.any_order = true;
        self.settle(before, None);
        self.any_order = false;
        assert!(self.dev().registrations.retired() == 0);
    }

    /// With the releaser stalled (the worker cannot keep up), the driver
    /// inflates round after round, every other page of RAM: what the device
    /// holds for the worker must stay bounded. Inflate buffers still come
    /// back at once.
    fn stall_burst(&mut self, rng: &mut Rng) {
        let has_worker = {
            let d = self.dev();
            d.active
                .as_ref()
                .is_some_and(|a| a.release_worker.is_some())
        };
        let Some(qi) = self.queues.iter().position(|q| q.role == Role::Inflate) else {
            return;
        };
        if !has_worker || self.queues[qi].jumped || self.queues[qi].tainted {
            return;
        }
        self.stalled = true;
        self.rel.set_stalled(true);
        for _ in 0..rng.range(2, 12) {
            // Every other page: the worst case for coalescing.
            let odd = rng.below(2);
            let pfns: Vec<u32> = (0..RAM_PAGES / 2)
                .map(|i| 2 * i + odd)
                .map(|p| {
                    if p < HOLE_START / PAGE {
                        p
                    } else {
                        p - HOLE_START / PAGE + REGION_C_START / PAGE
                    }
                })
                .map(|p| p as u32)
                .collect();
            for chunk in pfns.chunks(inflate_max_bytes() as usize / 4) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|p| p.to_le_bytes()).collect();
                let Some(addr) = self.buffer(&bytes) else {
                    break;
                };
                let d = D {
                    addr,
                    len: bytes.len() as u32,
                    flags: 0,
                    next: 0,
                };
                let expect = Expect::Pfns {
                    ram: chunk.to_vec(),
                    outside: 0,
                };
                if !self.post(qi, &[d], false, None, expect) {
                    break;
                }
            }
            let before = self.snapshot();
            self.dev().process_inflate_queue().unwrap();
            self.settle(before, Some(qi));
        }
        self.stalled = false;
        self.rel.set_stalled(false);
        self.check_releases();
    }
}

impl Drop for World {
    /// A failed check inside a stall must not leave the release worker
    /// blocked forever: dropping the device joins it.
    fn drop(&mut self) {
        self.rel.set_stalled(false);
    }
}

/// Adds what consuming one chain with `expect` must have done.
fn account(
    t: &mut Tally,
    role: Role,
    expect: &Expect,
    ballooned: &mut Option<PageSet>,
    last_stats: &mut Option<Option<Vec<u8>>>,
) {
    t.requests[role as usize] += 1;
    match expect {
        Expect::Pfns { ram, outside } => {
            t.reject(RejectReason::PfnOutsideRam, *outside);
            if role == Role::Inflate {
                t.inflate_pages += ram.len() as u64;
                t.releases.extend(ram.iter().map(|p| u64::from(*p)));
                if let Some(b) = ballooned {
                    b.extend(ram.iter().map(|p| u64::from(*p)));
                }
            } else {
                t.deflate_pages += ram.len() as u64;
                for p in ram {
                    if let Some(b) = ballooned {
                        if !b.remove(u64::from(*p)) {
                            t.deflate_not_inflated += 1;
                        }
                    }
                }
            }
        }
        Expect::Stats { bytes } => {
            let max = MAX_STATS_ENTRIES * STATS_ENTRY_SIZE;
            let truncated = bytes.len() > max;
            let read = &bytes[..bytes.len().min(max)];
            if truncated {
                t.reject(RejectReason::StatsTruncated, 1);
            } else if read.len() % STATS_ENTRY_SIZE != 0 {
                t.reject(RejectReason::StatsPartialEntry, 1);
            }
            let (_, unknown) = parse_stats_model(read);
            t.stats_unknown_tags += unknown;
            t.stats_updates += 1;
            *last_stats = Some(Some(bytes.clone()));
        }
        Expect::Report { ranges } => {
            t.report_ranges += ranges.len() as u64;
            for &(addr, len) in ranges {
                let (whole, exact) = aligned_pages(addr, len);
                if !exact {
                    t.reject(RejectReason::ReportRangeUnaligned, 1);
                }
                if let Some((s, e)) = whole {
                    t.releases.extend(s / PAGE..e / PAGE);
                }
            }
        }
        Expect::Reject(set) => {
            if set.len() == 1 {
                t.reject(set[0], 1);
            } else {
                t.either.push(set);
            }
        }
        Expect::BadHead => {
            t.reject(RejectReason::EmptyChain, 1);
            t.reject(RejectReason::BadHeadIndex, 1);
        }
        Expect::Unknown => {
            t.inexact = true;
            match role {
                Role::Inflate | Role::Deflate => *ballooned = None,
                Role::Stats => *last_stats = None,
                Role::Reporting => {}
            }
        }
    }
}

fn find_queue(a: &Active, index: usize) -> &ActiveQueue {
    a.queues()
        .map(|(_, q)| q)
        .find(|q| usize::from(q.index) == index)
        .expect("the queue is active")
}

fn inflate_max_bytes() -> u64 {
    crate::inflate::MAX_PFN_BUFFER_BYTES
}

/// The most ranges the release worker may hold: derived from guest RAM
/// (at most one range per two pages once coalesced), not from how many
/// rounds the guest sends.
fn worker_queue_bound() -> usize {
    crate::release_worker::queue_bound(RAM_PAGES, 3)
}

#[test]
fn fuzz_balloon_guest_never_breaks_the_device() {
    // What the cases exercised, so that a generator that stopped reaching
    // something shows.
    let mut seen = BTreeMap::<&str, u64>::new();
    run_cases("balloon", DEFAULT_SEED, DEFAULT_CASES, |rng| {
        let mut w = World::new(rng);
        for _ in 0..rng.range(1, 4) {
            w.activate(rng);
            for _ in 0..rng.range(1, 40) {
                w.step(rng);
            }
            if rng.bool() {
                w.reset();
            }
        }
        w.reset();
        let m = w.dev().metrics();
        for &r in RejectReason::ALL {
            *seen.entry(reason_name(r)).or_default() += m.rejections.count(r);
        }
        for (name, n) in [
            ("activations", m.activations),
            ("inflate_requests", m.inflate_requests),
            ("deflate_requests", m.deflate_requests),
            ("report_requests", m.report_requests),
            ("stats_updates", m.stats_updates),
            ("stats_requests", m.stats_requests),
            ("deferred_releases", m.deferred_releases),
            ("release_calls", m.madvise_calls),
        ] {
            *seen.entry(name).or_default() += n;
        }
    });
    eprintln!("fuzz balloon: {seen:?}");
}
