//! A polling virtio-balloon driver (virtio 1.x section 5.5) over
//! virtio-mmio, working on the guest's page pool.
//!
//! Queues, in this order (absent ones take no index, as in Linux):
//! inflateq 0, deflateq 1, statsq 2 (if `STATS_VQ` was negotiated),
//! reporting_vq next (3, or 2 without `STATS_VQ`; `FREE_PAGE_HINT` is never
//! accepted, so its queue never exists).
//!
//! Features accepted when offered: `VERSION_1` (required), `MUST_TELL_HOST`
//! (we always tell the host before reusing a page), `STATS_VQ`,
//! `DEFLATE_ON_OOM` (acknowledged only: the guest never runs out of memory)
//! and `FREE_PAGE_REPORTING`. Nothing else: no `EVENT_IDX`, no indirect
//! descriptors, no `ACCESS_PLATFORM`, no `PAGE_POISON`.
//!
//! The driver is synchronous: each batch of buffers is made available, the
//! device notified, and the used ring polled until all come back (or a
//! timeout ends the guest with exit 5). Only the stats buffer stays with the
//! device between polls, as the protocol wants.
//!
//! Invariants:
//! * Pages go into the balloon only from the free pool (`Dirty` ones first,
//!   since only those free host memory, then `Clean`), never allocated
//!   ones; `actual` is written only after the device has used the inflate
//!   buffers, and equals the number of `Balloon` pages.
//! * A deflated page is touched only after the device has used the deflate
//!   buffer naming it (telling the host first, whether or not
//!   `MUST_TELL_HOST` was negotiated).
//! * All memory shared with the device (rings, PFN arrays, stats buffers)
//!   lives in [`DmaArea`] in `.bss`, identity-mapped below the pool, and is
//!   accessed with volatile reads and writes.

use crate::cmdline::{BalloonLog, Evil};
use crate::pages;
use crate::pool::{Pool, State, PAGE};
use crate::serial::exit;
use crate::idle;
use crate::tsc::{self, TscFreq};
use crate::virtio_mmio::{InitError, Transport, F_VERSION_1, STATUS_NEEDS_RESET};
use crate::virtqueue::{Buffer, Virtqueue, RING_BYTES};
use crate::say;
use core::cell::UnsafeCell;
use core::ptr::write_volatile;
use core::sync::atomic::{AtomicBool, Ordering};

/// Virtio device id of the balloon.
pub const DEVICE_ID: u32 = 5;
/// Bytes of configuration the driver reads: `num_pages`, `actual`.
pub const CONFIG_BYTES: u64 = 8;

// Feature bits of the balloon (virtio 1.x 5.5.3; the two never accepted
// are named for the record).
pub const F_MUST_TELL_HOST: u64 = 1 << 0;
pub const F_STATS_VQ: u64 = 1 << 1;
pub const F_DEFLATE_ON_OOM: u64 = 1 << 2;
#[allow(dead_code)]
pub const F_FREE_PAGE_HINT: u64 = 1 << 3;
#[allow(dead_code)]
pub const F_PAGE_POISON: u64 = 1 << 4;
pub const F_REPORTING: u64 = 1 << 5;

/// Features accepted when offered.
const WANTED: u64 =
    F_VERSION_1 | F_MUST_TELL_HOST | F_STATS_VQ | F_DEFLATE_ON_OOM | F_REPORTING;

/// Configuration offsets.
const CFG_NUM_PAGES: u64 = 0;
const CFG_ACTUAL: u64 = 4;

/// PFNs per inflate/deflate buffer (as Linux: 256, one 1 KiB buffer).
const PFNS_PER_BUFFER: usize = 256;
/// Buffers per inflate/deflate round (8192 pages, 32 MiB); `actual` is
/// written after each round.
const BATCH_BUFFERS: usize = 32;
/// Longest run of pages one report descriptor covers (4 MiB).
const REPORT_RUN_PAGES: u64 = 1024;
/// Most descriptors in one report chain.
const REPORT_CHAIN: usize = 32;
/// Most report chains per reporting round (4 GiB).
const REPORT_CHAINS_PER_ROUND: usize = 32;
/// Stats tags the driver fills (0..=15).
const STATS_TAGS: usize = 16;
/// Bytes per stat: `le16 tag, le64 value`, packed.
const STAT_BYTES: usize = 10;
/// Entries of the `oversized-stats` buffer (4000 bytes).
const EVIL_STATS: usize = 400;

