//! A split virtqueue (virtio 1.x, section 2.7) in one 4 KiB page of guest
//! memory, driver side, polled.
//!
//! Layout of the page (all little endian, as the spec requires for a
//! modern device; x86 is little endian):
//!
//! | offset | part | size for `n` entries |
//! |---:|---|---|
//! | 0 | descriptor table: `{ addr u64, len u32, flags u16, next u16 }` | 16 n (≤ 2048) |
//! | 2048 | available ring: `flags u16, idx u16, ring[n] u16, used_event u16` | 6 + 2 n (≤ 262) |
//! | 2560 | used ring: `flags u16, idx u16, ring[n] {id u32, len u32}, avail_event u16` | 6 + 8 n (≤ 1030) |
//!
//! so at most [`MAX_SIZE`] entries; every part is more aligned than the spec
//! asks (16, 2 and 4 bytes).
//!
//! Invariants:
//! * Every access to the page goes through `read_volatile`/`write_volatile`:
//!   the device (another host thread) reads and writes it concurrently, and
//!   the compiler must neither elide, merge nor reorder these accesses.
//!   Volatile accesses are not reordered with each other by the compiler,
//!   and x86 keeps stores in order and loads in order, so descriptors and
//!   ring slots are visible before the index that publishes them, and a
//!   used element is read only after the used index that announces it; the
//!   compiler fences make the intent explicit.
//! * The driver's bookkeeping (free list, chain lengths, indices) is kept
//!   here, never read back from the shared page, so a device scribbling on
//!   the page cannot make the driver lose or double-free descriptors: a used
//!   element with an id that is not the head of a chain in flight is
//!   reported as unknown and otherwise ignored.
//! * `avail.flags` has `VIRTQ_AVAIL_F_NO_INTERRUPT` set: the guest polls, so
//!   the device need not interrupt it for used buffers.
//!
//! This file depends on nothing else in the guest, so its tests (which play
//! the device) run on the host:
//! `rustc --edition 2021 --test virtqueue.rs -o /tmp/t && /tmp/t`.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{compiler_fence, Ordering};

/// Most entries a queue may have in its page.
pub const MAX_SIZE: u16 = 128;
/// Bytes of memory one queue uses (one page, 4096-aligned).
pub const RING_BYTES: usize = 4096;
/// Offset of the available ring in the page.
const AVAIL_OFFSET: usize = 2048;
/// Offset of the used ring in the page.
const USED_OFFSET: usize = 2560;

/// Descriptor flag: the chain continues at `next`.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the device writes this buffer (otherwise it reads it).
pub const DESC_F_WRITE: u16 = 2;
/// Available ring flag: no interrupt needed when buffers are used.
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// The device writes it (free page reports); otherwise it reads it.
    pub device_writes: bool,
}

/// A buffer chain the device gave back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor of the chain, as the device wrote it.
    pub id: u32,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// False if `id` was not the head of a chain in flight (a device bug);
    /// nothing was freed then.
    pub known: bool,
}

/// The driver's side of one split virtqueue.
pub struct Virtqueue {
    /// Start of the queue's page.
    base: *mut u8,
    /// Entries (a power of two, 1..=MAX_SIZE).
    size: u16,
    /// First free descriptor (meaningless when `num_free` is 0).
    free_head: u16,
    /// Free descriptors.
    num_free: u16,
    /// Free list and chain links, private to the driver.
    next: [u16; MAX_SIZE as usize],
    /// Length of the chain whose head is this descriptor; 0 if the
    /// descriptor is not the head of a chain in flight.
    chain_len: [u16; MAX_SIZE as usize],
    /// Next free slot of the available ring (the value `avail.idx` has).
    avail_idx: u16,
    /// Used elements consumed so far.
    last_used: u16,
}

impl Virtqueue {
    /// Sets up an empty queue of `size` entries (rounded down to a power of
    /// two, at most [`MAX_SIZE`], at least 1) in the page at `base`, which
    /// is zeroed.
    ///
    /// # Safety
    /// `base` must be 4096-byte aligned, point to [`RING_BYTES`] bytes of
    /// writable memory that nothing else uses except the device this queue
    /// is handed to, and stay valid as long as the queue (or the device)
    /// uses it. The device must not be using the page yet (queue not ready,
    /// or the device reset).
    pub unsafe fn new(base: *mut u8, size: u16) -> Virtqueue {
        let size = size.clamp(1, MAX_SIZE);
        let size = 1 << (15 - size.leading_zeros());
        for i in 0..RING_BYTES {
            // SAFETY: inside the page the caller provides.
            unsafe { write_volatile(base.add(i), 0) };
        }
        let mut q = Virtqueue {
            base,
            size,
            free_head: 0,
            num_free: size,
            next: [0; MAX_SIZE as usize],
            chain_len: [0; MAX_SIZE as usize],
            avail_idx: 0,
            last_used: 0,
        };
        for i in 0..size {
            q.next[i as usize] = i + 1;
        }
        q.write16(AVAIL_OFFSET, AVAIL_F_NO_INTERRUPT);
        q
    }

