//! The guest's page pool: every whole 4 KiB page of RAM above a floor (the
//! image end rounded up to 2 MiB), with one state byte per page.
//!
//! The state array itself lives in the pool's RAM (the first stretch of RAM
//! above the floor large enough for it), since its size depends on the RAM
//! the host gives the guest; those pages are in state [`State::Meta`]. The
//! array covers every page from the floor to the end of the highest RAM
//! range below the limit; pages in between that are not RAM (holes,
//! reserved ranges, the 3-4 GiB MMIO hole) are [`State::Hole`].
//!
//! States and who moves pages between them:
//!
//! | state | meaning |
//! |---|---|
//! | `Clean` | free; the host holds nothing we wrote (never touched, reported, or given back as zeros) |
//! | `Dirty` | free; touched since the last report |
//! | `Allocated` | used by the guest (`tiny.alloc`), holds a pattern |
//! | `Balloon` | in the balloon: given to the host, must not be touched |
//! | `Busy` | in flight to the device (being deflated or reported) |
//!
//! Invariants: a page is in exactly one state; [`Pool::count`] always equals
//! the number of pages in that state; [`Pool::take_run`] only ever returns
//! pages that were in one of the asked-for states, so `Allocated` and `Meta`
//! pages are never handed to the balloon unless asked for by name.
//!
//! This file depends on nothing else in the guest, so its tests run on the
//! host: `rustc --edition 2021 --test pool.rs -o /tmp/t && /tmp/t`.

/// Bytes per page.
pub const PAGE: u64 = 4096;

/// What a page of the pool is used for (one byte each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not RAM: never handed out.
    Hole = 0,
    /// Free, nothing of ours in it on the host.
    Clean = 1,
    /// Free, touched since the last report.
    Dirty = 2,
    /// Used by the guest.
    Allocated = 3,
    /// In the balloon.
    Balloon = 4,
    /// In flight to the device.
    Busy = 5,
    /// Holds the state array.
    Meta = 6,
}

/// Number of states.
const STATES: usize = 7;

impl State {
    /// The bit of this state in a [`Set`].
    pub const fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// A set of states, one bit each (`State::Clean.bit() | State::Dirty.bit()`).
pub type Set = u8;

/// The free states.
pub const FREE: Set = State::Clean.bit() | State::Dirty.bit();

/// Where the pool and its state array lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// PFN of the first page the array describes (the floor).
    pub first_pfn: u64,
    /// Pages described (floor to the end of the highest RAM page).
    pub pages: u64,
    /// PFN of the first page of the state array.
    pub meta_pfn: u64,
    /// Pages the state array occupies.
    pub meta_pages: u64,
}

impl Layout {
    /// Where to put a pool of the RAM in `ram` (`start, end` pairs, end
    /// exclusive, any order, may overlap) between `floor` and `limit`;
    /// `None` if there is no RAM there or no stretch of RAM holds the array.
    pub fn plan(ram: &[(u64, u64)], floor: u64, limit: u64) -> Option<Layout> {
        let first_pfn = floor.div_ceil(PAGE);
        let last_pfn = ram.iter().map(|&(_, end)| end.min(limit) / PAGE).max()?;
        if last_pfn <= first_pfn {
            return None;
        }
        let pages = last_pfn - first_pfn;
        let meta_pages = pages.div_ceil(PAGE);
        // The lowest stretch of RAM (overlapping ranges merged) that holds
        // the array.
        let mut cursor = first_pfn;
        loop {
            let (start, mut end) = ram
                .iter()
                .filter_map(|&(s, e)| {
                    let s = s.div_ceil(PAGE).max(cursor);
                    let e = e.min(limit) / PAGE;
                    (s < e).then_some((s, e))
                })
                .min_by_key(|&(s, _)| s)?;
            while let Some(e) = ram
                .iter()
                .filter(|&&(s, e)| s.div_ceil(PAGE) <= end && e.min(limit) / PAGE > end)
                .map(|&(_, e)| e.min(limit) / PAGE)
                .max()
            {
                end = e;
            }
            if end - start >= meta_pages {
                return Some(Layout {
                    first_pfn,
                    pages,
                    meta_pfn: start,
                    meta_pages,
                });
            }
            cursor = end;
        }
    }
}

/// The pool over a state array.
pub struct Pool<'a> {
    first_pfn: u64,
    state: &'a mut [u8],
    count: [u64; STATES],
    /// Where the last search for a set of states ended, per set (a set is
    /// below 128), so repeated takes do not rescan from the start.
    cursor: [u32; 128],
}