/// Stats tags (virtio 1.x 5.5.6.3 and Linux's later additions).
const S_MEMFREE: u16 = 4;
const S_MEMTOT: u16 = 5;
const S_AVAIL: u16 = 6;

/// How often the target is read, in ms, where the VMM has no idle port
/// (with one, the guest sleeps until the VMM says the target changed).
const POLL_MS: u64 = 5;
/// How long the device may take to use a buffer before the guest gives up.
const USED_TIMEOUT_MS: u64 = 10_000;
/// How long an evil act waits for the device.
const EVIL_WAIT_MS: u64 = 500;

/// Memory shared with the device, in `.bss`.
#[repr(C, align(4096))]
struct DmaArea {
    /// inflateq, deflateq, statsq, reporting_vq.
    rings: [[u8; RING_BYTES]; 4],
    /// PFN arrays of one inflate/deflate round.
    pfns: [[u32; PFNS_PER_BUFFER]; BATCH_BUFFERS],
    /// The stats buffer.
    stats: [u8; STATS_TAGS * STAT_BYTES],
    /// The evil stats buffer.
    evil: [u8; EVIL_STATS * STAT_BYTES],
}

/// The one [`DmaArea`]; handed to the first [`Balloon`] only.
struct Dma(UnsafeCell<DmaArea>);

// SAFETY: the guest has one thread; the area is handed out once
// (DMA_TAKEN) and then only accessed through raw pointers by that owner.
unsafe impl Sync for Dma {}

static DMA: Dma = Dma(UnsafeCell::new(DmaArea {
    rings: [[0; RING_BYTES]; 4],
    pfns: [[0; PFNS_PER_BUFFER]; BATCH_BUFFERS],
    stats: [0; STATS_TAGS * STAT_BYTES],
    evil: [0; EVIL_STATS * STAT_BYTES],
}));
static DMA_TAKEN: AtomicBool = AtomicBool::new(false);

/// Exit code: no usable balloon device, or it stopped working.
pub const EXIT_DEVICE: u8 = 5;

/// The driver.
pub struct Balloon {
    mmio: Transport,
    dma: *mut DmaArea,
    offered: u64,
    features: u64,
    inflateq: Virtqueue,
    deflateq: Virtqueue,
    statsq: Option<Virtqueue>,
    /// The reporting queue and its index.
    reportq: Option<(u16, Virtqueue)>,
    /// Head of the stats buffer while the device holds it.
    stats_head: Option<u16>,
    /// Stats buffers the device gave back.
    stats_returned: u64,
    /// Pages in the balloon (what `actual` says).
    actual: u32,
    /// RAM bytes of the memory map (MEMTOT).
    mem_total: u64,
    freq: TscFreq,
    /// Whether a line is printed after every round.
    log: BalloonLog,
}

/// How a balloon episode (a run of rounds in one direction) is going.
struct Episode {
    inflating: bool,
    start: u64,
    /// Rounds sent so far.
    rounds: u32,
    /// Deflate: pages re-touched, and whether all read as zeros.
    deflated: u64,
    zeros: bool,
}

impl Balloon {
    /// Sets up the device behind `mmio` and makes it live (DRIVER_OK), with
    /// the stats buffer posted. Callable once (the shared memory has one
    /// owner).
    pub fn init(mmio: Transport, mem_total: u64, pool: &Pool<'_>) -> Result<Balloon, InitError> {
        assert!(!DMA_TAKEN.swap(true, Ordering::Relaxed), "balloon set up twice");
        let dma = DMA.0.get();
        let freq = tsc::frequency();
        // SAFETY: the rings are 4096-aligned pages of DMA (align(4096)
        // struct, page-sized arrays first), owned by this driver alone
        // (DMA_TAKEN) and identity-mapped. `setup` resets the device before
        // any queue address is given to it.
        let ring = |i: usize| unsafe { (*dma).rings[i].as_mut_ptr() };
        let mut b = Balloon {
            mmio,
            dma,
            offered: 0,
            features: 0,
            // SAFETY: as above; replaced by `setup`.
            inflateq: unsafe { Virtqueue::new(ring(0), 1) },
            // SAFETY: as above.
            deflateq: unsafe { Virtqueue::new(ring(1), 1) },
            statsq: None,
            reportq: None,
            stats_head: None,
            stats_returned: 0,
            actual: 0,
            mem_total,
            freq,
            log: BalloonLog::Rounds,
        };
        b.setup(pool)?;
        Ok(b)
    }

