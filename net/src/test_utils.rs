//! Helpers for the unit tests: a driver's side of both queues
//! ([`virtio_device::testing::driver`]), and the "host network" as the
//! other end of a datagram socket pair.
//!
//! Guest memory: `[0, 16 MiB)`; the receive queue lives at 0, the
//! transmit queue at 64 KiB, the driver's buffers from 1 MiB.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use virtio_device::testing::driver::{activation, DataArea};
pub use virtio_device::testing::driver::{Buf, QueueDriver, RecordingInterrupt};
use virtio_device::{GuestRam, VirtioDevice};
use vm_memory::GuestAddress;

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

/// The driver's side of both queues.
pub struct Driver<'m> {
    pub mem: &'m GuestRam,
    pub rx: QueueDriver<'m>,
    pub tx: QueueDriver<'m>,
    data: DataArea<'m>,
    pub interrupt: Arc<RecordingInterrupt>,
}

impl<'m> Driver<'m> {
    pub fn new(mem: &'m GuestRam) -> Self {
        Driver {
            mem,
            rx: QueueDriver::new(mem, 0, TEST_QUEUE_SIZE),
            tx: QueueDriver::new(mem, 0x1_0000, TEST_QUEUE_SIZE),
            data: DataArea::new(mem, DATA_AREA, MEM_END),
            interrupt: Arc::new(RecordingInterrupt::default()),
        }
    }

    /// Activates `dev` with both queues ready and `features` acked.
    pub fn activate<B: crate::Backend>(&self, dev: &mut Net<B>, features: u64) {
        let queues = vec![self.rx.queue(), self.tx.queue()];
        let (activation, _) = activation(self.mem, features, queues, self.interrupt.clone());
        dev.activate(activation).unwrap();
    }

    /// A buffer holding `bytes`.
    pub fn bytes(&mut self, bytes: &[u8], device_writes: bool) -> Buf {
        self.data.bytes(bytes, device_writes)
    }

    /// A buffer of `len` bytes holding `fill`.
    pub fn fill(&mut self, len: u32, fill: u8, device_writes: bool) -> Buf {
        self.data.fill(len, fill, device_writes)
    }

    pub fn read_bytes(&self, buf: Buf) -> Vec<u8> {
        self.data.read(buf)
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
