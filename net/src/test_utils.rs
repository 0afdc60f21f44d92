//! Helpers for the unit tests: a driver's side of both queues on real
//! split queues in guest memory (virtio-queue's `MockSplitQueue`), and the
//! "host network" as the other end of a datagram socket pair.
//!
//! Guest memory: `[0, 16 MiB)`; the receive queue lives at 0, the
//! transmit queue at 64 KiB, the driver's buffers from 1 MiB.

use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_device::{Activation, GuestRam, Queue, VirtioDevice, VirtioInterrupt};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::{MacAddr, Net, NetConfig};

pub const MEM_END: u64 = 0x100_0000;
pub const DATA_AREA: u64 = 0x10_0000;
pub const TEST_QUEUE_SIZE: u16 = 256;
pub const MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x42]);

pub fn test_mem() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap()
}

pub fn config() -> NetConfig {
    NetConfig {
        iface_id: "eth0".into(),
        host_dev_name: "nettest0".into(),
        guest_mac: Some(MAC),
    }
}

/// A device over one end of a nonblocking datagram pair; the other end is
/// the host network.
pub fn device() -> (Net<UnixDatagram>, UnixDatagram) {
    let (ours, host) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    (Net::with_backend(config(), ours).unwrap(), host)
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

/// The driver's side of one queue.
pub struct QueueDriver<'m> {
    pub queue: MockSplitQueue<'m, GuestRam>,
    next_desc: u16,
}

impl QueueDriver<'_> {
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

/// The driver's side of both queues.
pub struct Driver<'m> {
    pub mem: &'m GuestRam,
    pub rx: QueueDriver<'m>,
    pub tx: QueueDriver<'m>,
    next_data: u64,
    pub interrupt: Arc<RecordingInterrupt>,
}

impl<'m> Driver<'m> {
    pub fn new(mem: &'m GuestRam) -> Self {
        let q = |at| QueueDriver {
            queue: MockSplitQueue::create(mem, GuestAddress(at), TEST_QUEUE_SIZE),
            next_desc: 0,
        };
        Driver {
            mem,
            rx: q(0),
            tx: q(0x1_0000),
            next_data: DATA_AREA,
            interrupt: Arc::new(RecordingInterrupt::default()),
        }
    }

    /// Activates `dev` with both queues ready and `features` acked.
    pub fn activate<B: crate::Backend>(&self, dev: &mut Net<B>, features: u64) {
        dev.activate(Activation {
            mem: self.mem.clone(),
            acked_features: features,
            queues: vec![
                self.rx.queue.create_queue::<Queue>().unwrap(),
                self.tx.queue.create_queue::<Queue>().unwrap(),
            ],
            queue_events: vec![
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            ],
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

    /// A buffer holding `bytes`.
    pub fn bytes(&mut self, bytes: &[u8], device_writes: bool) -> Buf {
        let at = self.alloc(bytes.len() as u64);
        self.mem.write_slice(bytes, GuestAddress(at)).unwrap();
        (at, bytes.len() as u32, device_writes)
    }

    /// A buffer of `len` bytes holding `fill`.
    pub fn fill(&mut self, len: u32, fill: u8, device_writes: bool) -> Buf {
        self.bytes(&vec![fill; len as usize], device_writes)
    }

    pub fn read_bytes(&self, buf: Buf) -> Vec<u8> {
        let mut b = vec![0u8; buf.1 as usize];
        self.mem.read_slice(&mut b, GuestAddress(buf.0)).unwrap();
        b
    }
}

/// An Ethernet frame of `len` bytes: broadcast destination, [`MAC`] as
/// source, byte `i` of the payload = `i as u8 ^ tag`.
pub fn frame(len: usize, tag: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| i as u8 ^ tag).collect();
    if len >= 12 {
        f[..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&MAC.0);
    }
    f
}

/// `frame` behind a vnet header.
pub fn with_header(hdr: [u8; 12], frame: &[u8]) -> Vec<u8> {
    [&hdr[..], frame].concat()
}