    /// Entries in the queue.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Descriptors not in flight.
    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Chains the device has not given back yet.
    #[allow(dead_code)] // used by the tests
    pub fn in_flight(&self) -> u16 {
        self.chain_len[..self.size as usize]
            .iter()
            .filter(|&&n| n > 0)
            .count() as u16
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_addr(&self) -> u64 {
        self.base as u64
    }

    /// Guest-physical address of the available ring ("driver area").
    pub fn avail_addr(&self) -> u64 {
        self.base as u64 + AVAIL_OFFSET as u64
    }

    /// Guest-physical address of the used ring ("device area").
    pub fn used_addr(&self) -> u64 {
        self.base as u64 + USED_OFFSET as u64
    }

    /// Makes a chain of `bufs` available; returns its head, or `None` if
    /// `bufs` is empty or there are not enough free descriptors. The device
    /// sees it only after [`Virtqueue::publish`] and a notification.
    pub fn add(&mut self, bufs: &[Buffer]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > usize::from(self.num_free) {
            return None;
        }
        let head = self.free_head;
        let mut d = head;
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let next = self.next[d as usize];
            let mut flags = if b.device_writes { DESC_F_WRITE } else { 0 };
            if !last {
                flags |= DESC_F_NEXT;
            }
            self.write_desc(d, b.addr, b.len, flags, if last { 0 } else { next });
            if !last {
                d = next;
            }
        }
        self.free_head = self.next[d as usize];
        self.num_free -= bufs.len() as u16;
        self.chain_len[head as usize] = bufs.len() as u16;
        self.push_avail(head);
        Some(head)
    }

    /// For `tiny.evil=desc-loop`: makes available one descriptor for `buf`
    /// whose `NEXT` flag is set and whose `next` is itself, a chain that
    /// never ends. The device should reject it; if it gives it back, it is
    /// freed like any other.
    pub fn add_self_loop(&mut self, buf: Buffer) -> Option<u16> {
        if self.num_free == 0 {
            return None;
        }
        let d = self.free_head;
        self.free_head = self.next[d as usize];
        self.num_free -= 1;
        self.write_desc(d, buf.addr, buf.len, DESC_F_NEXT, d);
        self.chain_len[d as usize] = 1;
        self.push_avail(d);
        Some(d)
    }

    /// Makes every chain added so far visible to the device (writes
    /// `avail.idx`). Notify the device afterwards.
    pub fn publish(&mut self) {
        // Descriptors and ring slots before the index (Release).
        compiler_fence(Ordering::Release);
        self.write16(AVAIL_OFFSET + 2, self.avail_idx);
    }

    /// Takes the next chain the device gave back, if any, and frees its
    /// descriptors.
    pub fn pop_used(&mut self) -> Option<Used> {
        let used_idx = self.read16(USED_OFFSET + 2);
        if used_idx == self.last_used {
            return None;
        }
        // The element only after the index that announces it (Acquire).
        compiler_fence(Ordering::Acquire);
        let slot = USED_OFFSET + 4 + 8 * usize::from(self.last_used % self.size);
        let id = self.read32(slot);
        let len = self.read32(slot + 4);
        self.last_used = self.last_used.wrapping_add(1);
        let known = id < u32::from(self.size) && self.chain_len[id as usize] > 0;
        if known {
            let head = id as u16;
            let n = self.chain_len[head as usize];
            self.chain_len[head as usize] = 0;
            let mut tail = head;
            for _ in 1..n {
                tail = self.next[tail as usize];
            }
            self.next[tail as usize] = self.free_head;
            self.free_head = head;
            self.num_free += n;
        }
        Some(Used { id, len, known })
    }

    /// True if the device has given back chains not yet popped.
    #[allow(dead_code)] // used by the tests
    pub fn has_used(&self) -> bool {
        self.read16(USED_OFFSET + 2) != self.last_used
    }

