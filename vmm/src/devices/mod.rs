//! Devices of a microVM. Legacy port-I/O devices live on the [`PioBus`].

pub mod debug_exit;
pub mod i8042;
pub mod pio_bus;
pub mod serial;

pub use pio_bus::PioBus;
