//! Releasing inflated pages off the event loop.
//!
//! With `VIRTIO_BALLOON_F_MUST_TELL_HOST` negotiated the driver may not use
//! a page it put in the balloon until the device has acknowledged a
//! deflate request naming it (virtio 1.2, 5.5.6.1), so the device need not
//! release a page before it returns the inflate buffer: it only has to be
//! done before the driver can have the page back. The device records the
//! inflated pages, returns the buffers at once and hands the coalesced
//! ranges to a [`ReleaseWorker`], a thread that calls the [`Releaser`]
//! (`madvise`) while the driver prepares its next request. The guest no
//! longer waits for each `madvise`, and the worker coalesces what queued up
//! meanwhile into fewer, larger calls.
//!
//! # The invariant
//!
//! **No page is released after the driver may use it again.** The driver
//! gets pages back in exactly three ways, and the device drains the worker
//! ([`ReleaseWorker::drain`]: wait until every range submitted so far is
//! released) before each of them:
//!
//! 1. a deflate buffer is returned: drained before the deflate queue is
//!    processed at all;
//! 2. a free page reporting buffer is returned (the guest's allocator takes
//!    the reported pages back as soon as it is): drained before the
//!    reporting queue is processed, whose ranges are then released inline;
//! 3. the device is reset (a new driver, or a rebooted guest, owns all of
//!    RAM again): drained before the reset completes.
//!
//! Ranges are submitted only by the device, with `&mut` access to it, so
//! nothing can be submitted between a drain and the return of the buffers
//! it protects. Without `MUST_TELL_HOST` a driver may reuse deflated pages
//! before telling the device, so the device then releases synchronously,
//! before returning each inflate buffer, and never starts a worker.
//!
//! Not releasing a page is always safe (it merely stays resident), so
//! dropping a worker abandons what it has not started; only the device's
//! own teardown does that, when no driver can be handed pages any more.
//!
//! # Lifetime of the memory
//!
//! The worker owns a clone of the [`GuestRam`] (reference-counted regions),
//! so the mappings it advises stay mapped for as long as it runs, whatever
//! happens to the device or the VM. Host ranges are made from that memory
//! by [`crate::release`] alone, as everywhere else.
//!
//! The worker never takes the device's lock, so the device may wait for it
//! with its lock held (from the event loop, or a vCPU thread on reset).
//!
//! # Bounded memory
//!
//! The device submits a round's ranges whether or not the worker has
//! caught up, and a guest may name the same pages round after round. The
//! worker coalesces what it holds when it takes the next piece, but a
//! worker that is slow or not scheduled at all takes nothing: so a
//! submission that leaves the queue more than twice as long as it was
//! after it was last coalesced (and longer than [`MIN_COALESCE_AT`])
//! coalesces it at once. The queue then never holds more than
//! `max(MIN_COALESCE_AT, 2 * D)` ranges, where `D`, the most disjoint
//! non-touching ranges of whole guest pages, is at most one per two pages
//! of guest RAM plus one per region: a bound set by the guest's size, not
//! by how long it keeps inflating.
//!
//! # One thread
//!
//! `MADV_DONTNEED` on disjoint ranges of one address space takes the
//! `mmap_lock` only for reading, but two threads releasing 1 GiB together
//! were no faster than one on our 2-CPU hosts (most of the time goes to
//! freeing and uncharging the pages), and a second release thread mostly
//! takes CPU time from the guest's vCPUs. So one thread per device; see
//! "Reclaim speed" in `BENCHMARKS.md`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use virtio_device::GuestRam;

use crate::release::{coalesce, release_ranges, GuestRange, ReleaseTally, Releaser};

/// What a release worker thread runs before it releases anything (the VMM
/// installs the thread's seccomp filter with it). An error ends the thread.
pub type ThreadStart = fn() -> std::io::Result<()>;

/// Most bytes one release call covers. Larger calls mean fewer TLB
/// flushes and fewer MMU-notifier invalidations, but each holds the
/// `mmap_lock` (for reading) and keeps KVM from mapping the pages of its
/// range for the whole call, and a drop waits for the call in progress;
/// 32 MiB take ~2-3 ms of CPU here.
pub(crate) const MAX_RELEASE_CALL: usize = 32 << 20;

/// Below this many queued ranges a submission is not coalesced at once
/// (the worker coalesces what it holds when it takes the next piece).
const MIN_COALESCE_AT: usize = 1024;

/// What the device and the worker thread share.
struct Shared {
    state: Mutex<State>,
    /// Signalled when ranges are queued, and on shutdown.
    work: Condvar,
    /// Signalled when everything queued has been released, and when the
    /// thread exits.
    done: Condvar,
    /// Set (under the lock) on drop: stop between two release calls.
    abandon: AtomicBool,
    /// What the release calls did so far.
    calls: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    outside_ram: AtomicU64,
}