    /// Device initialisation proper (also used after a reset).
    fn setup(&mut self, pool: &Pool<'_>) -> Result<(), InitError> {
        let (offered, accepted) = self.mmio.negotiate(WANTED, F_VERSION_1)?;
        self.offered = offered;
        self.features = accepted;
        let dma = self.dma;
        // SAFETY: see `init`; the device was just reset by `negotiate`, so
        // it uses none of the rings now.
        let ring = |i: usize| unsafe { (*dma).rings[i].as_mut_ptr() };
        let make = |index: u16, page: usize| -> Result<Virtqueue, InitError> {
            let max = match self.mmio.queue_max(index) {
                Some(max) if max > 0 => max,
                _ => {
                    self.mmio.fail();
                    return Err(InitError::QueueUnavailable(index));
                }
            };
            // SAFETY: `ring(page)` is a distinct page per queue; see above.
            let q = unsafe { Virtqueue::new(ring(page), max) };
            self.mmio.setup_queue(index, &q);
            Ok(q)
        };
        let inflateq = make(0, 0)?;
        let deflateq = make(1, 1)?;
        let mut next = 2;
        let statsq = if accepted & F_STATS_VQ != 0 {
            next += 1;
            Some(make(2, 2)?)
        } else {
            None
        };
        let reportq = if accepted & F_REPORTING != 0 {
            Some((next, make(next, 3)?))
        } else {
            None
        };
        self.inflateq = inflateq;
        self.deflateq = deflateq;
        self.statsq = statsq;
        self.reportq = reportq;
        self.stats_head = None;
        self.mmio.driver_ok();
        say!(
            "virtio-balloon features offered={:#x} accepted={:#x} queues={} size={}",
            self.offered,
            self.features,
            2 + usize::from(self.statsq.is_some()) + usize::from(self.reportq.is_some()),
            self.inflateq.size()
        );
        // The device may remember `actual` across a reset; make it ours.
        if self.mmio.config_u32(CFG_ACTUAL) != self.actual {
            self.mmio.write_config_u32(CFG_ACTUAL, self.actual);
        }
        self.service_stats(pool);
        Ok(())
    }

    /// Milliseconds to TSC ticks.
    fn ticks(&self, ms: u64) -> u64 {
        ms.saturating_mul(self.freq.khz)
    }

    /// Waits (asleep in the idle port: the VMM wakes us when the device
    /// uses buffers) until `n` known chains came back or `ticks` passed;
    /// returns how many came back.
    fn wait(freq: TscFreq, q: &mut Virtqueue, n: usize, ticks: u64) -> usize {
        let start = tsc::now();
        let mut got = 0;
        while got < n {
            match q.pop_used() {
                Some(u) if u.known => got += 1,
                Some(u) => say!("virtio-balloon: device returned unknown buffer id {}", u.id),
                None => {
                    let elapsed = tsc::now().wrapping_sub(start);
                    if elapsed > ticks {
                        break;
                    }
                    idle::sleep_ticks(freq, ticks - elapsed);
                }
            }
        }
        got
    }

    /// Ends the guest: the device did not use a buffer in time.
    fn stuck(mmio: &Transport, what: &str) -> ! {
        say!(
            "virtio-balloon: device did not use the {} buffers within {} ms (status {:#x})",
            what,
            USED_TIMEOUT_MS,
            mmio.status()
        );
        exit(EXIT_DEVICE)
    }

