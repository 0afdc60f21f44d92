//! Devices of a microVM. Legacy port-I/O devices live on the [`PioBus`],
//! virtio-mmio devices on the [`MmioBus`]; the idle port ([`pv_idle`]) is
//! served by the vCPU loop itself, since a sleep belongs to one vCPU.

pub mod debug_exit;
pub mod i8042;
pub mod mmio_bus;
pub mod pio_bus;
pub mod pv_idle;
pub mod serial;
pub mod virtio_mmio;

pub use mmio_bus::MmioBus;
pub use pio_bus::PioBus;

/// Both buses, as a vCPU sees them.
pub struct IoBuses {
    pub pio: PioBus,
    pub mmio: MmioBus,
}
