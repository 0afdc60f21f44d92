//! Which guest pages are in the balloon, as the host saw them go in and out.
//!
//! The driver's `actual` is its own claim; this is the device's record. It
//! also defines which PFNs are guest RAM: a 4 KiB page is RAM when it lies
//! wholly inside one guest RAM region.

use virtio_device::GuestRam;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::config::BALLOON_PAGE_SHIFT;
use crate::BALLOON_PAGE_SIZE;

/// The whole 4 KiB pages of one region, one bit each.
#[derive(Debug)]
struct RegionPages {
    first_pfn: u64,
    pages: u64,
    bits: Vec<u64>,
}

/// A bitmap over the whole pages of every guest RAM region.
///
/// Invariant: `count` is the number of set bits.
#[derive(Debug)]
pub(crate) struct BalloonedPages {
    /// Sorted by `first_pfn`, disjoint (regions do not overlap).
    regions: Vec<RegionPages>,
    count: u64,
}

impl BalloonedPages {
    /// An empty balloon over `mem`. Costs one bit per guest page.
    pub fn new(mem: &GuestRam) -> Self {
        let mut regions: Vec<RegionPages> = mem
            .iter()
            .filter_map(|r| {
                let start = r.start_addr().0;
                let end = start.checked_add(r.len())?;
                let first_pfn = start.div_ceil(BALLOON_PAGE_SIZE);
                let end_pfn = end >> BALLOON_PAGE_SHIFT;
                let pages = end_pfn.checked_sub(first_pfn).filter(|p| *p > 0)?;
                let words = usize::try_from(pages.div_ceil(64)).ok()?;
                Some(RegionPages {
                    first_pfn,
                    pages,
                    bits: vec![0; words],
                })
            })
            .collect();
        regions.sort_unstable_by_key(|r| r.first_pfn);
        BalloonedPages { regions, count: 0 }
    }

    /// Region and bit of `pfn`, if its page is guest RAM.
    fn locate(&self, pfn: u32) -> Option<(usize, usize, u64)> {
        let pfn = u64::from(pfn);
        let i = self
            .regions
            .partition_point(|r| r.first_pfn <= pfn)
            .checked_sub(1)?;
        let off = pfn - self.regions[i].first_pfn;
        if off >= self.regions[i].pages {
            return None;
        }
        Some((i, (off / 64) as usize, 1u64 << (off % 64)))
    }

    /// Whether the 4 KiB page `pfn` is wholly inside one guest RAM region.
    pub fn is_ram(&self, pfn: u32) -> bool {
        self.locate(pfn).is_some()
    }

    /// Marks `pfn` ballooned. `None` if it is not RAM, else whether it was
    /// not ballooned before.
    pub fn insert(&mut self, pfn: u32) -> Option<bool> {
        let (r, w, bit) = self.locate(pfn)?;
        let word = &mut self.regions[r].bits[w];
        let new = *word & bit == 0;
        *word |= bit;
        self.count += u64::from(new);
        Some(new)
    }

    /// Marks `pfn` usable again. `None` if it is not RAM, else whether it
    /// was ballooned.
    pub fn remove(&mut self, pfn: u32) -> Option<bool> {
        let (r, w, bit) = self.locate(pfn)?;
        let word = &mut self.regions[r].bits[w];
        let was = *word & bit != 0;
        *word &= !bit;
        self.count -= u64::from(was);
        Some(was)
    }

    /// Pages in the balloon.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_mem, HOLE_START, MEM_END, REGION_B_START, REGION_C_START};
    use vm_memory::GuestAddress;

    fn pfn(addr: u64) -> u32 {
        (addr >> 12) as u32
    }

    #[test]
    fn ram_is_exactly_the_regions() {
        let b = BalloonedPages::new(&test_mem());
        assert!(b.is_ram(0));
        assert!(b.is_ram(pfn(REGION_B_START) - 1));
        assert!(b.is_ram(pfn(REGION_B_START)));
        assert!(b.is_ram(pfn(HOLE_START) - 1));
        assert!(!b.is_ram(pfn(HOLE_START)));
        assert!(!b.is_ram(pfn(REGION_C_START) - 1));
        assert!(b.is_ram(pfn(REGION_C_START)));
        assert!(b.is_ram(pfn(MEM_END) - 1));
        assert!(!b.is_ram(pfn(MEM_END)));
        assert!(!b.is_ram(u32::MAX));
    }

    #[test]
    fn partial_pages_of_unaligned_regions_are_not_ram() {
        let mem = GuestRam::from_ranges(&[
            (GuestAddress(0x800), 0x2000),
            (GuestAddress(0x10_000), 0x1000),
        ])
        .unwrap();
        let b = BalloonedPages::new(&mem);
        assert!(!b.is_ram(0));
        assert!(b.is_ram(1));
        assert!(!b.is_ram(2));
        assert!(b.is_ram(0x10));
    }

    #[test]
    fn insert_and_remove_keep_the_count() {
        let mut b = BalloonedPages::new(&test_mem());
        assert_eq!(b.insert(5), Some(true));
        assert_eq!(b.insert(5), Some(false));
        assert_eq!(b.insert(pfn(REGION_C_START) + 70), Some(true));
        assert_eq!(b.insert(pfn(HOLE_START)), None);
        assert_eq!(b.count(), 2);
        assert_eq!(b.remove(5), Some(true));
        assert_eq!(b.remove(5), Some(false));
        assert_eq!(b.remove(pfn(HOLE_START)), None);
        assert_eq!(b.count(), 1);
    }
}
