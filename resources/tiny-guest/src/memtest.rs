//! Touching and verifying guest RAM.
//!
//! The test fills whole 4 KiB pages of RAM, starting at a floor (the end of
//! the guest image rounded up to 2 MiB) and walking the RAM ranges of the
//! memory map in address order, with one 8-byte word per address that
//! depends on the address ([`pattern`], never zero). Only after everything is
//! written does a second pass read every word back, so pages that are zero,
//! stale, or shared between two guest addresses are caught.
//!
//! Invariants: [`plan`] never returns a byte below the floor or at/above the
//! limit it is given (the identity-mapped range), never the same byte twice
//! (overlapping ranges are merged), and only whole pages. [`fill`] and
//! [`verify`] touch exactly the planned bytes.
//!
//! The planning code depends on nothing else in the guest, so its tests run
//! on the host: `rustc --edition 2021 --test memtest.rs -o /tmp/t && /tmp/t`.

/// Most separate pieces a test may span (one per memory-map entry at most).
pub const MAX_CHUNKS: usize = 128;
/// Granule of the test: whole pages only.
const PAGE: u64 = 4096;

/// One contiguous piece of the test, `start..end`, both page aligned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    pub start: u64,
    pub end: u64,
}

/// The pieces of RAM a test will touch, in address order.
#[derive(Debug)]
pub struct Plan {
    chunks: [Chunk; MAX_CHUNKS],
    len: usize,
}

impl Plan {
    /// The planned pieces.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks[..self.len]
    }

    /// First byte touched (the floor if nothing is touched).
    pub fn first(&self, floor: u64) -> u64 {
        self.chunks().first().map_or(floor, |c| c.start)
    }
}

/// Not enough RAM above the floor: `available` bytes could be tested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortfall {
    pub wanted: u64,
    pub available: u64,
}

/// A word that did not read back as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub addr: u64,
    pub expected: u64,
    pub found: u64,
}

