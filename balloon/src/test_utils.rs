//! A driver's side of the queues for unit tests
//! ([`virtio_device::testing::driver`]) that writes balloon requests, on
//! guest memory with a hole, plus a recording releaser.
//!
//! Guest memory layout: region A `[0, 4 MiB)` holds the queues (below
//! 512 KiB) and the driver's buffers (512 KiB - 1 MiB); region B
//! `[4, 8 MiB)` directly follows it; `[8, 12 MiB)` is a hole (MMIO); region
//! C is `[12, 16 MiB)`.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use virtio_device::testing::driver::{activation, Buf, DataArea, QueueDriver};
pub use virtio_device::testing::driver::{raw, RecordingInterrupt};
use virtio_device::{GuestRam, Queue, VirtioDevice};
use virtio_queue::desc::RawDescriptor;
use vm_memory::GuestAddress;
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

/// One descriptor as a test writes it: address, length, device-writable.
pub type Desc = Buf;

/// The driver's side of `n` queues of [`QUEUE_SIZE`] entries.
pub struct Driver<'a> {
    mem: &'a GuestRam,
    queues: Vec<QueueDriver<'a>>,
    data: DataArea<'a>,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestRam, n: usize) -> Self {
        let queues = (0..n)
            .map(|i| QueueDriver::new(mem, QUEUE_AREA + i as u64 * QUEUE_STRIDE, QUEUE_SIZE))
            .collect();
        Driver {
            mem,
            queues,
            data: DataArea::new(mem, DATA_AREA, DATA_END),
        }
    }

    /// The device's view of queue `i`, ready.
    pub fn queue(&self, i: usize) -> Queue {
        self.queues[i].queue()
    }

    /// Room for `len` bytes of buffers in region A.
    pub fn alloc(&mut self, len: u64) -> u64 {
        self.data.alloc(len)
    }

    /// Writes `bytes` to a fresh buffer; returns its address.
    pub fn buffer(&mut self, bytes: &[u8]) -> u64 {
        self.data.put(bytes)
    }

    /// A device-readable buffer of le32 PFNs.
    pub fn pfn_buffer(&mut self, pfns: &[u32]) -> Desc {
        let bytes: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
        self.data.bytes(&bytes, false)
    }

    /// The index the next descriptor of queue `q` will get.
    pub fn next_index(&mut self, q: usize, count: usize) -> u16 {
        self.queues[q].next_index(count)
    }

    /// Posts a chain of `descs`, linked in order; returns its head index.
    pub fn add_chain(&mut self, q: usize, descs: &[Desc]) -> u16 {
        self.queues[q].post(descs)
    }

    /// Posts raw descriptors at `base` as they are (their `next` fields
    /// must be right); each descriptor after one without `NEXT` starts a
    /// new chain. Returns `base`.
    pub fn add_raw_at(&mut self, q: usize, base: u16, raw: &[RawDescriptor]) -> u16 {
        self.queues[q].post_raw_at(base, raw)
    }

    /// Publishes `head` in the available ring without writing descriptors.
    pub fn publish_head(&mut self, q: usize, head: u16) {
        self.queues[q].publish_head(head);
    }

    /// Sets the available index directly (to corrupt it).
    pub fn set_avail_idx(&mut self, q: usize, idx: u16) {
        self.queues[q].set_avail_idx(idx);
    }

    /// Every used entry of queue `q` so far: (head, length).
    pub fn used(&self, q: usize) -> Vec<(u32, u32)> {
        self.queues[q].used()
    }
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
    let queues = (0..n).map(|i| drv.queue(i)).collect();
    let (activation, events) = activation(drv.mem, acked, queues, interrupt.clone());
    dev.activate(activation).unwrap();
    (interrupt, events)
}