    /// Takes up to `max` pages (states in `from`, each set in turn) into
    /// PFN array `buf` of the DMA area, moving them to `to`; returns the
    /// count.
    fn fill_pfns(&mut self, pool: &mut Pool<'_>, buf: usize, max: usize, from: &[u8], to: State) -> usize {
        // SAFETY: DMA is ours; `buf < BATCH_BUFFERS`; the device is not
        // reading this array (its last buffer came back before this round).
        let pfns = unsafe { (*self.dma).pfns[buf].as_mut_ptr() };
        let mut n = 0;
        for &set in from {
            while n < max {
                let Some((pfn, len)) = pool.take_run(set, to, (max - n) as u64) else {
                    break;
                };
                for p in pfn..pfn + len {
                    // SAFETY: `n < max <= PFNS_PER_BUFFER`; pool PFNs are
                    // below 2^24 (MAPPED_LIMIT), so they fit in le32.
                    unsafe { write_volatile(pfns.add(n), (p as u32).to_le()) };
                    n += 1;
                }
            }
        }
        n
    }

    /// Sends up to one round of pages toward `want` on the inflate or the
    /// deflate queue; returns the pages sent. Inflate takes free pages into
    /// the balloon; deflate takes balloon pages into `Busy`.
    fn send_round(&mut self, pool: &mut Pool<'_>, want: u32, inflate: bool) -> u32 {
        let (from, to): (&[u8], State) = if inflate {
            (&[State::Dirty.bit(), State::Clean.bit()], State::Balloon)
        } else {
            (&[State::Balloon.bit()], State::Busy)
        };
        let mut total = 0u32;
        let mut bufs = 0;
        while total < want && bufs < BATCH_BUFFERS {
            let q = if inflate { &self.inflateq } else { &self.deflateq };
            if q.num_free() == 0 {
                break;
            }
            let max = PFNS_PER_BUFFER.min((want - total) as usize);
            let n = self.fill_pfns(pool, bufs, max, from, to);
            if n == 0 {
                break;
            }
            // SAFETY: DMA is ours; the address is the identity-mapped PFN
            // array just written.
            let addr = unsafe { (*self.dma).pfns[bufs].as_ptr() } as u64;
            let buf = Buffer { addr, len: 4 * n as u32, device_writes: false };
            let q = if inflate { &mut self.inflateq } else { &mut self.deflateq };
            q.add(&[buf]).expect("free descriptor checked above");
            bufs += 1;
            total += n as u32;
        }
        if bufs > 0 {
            let ticks = self.ticks(USED_TIMEOUT_MS);
            let (q, index) = if inflate { (&mut self.inflateq, 0) } else { (&mut self.deflateq, 1) };
            q.publish();
            self.mmio.notify(index);
            if Self::wait(self.freq, q, bufs, ticks) < bufs {
                Self::stuck(&self.mmio, if inflate { "inflate" } else { "deflate" });
            }
        }
        total
    }

    /// Re-touches the pages a deflate round handed back (`Busy`): checks
    /// each reads all zeros, writes the pattern, returns it to the pool as
    /// `Dirty`. Returns `(pages, all zeros)`.
    fn retouch(pool: &mut Pool<'_>) -> (u64, bool) {
        let (mut pages, mut zeros) = (0, true);
        let mut pfn = 0;
        while let Some((start, len)) = pool.next_run(pfn, State::Busy.bit()) {
            for p in start..start + len {
                // SAFETY: a Busy page is ours: it left the balloon and the
                // device has used the deflate buffer that named it.
                unsafe {
                    zeros &= pages::is_zero(p);
                    pages::fill(p);
                }
            }
            pool.set_run(start, len, State::Busy.bit(), State::Dirty);
            pages += len;
            pfn = start + len;
        }
        (pages, zeros)
    }

    /// Writes the stats buffer from the pool's numbers.
    fn write_stats(&mut self, pool: &Pool<'_>) {
        let free = pool.free() * PAGE;
        // SAFETY: DMA is ours; the device does not hold the stats buffer
        // (stats_head is None when this is called).
        let buf = unsafe { (*self.dma).stats.as_mut_ptr() };
        for tag in 0..STATS_TAGS as u16 {
            let value = match tag {
                S_MEMFREE | S_AVAIL => free,
                S_MEMTOT => self.mem_total,
                _ => 0, // no swap, faults, caches, huge pages, OOM kills...
            };
            // SAFETY: `tag < STATS_TAGS`, inside the buffer.
            unsafe { put_stat(buf.add(usize::from(tag) * STAT_BYTES), tag, value) };
        }
    }