/// Invariants: `finished <= submitted`; every range of the submissions
/// after `finished` is in `queue` or being released (`busy`); and
/// `finished == submitted` whenever `queue` is empty and nothing is being
/// released.
#[derive(Default)]
struct State {
    /// Ranges to release; sorted by descending address and coalesced
    /// unless `unsorted`, so the lowest is at the end.
    queue: Vec<GuestRange>,
    unsorted: bool,
    /// The worker is inside a release call.
    busy: bool,
    /// Submissions so far.
    submitted: u64,
    /// Submissions whose ranges have all been released.
    finished: u64,
    /// The worker thread has ended (after a drop, or a panic in a
    /// releaser): nothing queued will be released any more.
    exited: bool,
    /// Length of the queue when it was last coalesced (see "Bounded
    /// memory" above).
    coalesced_len: usize,
}

impl State {
    /// Queues `ranges`; coalesces the queue if that made it more than
    /// twice as long as after its last coalescing.
    fn push(&mut self, ranges: Vec<GuestRange>) {
        self.queue.extend(ranges);
        self.unsorted = true;
        if self.queue.len() > MIN_COALESCE_AT.max(2 * self.coalesced_len) {
            self.coalesce();
        }
    }

    /// Sorts and coalesces the queue if ranges were added since it last
    /// was: by descending address, so that the lowest is at the end.
    fn coalesce(&mut self) {
        if std::mem::take(&mut self.unsorted) {
            let mut ranges = coalesce(std::mem::take(&mut self.queue));
            ranges.reverse();
            self.queue = ranges;
            self.coalesced_len = self.queue.len();
        }
    }

    /// Takes the next piece to release, at most `max` bytes, lowest
    /// address first (the order in which drivers usually inflate).
    fn take(&mut self, max: u64) -> Option<GuestRange> {
        self.coalesce();
        let last = self.queue.last_mut()?;
        if last.len <= max {
            return self.queue.pop();
        }
        let piece = GuestRange {
            start: last.start,
            len: max,
        };
        last.start += max;
        last.len -= max;
        Some(piece)
    }

    /// Marks every submission finished if nothing is left to release;
    /// returns whether that changed anything.
    fn settle(&mut self) -> bool {
        if self.queue.is_empty() && !self.busy && self.finished != self.submitted {
            self.finished = self.submitted;
            return true;
        }
        false
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing that can panic runs under the lock halfway through an
        // update, so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, t: ReleaseTally) {
        self.calls.fetch_add(t.calls, Ordering::Relaxed);
        self.errors.fetch_add(t.errors, Ordering::Relaxed);
        self.bytes.fetch_add(t.bytes, Ordering::Relaxed);
        self.outside_ram.fetch_add(t.outside_ram, Ordering::Relaxed);
    }
}

/// A thread releasing guest ranges in the background; a drain waits for
/// everything submitted before it.
pub(crate) struct ReleaseWorker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ReleaseWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.lock();
        f.debug_struct("ReleaseWorker")
            .field("submitted", &s.submitted)
            .field("finished", &s.finished)
            .field("busy", &s.busy)
            .field("exited", &s.exited)
            .finish()
    }
}

/// Marks the worker exited when its thread ends, also by a panic in a
/// releaser, so that a drain never waits for a thread that is gone.
struct ExitGuard<'a>(&'a Shared);

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.exited = true;
        // A piece in flight when a releaser panicked is never released:
        // as good as finished for a drain.
        s.busy = false;
        s.settle();
        drop(s);
        self.0.done.notify_all();
    }
}