impl<'a> Pool<'a> {
    /// Builds the pool: RAM pages `Clean`, the array's pages `Meta`, the
    /// rest `Hole`. `state` must have `layout.pages` bytes.
    pub fn new(state: &'a mut [u8], layout: &Layout, ram: &[(u64, u64)], limit: u64) -> Pool<'a> {
        assert_eq!(state.len() as u64, layout.pages, "state array size");
        assert!(layout.pages < u32::MAX as u64, "pool too large");
        state.fill(State::Hole as u8);
        let end_pfn = layout.first_pfn + layout.pages;
        for &(start, end) in ram {
            let s = start.div_ceil(PAGE).max(layout.first_pfn);
            let e = (end.min(limit) / PAGE).min(end_pfn);
            if s < e {
                let (s, e) = (
                    (s - layout.first_pfn) as usize,
                    (e - layout.first_pfn) as usize,
                );
                state[s..e].fill(State::Clean as u8);
            }
        }
        let m = (layout.meta_pfn - layout.first_pfn) as usize;
        state[m..m + layout.meta_pages as usize].fill(State::Meta as u8);
        let mut count = [0; STATES];
        for &s in state.iter() {
            count[s as usize] += 1;
        }
        Pool {
            first_pfn: layout.first_pfn,
            state,
            count,
            cursor: [0; 128],
        }
    }

    /// Pages in state `s`.
    pub fn count(&self, s: State) -> u64 {
        self.count[s as usize]
    }

    /// Pages in any state of `set`.
    pub fn count_set(&self, set: Set) -> u64 {
        (0..STATES)
            .filter(|&i| set & (1 << i) != 0)
            .map(|i| self.count[i])
            .sum()
    }

    /// Free pages (`Clean` or `Dirty`).
    pub fn free(&self) -> u64 {
        self.count_set(FREE)
    }

    /// RAM pages in the pool, the state array included.
    #[allow(dead_code)] // used by the tests
    pub fn ram_pages(&self) -> u64 {
        self.state.len() as u64 - self.count(State::Hole)
    }

    /// PFN of the first page the pool describes.
    pub fn first_pfn(&self) -> u64 {
        self.first_pfn
    }

    /// PFN after the last page the pool describes.
    pub fn end_pfn(&self) -> u64 {
        self.first_pfn + self.state.len() as u64
    }

    /// The state of page `pfn` (`Hole` outside the pool).
    #[allow(dead_code)] // used by the tests
    pub fn state_of(&self, pfn: u64) -> State {
        match pfn.checked_sub(self.first_pfn) {
            Some(i) if i < self.state.len() as u64 => from_u8(self.state[i as usize]),
            _ => State::Hole,
        }
    }

    /// Marks the first `pages` RAM pages of the pool (the array's included,
    /// which stay `Meta`) `Dirty` if they are `Clean`: what `tiny.touch`
    /// wrote, lowest pages first.
    pub fn mark_touched(&mut self, pages: u64) {
        let mut left = pages;
        for i in 0..self.state.len() {
            if left == 0 {
                break;
            }
            match from_u8(self.state[i]) {
                State::Hole => {}
                State::Clean => {
                    self.set(i, State::Dirty);
                    left -= 1;
                }
                _ => left -= 1,
            }
        }
    }

    /// Finds the next run of up to `max` contiguous pages in any state of
    /// `from` (searching on from where the last search for `from` ended,
    /// wrapping around once), moves them to `to` and returns `(pfn, len)`.
    /// `None` if there are no such pages (or `max` is 0).
    pub fn take_run(&mut self, from: Set, to: State, max: u64) -> Option<(u64, u64)> {
        if max == 0 || self.count_set(from) == 0 {
            return None;
        }
        let n = self.state.len();
        let cursor = (self.cursor[from as usize & 127] as usize).min(n);
        let in_set = |b: u8| from & (1 << b) != 0;
        let start = (cursor..n)
            .chain(0..cursor)
            .find(|&i| in_set(self.state[i]))?;
        let mut end = start;
        while end < n && ((end - start) as u64) < max && in_set(self.state[end]) {
            self.set(end, to);
            end += 1;
        }
        self.cursor[from as usize & 127] = end as u32;
        Some((self.first_pfn + start as u64, (end - start) as u64))
    }

    /// Moves `len` pages from `pfn` on to `to`; every one must be in a state
    /// of `from` (else nothing changes and `false` is returned).
    pub fn set_run(&mut self, pfn: u64, len: u64, from: Set, to: State) -> bool {
        let Some(start) = pfn.checked_sub(self.first_pfn) else {
            return false;
        };
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        if end > self.state.len() as u64 {
            return false;
        }
        let (start, end) = (start as usize, end as usize);
        if !self.state[start..end].iter().all(|&b| from & (1 << b) != 0) {
            return false;
        }
        for i in start..end {
            self.set(i, to);
        }
        true
    }

    /// The first run of pages in `set` at or after `pfn`, as `(pfn, len)`
    /// (for walking all runs: continue at `pfn + len`).
    pub fn next_run(&self, pfn: u64, set: Set) -> Option<(u64, u64)> {
        let from = pfn
            .saturating_sub(self.first_pfn)
            .min(self.state.len() as u64) as usize;
        let in_set = |b: u8| set & (1 << b) != 0;
        let start = (from..self.state.len()).find(|&i| in_set(self.state[i]))?;
        let len = self.state[start..]
            .iter()
            .take_while(|&&b| in_set(b))
            .count();
        Some((self.first_pfn + start as u64, len as u64))
    }

    fn set(&mut self, i: usize, to: State) {
        let old = self.state[i] as usize;
        self.count[old] -= 1;
        self.count[to as usize] += 1;
        self.state[i] = to as u8;
    }
}

fn from_u8(b: u8) -> State {
    match b {
        1 => State::Clean,
        2 => State::Dirty,
        3 => State::Allocated,
        4 => State::Balloon,
        5 => State::Busy,
        6 => State::Meta,
        _ => State::Hole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const LIMIT: u64 = 64 << 30;

    fn pool_over<'a>(buf: &'a mut Vec<u8>, ram: &[(u64, u64)], floor: u64) -> Pool<'a> {
        let layout = Layout::plan(ram, floor, LIMIT).unwrap();
        buf.resize(layout.pages as usize, 0xaa);
        Pool::new(buf, &layout, ram, LIMIT)
    }