    /// Takes stats buffers the device gave back and makes sure it holds a
    /// fresh one.
    ///
    /// Normally there is one stats buffer. After `tiny.evil` posted a second
    /// one, the device may give back the other one while ours is still
    /// waiting in the available ring: QEMU's stats handler takes only one
    /// buffer per notification, and notifications through an eventfd
    /// coalesce. So when a buffer other than ours comes back, notify again.
    fn service_stats(&mut self, pool: &Pool<'_>) {
        let Some(q) = self.statsq.as_mut() else {
            return;
        };
        let mut kick = false;
        while let Some(u) = q.pop_used() {
            if u.known && Some(u.id) == self.stats_head.map(u32::from) {
                self.stats_head = None;
                self.stats_returned += 1;
            } else {
                kick = true;
            }
        }
        if kick && self.stats_head.is_some() {
            self.mmio.notify(2);
        }
        if self.stats_head.is_none() {
            self.write_stats(pool);
            // SAFETY: DMA is ours.
            let addr = unsafe { (*self.dma).stats.as_ptr() } as u64;
            let buf = Buffer { addr, len: (STATS_TAGS * STAT_BYTES) as u32, device_writes: false };
            let q = self.statsq.as_mut().expect("checked above");
            if let Some(head) = q.add(&[buf]) {
                self.stats_head = Some(head);
                q.publish();
                self.mmio.notify(2);
            }
        }
    }

    /// Reports free `Dirty` pages to the device (free page reporting), up
    /// to a round's worth; they become `Clean`. Returns the pages reported.
    fn report(&mut self, pool: &mut Pool<'_>) -> u64 {
        let ticks = self.ticks(USED_TIMEOUT_MS);
        let Some((index, q)) = self.reportq.as_mut() else {
            return 0;
        };
        let mut total = 0;
        for _ in 0..REPORT_CHAINS_PER_ROUND {
            let mut bufs = [Buffer { addr: 0, len: 0, device_writes: true }; REPORT_CHAIN];
            let max = REPORT_CHAIN.min(usize::from(q.num_free()));
            let mut n = 0;
            while n < max {
                let Some((pfn, len)) = pool.take_run(State::Dirty.bit(), State::Busy, REPORT_RUN_PAGES) else {
                    break;
                };
                bufs[n] = Buffer { addr: pfn * PAGE, len: (len * PAGE) as u32, device_writes: true };
                n += 1;
                total += len;
            }
            if n == 0 {
                break;
            }
            q.add(&bufs[..n]).expect("free descriptors checked above");
            q.publish();
            self.mmio.notify(*index);
            if Self::wait(self.freq, q, 1, ticks) < 1 {
                Self::stuck(&self.mmio, "free page report");
            }
            // Reported pages hold nothing of ours any more.
            let mut pfn = 0;
            while let Some((start, len)) = pool.next_run(pfn, State::Busy.bit()) {
                pool.set_run(start, len, State::Busy.bit(), State::Clean);
                pfn = start + len;
            }
        }
        total
    }

    /// Writes `actual` and, with `tiny.balloon-log=rounds`, prints the new
    /// state.
    fn set_actual(&mut self, target: u32, actual: u32) {
        self.actual = actual;
        self.mmio.write_config_u32(CFG_ACTUAL, actual);
        if self.log == BalloonLog::Rounds {
            say!("balloon target={} actual={}", target, actual);
        }
    }

    /// Ends an episode: the deflate line, and how long it took if the
    /// target was reached.
    fn finish(&self, ep: Episode, reached: bool) {
        if !ep.inflating && ep.deflated > 0 {
            say!(
                "deflated {} pages, re-touched, zeros={}",
                ep.deflated,
                if ep.zeros { "yes" } else { "no" }
            );
        }
        if reached {
            let ms = tsc::now().wrapping_sub(ep.start) / self.freq.khz.max(1);
            say!("balloon settled actual={} after {} ms in {} rounds", self.actual, ms, ep.rounds);
        }
    }

