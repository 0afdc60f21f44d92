//! Sleeping without `hlt`: the VMM's paravirtual idle port.
//!
//! At CPL3 with interrupts off the guest cannot halt, so every wait used to
//! spin a host core. Writing a number of microseconds to port 0xf8 asks
//! the VMM to block this vCPU until then (at most 1 s) or until the VMM has
//! news for the guest: a virtio device used buffers or changed its
//! configuration, or the VM is stopping. A sleep may end early for any
//! reason, so every caller re-checks what it waits for and loops. Where no
//! VMM claims the port (QEMU) the write returns at once and the waits
//! simply poll, as before.
//!
//! Wakes are not lost: the VMM remembers an event that came since this
//! vCPU's previous sleep and ends the next sleep at once, so "check the
//! rings, then sleep" is race-free.

use crate::tsc::TscFreq;

/// The idle port (see `vmm/src/devices/pv_idle.rs`).
pub const PORT: u16 = 0xf8;
/// What a 32-bit read of the port returns where the VMM serves it
/// ("IDLE"); an unclaimed port reads all ones.
pub const MAGIC: u32 = 0x454c_4449;

/// Whether the VMM serves the idle port, i.e. whether a sleep really
/// waits for news (then a loop may skip its own polling between wakes).
pub fn present() -> bool {
    let value: u32;
    // SAFETY: a port read (legal at CPL3 with IOPL 3), no memory effects.
    unsafe {
        core::arch::asm!("in eax, dx", out("eax") value, in("dx") PORT,
            options(nomem, nostack, preserves_flags));
    }
    value == MAGIC
}

/// Asks the VMM to let this vCPU sleep for up to `us` microseconds.
pub fn sleep_us(us: u64) {
    let us = u32::try_from(us).unwrap_or(u32::MAX);
    // SAFETY: a port write (legal at CPL3 with IOPL 3). Deliberately not
    // `nomem`: the host may change guest memory (used rings) while we
    // sleep, so the compiler must not carry memory reads across it.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") PORT, in("eax") us,
            options(nostack, preserves_flags));
    }
}

/// Sleeps for up to `ticks` TSC ticks at `freq` (rounded down to whole
/// microseconds; nothing when under one).
pub fn sleep_ticks(freq: TscFreq, ticks: u64) {
    let us = u128::from(ticks) * 1000 / u128::from(freq.khz.max(1));
    if us > 0 {
        sleep_us(u64::try_from(us).unwrap_or(u64::MAX));
    }
}