    #[test]
    fn layout_of_a_small_guest() {
        let ram = [(0, 0x9fc00), (MIB, 256 * MIB)];
        let l = Layout::plan(&ram, 2 * MIB, LIMIT).unwrap();
        assert_eq!(l.first_pfn, 0x200);
        assert_eq!(l.pages, 0x10000 - 0x200);
        assert_eq!(l.meta_pfn, 0x200);
        assert_eq!(l.meta_pages, 16);
        let mut buf = Vec::new();
        let p = pool_over(&mut buf, &ram, 2 * MIB);
        assert_eq!(p.count(State::Meta), 16);
        assert_eq!(p.free(), 0x10000 - 0x200 - 16);
        assert_eq!(p.ram_pages(), 0x10000 - 0x200);
        assert_eq!(p.state_of(0x200), State::Meta);
        assert_eq!(p.state_of(0x210), State::Clean);
        assert_eq!(p.state_of(0x1ff), State::Hole);
        assert_eq!(p.state_of(0x10000), State::Hole);
    }

    #[test]
    fn holes_are_never_handed_out() {
        // RAM on both sides of the 3-4 GiB hole, plus an unaligned range.
        let ram = [
            (4096 * MIB, 4100 * MIB),
            (MIB, 3072 * MIB),
            (5000 * MIB + 5, 5001 * MIB),
        ];
        let mut buf = Vec::new();
        let mut p = pool_over(&mut buf, &ram, 2 * MIB);
        let total = p.free();
        assert_eq!(total + p.count(State::Meta), (3070 + 4) * 256 + 255);
        let mut got = 0;
        while let Some((pfn, len)) = p.take_run(FREE, State::Allocated, 1 << 20) {
            for q in pfn..pfn + len {
                let a = q * PAGE;
                assert!(ram.iter().any(|&(s, e)| s <= a && a + PAGE <= e), "{a:#x}");
            }
            got += len;
        }
        assert_eq!(got, total);
        assert_eq!(p.free(), 0);
        assert_eq!(p.count(State::Allocated), total);
    }

    #[test]
    fn array_goes_to_the_first_stretch_that_holds_it() {
        // 8 GiB guest: 2 Mi pages need 512 pages (2 MiB) of array; the
        // first stretch above the floor has only 1 MiB.
        let ram = [(2 * MIB, 3 * MIB), (4 * MIB, 8192 * MIB)];
        let l = Layout::plan(&ram, 2 * MIB, LIMIT).unwrap();
        assert_eq!(l.meta_pages, ((8192 - 2) * 256u64).div_ceil(4096));
        assert_eq!(l.meta_pfn, 4 * MIB / PAGE);
        assert_eq!(Layout::plan(&[(MIB, 2 * MIB)], 2 * MIB, LIMIT), None);
        assert_eq!(Layout::plan(&[], 2 * MIB, LIMIT), None);
    }

