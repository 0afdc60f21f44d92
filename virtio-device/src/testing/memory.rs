//! Checking what a device wrote to guest memory: a copy of some ranges
//! before, another after, and every byte that differs must lie in a buffer
//! the device was allowed to write.

use vm_memory::{Bytes, GuestAddress};

use crate::GuestRam;

/// Copies of guest memory ranges, each `(start, end)`.
#[derive(PartialEq, Eq)]
pub struct Snapshot {
    ranges: Vec<(u64, Vec<u8>)>,
}

impl Snapshot {
    /// Copies `[start, end)` of each of `ranges` (which must be RAM).
    pub fn take(mem: &GuestRam, ranges: &[(u64, u64)]) -> Snapshot {
        let ranges = ranges
            .iter()
            .map(|&(start, end)| {
                let mut bytes = vec![0u8; (end - start) as usize];
                mem.read_slice(&mut bytes, GuestAddress(start)).unwrap();
                (start, bytes)
            })
            .collect();
        Snapshot { ranges }
    }

    /// Panics unless every byte that differs between `self` and `later`
    /// (taken of the same ranges) lies in one of `writable`, each
    /// `(start, end)`.
    pub fn assert_changed_only_inside(&self, later: &Snapshot, writable: &[(u64, u64)]) {
        for ((start, before), (_, after)) in self.ranges.iter().zip(&later.ranges) {
            // Page by page (memcmp), then byte by byte where a page differs.
            for (p, (x, y)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
                if x == y {
                    continue;
                }
                for (j, (a, b)) in x.iter().zip(y).enumerate() {
                    if a != b {
                        let at = start + (p * 4096 + j) as u64;
                        assert!(
                            writable.iter().any(|&(s, e)| (s..e).contains(&at)),
                            "byte at {at:#x} changed outside writable buffers"
                        );
                    }
                }
            }
        }
    }
}
