//! Giving guest pages back to the host: guest-physical ranges are coalesced,
//! split at guest RAM region boundaries, translated to host addresses and
//! released with one call per contiguous host range.
//!
//! Invariant: a [`HostRange`] can only be made here, from a [`GuestRam`]
//! region, for a range wholly inside that region, and cannot outlive the
//! borrow of that memory. So whatever a [`Releaser`] is handed is host
//! memory that backs guest RAM and is mapped for as long as it may use it.

use std::io;
use std::marker::PhantomData;
use std::sync::OnceLock;

use virtio_device::GuestRam;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::metrics::{BalloonMetrics, RejectReason};

/// A guest-physical byte range `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct GuestRange {
    pub start: u64,
    pub len: u64,
}

impl GuestRange {
    fn end(&self) -> Option<u64> {
        self.start.checked_add(self.len)
    }
}

/// Sorts `ranges` and merges those that overlap or touch; drops empty ones
/// and ones that would wrap around the address space.
pub(crate) fn coalesce(mut ranges: Vec<GuestRange>) -> Vec<GuestRange> {
    ranges.retain(|r| r.len > 0 && r.end().is_some());
    ranges.sort_unstable();
    let mut out: Vec<GuestRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        // `end()` is Some for every retained range and every merge of them.
        let end = r.start + r.len;
        match out.last_mut() {
            Some(last) if r.start <= last.start + last.len => {
                last.len = end.max(last.start + last.len) - last.start;
            }
            _ => out.push(r),
        }
    }
    out
}

/// Turns 4 KiB page frame numbers into contiguous guest ranges: sorts,
/// removes duplicates and merges runs of consecutive PFNs.
pub(crate) fn pfn_runs(pfns: &mut [u32]) -> Vec<GuestRange> {
    pfns.sort_unstable();
    let mut out: Vec<GuestRange> = Vec::new();
    let mut prev: Option<u32> = None;
    for &pfn in pfns.iter() {
        if prev == Some(pfn) {
            continue;
        }
        let start = u64::from(pfn) << crate::config::BALLOON_PAGE_SHIFT;
        match out.last_mut() {
            Some(last) if prev.is_some_and(|p| u64::from(p) + 1 == u64::from(pfn)) => {
                last.len += crate::BALLOON_PAGE_SIZE;
            }
            _ => out.push(GuestRange {
                start,
                len: crate::BALLOON_PAGE_SIZE,
            }),
        }
        prev = Some(pfn);
    }
    out
}

/// A host range backing guest RAM, wholly inside one guest RAM region.
///
/// Only this module makes them (see the module invariant); the lifetime ties
/// it to the borrow of the [`GuestRam`] it came from.
#[derive(Debug)]
pub struct HostRange<'m> {
    guest_addr: GuestAddress,
    host_addr: usize,
    len: usize,
    shared: bool,
    _mem: PhantomData<&'m GuestRam>,
}

impl<'m> HostRange<'m> {
    /// Guest-physical start.
    pub fn guest_addr(&self) -> GuestAddress {
        self.guest_addr
    }

