//! The virtio-mmio transport, version 2 ("modern", virtio 1.x section
//! 4.2.2): register access, discovery from the command line, and the
//! generic part of device initialisation.
//!
//! Invariants:
//! * Registers are only accessed at addresses the command line announced,
//!   after checking that the whole register block (including the device
//!   configuration we read) lies inside the identity map
//!   ([`crate::boot::MAPPED_LIMIT`]), so an access cannot fault. The boot
//!   page tables map 3-4 GiB (where VMMs put these registers) uncached.
//! * Every register access is one aligned 32-bit volatile load or store,
//!   the only width the transport defines for registers; KVM traps it and
//!   the VMM emulates it.

use crate::boot::MAPPED_LIMIT;
use crate::cmdline::{self, MmioDevice};
use crate::serial::Escaped;
use crate::virtqueue::Virtqueue;
use crate::say;
use core::ptr::{read_volatile, write_volatile};

/// `MagicValue`: "virt" in little endian.
pub const MAGIC: u32 = 0x7472_6976;
/// The transport version we drive.
pub const VERSION_MODERN: u32 = 2;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
/// Start of the device-specific configuration.
const REG_CONFIG: u64 = 0x100;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// Feature bit: the device is a modern (virtio 1.x) one.
pub const F_VERSION_1: u64 = 1 << 32;

/// Why a device could not be set up.
#[derive(Clone, Copy, Debug)]
pub enum InitError {
    /// The device does not offer these features, which we need.
    MissingFeature(u64),
    /// FEATURES_OK did not stick (the status read back): the device refused
    /// our features.
    FeaturesRejected(u32),
    /// Queue `n` is already live after a reset, or has no entries.
    QueueUnavailable(u16),
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            InitError::MissingFeature(bits) => write!(f, "device lacks features {:#x}", bits),
            InitError::FeaturesRejected(status) => {
                write!(f, "device refused our features (status {:#x})", status)
            }
            InitError::QueueUnavailable(q) => write!(f, "queue {} unavailable", q),
        }
    }
}

/// One virtio-mmio register block.
pub struct Transport {
    base: u64,
}

impl Transport {
    /// A transport for the registers at `base`.
    ///
    /// # Safety
    /// `base .. base + 0x100 + config_bytes` must be MMIO registers of a
    /// virtio-mmio device (or at least addresses inside the identity map
    /// whose reads and writes have no effect on guest memory), 4-byte
    /// aligned, and used by nothing else in the guest.
    pub unsafe fn new(base: u64) -> Transport {
        Transport { base }
    }

    /// Guest-physical address of the registers.
    pub fn base(&self) -> u64 {
        self.base
    }

    fn read(&self, reg: u64) -> u32 {
        // SAFETY: `new`'s contract: the register block is mapped MMIO;
        // `reg` is one of the 4-byte aligned offsets above (or a config
        // offset checked by the caller).
        unsafe { read_volatile((self.base + reg) as *const u32) }
    }

    fn write(&self, reg: u64, value: u32) {
        // SAFETY: as for `read`.
        unsafe { write_volatile((self.base + reg) as *mut u32, value) }
    }

    /// `MagicValue`.
    pub fn magic(&self) -> u32 {
        self.read(REG_MAGIC)
    }

    /// `Version`.
    pub fn version(&self) -> u32 {
        self.read(REG_VERSION)
    }

    /// `DeviceID`.
    pub fn device_id(&self) -> u32 {
        self.read(REG_DEVICE_ID)
    }

    /// `Status`.
    pub fn status(&self) -> u32 {
        self.read(REG_STATUS)
    }

    fn add_status(&self, bits: u32) {
        self.write(REG_STATUS, self.status() | bits);
    }

    /// Marks the device FAILED (the driver gave up on it).
    pub fn fail(&self) {
        self.add_status(STATUS_FAILED);
    }

    /// Resets the device (status 0) and waits until it reads back 0.
    pub fn reset(&self) {
        self.write(REG_STATUS, 0);
        for _ in 0..1_000_000 {
            if self.status() == 0 {
                return;
            }
            core::hint::spin_loop();
        }
    }

    /// Steps 1-6 of device initialisation (virtio 1.x section 3.1.1):
    /// reset, ACKNOWLEDGE, DRIVER, read the device's features, accept
    /// `wanted & offered` (which must include `required`), FEATURES_OK and
    /// check it stuck. Returns `(offered, accepted)`.
    pub fn negotiate(&self, wanted: u64, required: u64) -> Result<(u64, u64), InitError> {
        self.reset();
        self.add_status(STATUS_ACKNOWLEDGE);
        self.add_status(STATUS_DRIVER);
        self.write(REG_DEVICE_FEATURES_SEL, 0);
        let low = self.read(REG_DEVICE_FEATURES);
        self.write(REG_DEVICE_FEATURES_SEL, 1);
        let high = self.read(REG_DEVICE_FEATURES);
        let offered = u64::from(high) << 32 | u64::from(low);
        if offered & required != required {
            self.fail();
            return Err(InitError::MissingFeature(required & !offered));
        }
        let accepted = offered & wanted;
        self.write(REG_DRIVER_FEATURES_SEL, 0);
        self.write(REG_DRIVER_FEATURES, accepted as u32);
        self.write(REG_DRIVER_FEATURES_SEL, 1);
        self.write(REG_DRIVER_FEATURES, (accepted >> 32) as u32);
        self.add_status(STATUS_FEATURES_OK);
        let status = self.status();
        if status & STATUS_FEATURES_OK == 0 {
            self.fail();
            return Err(InitError::FeaturesRejected(status));
        }
        Ok((offered, accepted))
    }

