//! Helpers for the unit tests: a temporary image file, and a driver's side
//! of the request queue ([`virtio_device::testing::driver`]) that writes
//! block requests.
//!
//! Guest memory: `[0, 16 MiB)`; the queue lives at 0, the driver's
//! buffers from 1 MiB.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_device::testing::driver::{activation, DataArea, QueueDriver};
pub use virtio_device::testing::driver::{Buf, RecordingInterrupt};
use virtio_device::{GuestRam, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

use crate::request::Header;
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

pub const TEST_QUEUE_SIZE: u16 = 256;

/// The driver's side of the request queue.
pub struct Driver<'m> {
    pub mem: &'m GuestRam,
    pub queue: QueueDriver<'m>,
    data: DataArea<'m>,
    pub interrupt: Arc<RecordingInterrupt>,
}

impl<'m> Driver<'m> {
    pub fn new(mem: &'m GuestRam) -> Self {
        Driver {
            mem,
            queue: QueueDriver::new(mem, 0, TEST_QUEUE_SIZE),
            data: DataArea::new(mem, DATA_AREA, MEM_END),
            interrupt: Arc::new(RecordingInterrupt::default()),
        }
    }

    /// Activates `dev` with the queue ready and `features` acked.
    pub fn activate(&self, dev: &mut Block, features: u64) {
        let queues = vec![self.queue.queue()];
        let (activation, _) = activation(self.mem, features, queues, self.interrupt.clone());
        dev.activate(activation).unwrap();
    }

    /// Posts a chain; returns its head.
    pub fn post(&mut self, bufs: &[Buf]) -> u16 {
        self.queue.post(bufs)
    }

    /// A header in guest memory: its buffer.
    pub fn header(&mut self, request_type: u32, sector: u64) -> Buf {
        let h = Header {
            request_type,
            reserved: 0,
            sector,
        };
        self.data.bytes(&h.to_bytes(), false)
    }

    /// A status byte, preset to 0xff so a missing write shows.
    pub fn status(&mut self) -> Buf {
        self.data.bytes(&[0xff], true)
    }

    /// A data buffer of `len` bytes holding `fill`.
    pub fn data(&mut self, len: u32, fill: u8, device_writes: bool) -> Buf {
        self.data.fill(len, fill, device_writes)
    }

    pub fn read_bytes(&self, buf: Buf) -> Vec<u8> {
        self.data.read(buf)
    }

    pub fn status_of(&self, buf: Buf) -> u8 {
        self.mem.read_obj(GuestAddress(buf.0)).unwrap()
    }

    /// The used elements so far: (id, len).
    pub fn used(&self) -> Vec<(u32, u32)> {
        self.queue.used()
    }
}