    /// Runs the balloon loop: follow `num_pages`, keep the stats buffer
    /// posted, report free pages every `report_every_ms` (0: never), print
    /// as `log` says. Returns after `exit_after_ms`, or never.
    pub fn run(
        &mut self,
        pool: &mut Pool<'_>,
        exit_after_ms: Option<u64>,
        report_every_ms: u64,
        log: BalloonLog,
    ) {
        self.log = log;
        let start = tsc::now();
        let poll = self.ticks(POLL_MS);
        let report_every = self.ticks(report_every_ms);
        let reporting = report_every_ms > 0 && self.reportq.is_some();
        let mut next_poll = start;
        let mut next_report = start.wrapping_add(report_every);
        let mut episode: Option<Episode> = None;
        let mut short_for: Option<u32> = None;
        // With the idle port the loop sleeps until the VMM has news (a
        // new target, a stats buffer back) or its own next deadline, and
        // reads the target after every wake-up; without, it polls.
        let sleeps = idle::present();
        loop {
            let now = tsc::now();
            if exit_after_ms.is_some_and(|ms| now.wrapping_sub(start) >= self.ticks(ms)) {
                if let Some(ep) = episode.take() {
                    self.finish(ep, false);
                }
                return;
            }
            self.service_stats(pool);
            let mut moving = false;
            if now.wrapping_sub(next_poll) < u64::MAX / 2 {
                self.mmio.ack_interrupts();
                let status = self.mmio.status();
                if status & STATUS_NEEDS_RESET != 0 {
                    say!("virtio-balloon: device needs reset (status {:#x})", status);
                    exit(EXIT_DEVICE);
                }
                let target = self.mmio.config_u32(CFG_NUM_PAGES);
                moving = self.step(pool, target, &mut episode, &mut short_for);
                next_poll = if moving || sleeps { now } else { now.wrapping_add(poll) };
            }
            if reporting && now.wrapping_sub(next_report) < u64::MAX / 2 {
                let n = self.report(pool);
                if n > 0 {
                    say!("reported {} pages ({} MiB)", n, (n * PAGE) >> 20);
                }
                next_report = tsc::now().wrapping_add(report_every);
            }
            if moving {
                continue;
            }
            if !sleeps {
                core::hint::spin_loop();
                continue;
            }
            // Nothing to do until the VMM wakes us (a new target, a stats
            // buffer back) or our own next deadline.
            let now = tsc::now();
            let left = |deadline: u64| {
                let d = deadline.wrapping_sub(now);
                // A deadline already passed reads as a huge wrapped value.
                if d < u64::MAX / 2 { d } else { 0 }
            };
            let mut sleep = u64::MAX;
            if reporting {
                sleep = left(next_report);
            }
            if let Some(ms) = exit_after_ms {
                sleep = sleep.min(left(start.wrapping_add(self.ticks(ms))));
            }
            if sleep == u64::MAX {
                idle::sleep_us(u64::MAX);
            } else {
                idle::sleep_ticks(self.freq, sleep);
            }
        }
    }

    /// One step toward `target`; true if pages moved (poll again at once).
    fn step(
        &mut self,
        pool: &mut Pool<'_>,
        target: u32,
        episode: &mut Option<Episode>,
        short_for: &mut Option<u32>,
    ) -> bool {
        if target == self.actual {
            if let Some(ep) = episode.take() {
                self.finish(ep, true);
            }
            return false;
        }
        let inflating = target > self.actual;
        if episode.as_ref().is_some_and(|ep| ep.inflating != inflating) {
            let ep = episode.take().expect("checked");
            self.finish(ep, false);
        }
        let t0 = tsc::now();
        if inflating {
            let sent = self.send_round(pool, target - self.actual, true);
            if sent > 0 {
                let ep = episode.get_or_insert(Episode { inflating, start: t0, rounds: 0, deflated: 0, zeros: true });
                ep.rounds += 1;
                self.set_actual(target, self.actual + sent);
            }
            if self.actual < target && pool.free() == 0 && *short_for != Some(target) {
                say!(
                    "balloon short: target={} but only {} pages could be inflated (pool empty)",
                    target,
                    self.actual
                );
                *short_for = Some(target);
            }
            sent > 0
        } else {
            let sent = self.send_round(pool, self.actual - target, false);
            if sent == 0 {
                return false;
            }
            let ep = episode.get_or_insert(Episode { inflating, start: t0, rounds: 0, deflated: 0, zeros: true });
            ep.rounds += 1;
            let (pages, zeros) = Self::retouch(pool);
            ep.deflated += pages;
            ep.zeros &= zeros;
            self.set_actual(target, self.actual - sent);
            *short_for = None;
            true
        }
    }