/// The word written at `addr`: a mix of the address, odd so never zero.
pub fn pattern(addr: u64) -> u64 {
    (addr ^ 0x7469_6e79_2d67_7374).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

/// Chooses `bytes` (rounded up to whole pages) of RAM from `ram` (`start,
/// end` pairs, end exclusive, any order, may overlap) inside `floor..limit`,
/// lowest addresses first.
pub fn plan(ram: &[(u64, u64)], floor: u64, limit: u64, bytes: u64) -> Result<Plan, Shortfall> {
    let wanted = bytes.div_ceil(PAGE).saturating_mul(PAGE);
    let mut plan = Plan {
        chunks: [Chunk::default(); MAX_CHUNKS],
        len: 0,
    };
    let mut cursor = floor;
    let mut left = wanted;
    while left > 0 && plan.len < MAX_CHUNKS {
        // The lowest piece of RAM at or above the cursor.
        let next = ram
            .iter()
            .filter_map(|&(start, end)| {
                let start = align_up(start.max(cursor))?;
                let end = end.min(limit) & !(PAGE - 1);
                (start < end).then_some(Chunk { start, end })
            })
            .min_by_key(|c| c.start);
        let Some(mut chunk) = next else { break };
        // Merge overlapping entries: extend while another range continues
        // the chunk, so one stretch of RAM is one chunk.
        while let Some(end) = ram
            .iter()
            .filter(|&&(s, e)| s <= chunk.end && e.min(limit) & !(PAGE - 1) > chunk.end)
            .map(|&(_, e)| e.min(limit) & !(PAGE - 1))
            .max()
        {
            chunk.end = end;
        }
        let size = (chunk.end - chunk.start).min(left);
        chunk.end = chunk.start + size;
        plan.chunks[plan.len] = chunk;
        plan.len += 1;
        left -= size;
        cursor = chunk.end;
    }
    if left > 0 {
        return Err(Shortfall {
            wanted,
            available: wanted - left + remaining(ram, cursor, limit),
        });
    }
    Ok(plan)
}

/// RAM bytes (whole pages) in `ram` at or above `cursor` and below `limit`,
/// counting overlaps once.
fn remaining(ram: &[(u64, u64)], cursor: u64, limit: u64) -> u64 {
    let mut total = 0;
    let mut cursor = cursor;
    loop {
        let next = ram
            .iter()
            .filter_map(|&(start, end)| {
                let start = align_up(start.max(cursor))?;
                let end = end.min(limit) & !(PAGE - 1);
                (start < end).then_some((start, end))
            })
            .min_by_key(|&(start, _)| start);
        let Some((start, end)) = next else {
            return total;
        };
        total += end - start;
        cursor = end;
    }
}

fn align_up(addr: u64) -> Option<u64> {
    Some(addr.checked_add(PAGE - 1)? & !(PAGE - 1))
}

/// Writes [`pattern`] into every word of the plan.
///
/// # Safety
/// Every chunk must be identity-mapped, writable RAM that nothing else in
/// the guest uses (not the image, stack, or data still needed).
pub unsafe fn fill(plan: &Plan) {
    for chunk in plan.chunks() {
        let mut addr = chunk.start;
        while addr < chunk.end {
            // SAFETY: the caller guarantees the chunk is unused mapped RAM;
            // `addr` is 8-byte aligned (chunks are page aligned). Volatile so
            // the compiler cannot elide or merge the stores with the reads
            // of `verify`.
            unsafe { core::ptr::write_volatile(addr as *mut u64, pattern(addr)) };
            addr += 8;
        }
    }
}

/// Reads every word of the plan back; returns the first mismatch.
///
/// # Safety
/// As for [`fill`].
pub unsafe fn verify(plan: &Plan) -> Result<(), Mismatch> {
    for chunk in plan.chunks() {
        let mut addr = chunk.start;
        while addr < chunk.end {
            // SAFETY: as in `fill`; volatile so the value really comes from
            // memory rather than from what the compiler knows was stored.
            let found = unsafe { core::ptr::read_volatile(addr as *const u64) };
            let expected = pattern(addr);
            if found != expected {
                return Err(Mismatch {
                    addr,
                    expected,
                    found,
                });
            }
            addr += 8;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn one_range_above_the_floor() {
        let ram = [(0, 0x9fc00), (MIB, 128 * MIB)];
        let p = plan(&ram, 2 * MIB, 64 << 30, 64 * MIB).unwrap();
        assert_eq!(
            p.chunks(),
            &[Chunk {
                start: 2 * MIB,
                end: 66 * MIB
            }]
        );
    }

    #[test]
    fn spans_ranges_in_address_order_and_skips_holes() {
        let ram = [(4096 * MIB, 5120 * MIB), (MIB, 3072 * MIB)];
        let p = plan(&ram, 2 * MIB, 64 << 30, 3072 * MIB).unwrap();
        assert_eq!(
            p.chunks(),
            &[
                Chunk {
                    start: 2 * MIB,
                    end: 3072 * MIB
                },
                Chunk {
                    start: 4096 * MIB,
                    end: 4098 * MIB
                }
            ]
        );
    }

    #[test]
    fn overlapping_ranges_count_once() {
        let ram = [(MIB, 10 * MIB), (5 * MIB, 12 * MIB), (MIB, 4 * MIB)];
        let p = plan(&ram, 2 * MIB, 64 << 30, 10 * MIB).unwrap();
        assert_eq!(
            p.chunks(),
            &[Chunk {
                start: 2 * MIB,
                end: 12 * MIB
            }]
        );
        assert_eq!(
            plan(&ram, 2 * MIB, 64 << 30, 11 * MIB).unwrap_err(),
            Shortfall {
                wanted: 11 * MIB,
                available: 10 * MIB
            }
        );
    }

    #[test]
    fn too_large_reports_what_is_there() {
        let ram = [(MIB, 16 * MIB)];
        let e = plan(&ram, 2 * MIB, 64 << 30, 16 * MIB).unwrap_err();
        assert_eq!(
            e,
            Shortfall {
                wanted: 16 * MIB,
                available: 14 * MIB
            }
        );
    }

    #[test]
    fn respects_the_mapped_limit_and_page_granule() {
        let ram = [(MIB + 5, 8 * MIB + 100)];
        let p = plan(&ram, 0, 6 * MIB, 1).unwrap();
        assert_eq!(
            p.chunks(),
            &[Chunk {
                start: MIB + 4096,
                end: MIB + 8192
            }]
        );
        let e = plan(&ram, 0, 6 * MIB, 6 * MIB).unwrap_err();
        assert_eq!(e.available, 5 * MIB - 4096);
    }

    #[test]
    fn zero_bytes_plans_nothing() {
        let p = plan(&[(MIB, 16 * MIB)], 2 * MIB, 64 << 30, 0).unwrap();
        assert!(p.chunks().is_empty());
        assert_eq!(p.first(2 * MIB), 2 * MIB);
    }

    #[test]
    fn pattern_is_never_zero_and_differs_between_words() {
        for a in (0..(1u64 << 20)).step_by(8) {
            assert_ne!(pattern(a), 0);
            assert_ne!(pattern(a), pattern(a + 8));
        }
    }
}
