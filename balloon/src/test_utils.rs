//! A driver's side of the queues for unit tests, on real split queues in a
//! `GuestMemoryMmap` (virtio-queue's `MockSplitQueue`), plus a recording
//! releaser and interrupt.
//!
//! Guest memory layout: region A `[0, 4 MiB)` holds the queues (below
//! 512 KiB) and the driver's buffers (512 KiB - 1 MiB); region B
//! `[4, 8 MiB)` directly follows it; `[8, 12 MiB)` is a hole (MMIO); region
//! C is `[12, 16 MiB)`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_device::{Activation, GuestRam, Queue, VirtioDevice, VirtioInterrupt};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::release::{HostRange, Releaser};
use crate::{Balloon, QUEUE_SIZE};

pub const REGION_B_START: u64 = 0x40_0000;
pub const HOLE_START: u64 = 0x80_0000;
pub const REGION_C_START: u64 = 0xc0_0000;
pub const MEM_END: u64 = 0x100_0000;
const QUEUE_AREA: u64 = 0x1_0000;
const QUEUE_STRIDE: u64 = 0x1_0000;
const DATA_AREA: u64 = 0x8_0000;
const DATA_END: u64 = 0x10_0000;

/// First PFN of region A that no queue or buffer uses.
pub const FREE_PFN_A: u32 = (DATA_END >> 12) as u32;
pub const PFN_B: u32 = (REGION_B_START >> 12) as u32;
pub const PFN_HOLE: u32 = (HOLE_START >> 12) as u32;
pub const PFN_C: u32 = (REGION_C_START >> 12) as u32;
pub const PFN_END: u32 = (MEM_END >> 12) as u32;

pub fn test_mem() -> GuestRam {
    GuestRam::from_ranges(&[
        (GuestAddress(0), REGION_B_START as usize),
        (
            GuestAddress(REGION_B_START),
            (HOLE_START - REGION_B_START) as usize,
        ),
        (
            GuestAddress(REGION_C_START),
            (MEM_END - REGION_C_START) as usize,
        ),
    ])
    .unwrap()
}

/// Records every range it is asked to release, as (guest address, length).
#[derive(Clone, Default)]
pub struct RecordingReleaser {
    log: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl RecordingReleaser {
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        self.log.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.log.lock().unwrap().clear();
    }
}

impl Releaser for RecordingReleaser {
    fn release(&self, range: &HostRange<'_>) -> std::io::Result<u64> {
        self.log
            .lock()
            .unwrap()
            .push((range.guest_addr().0, range.len() as u64));
        Ok(range.len() as u64)
    }
}

/// A releaser whose calls block until the test opens its gate (or 5 s
/// passed); records what it released, as (guest address, length), once
/// released.
#[derive(Clone)]
pub struct GatedReleaser {
    inner: Arc<(Mutex<Gate>, Condvar)>,
}

#[derive(Default)]
struct Gate {
    open: bool,
    /// Release calls waiting at the gate now.
    blocked: usize,
    released: Vec<(u64, u64)>,
}

impl GatedReleaser {
    pub fn closed() -> Self {
        GatedReleaser {
            inner: Arc::new((Mutex::new(Gate::default()), Condvar::new())),
        }
    }

    /// Lets every call through, now and later.
    pub fn open(&self) {
        self.inner.0.lock().unwrap().open = true;
        self.inner.1.notify_all();
    }

    /// Waits (at most 5 s) until a release call waits at the gate.
    pub fn wait_until_blocked(&self) {
        let (lock, cv) = &*self.inner;
        let (gate, timeout) = cv
            .wait_timeout_while(lock.lock().unwrap(), Duration::from_secs(5), |g| {
                g.blocked == 0
            })
            .unwrap();
        assert!(!timeout.timed_out(), "no release call reached the gate");
        drop(gate);
    }

    /// What was released so far.
    pub fn released(&self) -> Vec<(u64, u64)> {
        self.inner.0.lock().unwrap().released.clone()
    }
}

impl Releaser for GatedReleaser {
    fn release(&self, range: &HostRange<'_>) -> std::io::Result<u64> {
        let (lock, cv) = &*self.inner;
        let mut gate = lock.lock().unwrap();
        gate.blocked += 1;
        cv.notify_all();
        // Opens by itself after a while, so that a failing test ends
        // rather than leaving a release worker blocked forever.
        gate = cv
            .wait_timeout_while(gate, Duration::from_secs(5), |g| !g.open)
            .unwrap()
            .0;
        gate.blocked -= 1;
        gate.released
            .push((range.guest_addr().0, range.len() as u64));
        Ok(range.len() as u64)
    }
}

/// Records interrupts.
#[derive(Default)]
pub struct RecordingInterrupt {
    used: Mutex<Vec<u16>>,
    quiet: Mutex<Vec<u16>>,
    config: AtomicUsize,
}

impl RecordingInterrupt {
    pub fn used(&self) -> Vec<u16> {
        self.used.lock().unwrap().clone()
    }