    /// Stats buffers the device gave back so far.
    pub fn stats_returned(&self) -> u64 {
        self.stats_returned
    }

    /// Carries out `case` (see [`Evil`]), then checks the device and the
    /// guest's own memory; resets and sets up the device again if it asks
    /// for it. `ram_end` is the end of the highest RAM range.
    pub fn evil(&mut self, pool: &mut Pool<'_>, case: Evil, ram_end: u64) {
        let ticks = self.ticks(EVIL_WAIT_MS);
        let end_pfn = ram_end.div_ceil(PAGE);
        let (sent, back) = match case {
            Evil::PfnOutsideRam => {
                let pfns = [end_pfn, end_pfn + 1, end_pfn + 0x10_0000, 0xffff_fffe, 0xffff_ffff];
                self.evil_pfns(&pfns.map(|p| p.min(u64::from(u32::MAX)) as u32), ticks)
            }
            Evil::PfnInMmioHole => {
                let own = (self.mmio.base() / PAGE) as u32;
                let pfns = [0xa0, 0xd0, 0xc_0000, 0xd_0000, 0xe_0000, own, 0xfec00, 0xfee00, 0xfffff];
                self.evil_pfns(&pfns, ticks)
            }
            Evil::DescLoop => {
                // The buffer names a PFN beyond RAM, so a device that walks
                // the loop a few times before giving up drops nothing.
                self.put_pfns(0, &[end_pfn as u32]);
                // SAFETY: DMA is ours.
                let addr = unsafe { (*self.dma).pfns[0].as_ptr() } as u64;
                let head = self.inflateq.add_self_loop(Buffer { addr, len: 4, device_writes: false });
                self.inflateq.publish();
                self.mmio.notify(0);
                (usize::from(head.is_some()), Self::wait(self.freq, &mut self.inflateq, 1, ticks))
            }
            Evil::DescOutsideMemory => {
                // One chain: a buffer 1 GiB past the end of RAM, then one
                // whose end wraps around the address space.
                let beyond = ram_end.next_multiple_of(PAGE) + (1 << 30);
                let bufs = [
                    Buffer { addr: beyond, len: 1024, device_writes: false },
                    Buffer { addr: u64::MAX - 0xfff, len: 8192, device_writes: false },
                ];
                let head = self.inflateq.add(&bufs);
                self.inflateq.publish();
                self.mmio.notify(0);
                (usize::from(head.is_some()), Self::wait(self.freq, &mut self.inflateq, 1, ticks))
            }
            Evil::OversizedStats | Evil::UnknownStatsTag => self.evil_stats(case, pool, ticks),
        };
        let status = self.mmio.status();
        say!(
            "evil {}: device used {} of {} chains, status {:#x}",
            case.name(),
            back,
            sent,
            status
        );
        if status & STATUS_NEEDS_RESET != 0 {
            say!("virtio-balloon: device needs reset, setting it up again");
            if let Err(e) = self.setup(pool) {
                say!("virtio-balloon: set-up after reset failed: {}", e);
                exit(EXIT_DEVICE);
            }
        }
        say!(
            "evil {} done, own memory intact={}",
            case.name(),
            if pages::allocated_intact(pool) { "yes" } else { "no" }
        );
    }

    /// Writes `pfns` into PFN array `buf`.
    fn put_pfns(&mut self, buf: usize, pfns: &[u32]) {
        // SAFETY: DMA is ours; `buf < BATCH_BUFFERS`, `pfns` is short.
        let dst = unsafe { (*self.dma).pfns[buf].as_mut_ptr() };
        for (i, &p) in pfns.iter().take(PFNS_PER_BUFFER).enumerate() {
            // SAFETY: `i < PFNS_PER_BUFFER`.
            unsafe { write_volatile(dst.add(i), p.to_le()) };
        }
    }