impl ReleaseWorker {
    /// Starts a worker thread releasing ranges of `mem` through
    /// `releaser`. The thread first runs `start` (e.g. installs its
    /// seccomp filter); if that fails the thread ends, releases nothing,
    /// and its error is returned here.
    pub fn spawn(
        mem: GuestRam,
        releaser: Arc<dyn Releaser>,
        start: Option<ThreadStart>,
    ) -> std::io::Result<ReleaseWorker> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            abandon: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            outside_ram: AtomicU64::new(0),
        });
        let theirs = Arc::clone(&shared);
        let (started_tx, started) = std::sync::mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("balloon-release".into())
            .spawn(move || {
                let ok = start.map_or(Ok(()), |f| f());
                let go = ok.is_ok();
                let _ = started_tx.send(ok);
                if go {
                    run(&theirs, &mem, releaser.as_ref());
                }
            })?;
        let ok = started
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the release worker died starting")));
        if let Err(e) = ok {
            let _ = thread.join();
            return Err(e);
        }
        Ok(ReleaseWorker {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `ranges` for release and returns at once.
    pub fn submit(&self, ranges: Vec<GuestRange>) {
        if ranges.is_empty() {
            return;
        }
        let mut s = self.shared.lock();
        s.push(ranges);
        s.submitted += 1;
        drop(s);
        self.shared.work.notify_one();
    }

    /// Waits until every range submitted so far has been released (or the
    /// worker has exited, after which nothing more is released). Returns
    /// whether it had to wait.
    pub fn drain(&self) -> bool {
        let mut s = self.shared.lock();
        let target = s.submitted;
        let mut waited = false;
        while s.finished < target && !s.exited {
            waited = true;
            s = self.shared.done.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        waited
    }

    /// What the release calls did so far.
    pub fn tally(&self) -> ReleaseTally {
        let s = &self.shared;
        ReleaseTally {
            calls: s.calls.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            outside_ram: s.outside_ram.load(Ordering::Relaxed),
        }
    }
}

impl Drop for ReleaseWorker {
    /// Stops the worker after its current release call and joins it; what
    /// it has not started is never released (see the module invariant for
    /// why that is safe).
    fn drop(&mut self) {
        // Set under the lock: the worker checks the flag under it before
        // it waits, so it either sees the flag or gets the notification.
        let s = self.shared.lock();
        self.shared.abandon.store(true, Ordering::Relaxed);
        drop(s);
        self.shared.work.notify_all();
        if let Some(thread) = self.thread.take() {
            // A panic in a releaser already ended the thread; nothing to do.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
impl ReleaseWorker {
    /// Ranges queued and not yet taken by the thread.
    pub(crate) fn queued_ranges(&self) -> usize {
        self.shared.lock().queue.len()
    }
}

/// The most ranges a worker may hold for a guest with `ram_pages` pages of
/// RAM in `regions` regions (see "Bounded memory" above).
#[cfg(test)]
pub(crate) fn queue_bound(ram_pages: u64, regions: usize) -> usize {
    MIN_COALESCE_AT.max(2 * (ram_pages as usize / 2 + regions))
}

/// The worker thread: takes the lowest queued piece of at most
/// [`MAX_RELEASE_CALL`] bytes, releases it, and marks every submission
/// finished once nothing is queued or in flight.
fn run(shared: &Shared, mem: &GuestRam, releaser: &dyn Releaser) {
    let _exit = ExitGuard(shared);
    let mut s = shared.lock();
    loop {
        if shared.abandon.load(Ordering::Relaxed) {
            return;
        }
        let Some(piece) = s.take(MAX_RELEASE_CALL as u64) else {
            s = shared.work.wait(s).unwrap_or_else(|e| e.into_inner());
            continue;
        };
        s.busy = true;
        drop(s);
        shared.record(release_ranges(mem, &[piece], releaser, MAX_RELEASE_CALL));
        s = shared.lock();
        s.busy = false;
        if s.settle() {
            shared.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_mem, GatedReleaser, RecordingReleaser, REGION_B_START};
    use std::time::Duration;

    /// A worker whose start hook fails is not started, so the device
    /// falls back to releasing synchronously; a hook that succeeds runs on
    /// the worker's own thread before it releases anything.
    #[test]
    fn the_start_hook_runs_on_the_worker_and_can_refuse() {
        fn refuse() -> std::io::Result<()> {
            Err(std::io::Error::other("no filter"))
        }
        let rec = RecordingReleaser::default();
        let err =
            ReleaseWorker::spawn(test_mem(), Arc::new(rec.clone()), Some(refuse)).unwrap_err();
        assert_eq!(err.to_string(), "no filter");

        static ON: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
        fn record() -> std::io::Result<()> {
            *ON.lock().unwrap() = std::thread::current().name().map(String::from);
            Ok(())
        }
        let w = ReleaseWorker::spawn(test_mem(), Arc::new(rec.clone()), Some(record)).unwrap();
        assert_eq!(ON.lock().unwrap().as_deref(), Some("balloon-release"));
        w.submit(vec![r(0, 4096)]);
        w.drain();
        assert_eq!(rec.ranges(), [(0, 4096)]);
    }

    fn r(start: u64, len: u64) -> GuestRange {
        GuestRange { start, len }
    }

    #[test]
    fn submitted_ranges_are_coalesced_and_released_by_the_drain() {
        let rec = RecordingReleaser::default();
        let w = ReleaseWorker::spawn(test_mem(), Arc::new(rec.clone()), None).unwrap();
        assert!(!w.drain());
        w.submit(vec![r(0x2000, 0x1000)]);
        w.submit(vec![r(0x1000, 0x1000), r(0x5000, 0x1000)]);
        w.drain();
        let mut got = rec.ranges();
        got.sort_unstable();
        // Coalesced when both submissions were taken together, else not.
        assert!(
            got == vec![(0x1000, 0x2000), (0x5000, 0x1000)]
                || got == vec![(0x1000, 0x1000), (0x2000, 0x1000), (0x5000, 0x1000)],
            "{got:?}"
        );
        assert_eq!(w.tally().bytes, 0x3000);
        assert_eq!(w.tally().calls, got.len() as u64);
    }

    #[test]
    fn a_long_range_is_released_lowest_first_in_pieces_of_at_most_max_call() {
        let mem = GuestRam::from_ranges(&[(vm_memory::GuestAddress(0), 256 << 20)]).unwrap();
        let rec = RecordingReleaser::default();
        let w = ReleaseWorker::spawn(mem, Arc::new(rec.clone()), None).unwrap();
        // 200 MiB in two touching submissions: coalesced (if taken
        // together), then cut into pieces.
        w.submit(vec![r(100 << 20, 100 << 20)]);
        w.submit(vec![r(0, 100 << 20)]);
        w.drain();
        let got = rec.ranges();
        assert!(got.iter().all(|(_, len)| *len <= MAX_RELEASE_CALL as u64));
        let mut sorted = got.clone();
        sorted.sort_unstable();
        let mut next = 0;
        for (start, len) in sorted {
            assert_eq!(start, next, "a gap or an overlap: {got:?}");
            next = start + len;
        }
        assert_eq!(next, 200 << 20);
        assert_eq!(w.tally().bytes, 200 << 20);
        assert_eq!(w.tally().calls, got.len() as u64);
    }

    #[test]
    fn a_drain_waits_for_the_release_in_progress() {
        let gate = GatedReleaser::closed();
        let w = ReleaseWorker::spawn(test_mem(), Arc::new(gate.clone()), None).unwrap();
        w.submit(vec![r(REGION_B_START, 0x1000)]);
        gate.wait_until_blocked();
        std::thread::scope(|s| {
            let drain = s.spawn(|| w.drain());
            std::thread::sleep(Duration::from_millis(30));
            assert!(!drain.is_finished(), "drained before the release ended");
            gate.open();
            assert!(drain.join().unwrap());
        });
        assert_eq!(gate.released(), vec![(REGION_B_START, 0x1000)]);
    }

    #[test]
    fn dropping_the_worker_abandons_what_it_has_not_started() {
        let gate = GatedReleaser::closed();
        let w = ReleaseWorker::spawn(test_mem(), Arc::new(gate.clone()), None).unwrap();
        // Two ranges that cannot coalesce: the first blocks in the releaser.
        w.submit(vec![r(0x1000, 0x1000), r(0x10_0000, 0x1000)]);
        gate.wait_until_blocked();
        std::thread::scope(|s| {
            let dropper = s.spawn(move || drop(w));
            std::thread::sleep(Duration::from_millis(10));
            gate.open();
            dropper.join().unwrap();
        });
        assert_eq!(gate.released(), vec![(0x1000, 0x1000)]);
    }

    /// Found by the fuzzed guest (`crate::fuzz`): with the worker unable to
    /// keep up, every inflate round's ranges piled up in its queue, without
    /// bound, even when the guest named the same pages each time.
    #[test]
    fn a_worker_that_cannot_keep_up_holds_a_bounded_queue() {
        let mem = GuestRam::from_ranges(&[(vm_memory::GuestAddress(0), 16 << 20)]).unwrap();
        let pages = 4096;
        let gate = GatedReleaser::closed();
        let w = ReleaseWorker::spawn(mem, Arc::new(gate.clone()), None).unwrap();
        let bound = queue_bound(pages, 1);
        for round in 0..50u64 {
            // Every other page, the worst case for coalescing.
            let ranges = (0..pages / 2)
                .map(|i| r((2 * i + round % 2) * 0x1000, 0x1000))
                .collect();
            w.submit(ranges);
            assert!(
                w.queued_ranges() <= bound,
                "round {round}: {} ranges queued, bound {bound}",
                w.queued_ranges()
            );
        }
        gate.open();
        w.drain();
        // Every page was released; the pages named again after the
        // queue was coalesced, only once more.
        let mut released = std::collections::BTreeSet::new();
        for (start, len) in gate.released() {
            released.extend((start / 0x1000)..(start + len) / 0x1000);
        }
        assert_eq!(released.len() as u64, pages);
        assert!(w.tally().bytes <= 2 * pages * 0x1000);
    }

    #[test]
    fn a_panicking_releaser_does_not_hang_a_drain() {
        struct Panics;
        impl Releaser for Panics {
            fn release(&self, _: &crate::HostRange<'_>) -> std::io::Result<u64> {
                panic!("releaser bug")
            }
        }
        let w = ReleaseWorker::spawn(test_mem(), Arc::new(Panics), None).unwrap();
        w.submit(vec![r(0x1000, 0x1000)]);
        w.drain();
        // The thread is gone: nothing to wait for.
        w.submit(vec![r(0x2000, 0x1000)]);
        assert!(!w.drain());
    }
}