    /// Host virtual start.
    pub fn host_addr(&self) -> usize {
        self.host_addr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the region is a shared mapping (`MAP_SHARED`), where
    /// `MADV_DONTNEED` would free nothing.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Cuts the range into consecutive parts of at most `max` bytes (the
    /// last may be shorter), each still inside the same region. `max` is
    /// rounded down to whole 4 KiB pages (at least one), so parts of a
    /// page-aligned range stay page-aligned.
    fn split(&self, max: usize) -> impl Iterator<Item = HostRange<'m>> + '_ {
        let page = crate::BALLOON_PAGE_SIZE as usize;
        let max = (max - max % page).max(page);
        (0..self.len).step_by(max).map(move |off| HostRange {
            guest_addr: GuestAddress(self.guest_addr.0 + off as u64),
            host_addr: self.host_addr + off,
            len: max.min(self.len - off),
            shared: self.shared,
            _mem: PhantomData,
        })
    }
}

/// Some byte of a range is not guest RAM.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotBacked;

/// Splits `range` at region boundaries into host ranges, or fails if any
/// byte of it is not backed by a guest RAM region (outside RAM, in a hole
/// between regions).
pub(crate) fn split_by_region(
    mem: &GuestRam,
    range: GuestRange,
) -> Result<Vec<HostRange<'_>>, NotBacked> {
    let end = range.end().ok_or(NotBacked)?;
    let mut pieces = Vec::new();
    let mut cur = range.start;
    while cur < end {
        let region = mem.find_region(GuestAddress(cur)).ok_or(NotBacked)?;
        let region_start = region.start_addr().0;
        let region_end = region_start.checked_add(region.len()).ok_or(NotBacked)?;
        let piece_end = end.min(region_end);
        let offset = cur - region_start;
        let len = usize::try_from(piece_end - cur).map_err(|_| NotBacked)?;
        // Checks `offset` against the region and never dereferences.
        let host = region
            .get_host_address(MemoryRegionAddress(offset))
            .map_err(|_| NotBacked)?;
        pieces.push(HostRange {
            guest_addr: GuestAddress(cur),
            host_addr: host as usize,
            len,
            shared: region.flags() & libc::MAP_SHARED != 0,
            _mem: PhantomData,
        });
        cur = piece_end;
    }
    Ok(pieces)
}

/// Gives the host memory behind a guest range back to the host.
///
/// A releaser is shared between the device and its release worker
/// ([`crate::release_worker`]), so it may be called from either thread, also
/// concurrently. It must not call back into the device (the device may be
/// waiting for it with its own lock held).
pub trait Releaser: Send + Sync {
    /// Releases `range`; returns how many bytes were released (a releaser
    /// may release less, e.g. only whole host pages).
    fn release(&self, range: &HostRange<'_>) -> io::Result<u64>;
}

/// The production [`Releaser`]: `madvise(MADV_DONTNEED)` on private
/// mappings (the pages read back as zero and cost nothing until touched),
/// `MADV_REMOVE` on shared ones (punches a hole in the backing file, which
/// `MADV_DONTNEED` would not). Only whole host pages are released.
#[derive(Clone, Copy, Debug, Default)]
pub struct MadviseReleaser;

fn host_page_size() -> usize {
    static PAGE_SIZE: OnceLock<usize> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(size)
            .ok()
            .filter(|s| s.is_power_of_two())
            .unwrap_or(4096)
    })
}

impl Releaser for MadviseReleaser {
    fn release(&self, range: &HostRange<'_>) -> io::Result<u64> {
        let page = host_page_size();
        let end = range
            .host_addr
            .checked_add(range.len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        // Shrink to whole host pages: madvise rounds the length up, and must
        // never reach past the range.
        let start = range.host_addr.checked_next_multiple_of(page);
        let end = end - end % page;
        let Some(start) = start.filter(|s| *s < end) else {
            return Ok(0);
        };
        let advice = if range.shared {
            libc::MADV_REMOVE
        } else {
            libc::MADV_DONTNEED
        };
        // SAFETY: [start, end) lies inside `range`, which by the module
        // invariant is inside a guest RAM mapping that stays mapped while the
        // borrow in `HostRange` lives. Guest RAM is only ever accessed
        // through volatile accessors and by the guest, never through Rust
        // references, so dropping its contents breaks no Rust aliasing
        // guarantee; zeroed guest pages are what ballooning promises.
        let ret = unsafe { libc::madvise(start as *mut libc::c_void, end - start, advice) };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((end - start) as u64)
    }
}

/// What one or more release calls did, to be added to [`BalloonMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReleaseTally {
    /// Release calls made (one per host piece).
    pub calls: u64,
    /// Release calls that failed.
    pub errors: u64,
    /// Bytes released.
    pub bytes: u64,
    /// Ranges skipped because some byte of them is not guest RAM.
    pub outside_ram: u64,
}