    /// Inflates, then deflates, PFNs that are not the guest's RAM; returns
    /// (chains sent, chains used).
    fn evil_pfns(&mut self, pfns: &[u32], ticks: u64) -> (usize, usize) {
        self.put_pfns(0, pfns);
        // SAFETY: DMA is ours.
        let addr = unsafe { (*self.dma).pfns[0].as_ptr() } as u64;
        let buf = Buffer { addr, len: 4 * pfns.len() as u32, device_writes: false };
        let mut back = 0;
        let mut sent = 0;
        for (q, index) in [(&mut self.inflateq, 0), (&mut self.deflateq, 1)] {
            if q.add(&[buf]).is_some() {
                sent += 1;
                q.publish();
                self.mmio.notify(index);
                back += Self::wait(self.freq, q, 1, ticks);
            }
        }
        (sent, back)
    }

    /// Posts a malformed stats buffer next to the real one; returns (chains
    /// sent, chains used by the time the wait ends).
    fn evil_stats(&mut self, case: Evil, pool: &Pool<'_>, ticks: u64) -> (usize, usize) {
        let Some(q) = self.statsq.as_mut() else {
            say!("evil {}: no stats queue negotiated, nothing sent", case.name());
            return (0, 0);
        };
        // SAFETY: DMA is ours; the evil buffer is not with the device.
        let buf = unsafe { (*self.dma).evil.as_mut_ptr() };
        let entries = if case == Evil::OversizedStats {
            for i in 0..EVIL_STATS {
                let tag = (i % STATS_TAGS) as u16;
                // SAFETY: `i < EVIL_STATS`, inside the buffer.
                unsafe { put_stat(buf.add(i * STAT_BYTES), tag, i as u64) };
            }
            EVIL_STATS
        } else {
            let stats = [(0x63, 1), (0xffff, 2), (16, 3), (0x8000, 4), (S_MEMTOT, self.mem_total)];
            for (i, &(tag, value)) in stats.iter().enumerate() {
                // SAFETY: 5 entries, inside the buffer.
                unsafe { put_stat(buf.add(i * STAT_BYTES), tag, value) };
            }
            stats.len()
        };
        let len = (entries * STAT_BYTES) as u32;
        let Some(head) = q.add(&[Buffer { addr: buf as u64, len, device_writes: false }]) else {
            return (0, 0);
        };
        q.publish();
        self.mmio.notify(2);
        // The device keeps the newest stats buffer until its next poll and
        // gives the older one back, so our real buffer comes back, is posted
        // again, and then the evil one comes back. QEMU takes one buffer per
        // notification and coalesces notifications, so notify again every
        // few ms until the evil buffer is back (or the wait ends).
        let t0 = tsc::now();
        let kick_every = self.ticks(POLL_MS);
        let mut last_kick = t0;
        let mut back = 0;
        while back == 0 && tsc::now().wrapping_sub(t0) < ticks {
            let q = self.statsq.as_mut().expect("checked above");
            while let Some(u) = q.pop_used() {
                if u.known && u.id == u32::from(head) {
                    back += 1;
                } else if u.known && Some(u.id) == self.stats_head.map(u32::from) {
                    self.stats_head = None;
                    self.stats_returned += 1;
                }
            }
            if self.stats_head.is_none() {
                self.service_stats(pool);
            } else if tsc::now().wrapping_sub(last_kick) > kick_every {
                self.mmio.notify(2);
                last_kick = tsc::now();
            }
            core::hint::spin_loop();
        }
        (1, back)
    }
}

/// Writes one `le16 tag, le64 value` stat at `p` (10 bytes, unaligned).
///
/// # Safety
/// `p .. p + 10` must be writable memory the driver owns.
unsafe fn put_stat(p: *mut u8, tag: u16, value: u64) {
    for (i, b) in tag.to_le_bytes().into_iter().chain(value.to_le_bytes()).enumerate() {
        // SAFETY: `i < 10`, inside the range the caller vouches for.
        unsafe { write_volatile(p.add(i), b) };
    }
}