    /// Queues whose used ring grew while the driver suppressed interrupts
    /// ([`VirtioInterrupt::used_without_interrupt`]), in order.
    pub fn quiet(&self) -> Vec<u16> {
        self.quiet.lock().unwrap().clone()
    }

    pub fn config_changes(&self) -> usize {
        self.config.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn notify_used(&self, queue_index: u16) -> std::io::Result<()> {
        self.used.lock().unwrap().push(queue_index);
        Ok(())
    }

    fn notify_config(&self) -> std::io::Result<()> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn used_without_interrupt(&self, queue_index: u16) {
        self.quiet.lock().unwrap().push(queue_index);
    }
}

/// One descriptor as a test writes it: address, length, device-writable.
pub type Desc = (u64, u32, bool);

/// The driver's side of `n` queues of [`QUEUE_SIZE`] entries.
pub struct Driver<'a> {
    mem: &'a GuestRam,
    queues: Vec<MockSplitQueue<'a, GuestRam>>,
    next_desc: Vec<u16>,
    next_data: u64,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestRam, n: usize) -> Self {
        let queues = (0..n)
            .map(|i| {
                MockSplitQueue::create(
                    mem,
                    GuestAddress(QUEUE_AREA + i as u64 * QUEUE_STRIDE),
                    QUEUE_SIZE,
                )
            })
            .collect();
        Driver {
            mem,
            queues,
            next_desc: vec![0; n],
            next_data: DATA_AREA,
        }
    }

    /// The device's view of queue `i`, ready.
    pub fn queue(&self, i: usize) -> Queue {
        self.queues[i].create_queue().unwrap()
    }

    /// Room for `len` bytes of buffers in region A.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let addr = self.next_data;
        self.next_data = (addr + len).next_multiple_of(16);
        assert!(self.next_data <= DATA_END, "test data area exhausted");
        addr
    }

    /// Writes `bytes` to a fresh buffer; returns its address.
    pub fn buffer(&mut self, bytes: &[u8]) -> u64 {
        let addr = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, GuestAddress(addr)).unwrap();
        addr
    }

    /// A device-readable buffer of le32 PFNs.
    pub fn pfn_buffer(&mut self, pfns: &[u32]) -> Desc {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        (self.buffer(&bytes), bytes.len() as u32, false)
    }

    /// The index the next descriptor of queue `q` will get.
    pub fn next_index(&mut self, q: usize, count: usize) -> u16 {
        if usize::from(self.next_desc[q]) + count > usize::from(QUEUE_SIZE) {
            self.next_desc[q] = 0;
        }
        self.next_desc[q]
    }

    /// Posts a chain of `descs`, linked in order; returns its head index.
    pub fn add_chain(&mut self, q: usize, descs: &[Desc]) -> u16 {
        let base = self.next_index(q, descs.len());
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writable))| {
                let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 } as u16;
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, base + i as u16 + 1))
            })
            .collect();
        self.add_raw_at(q, base, &raw)
    }

    /// Posts raw descriptors at `base` as they are (their `next` fields
    /// must be right); each descriptor after one without `NEXT` starts a
    /// new chain. Returns `base`.
    pub fn add_raw_at(&mut self, q: usize, base: u16, raw: &[RawDescriptor]) -> u16 {
        self.queues[q].add_desc_chains(raw, base).unwrap();
        self.next_desc[q] = base + raw.len() as u16;
        base
    }

    /// Publishes `head` in the available ring without writing descriptors.
    pub fn publish_head(&mut self, q: usize, head: u16) {
        let avail = self.queues[q].avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % QUEUE_SIZE))
            .unwrap()
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    /// Sets the available index directly (to corrupt it).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.queues[q].avail().idx().store(idx);
    }

    /// Every used entry of queue `q` so far: (head, length).
    pub fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let used = self.queues[q].used();
        let n = used.idx().load();
        (0..n)
            .map(|i| {
                let e = used
                    .ring()
                    .ref_at(usize::from(i % QUEUE_SIZE))
                    .unwrap()
                    .load();
                (e.id(), e.len())
            })
            .collect()
    }
}

/// A raw descriptor.
pub fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// Activates `dev` with `acked` features and every queue of `drv` ready.
/// Returns the interrupt and the driver's ends of the queue eventfds.
pub fn activate(
    dev: &mut Balloon,
    drv: &Driver<'_>,
    acked: u64,
) -> (Arc<RecordingInterrupt>, Vec<EventFd>) {
    let n = dev.queue_max_sizes().len();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let events: Vec<EventFd> = (0..n)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    dev.activate(Activation {
        mem: drv.mem.clone(),
        acked_features: acked,
        queues: (0..n).map(|i| drv.queue(i)).collect(),
        queue_events: events.iter().map(|e| e.try_clone().unwrap()).collect(),
        interrupt: interrupt.clone(),
    })
    .unwrap();
    (interrupt, events)
}
