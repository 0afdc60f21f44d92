//! A driver's side of a device's queues for unit tests, on real split
//! queues in guest memory (virtio-queue's `MockSplitQueue`): posting
//! chains, reading the used ring, allocating buffers, recording
//! interrupts, and activating a device with it all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::{Activation, GuestRam, Queue, VirtioInterrupt};

/// Records interrupts: used-buffer interrupts and suppressed ones by queue
/// index, in order, and configuration changes.
#[derive(Default)]
pub struct RecordingInterrupt {
    used: Mutex<Vec<u16>>,
    quiet: Mutex<Vec<u16>>,
    config: AtomicUsize,
}

impl RecordingInterrupt {
    /// Queues that raised a used-buffer interrupt, in order.
    pub fn used(&self) -> Vec<u16> {
        self.used.lock().unwrap().clone()
    }

    /// Queues whose used ring grew while the driver suppressed interrupts
    /// ([`VirtioInterrupt::used_without_interrupt`]), in order.
    pub fn quiet(&self) -> Vec<u16> {
        self.quiet.lock().unwrap().clone()
    }

    /// Configuration change interrupts.
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

/// One buffer of a chain a test driver posts: (guest address, length, the
/// device writes it).
pub type Buf = (u64, u32, bool);

/// A raw descriptor: (address, length, flags, next).
pub fn raw(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
}

/// The driver's side of one split queue.
pub struct QueueDriver<'m> {
    mock: MockSplitQueue<'m, GuestRam>,
    size: u16,
    /// The descriptor the next chain starts at.
    next_desc: u16,
}

impl<'m> QueueDriver<'m> {
    /// A queue of `size` entries laid out from `at` in `mem` (descriptor
    /// table, available ring, used ring, as `MockSplitQueue` does).
    pub fn new(mem: &'m GuestRam, at: u64, size: u16) -> Self {
        QueueDriver {
            mock: MockSplitQueue::create(mem, GuestAddress(at), size),
            size,
            next_desc: 0,
        }
    }

    /// The device's view of the queue, enabled.
    pub fn queue(&self) -> Queue {
        self.mock.create_queue().unwrap()
    }

    /// Posts a chain of `bufs`, linked in order, at the next free
    /// descriptors (from 0 again when the table has no room left: the
    /// test must not overwrite chains the device still holds); returns
    /// its head.
    pub fn post(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_index(bufs.len());
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writes))| {
                let mut flags = if writes { VRING_DESC_F_WRITE } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT;
                }
                raw(addr, len, flags, head + i as u16 + 1)
            })
            .collect();
        self.post_raw_at(head, &descs)
    }

    /// Where the next chain of `count` descriptors starts: after the last
    /// one posted, or at 0 when the table has no room left there.
    pub fn next_index(&mut self, count: usize) -> u16 {
        assert!(
            count <= usize::from(self.size),
            "chain longer than the queue"
        );
        if usize::from(self.next_desc) + count > usize::from(self.size) {
            self.next_desc = 0;
        }
        self.next_desc
    }

    /// Posts raw descriptors at `base` as they are (their `next` fields
    /// must be right); each descriptor after one without `NEXT` starts a
    /// new chain. Returns `base`.
    pub fn post_raw_at(&mut self, base: u16, raw: &[RawDescriptor]) -> u16 {
        self.mock.add_desc_chains(raw, base).unwrap();
        self.next_desc = base + raw.len() as u16;
        base
    }

    /// Publishes `head` in the available ring without writing descriptors.
    pub fn publish_head(&mut self, head: u16) {
        let avail = self.mock.avail();
        let idx = avail.idx().load();
        avail
            .ring()
            .ref_at(usize::from(idx % self.size))
            .unwrap()
            .store(head);
        avail.idx().store(idx.wrapping_add(1));
    }

    /// Sets the available index directly (to corrupt it).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.mock.avail().idx().store(idx);
    }

    /// Every used element so far (the last `size` once the ring wrapped):
    /// (id, len).
    pub fn used(&self) -> Vec<(u32, u32)> {
        let used = self.mock.used();
        let n = used.idx().load();
        (0..n)
            .map(|i| {
                let e = used
                    .ring()
                    .ref_at(usize::from(i % self.size))
                    .unwrap()
                    .load();
                (e.id(), e.len())
            })
            .collect()
    }
}

/// Room for the driver's buffers: `[start, end)` of guest memory, handed
/// out in order, 16-byte aligned.
pub struct DataArea<'m> {
    mem: &'m GuestRam,
    next: u64,
    end: u64,
}

impl<'m> DataArea<'m> {
    /// `start` must be 16-byte aligned.
    pub fn new(mem: &'m GuestRam, start: u64, end: u64) -> Self {
        DataArea {
            mem,
            next: start,
            end,
        }
    }

    /// Room for `len` bytes.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next;
        self.next = (at + len).next_multiple_of(16);
        assert!(self.next <= self.end, "test data area full");
        at
    }

    /// A fresh buffer holding `bytes`: its address.
    pub fn put(&mut self, bytes: &[u8]) -> u64 {
        let at = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        at
    }

    /// A buffer holding `bytes`, as a [`Buf`].
    pub fn bytes(&mut self, bytes: &[u8], device_writes: bool) -> Buf {
        (self.put(bytes), bytes.len() as u32, device_writes)
    }

    /// A buffer of `len` bytes holding `fill`.
    pub fn fill(&mut self, len: u32, fill: u8, device_writes: bool) -> Buf {
        self.bytes(&vec![fill; len as usize], device_writes)
    }

    /// What `buf` holds now.
    pub fn read(&self, buf: Buf) -> Vec<u8> {
        let mut b = vec![0u8; buf.1 as usize];
        self.mem.read_slice(&mut b, GuestAddress(buf.0)).unwrap();
        b
    }
}

/// An activation of `queues` (each ready) with `features` acked, and the
/// driver's ends of the queue eventfds.
pub fn activation(
    mem: &GuestRam,
    features: u64,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
) -> (Activation, Vec<EventFd>) {
    let events: Vec<EventFd> = queues
        .iter()
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let activation = Activation {
        mem: mem.clone(),
        acked_features: features,
        queues,
        queue_events: events.iter().map(|e| e.try_clone().unwrap()).collect(),
        interrupt,
    };
    (activation, events)
}
