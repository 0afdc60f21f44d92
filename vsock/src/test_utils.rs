//! Helpers for the unit tests: a temporary directory for sockets, and a
//! driver's side of the queues on real split queues in guest memory
//! (virtio-queue's `MockSplitQueue`).
//!
//! Guest memory: `[0, 4 MiB)`; the three queues live below 192 KiB, the
//! driver's buffers from 1 MiB.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_device::{Activation, GuestRam, Queue, VirtioDevice, VirtioInterrupt};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::Vsock;

/// A directory removed (with its contents) when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vsock-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const MEM_END: u64 = 0x40_0000;
const QUEUE_STRIDE: u64 = 0x1_0000;
pub const DATA_AREA: u64 = 0x10_0000;

pub fn test_mem() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

/// Records interrupts.
#[derive(Default)]
pub struct RecordingInterrupt {
    pub used: Mutex<Vec<u16>>,
}

impl VirtioInterrupt for RecordingInterrupt {
    fn notify_used(&self, queue_index: u16) -> std::io::Result<()> {
        self.used.lock().unwrap().push(queue_index);
        Ok(())
    }
    fn notify_config(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One buffer of a chain the test driver posts: (address, length, device
/// writes it).
pub type Buf = (u64, u32, bool);

/// The driver's side of the device's three queues.
pub struct Driver<'m> {
    pub mem: &'m GuestRam,
    pub queues: Vec<MockSplitQueue<'m, GuestRam>>,
    /// Next free descriptor per queue (chains are never reused here).
    next_desc: Vec<u16>,
    /// Next free byte in the data area.
    next_data: u64,
    /// Every chain posted, by (queue, head).
    chains: std::collections::HashMap<(usize, u16), Vec<Buf>>,
    pub interrupt: Arc<RecordingInterrupt>,
}

pub const TEST_QUEUE_SIZE: u16 = 256;

impl<'m> Driver<'m> {
    pub fn new(mem: &'m GuestRam) -> Self {
        let queues = (0..3)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(i * QUEUE_STRIDE), TEST_QUEUE_SIZE))
            .collect();
        Driver {
            mem,
            queues,
            next_desc: vec![0; 3],
            next_data: DATA_AREA,
            chains: Default::default(),
            interrupt: Arc::new(RecordingInterrupt::default()),
        }
    }

    /// Activates `dev` with the three queues ready.
    pub fn activate(&self, dev: &mut Vsock) {
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .map(|q| q.create_queue::<Queue>().unwrap())
            .collect();
        let events = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        dev.activate(Activation {
            mem: self.mem.clone(),
            acked_features: crate::OFFERED_FEATURES,
            queues,
            queue_events: events,
            interrupt: self.interrupt.clone(),
        })
        .unwrap();
    }

    /// Room for `len` bytes in the data area.
    pub fn alloc(&mut self, len: u64) -> u64 {
        let at = self.next_data;
        self.next_data += len.next_multiple_of(16);
        assert!(self.next_data <= MEM_END, "test data area full");
        at
    }

    /// Posts a chain on queue `q`; returns its head.
    pub fn post(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let head = self.next_desc[q];
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writes))| {
                let idx = head + i as u16;
                let mut flags = if writes { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, idx + 1))
            })
            .collect();
        self.next_desc[q] += bufs.len() as u16;
        self.chains.insert((q, head), bufs.to_vec());
        assert!(
            self.next_desc[q] <= TEST_QUEUE_SIZE,
            "test ran out of descriptors"
        );
        self.queues[q].add_desc_chains(&descs, head).unwrap();
        head
    }

    /// Posts a tx packet: the header and the payload as separate
    /// descriptors (as Linux does), or the header alone when empty.
    pub fn post_tx(&mut self, hdr: &crate::Header, payload: &[u8]) -> u16 {
        let at = self.alloc(crate::HEADER_SIZE as u64);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(at))
            .unwrap();
        if payload.is_empty() {
            return self.post(
                crate::config::TX_QUEUE,
                &[(at, crate::HEADER_SIZE as u32, false)],
            );
        }
        let p = self.alloc(payload.len() as u64);
        self.mem.write_slice(payload, GuestAddress(p)).unwrap();
        self.post(
            crate::config::TX_QUEUE,
            &[
                (at, crate::HEADER_SIZE as u32, false),
                (p, payload.len() as u32, false),
            ],
        )
    }

    /// Posts one rx buffer of `len` bytes (one descriptor, as Linux 6.x).
    pub fn post_rx(&mut self, len: u32) -> u16 {
        let at = self.alloc(u64::from(len));
        self.post(crate::config::RX_QUEUE, &[(at, len, true)])
    }

    /// The used elements of queue `q` so far: (id, len).
    pub fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let used = self.queues[q].used();
        let idx = used.idx().load();
        (0..idx)
            .map(|i| {
                let e = used.ring().ref_at(usize::from(i)).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    /// The rx packets delivered so far (used with at least a header):
    /// header and payload, gathered over the chain's buffers.
    pub fn rx_packets(&self) -> Vec<(crate::Header, Vec<u8>)> {
        self.used(crate::config::RX_QUEUE)
            .into_iter()
            .filter(|&(_, len)| len as usize >= crate::HEADER_SIZE)
            .map(|(id, len)| {
                let mut bytes = Vec::new();
                for &(addr, blen, _) in &self.chains[&(crate::config::RX_QUEUE, id as u16)] {
                    let mut b = vec![0u8; blen as usize];
                    self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                    bytes.extend(b);
                }
                bytes.truncate(len as usize);
                let mut h = [0u8; crate::HEADER_SIZE];
                h.copy_from_slice(&bytes[..crate::HEADER_SIZE]);
                (
                    crate::Header::from_bytes(&h),
                    bytes.split_off(crate::HEADER_SIZE),
                )
            })
            .collect()
    }
}
