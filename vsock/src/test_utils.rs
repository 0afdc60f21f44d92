//! Helpers for the unit tests: a temporary directory for sockets, and a
//! driver's side of the queues ([`virtio_device::testing::driver`]) that
//! writes and reads vsock packets.
//!
//! Guest memory: `[0, 4 MiB)`; the three queues live below 192 KiB, the
//! driver's buffers from 1 MiB.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use virtio_device::testing::driver::{activation, Buf, DataArea, QueueDriver, RecordingInterrupt};
use virtio_device::{GuestRam, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};

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

/// The driver's side of the device's three queues.
pub struct Driver<'m> {
    pub mem: &'m GuestRam,
    pub queues: Vec<QueueDriver<'m>>,
    data: DataArea<'m>,
    /// Every chain posted, by (queue, head).
    chains: std::collections::HashMap<(usize, u16), Vec<Buf>>,
    pub interrupt: Arc<RecordingInterrupt>,
}

pub const TEST_QUEUE_SIZE: u16 = 256;

impl<'m> Driver<'m> {
    pub fn new(mem: &'m GuestRam) -> Self {
        let queues = (0..3)
            .map(|i| QueueDriver::new(mem, i * QUEUE_STRIDE, TEST_QUEUE_SIZE))
            .collect();
        Driver {
            mem,
            queues,
            data: DataArea::new(mem, DATA_AREA, MEM_END),
            chains: Default::default(),
            interrupt: Arc::new(RecordingInterrupt::default()),
        }
    }

    /// Activates `dev` with the three queues ready.
    pub fn activate(&self, dev: &mut Vsock) {
        let queues = self.queues.iter().map(QueueDriver::queue).collect();
        let (activation, _) = activation(
            self.mem,
            crate::OFFERED_FEATURES,
            queues,
            self.interrupt.clone(),
        );
        dev.activate(activation).unwrap();
    }

    /// Room for `len` bytes in the data area.
    pub fn alloc(&mut self, len: u64) -> u64 {
        self.data.alloc(len)
    }

    /// Posts a chain on queue `q`; returns its head.
    pub fn post(&mut self, q: usize, bufs: &[Buf]) -> u16 {
        let head = self.queues[q].post(bufs);
        self.chains.insert((q, head), bufs.to_vec());
        head
    }

    /// Posts a tx packet: the header and the payload as separate
    /// descriptors (as Linux does), or the header alone when empty.
    pub fn post_tx(&mut self, hdr: &crate::Header, payload: &[u8]) -> u16 {
        let at = self.data.put(&hdr.to_bytes());
        if payload.is_empty() {
            return self.post(
                crate::config::TX_QUEUE,
                &[(at, crate::HEADER_SIZE as u32, false)],
            );
        }
        let p = self.data.put(payload);
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
        self.queues[q].used()
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
