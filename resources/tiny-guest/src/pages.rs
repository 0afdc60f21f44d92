//! The page pool in guest memory: where its state array goes, and writing,
//! checking and giving back the pages it hands out (`tiny.alloc`,
//! `tiny.free`).
//!
//! Pattern: every 8-byte word of an allocated page holds
//! [`memtest::pattern`] of its own address (never zero), so a page the host
//! dropped (zeros), a stale page or two addresses sharing one page are all
//! caught by [`intact`].
//!
//! Invariant: the pool ([`crate::pool`]) only describes whole pages of RAM
//! from the memory map at or above the floor (the image end, stack included,
//! rounded up to 2 MiB) and below [`crate::boot::MAPPED_LIMIT`]; the start
//! info, memory map and command line were copied to the stack before the
//! pool is set up. Every page this module writes comes from the pool, so it
//! never overwrites the image, the stack or the state array (`Meta` pages
//! are never handed out).

use crate::boot::MAPPED_LIMIT;
use crate::memtest::pattern;
use crate::pool::{Layout, Pool, State, FREE, PAGE};
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};

/// Words per page.
const WORDS: u64 = PAGE / 8;

/// Set once the pool exists: its state array must have one owner.
static POOL_TAKEN: AtomicBool = AtomicBool::new(false);

/// Builds the pool over `ram` (`start, end` pairs of the memory map's RAM
/// entries) above `floor`, marking the first `touched` bytes (what
/// `tiny.touch` wrote) dirty. `None` if there is no RAM for it. Callable
/// once.
pub fn setup(ram: &[(u64, u64)], floor: u64, touched: u64) -> Option<Pool<'static>> {
    let layout = Layout::plan(ram, floor, MAPPED_LIMIT)?;
    if POOL_TAKEN.swap(true, Ordering::Relaxed) {
        return None;
    }
    let array = (layout.meta_pfn * PAGE) as *mut u8;
    // SAFETY: `Layout::plan` put the array in a stretch of RAM from the
    // memory map at or above the floor, so above the image and its stack,
    // below MAPPED_LIMIT (identity-mapped, writable); `meta_pages` pages
    // hold `pages` bytes. Nothing else refers to that memory (the boot data
    // was copied out), the pool marks it `Meta` so it is never handed out,
    // and POOL_TAKEN makes this the only reference.
    let state = unsafe { core::slice::from_raw_parts_mut(array, layout.pages as usize) };
    let mut pool = Pool::new(state, &layout, ram, MAPPED_LIMIT);
    pool.mark_touched(touched.div_ceil(PAGE));
    Some(pool)
}

/// Writes the pattern into page `pfn`.
///
/// # Safety
/// `pfn` must be a pool page the caller owns (taken from the pool, not
/// `Meta`, not in the balloon).
pub unsafe fn fill(pfn: u64) {
    let base = pfn * PAGE;
    for w in 0..WORDS {
        let addr = base + 8 * w;
        // SAFETY: inside the page the caller owns; 8-byte aligned. Volatile
        // so the stores really reach memory (the host looks at them).
        unsafe { write_volatile(addr as *mut u64, pattern(addr)) };
    }
}

/// True if page `pfn` still holds the pattern.
///
/// # Safety
/// As for [`fill`].
pub unsafe fn intact(pfn: u64) -> bool {
    let base = pfn * PAGE;
    (0..WORDS).all(|w| {
        let addr = base + 8 * w;
        // SAFETY: as in `fill`; volatile so the value comes from memory.
        unsafe { read_volatile(addr as *const u64) == pattern(addr) }
    })
}

/// True if page `pfn` reads as all zeros.
///
/// # Safety
/// As for [`fill`].
pub unsafe fn is_zero(pfn: u64) -> bool {
    let base = pfn * PAGE;
    // SAFETY: as in `intact`.
    (0..WORDS).all(|w| unsafe { read_volatile((base + 8 * w) as *const u64) } == 0)
}

/// Not enough free pages for `tiny.alloc`: `free` pages were there.
pub struct AllocShortfall {
    pub free: u64,
}

/// Takes `bytes` (rounded up to pages) of free pages, lowest first, and
/// fills them with the pattern; returns the pages taken.
pub fn alloc(pool: &mut Pool<'_>, bytes: u64) -> Result<u64, AllocShortfall> {
    let pages = bytes.div_ceil(PAGE);
    if pages > pool.free() {
        return Err(AllocShortfall { free: pool.free() });
    }
    let mut left = pages;
    while left > 0 {
        let Some((pfn, len)) = pool.take_run(FREE, State::Allocated, left) else {
            break;
        };
        for p in pfn..pfn + len {
            // SAFETY: just taken from the pool as Allocated: ours.
            unsafe { fill(p) };
        }
        left -= len;
    }
    Ok(pages - left)
}

/// Gives `bytes` (rounded up to pages, at most what is allocated) of the
/// allocated pages back to the pool, lowest first. They stay touched, so
/// they become `Dirty`. Returns the pages given back.
pub fn free(pool: &mut Pool<'_>, bytes: u64) -> u64 {
    let mut left = bytes.div_ceil(PAGE).min(pool.count(State::Allocated));
    let pages = left;
    while left > 0 {
        let Some((_, len)) = pool.take_run(State::Allocated.bit(), State::Dirty, left) else {
            break;
        };
        left -= len;
    }
    pages - left
}

/// True if every allocated page still holds the pattern.
pub fn allocated_intact(pool: &Pool<'_>) -> bool {
    let mut pfn = 0;
    while let Some((start, len)) = pool.next_run(pfn, State::Allocated.bit()) {
        for p in start..start + len {
            // SAFETY: an Allocated page of the pool: ours, only read.
            if !unsafe { intact(p) } {
                return false;
            }
        }
        pfn = start + len;
    }
    true
}
