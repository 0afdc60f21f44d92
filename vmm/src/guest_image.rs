//! The tiny test guest (`resources/tiny-guest`), compiled by `build.rs` and
//! embedded so that `vmm run` boots something with no downloads.

/// The guest's PVH ELF image.
pub static TINY_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tiny-guest.elf"));
