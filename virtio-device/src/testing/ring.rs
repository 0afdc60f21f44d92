//! The driver's side of a split queue written by hand, for harnesses that
//! put any bytes in the descriptor table (loops, links past the table,
//! wrong flags) and check the used ring themselves.

use vm_memory::{Bytes, GuestAddress};

use crate::{GuestRam, Queue, QueueT};

/// A split queue of `size` entries whose descriptor table, available ring
/// and used ring are at `desc`, `avail` and `used`.
pub struct RawRing {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl RawRing {
    /// Nothing published or used yet (guest memory must be zero there).
    pub fn new(desc: u64, avail: u64, used: u64, size: u16) -> RawRing {
        RawRing {
            desc,
            avail,
            used,
            size,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    /// The device's view: the queue as the driver set it up, enabled.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some(0));
        q.set_avail_ring_address(Some(self.avail as u32), Some(0));
        q.set_used_ring_address(Some(self.used as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// Writes descriptor `i` as it is: (address, length, flags, next).
    pub fn write_desc(&self, mem: &GuestRam, i: u16, d: (u64, u32, u16, u16)) {
        let at = self.desc + 16 * u64::from(i);
        mem.write_obj(d.0.to_le(), GuestAddress(at)).unwrap();
        mem.write_obj(d.1.to_le(), GuestAddress(at + 8)).unwrap();
        mem.write_obj(d.2.to_le(), GuestAddress(at + 12)).unwrap();
        mem.write_obj(d.3.to_le(), GuestAddress(at + 14)).unwrap();
    }

    /// Publishes `head` in the available ring.
    pub fn push(&mut self, mem: &GuestRam, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx.to_le(), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Used elements since the last call: (id, len).
    pub fn take_used(&mut self, mem: &GuestRam) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = self.used + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(slot)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(slot + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}
