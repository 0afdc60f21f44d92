//! Time from the TSC, for `tiny.hold` and the drivers' timeouts.
//!
//! `rdtsc` works at CPL3 because the stub never sets CR4.TSD. The TSC
//! frequency comes from the first of these that gives a non-zero answer:
//!
//! 1. CPUID 0x40000010 EAX (TSC kHz; the hypervisor timing leaf that QEMU
//!    and VMMs fill in), used only if CPUID.1:ECX.hypervisor is set and
//!    CPUID 0x40000000 announces that leaf;
//! 2. CPUID 0x15: crystal Hz (ECX) x EBX / EAX;
//! 3. CPUID 0x16 EAX: base frequency in MHz;
//! 4. otherwise an assumed 2 GHz (then a hold may be off by that factor).
//!
//! The TSC is assumed to be invariant (as on every host we run on).

use core::arch::x86_64::{__cpuid, _rdtsc};

/// Frequency assumed when no CPUID leaf gives one.
pub const DEFAULT_KHZ: u64 = 2_000_000;

/// The TSC frequency and where it came from.
#[derive(Clone, Copy)]
pub struct TscFreq {
    pub khz: u64,
    pub source: &'static str,
}

/// CPUID (it exists on every x86_64 CPU; at CPL3 it may trap to the
/// hypervisor, which answers).
fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    let r = __cpuid(leaf);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// Finds the TSC frequency (see the module documentation).
pub fn frequency() -> TscFreq {
    let (_, _, ecx1, _) = cpuid(1);
    if ecx1 & (1 << 31) != 0 {
        let (max_hv, ..) = cpuid(0x4000_0000);
        if (0x4000_0010..0x4000_0100).contains(&max_hv) {
            let (khz, ..) = cpuid(0x4000_0010);
            if khz != 0 {
                return TscFreq {
                    khz: u64::from(khz),
                    source: "cpuid 0x40000010",
                };
            }
        }
    }
    let (max_basic, ..) = cpuid(0);
    if max_basic >= 0x15 {
        let (denominator, numerator, crystal_hz, _) = cpuid(0x15);
        if denominator != 0 && numerator != 0 && crystal_hz != 0 {
            let hz = u64::from(crystal_hz) * u64::from(numerator) / u64::from(denominator);
            if hz >= 1000 {
                return TscFreq {
                    khz: hz / 1000,
                    source: "cpuid 0x15",
                };
            }
        }
    }
    if max_basic >= 0x16 {
        let (mhz, ..) = cpuid(0x16);
        let mhz = mhz & 0xffff;
        if mhz != 0 {
            return TscFreq {
                khz: u64::from(mhz) * 1000,
                source: "cpuid 0x16",
            };
        }
    }
    TscFreq {
        khz: DEFAULT_KHZ,
        source: "assumed",
    }
}

/// Reads the time-stamp counter.
pub fn now() -> u64 {
    // SAFETY: `rdtsc` is allowed at CPL3 (CR4.TSD clear) and only reads.
    unsafe { _rdtsc() }
}

/// Waits `ms` milliseconds at `freq`, asleep in the VMM's idle port
/// (polling the TSC where there is none).
pub fn wait_ms(freq: TscFreq, ms: u64) {
    let ticks = ms.saturating_mul(freq.khz);
    let start = now();
    loop {
        let elapsed = now().wrapping_sub(start);
        if elapsed >= ticks {
            return;
        }
        crate::idle::sleep_ticks(freq, ticks - elapsed);
    }
}