    fn push_avail(&mut self, head: u16) {
        let slot = AVAIL_OFFSET + 4 + 2 * usize::from(self.avail_idx % self.size);
        self.write16(slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    fn write_desc(&mut self, d: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let off = 16 * usize::from(d);
        // SAFETY: `d < size <= MAX_SIZE`, so the descriptor lies in the
        // first 2048 bytes of the page `new` was given; 16-byte aligned.
        unsafe {
            write_volatile(self.base.add(off) as *mut u64, addr.to_le());
            write_volatile(self.base.add(off + 8) as *mut u32, len.to_le());
            write_volatile(self.base.add(off + 12) as *mut u16, flags.to_le());
            write_volatile(self.base.add(off + 14) as *mut u16, next.to_le());
        }
    }

    fn read16(&self, off: usize) -> u16 {
        // SAFETY: callers pass offsets of ring fields inside the page,
        // 2-byte aligned.
        u16::from_le(unsafe { read_volatile(self.base.add(off) as *const u16) })
    }

    fn read32(&self, off: usize) -> u32 {
        // SAFETY: as for `read16`, 4-byte aligned.
        u32::from_le(unsafe { read_volatile(self.base.add(off) as *const u32) })
    }

    fn write16(&mut self, off: usize, v: u16) {
        // SAFETY: as for `read16`.
        unsafe { write_volatile(self.base.add(off) as *mut u16, v.to_le()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; RING_BYTES]);

    /// A descriptor as the device reads it: (addr, len, flags).
    type Desc = (u64, u32, u16);

    /// The device's view of a queue: reads the available ring and writes
    /// the used ring in the same page.
    struct Device {
        base: *mut u8,
        size: u16,
        last_avail: u16,
        used_idx: u16,
    }

    impl Device {
        fn rd16(&self, off: usize) -> u16 {
            // SAFETY: `off` lies in the test's queue page (ring offsets).
            unsafe { read_volatile(self.base.add(off) as *const u16) }
        }

        /// Pops one chain: its head and buffers.
        fn pop(&mut self) -> Option<(u16, Vec<Desc>)> {
            if self.rd16(AVAIL_OFFSET + 2) == self.last_avail {
                return None;
            }
            let head = self.rd16(AVAIL_OFFSET + 4 + 2 * (self.last_avail % self.size) as usize);
            self.last_avail = self.last_avail.wrapping_add(1);
            let mut out = Vec::new();
            let mut d = head;
            loop {
                let off = 16 * d as usize;
                // SAFETY: descriptor `d` < size lies in the test's page.
                let (addr, len, flags, next) = unsafe {
                    (
                        read_volatile(self.base.add(off) as *const u64),
                        read_volatile(self.base.add(off + 8) as *const u32),
                        read_volatile(self.base.add(off + 12) as *const u16),
                        read_volatile(self.base.add(off + 14) as *const u16),
                    )
                };
                out.push((addr, len, flags));
                if flags & DESC_F_NEXT == 0 || out.len() > self.size as usize {
                    break;
                }
                d = next;
            }
            Some((head, out))
        }

        fn push(&mut self, id: u32, len: u32) {
            let slot = USED_OFFSET + 4 + 8 * (self.used_idx % self.size) as usize;
            // SAFETY: the used ring slot lies in the test's queue page.
            unsafe {
                write_volatile(self.base.add(slot) as *mut u32, id);
                write_volatile(self.base.add(slot + 4) as *mut u32, len);
            }
            self.used_idx = self.used_idx.wrapping_add(1);
            // SAFETY: the used index lies in the test's queue page.
            unsafe { write_volatile(self.base.add(USED_OFFSET + 2) as *mut u16, self.used_idx) };
        }
    }

    fn setup(page: &mut Page, size: u16) -> (Virtqueue, Device) {
        let base = page.0.as_mut_ptr();
        // SAFETY: `page` is a zeroed, page-aligned buffer the queue owns
        // for the test's lifetime.
        let q = unsafe { Virtqueue::new(base, size) };
        let d = Device {
            base,
            size: q.size(),
            last_avail: 0,
            used_idx: 0,
        };
        (q, d)
    }

    #[test]
    fn sizes_are_powers_of_two_within_the_page() {
        let mut page = Page([0xff; RING_BYTES]);
        for (asked, got) in [
            (0, 1),
            (1, 1),
            (3, 2),
            (128, 128),
            (256, 128),
            (1000, 128),
            (100, 64),
        ] {
            let (q, _) = setup(&mut page, asked);
            assert_eq!(q.size(), got, "{asked}");
            assert_eq!(q.num_free(), got);
        }
        let (q, _) = setup(&mut page, 128);
        assert_eq!(q.avail_addr() - q.desc_addr(), 2048);
        assert_eq!(q.used_addr() - q.desc_addr(), 2560);
        // Zeroed, with the no-interrupt flag.
        assert_eq!(page.0[2048], 1);
        assert!(page.0[2049..].iter().all(|&b| b == 0));
    }

    #[test]
    fn chains_go_round_and_come_back() {
        let mut page = Page([0; RING_BYTES]);
        let (mut q, mut dev) = setup(&mut page, 8);
        // Many rounds, so both 16-bit indices wrap.
        for round in 0..70_000u64 {
            let n = (round % 3) as usize + 1;
            let bufs: Vec<Buffer> = (0..n)
                .map(|i| Buffer {
                    addr: round * 0x1000 + i as u64,
                    len: i as u32 + 1,
                    device_writes: i % 2 == 1,
                })
                .collect();
            let head = q.add(&bufs).unwrap();
            assert!(dev.pop().is_none(), "visible before publish");
            q.publish();
            let (h, got) = dev.pop().unwrap();
            assert_eq!(h, head);
            let want: Vec<_> = bufs
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let mut f = if b.device_writes { DESC_F_WRITE } else { 0 };
                    if i + 1 < n {
                        f |= DESC_F_NEXT;
                    }
                    (b.addr, b.len, f)
                })
                .collect();
            assert_eq!(got, want);
            assert!(!q.has_used());
            dev.push(u32::from(h), 7);
            assert_eq!(
                q.pop_used(),
                Some(Used {
                    id: u32::from(h),
                    len: 7,
                    known: true
                })
            );
            assert_eq!(q.pop_used(), None);
            assert_eq!(q.num_free(), 8);
        }
    }

    #[test]
    fn out_of_order_completion_and_full_queue() {
        let mut page = Page([0; RING_BYTES]);
        let (mut q, mut dev) = setup(&mut page, 4);
        let b = Buffer {
            addr: 1,
            len: 4,
            device_writes: false,
        };
        let h1 = q.add(&[b, b]).unwrap();
        let h2 = q.add(&[b]).unwrap();
        let h3 = q.add(&[b]).unwrap();
        assert_eq!(q.add(&[b]), None);
        assert_eq!(q.add(&[]), None);
        assert_eq!(q.in_flight(), 3);
        q.publish();
        let chains: Vec<_> = std::iter::from_fn(|| dev.pop()).collect();
        assert_eq!(chains.len(), 3);
        dev.push(u32::from(h3), 0);
        dev.push(u32::from(h1), 0);
        assert_eq!(q.pop_used().unwrap().id, u32::from(h3));
        assert_eq!(q.pop_used().unwrap().id, u32::from(h1));
        assert_eq!(q.num_free(), 3);
        let h4 = q.add(&[b, b, b]).unwrap();
        assert_eq!(q.num_free(), 0);
        q.publish();
        dev.push(u32::from(h2), 0);
        dev.push(u32::from(h4), 0);
        while q.pop_used().is_some() {}
        assert_eq!(q.num_free(), 4);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn bogus_used_ids_free_nothing() {
        let mut page = Page([0; RING_BYTES]);
        let (mut q, mut dev) = setup(&mut page, 4);
        let b = Buffer {
            addr: 1,
            len: 4,
            device_writes: false,
        };
        let h = q.add(&[b]).unwrap();
        q.publish();
        dev.pop().unwrap();
        dev.push(99, 0); // out of range
        dev.push(u32::from(h) + 1, 0); // not a head in flight
        dev.push(u32::from(h), 0);
        dev.push(u32::from(h), 0); // twice
        let got: Vec<_> = std::iter::from_fn(|| q.pop_used())
            .map(|u| u.known)
            .collect();
        assert_eq!(got, vec![false, false, true, false]);
        assert_eq!(q.num_free(), 4);
    }

    #[test]
    fn self_loop_descriptor() {
        let mut page = Page([0; RING_BYTES]);
        let (mut q, mut dev) = setup(&mut page, 4);
        let h = q
            .add_self_loop(Buffer {
                addr: 0x1000,
                len: 4,
                device_writes: false,
            })
            .unwrap();
        q.publish();
        let (head, bufs) = dev.pop().unwrap();
        assert_eq!(head, h);
        // The simulated device stops after `size + 1` descriptors.
        assert_eq!(bufs.len(), 5);
        assert!(bufs
            .iter()
            .all(|&(a, _, f)| a == 0x1000 && f == DESC_F_NEXT));
        assert_eq!(q.num_free(), 3);
        dev.push(u32::from(h), 0);
        assert!(q.pop_used().unwrap().known);
        assert_eq!(q.num_free(), 4);
    }
}