    /// `QueueNumMax` of queue `index` (0 if the queue does not exist), or
    /// `None` if the queue is already live (QueueReady set after a reset).
    pub fn queue_max(&self, index: u16) -> Option<u16> {
        self.write(REG_QUEUE_SEL, u32::from(index));
        if self.read(REG_QUEUE_READY) != 0 {
            return None;
        }
        Some(self.read(REG_QUEUE_NUM_MAX).min(u32::from(u16::MAX)) as u16)
    }

    /// Tells the device where queue `index` lives and enables it.
    pub fn setup_queue(&self, index: u16, q: &Virtqueue) {
        self.write(REG_QUEUE_SEL, u32::from(index));
        self.write(REG_QUEUE_NUM, u32::from(q.size()));
        let split = |a: u64| (a as u32, (a >> 32) as u32);
        let (lo, hi) = split(q.desc_addr());
        self.write(REG_QUEUE_DESC_LOW, lo);
        self.write(REG_QUEUE_DESC_HIGH, hi);
        let (lo, hi) = split(q.avail_addr());
        self.write(REG_QUEUE_DRIVER_LOW, lo);
        self.write(REG_QUEUE_DRIVER_HIGH, hi);
        let (lo, hi) = split(q.used_addr());
        self.write(REG_QUEUE_DEVICE_LOW, lo);
        self.write(REG_QUEUE_DEVICE_HIGH, hi);
        self.write(REG_QUEUE_READY, 1);
    }

    /// Sets DRIVER_OK: the device is live.
    pub fn driver_ok(&self) {
        self.add_status(STATUS_DRIVER_OK);
    }

    /// Tells the device that queue `index` has new buffers.
    pub fn notify(&self, index: u16) {
        self.write(REG_QUEUE_NOTIFY, u32::from(index));
    }

    /// Reads and acknowledges pending interrupt causes (bit 0 used buffer,
    /// bit 1 configuration change). The guest never takes the interrupt;
    /// acknowledging just lowers the line.
    pub fn ack_interrupts(&self) -> u32 {
        let pending = self.read(REG_INTERRUPT_STATUS);
        if pending != 0 {
            self.write(REG_INTERRUPT_ACK, pending);
        }
        pending
    }

    /// Reads the 32-bit configuration field at byte `offset` consistently
    /// (retrying while `ConfigGeneration` changes under the read).
    pub fn config_u32(&self, offset: u64) -> u32 {
        loop {
            let before = self.read(REG_CONFIG_GENERATION);
            let value = self.read(REG_CONFIG + offset);
            if self.read(REG_CONFIG_GENERATION) == before {
                return u32::from_le(value);
            }
        }
    }

    /// Writes the 32-bit configuration field at byte `offset`.
    pub fn write_config_u32(&self, offset: u64, value: u32) {
        self.write(REG_CONFIG + offset, value.to_le());
    }
}

/// Looks at every `virtio_mmio.device=` on the command line, prints one
/// line per device (`virtio-mmio 0x<base> version=<v> device=<id>`), and
/// returns the first modern device with `device_id`. `config_bytes` is how
/// much device configuration the caller will access.
pub fn find(cmdline_bytes: &[u8], device_id: u32, config_bytes: u64) -> Option<Transport> {
    let mut found = None;
    for dev in cmdline::virtio_mmio_devices(cmdline_bytes) {
        let dev = match dev {
            Ok(dev) => dev,
            Err(token) => {
                say!("virtio-mmio: ignoring malformed '{}'", Escaped(token));
                continue;
            }
        };
        let Some(t) = probe(&dev, config_bytes) else {
            continue;
        };
        let magic = t.magic();
        if magic != MAGIC {
            say!("virtio-mmio {:#x} bad magic {:#x}", dev.base, magic);
            continue;
        }
        let (version, id) = (t.version(), t.device_id());
        say!("virtio-mmio {:#x} version={} device={}", dev.base, version, id);
        if found.is_none() && version == VERSION_MODERN && id == device_id {
            found = Some(t);
        }
    }
    found
}

/// A transport for `dev` if its registers are where we may access them.
fn probe(dev: &MmioDevice, config_bytes: u64) -> Option<Transport> {
    let needed = REG_CONFIG + config_bytes;
    // Only the registers we touch need to be mapped, not the whole window.
    let end = dev.base.checked_add(needed);
    let mapped = end.is_some_and(|e| e <= MAPPED_LIMIT);
    if dev.base == 0 || !dev.base.is_multiple_of(4) || dev.size < needed || !mapped {
        say!(
            "virtio-mmio {:#x} size {:#x} not usable (outside the map, unaligned or too small)",
            dev.base,
            dev.size
        );
        return None;
    }
    // SAFETY: the command line announces a virtio-mmio register block
    // there; it lies inside the identity map, is 4-byte aligned and large
    // enough (checked above); nothing else in the guest uses it.
    Some(unsafe { Transport::new(dev.base) })
}
