//! Helpers for the unit tests: a temporary image file, and a driver's side
//! of the request queue on a real split queue in guest memory
//! (virtio-queue's `MockSplitQueue`).
//!
//! Guest memory: `[0, 16 MiB)`; the queue lives at 0, the driver's
//! buffers from 1 MiB.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_device::{Activation, GuestRam, Queue, VirtioDevice, VirtioInterrupt};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::request::{Header, HEADER_SIZE};
use crate::{Block, BlockConfig};

/// An image file removed when dropped.
pub struct TempImage(PathBuf);

impl TempImage {
    /// A file of `len` bytes, byte `i` = `pattern(i)`.
    pub fn new(tag: &str, len: usize) -> TempImage {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "blk-{tag}-{}-{}.img",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, (0..len).map(pattern).collect::<Vec<u8>>()).unwrap();
        TempImage(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The byte at offset `i` of a fresh test image.
pub fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

pub fn config(image: &TempImage, read_only: bool) -> BlockConfig {
    BlockConfig {
        drive_id: "test-drive".into(),
        path: image.path().to_path_buf(),
        read_only,
        is_root_device: false,
    }
}

pub const MEM_END: u64 = 0x100_0000;
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

pub const TEST_QUEUE_SIZE: u16 = 256;

/// The driver's side of the request queue.
pub struct Driver<'m> {
    pub mem: &'m GuestRam,
    pub queue: MockSplitQueue<'m, GuestRam>,
    next_desc: u16,
    next_data: u64,
    pub interrupt: Arc<RecordingInterrupt>,
}

impl<'m> Driver<'m> {
    pub fn new(mem: &'m GuestRam) -> Self {
        Driver {
            mem,
            queue: MockSplitQueue::create(mem, GuestAddress(0), TEST_QUEUE_SIZE),
            next_desc: 0,
            next_data: DATA_AREA,
            interrupt: Arc::new(RecordingInterrupt::default()),
        }
    }

    /// Activates `dev` with the queue ready and `features` acked.
    pub fn activate(&self, dev: &mut Block, features: u64) {
        dev.activate(Activation {
            mem: self.mem.clone(),
            acked_features: features,
            queues: vec![self.queue.create_queue::<Queue>().unwrap()],
            queue_events: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
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

    /// Posts a chain; returns its head.
    pub fn post(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
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
        self.next_desc += bufs.len() as u16;
        assert!(
            self.next_desc <= TEST_QUEUE_SIZE,
            "test ran out of descriptors"
        );
        self.queue.add_desc_chains(&descs, head).unwrap();
        head
    }

    /// A header in guest memory: its buffer.
    pub fn header(&mut self, request_type: u32, sector: u64) -> Buf {
        let at = self.alloc(HEADER_SIZE as u64);
        let h = Header {
            request_type,
            reserved: 0,
            sector,
        };
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(at))
            .unwrap();
        (at, HEADER_SIZE as u32, false)
    }

    /// A status byte, preset to 0xff so a missing write shows.
    pub fn status(&mut self) -> Buf {
        let at = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(at)).unwrap();
        (at, 1, true)
    }

    /// A data buffer of `len` bytes holding `fill`.
    pub fn data(&mut self, len: u32, fill: u8, device_writes: bool) -> Buf {
        let at = self.alloc(u64::from(len));
        self.mem
            .write_slice(&vec![fill; len as usize], GuestAddress(at))
            .unwrap();
        (at, len, device_writes)
    }

    pub fn read_bytes(&self, buf: Buf) -> Vec<u8> {
        let mut b = vec![0u8; buf.1 as usize];
        self.mem.read_slice(&mut b, GuestAddress(buf.0)).unwrap();
        b
    }

    pub fn status_of(&self, buf: Buf) -> u8 {
        self.mem.read_obj(GuestAddress(buf.0)).unwrap()
    }

    /// The used elements so far: (id, len).
    pub fn used(&self) -> Vec<(u32, u32)> {
        let used = self.queue.used();
        let idx = used.idx().load();
        (0..idx)
            .map(|i| {
                let e = used.ring().ref_at(usize::from(i)).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }
}
