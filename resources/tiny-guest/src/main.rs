//! The tiny test guest: a minimal PVH ELF guest for the VMM's tests and
//! benchmarks. See `../README.md` for the orders it takes and the lines it
//! prints.
//!
//! Built by `vmm/build.rs` with rustc for the host triple as a freestanding
//! binary (`#![no_std]`, `#![no_main]`, `-C panic=abort`, linked at 1 MiB by
//! `linker.ld`). [`boot`] enters long mode and drops to CPL3; everything
//! here runs at CPL3 with IOPL 3, interrupts off, polling.
//!
//! Exit codes: 0 (or `tiny.exit`) done, 2 memory mismatch, 3 not enough RAM
//! for `tiny.touch`, 4 bad order, 6 unusable `hvm_start_info`, 0x7f panic.

#![no_std]
#![no_main]

mod boot;
mod cmdline;
mod mem;
mod memtest;
mod serial;
mod start_info;
mod tsc;

use cmdline::{Hold, Orders};
use serial::{exit, Escaped};
use start_info::{MemmapEntry, StartInfo, StartInfoError, MAX_CMDLINE, MAX_MEMMAP, TYPE_RAM};

/// Exit code: a word of the memory test read back wrong.
const EXIT_MISMATCH: u8 = 2;
/// Exit code: less RAM than `tiny.touch` asked for.
const EXIT_NO_RAM: u8 = 3;
/// Exit code: a malformed `tiny.` order.
const EXIT_BAD_ORDER: u8 = 4;
/// Exit code: `hvm_start_info` missing or without the magic.
const EXIT_BAD_START_INFO: u8 = 6;
/// Exit code: a Rust panic.
const EXIT_PANIC: u8 = 0x7f;

const MIB: u64 = 1 << 20;
/// The memory test starts at the image end rounded up to this.
const TOUCH_ALIGN: u64 = 2 * MIB;

/// Rust entry, called by the boot stub at CPL3 with the physical address of
/// `hvm_start_info`.
#[no_mangle]
extern "C" fn tiny_main(start_info_paddr: u64) -> ! {
    let info = match StartInfo::read(start_info_paddr) {
        Ok(info) => info,
        Err(StartInfoError::BadAddress(a)) => {
            say!("bad start_info address {:#x}", a);
            exit(EXIT_BAD_START_INFO)
        }
        Err(StartInfoError::BadMagic(m)) => {
            say!("bad start_info magic {:#x} at {:#x}", m, start_info_paddr);
            exit(EXIT_BAD_START_INFO)
        }
    };

    let mut memmap = [MemmapEntry::default(); MAX_MEMMAP];
    let kept = info.copy_memmap(&mut memmap);
    let memmap = &memmap[..kept];
    let ram_bytes = memmap
        .iter()
        .filter(|e| e.kind == TYPE_RAM)
        .fold(0u64, |sum, e| sum.saturating_add(e.size));
    say!(
        "ready mem={} ({} MiB) memmap={}",
        ram_bytes,
        ram_bytes / MIB,
        info.memmap_entries
    );

    for e in memmap {
        say!("memmap {:#x}-{:#x} type={}", e.addr, e.end(), e.kind);
    }
    if info.memmap_unreadable() {
        say!("memmap at {:#x} not readable, ignored", info.memmap_paddr);
    } else if info.memmap_entries as usize > kept {
        say!(
            "memmap: {} more entries ignored",
            info.memmap_entries as usize - kept
        );
    }

    let mut cmdline_buf = [0u8; MAX_CMDLINE];
    let cmdline = info.copy_cmdline(&mut cmdline_buf);
    say!("cmdline \"{}\"", Escaped(cmdline));

    let orders = match cmdline::parse(cmdline) {
        Ok(orders) => orders,
        Err(token) => {
            say!("bad order '{}'", Escaped(token));
            exit(EXIT_BAD_ORDER)
        }
    };
    run(&orders, memmap)
}

/// Carries out the orders, then exits.
fn run(orders: &Orders, memmap: &[MemmapEntry]) -> ! {
    if let Some(bytes) = orders.touch {
        touch(bytes, memmap);
    }
    match orders.hold {
        None => {}
        Some(Hold::Millis(ms)) => {
            let freq = tsc::frequency();
            say!("hold {} ms (tsc {} kHz, {})", ms, freq.khz, freq.source);
            tsc::spin_ms(freq, ms);
        }
        Some(Hold::Forever) => {
            say!("hold forever");
            loop {
                core::hint::spin_loop();
            }
        }
    }
    exit(orders.exit)
}

/// Fills and verifies `bytes` (rounded up to whole MiB) of RAM above the
/// image; exits on a shortfall or a mismatch.
fn touch(bytes: u64, memmap: &[MemmapEntry]) {
    let bytes = bytes.div_ceil(MIB).saturating_mul(MIB);
    let floor = boot::image_end().next_multiple_of(TOUCH_ALIGN);
    let mut ram = [(0u64, 0u64); MAX_MEMMAP];
    let mut n = 0;
    for e in memmap.iter().filter(|e| e.kind == TYPE_RAM) {
        ram[n] = (e.addr, e.end());
        n += 1;
    }
    let plan = match memtest::plan(&ram[..n], floor, boot::MAPPED_LIMIT, bytes) {
        Ok(plan) => plan,
        Err(short) => {
            say!(
                "not enough RAM to touch {} MiB: {} MiB usable above {:#x}",
                short.wanted / MIB,
                short.available / MIB,
                floor
            );
            exit(EXIT_NO_RAM)
        }
    };
    // SAFETY: the plan covers only RAM from the memory map, above the image
    // (and so above its stack), below MAPPED_LIMIT; the start info, memory
    // map and command line were copied to the stack before this point.
    let result = unsafe {
        memtest::fill(&plan);
        memtest::verify(&plan)
    };
    if let Err(m) = result {
        say!(
            "verify failed at {:#x}: wrote {:#x}, read {:#x}",
            m.addr,
            m.expected,
            m.found
        );
        exit(EXIT_MISMATCH);
    }
    say!(
        "touched {} MiB at {:#x}, verified",
        bytes / MIB,
        plan.first(floor)
    );
}

/// Referenced by unwind tables in the precompiled `core` (built with
/// `panic=unwind`); never called, since this binary aborts on panic.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    serial::Serial.finish_line();
    match info.location() {
        Some(loc) => say!("panic at {}:{}: {}", loc.file(), loc.line(), info.message()),
        None => say!("panic: {}", info.message()),
    }
    exit(EXIT_PANIC)
}