    #[test]
    fn take_runs_move_pages_and_keep_counts() {
        let ram = [(MIB, 64 * MIB)];
        let mut buf = Vec::new();
        let mut p = pool_over(&mut buf, &ram, 2 * MIB);
        let free = p.free();
        // Allocate 32 MiB lowest first, in runs of at most 1000 pages.
        let mut left = 8192;
        let mut next = p.first_pfn() + 4; // after 4 array pages
        while left > 0 {
            let (pfn, len) = p.take_run(FREE, State::Allocated, left.min(1000)).unwrap();
            assert_eq!(pfn, next);
            next += len;
            left -= len;
        }
        assert_eq!(p.count(State::Allocated), 8192);
        assert_eq!(p.free(), free - 8192);
        // Free 4 MiB: they become Dirty.
        let (pfn, len) = p
            .take_run(State::Allocated.bit(), State::Dirty, 1024)
            .unwrap();
        assert_eq!((pfn, len), (p.first_pfn() + 4, 1024));
        assert_eq!(p.count(State::Dirty), 1024);
        // Dirty pages first into the balloon, then Clean ones.
        let (pfn, len) = p
            .take_run(State::Dirty.bit(), State::Balloon, 4096)
            .unwrap();
        assert_eq!((pfn, len), (p.first_pfn() + 4, 1024));
        assert_eq!(p.take_run(State::Dirty.bit(), State::Balloon, 4096), None);
        let (_, len) = p.take_run(State::Clean.bit(), State::Balloon, 10).unwrap();
        assert_eq!(len, 10);
        assert_eq!(p.count(State::Balloon), 1034);
        // set_run checks the source states.
        assert!(!p.set_run(p.first_pfn(), 8, State::Balloon.bit(), State::Dirty));
        assert!(p.set_run(p.first_pfn() + 4, 8, State::Balloon.bit(), State::Busy));
        assert!(!p.set_run(u64::MAX, 1, State::Busy.bit(), State::Dirty));
        assert!(!p.set_run(p.end_pfn() - 1, 2, FREE, State::Dirty));
        assert_eq!(p.count(State::Busy), 8);
        let sum: u64 = (0..7u8).map(|s| p.count_set(1 << s)).sum();
        assert_eq!(sum, p.end_pfn() - p.first_pfn());
    }

    #[test]
    fn cursors_wrap_around() {
        let ram = [(MIB, 4 * MIB)];
        let mut buf = Vec::new();
        let mut p = pool_over(&mut buf, &ram, 2 * MIB);
        let first = p.first_pfn() + 1;
        let (a, _) = p.take_run(FREE, State::Allocated, 4).unwrap();
        assert_eq!(a, first);
        // Give the first two back: the next take finds them after wrapping.
        assert!(p.set_run(first, 2, State::Allocated.bit(), State::Dirty));
        while p.take_run(FREE, State::Balloon, 100).is_some() {}
        assert_eq!(p.free(), 0);
        assert_eq!(p.state_of(first), State::Balloon);
    }

    #[test]
    fn walking_runs() {
        let ram = [(MIB, 8 * MIB)];
        let mut buf = Vec::new();
        let mut p = pool_over(&mut buf, &ram, 2 * MIB);
        let f = p.first_pfn();
        assert!(p.set_run(f + 10, 5, FREE, State::Allocated));
        assert!(p.set_run(f + 20, 1, FREE, State::Allocated));
        let set = State::Allocated.bit();
        assert_eq!(p.next_run(0, set), Some((f + 10, 5)));
        assert_eq!(p.next_run(f + 12, set), Some((f + 12, 3)));
        assert_eq!(p.next_run(f + 15, set), Some((f + 20, 1)));
        assert_eq!(p.next_run(f + 21, set), None);
        assert_eq!(p.next_run(u64::MAX, set), None);
    }

    #[test]
    fn touched_pages_become_dirty() {
        let ram = [(MIB, 16 * MIB)];
        let mut buf = Vec::new();
        let mut p = pool_over(&mut buf, &ram, 2 * MIB);
        p.mark_touched(100);
        // The array's page counts as touched but stays Meta.
        assert_eq!(p.count(State::Dirty), 99);
        assert_eq!(p.state_of(p.first_pfn()), State::Meta);
        assert_eq!(p.state_of(p.first_pfn() + 99), State::Dirty);
        assert_eq!(p.state_of(p.first_pfn() + 100), State::Clean);
    }
}