impl ReleaseTally {
    /// Adds the tally to `metrics` (`madvise_calls`, `madvise_errors`,
    /// `bytes_released` and the `pfn_outside_ram` rejections).
    pub fn add_to(&self, metrics: &mut BalloonMetrics) {
        metrics.madvise_calls = metrics.madvise_calls.saturating_add(self.calls);
        metrics.madvise_errors = metrics.madvise_errors.saturating_add(self.errors);
        metrics.bytes_released = metrics.bytes_released.saturating_add(self.bytes);
        metrics.reject_n(RejectReason::PfnOutsideRam, self.outside_ram);
    }
}

/// Releases `ranges` (already coalesced), one release call per host piece
/// of at most `max_call` bytes. A range that is not wholly guest RAM is
/// skipped and counted: callers validate first, this is the last line of
/// defence.
pub(crate) fn release_ranges(
    mem: &GuestRam,
    ranges: &[GuestRange],
    releaser: &dyn Releaser,
    max_call: usize,
) -> ReleaseTally {
    let mut tally = ReleaseTally::default();
    for range in ranges {
        let Ok(pieces) = split_by_region(mem, *range) else {
            tally.outside_ram += 1;
            continue;
        };
        for piece in &pieces {
            for part in piece.split(max_call) {
                tally.calls += 1;
                match releaser.release(&part) {
                    Ok(n) => tally.bytes = tally.bytes.saturating_add(n),
                    Err(_) => tally.errors += 1,
                }
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_mem, RecordingReleaser, HOLE_START, REGION_B_START};
    use std::os::fd::FromRawFd;
    use vm_memory::{Bytes, FileOffset};

    fn r(start: u64, len: u64) -> GuestRange {
        GuestRange { start, len }
    }

    #[test]
    fn coalesce_merges_overlapping_and_touching() {
        let out = coalesce(vec![
            r(0x5000, 0x1000),
            r(0x1000, 0x1000),
            r(0x2000, 0x2000),
            r(0x2800, 0x100),
            r(0x9000, 0),
            r(u64::MAX, 2),
        ]);
        assert_eq!(out, vec![r(0x1000, 0x3000), r(0x5000, 0x1000)]);
    }

    #[test]
    fn pfn_runs_sorts_dedups_and_merges() {
        let mut pfns = vec![7, 3, 4, 5, 5, 9, 10, 3];
        assert_eq!(
            pfn_runs(&mut pfns),
            vec![r(0x3000, 0x3000), r(0x7000, 0x1000), r(0x9000, 0x2000)]
        );
        let mut all: Vec<u32> = (0..1024).rev().collect();
        assert_eq!(pfn_runs(&mut all), vec![r(0, 1024 * 4096)]);
        let mut top = vec![u32::MAX, u32::MAX - 1];
        assert_eq!(
            pfn_runs(&mut top),
            vec![r((u64::from(u32::MAX) - 1) << 12, 0x2000)]
        );
    }

    #[test]
    fn a_range_over_two_regions_is_split() {
        let mem = test_mem();
        let pieces = split_by_region(&mem, r(REGION_B_START - 0x2000, 0x5000)).unwrap();
        let got: Vec<(u64, usize)> = pieces.iter().map(|p| (p.guest_addr().0, p.len())).collect();
        assert_eq!(
            got,
            vec![(REGION_B_START - 0x2000, 0x2000), (REGION_B_START, 0x3000)]
        );
        let a_host = mem
            .get_host_address(GuestAddress(REGION_B_START - 0x2000))
            .unwrap();
        let b_host = mem.get_host_address(GuestAddress(REGION_B_START)).unwrap();
        assert_eq!(pieces[0].host_addr(), a_host as usize);
        assert_eq!(pieces[1].host_addr(), b_host as usize);
        assert!(!pieces[0].is_shared());
    }

    #[test]
    fn long_ranges_are_released_in_calls_of_at_most_max_call_bytes() {
        let mem = test_mem();
        let rec = RecordingReleaser::default();
        // 3 MiB + 8 KiB over the A/B boundary, in calls of 1 MiB (+ 1 byte,
        // rounded down to whole pages).
        let start = REGION_B_START - 0x10_0000;
        let t = release_ranges(&mem, &[r(start, 0x30_2000)], &rec, 0x10_0001);
        assert_eq!(
            rec.ranges(),
            vec![
                (start, 0x10_0000),
                (REGION_B_START, 0x10_0000),
                (REGION_B_START + 0x10_0000, 0x10_0000),
                (REGION_B_START + 0x20_0000, 0x2000),
            ]
        );
        assert_eq!((t.calls, t.bytes), (4, 0x30_2000));
        // A limit below a page still makes progress, a page at a time.
        rec.clear();
        release_ranges(&mem, &[r(0x1000, 0x2000)], &rec, 1);
        assert_eq!(rec.ranges(), vec![(0x1000, 0x1000), (0x2000, 0x1000)]);
    }

    #[test]
    fn a_range_touching_a_hole_is_not_backed() {
        let mem = test_mem();
        assert_eq!(
            split_by_region(&mem, r(HOLE_START - 0x1000, 0x2000)).unwrap_err(),
            NotBacked
        );
        assert_eq!(
            split_by_region(&mem, r(HOLE_START, 0x1000)).unwrap_err(),
            NotBacked
        );
        assert_eq!(
            split_by_region(&mem, r(u64::MAX - 0xfff, 0x2000)).unwrap_err(),
            NotBacked
        );

        let rec = RecordingReleaser::default();
        let t = release_ranges(&mem, &[r(HOLE_START, 0x1000)], &rec, usize::MAX);
        assert_eq!(
            t,
            ReleaseTally {
                outside_ram: 1,
                ..ReleaseTally::default()
            }
        );
        assert!(rec.ranges().is_empty());
        let mut m = BalloonMetrics::default();
        t.add_to(&mut m);
        assert_eq!(m.rejections.pfn_outside_ram, 1);
        assert_eq!(m.madvise_calls, 0);
    }

    #[test]
    fn madvise_zeroes_private_guest_memory() {
        let mem = test_mem();
        let base = GuestAddress(REGION_B_START - 0x2000);
        mem.write_slice(&[0xaa; 0x6000], base).unwrap();
        // Two pages on each side of the region boundary; the last page of
        // the written area stays.
        let t = release_ranges(&mem, &[r(base.0, 0x4000)], &MadviseReleaser, usize::MAX);
        assert_eq!((t.calls, t.errors, t.bytes), (2, 0, 0x4000));
        let mut back = vec![0u8; 0x6000];
        mem.read_slice(&mut back, base).unwrap();
        assert!(back[..0x4000].iter().all(|&b| b == 0));
        assert!(back[0x4000..].iter().all(|&b| b == 0xaa));
    }

    #[test]
    fn shared_memory_is_released_with_madv_remove() {
        // SAFETY: memfd_create with a valid C string; the result is checked.
        let fd = unsafe { libc::memfd_create(c"balloon-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor we own.
        let file = unsafe { std::fs::File::from_raw_fd(fd) };
        file.set_len(0x4000).unwrap();
        let mem = GuestRam::from_ranges_with_files(&[(
            GuestAddress(0),
            0x4000,
            Some(FileOffset::new(file, 0)),
        )])
        .unwrap();
        mem.write_slice(&[0x55; 0x4000], GuestAddress(0)).unwrap();
        let pieces = split_by_region(&mem, r(0x1000, 0x2000)).unwrap();
        assert!(pieces[0].is_shared());
        assert_eq!(MadviseReleaser.release(&pieces[0]).unwrap(), 0x2000);
        // MADV_DONTNEED would leave the file's data visible; MADV_REMOVE
        // punched a hole.
        let mut back = vec![0u8; 0x4000];
        mem.read_slice(&mut back, GuestAddress(0)).unwrap();
        assert!(back[..0x1000].iter().all(|&b| b == 0x55));
        assert!(back[0x1000..0x3000].iter().all(|&b| b == 0));
        assert!(back[0x3000..].iter().all(|&b| b == 0x55));
    }
}
