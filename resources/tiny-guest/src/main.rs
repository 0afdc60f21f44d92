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
//! for `tiny.touch` or `tiny.alloc`, 4 bad order, 5 no usable virtio-balloon
//! device, 6 unusable `hvm_start_info`, 7 no usable virtio-vsock device, 8 a
//! vsock check failed, 9 no usable virtio-blk device, 10 the virtio-blk
//! device did not answer in time, 11 no usable virtio-net device, 12 the
//! virtio-net device did not return a transmit chain in time, 0x7f panic.
//!
//! Modules: [`boot`] (PVH entry, page tables), [`start_info`], [`cmdline`]
//! (orders), [`memtest`] (`tiny.touch`), [`serial`], [`tsc`], [`idle`]
//! (sleeping in the VMM's idle port), [`mem`] (memcpy and friends); for
//! the balloon orders [`pool`] (page states), [`pages`] (the pool in
//! memory, `tiny.alloc`/`tiny.free`), [`virtqueue`] (split rings),
//! [`virtio_mmio`] (transport) and [`balloon`] (the driver);
//! for `tiny.vsock` [`vsock`] (the driver) and [`vsock_orders`] (the
//! actions); for `tiny.blk` [`blk`] (driver and actions); for `tiny.net`
//! [`net`] (driver and actions) and [`netproto`] (ARP, ICMP, UDP answers).

#![no_std]
#![no_main]

mod balloon;
mod blk;
mod boot;
mod cmdline;
mod idle;
mod mem;
mod memtest;
mod net;
mod netproto;
mod pages;
mod pool;
mod serial;
mod start_info;
mod tsc;
mod virtio_mmio;
mod virtqueue;
mod vsock;
mod vsock_orders;

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
/// What `tiny.evil` allocates when `tiny.alloc` is not given.
const EVIL_ALLOC_BYTES: u64 = 4 * MIB;

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

    if let Some((paddr, size)) = info.first_module() {
        // SAFETY: `first_module` checked that the bytes are identity-mapped.
        let bytes = unsafe { core::slice::from_raw_parts(paddr as *const u8, size as usize) };
        say!(
            "module 0 at {:#x} size {} fnv1a64={:#018x}",
            paddr,
            size,
            fnv1a64(bytes)
        );
    } else if info.nr_modules != 0 {
        say!("module list at {:#x} not readable, ignored", info.modlist_paddr);
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
    run(&orders, memmap, cmdline, ram_bytes)
}

/// Carries out the orders, then exits.
fn run(orders: &Orders, memmap: &[MemmapEntry], cmdline: &[u8], ram_bytes: u64) -> ! {
    let mut touched = 0;
    if let Some(bytes) = orders.touch {
        touched = touch(bytes, memmap);
    }
    if !orders.blk.actions().is_empty() {
        blk_orders(orders, cmdline);
    }
    if !orders.net.actions().is_empty() {
        net_orders(orders, cmdline);
    }
    if !orders.vsock.actions().is_empty() {
        vsock_orders(orders, memmap, cmdline);
    }
    if orders.wants_pool() {
        pool_orders(orders, memmap, cmdline, ram_bytes, touched);
    }
    match orders.hold {
        None => {}
        Some(Hold::Millis(ms)) => {
            let freq = tsc::frequency();
            say!("hold {} ms (tsc {} kHz, {})", ms, freq.khz, freq.source);
            tsc::wait_ms(freq, ms);
        }
        Some(Hold::Forever) => {
            say!("hold forever");
            // Asleep in the VMM; woken now and then, with nothing to do.
            loop {
                idle::sleep_us(u64::MAX);
            }
        }
    }
    exit(orders.exit)
}

/// The RAM entries of the memory map as `(start, end)` pairs; returns the
/// count.
fn ram_ranges(memmap: &[MemmapEntry], out: &mut [(u64, u64); MAX_MEMMAP]) -> usize {
    let mut n = 0;
    for e in memmap.iter().filter(|e| e.kind == TYPE_RAM) {
        out[n] = (e.addr, e.end());
        n += 1;
    }
    n
}

/// Where `tiny.touch` and the page pool start: the image end rounded up.
fn floor() -> u64 {
    boot::image_end().next_multiple_of(TOUCH_ALIGN)
}

/// Fills and verifies `bytes` (rounded up to whole MiB) of RAM above the
/// image; exits on a shortfall or a mismatch. Returns the bytes touched.
fn touch(bytes: u64, memmap: &[MemmapEntry]) -> u64 {
    let bytes = bytes.div_ceil(MIB).saturating_mul(MIB);
    let floor = floor();
    let mut ram = [(0u64, 0u64); MAX_MEMMAP];
    let n = ram_ranges(memmap, &mut ram);
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
    bytes
}

/// `tiny.blk`: sets the first virtio-blk device up and runs the actions.
fn blk_orders(orders: &Orders, cmdline: &[u8]) {
    let Some(mmio) = virtio_mmio::find(cmdline, blk::DEVICE_ID, blk::CONFIG_BYTES) else {
        say!("no virtio-blk device (virtio_mmio.device= on the command line)");
        exit(blk::EXIT_DEVICE)
    };
    let mut dev = match blk::Blk::init(mmio) {
        Ok(dev) => dev,
        Err(e) => {
            say!("virtio-blk set-up failed: {}", e);
            exit(blk::EXIT_DEVICE)
        }
    };
    blk::run(&mut dev, &orders.blk);
}

/// `tiny.net`: sets the first virtio-net device up and runs the actions.
fn net_orders(orders: &Orders, cmdline: &[u8]) {
    let Some(mmio) = virtio_mmio::find(cmdline, net::DEVICE_ID, net::CONFIG_BYTES) else {
        say!("no virtio-net device (virtio_mmio.device= on the command line)");
        exit(net::EXIT_DEVICE)
    };
    let mut dev = match net::Net::init(mmio) {
        Ok(dev) => dev,
        Err(e) => {
            say!("virtio-net set-up failed: {}", e);
            exit(net::EXIT_DEVICE)
        }
    };
    net::run(&mut dev, &orders.net);
}

/// `tiny.vsock`: sets the vsock device up and runs the actions.
fn vsock_orders(orders: &Orders, memmap: &[MemmapEntry], cmdline: &[u8]) {
    let Some(mmio) = virtio_mmio::find(cmdline, vsock::DEVICE_ID, vsock::CONFIG_BYTES) else {
        say!("no virtio-vsock device (virtio_mmio.device= on the command line)");
        exit(vsock::EXIT_DEVICE)
    };
    let mut dev = match vsock::Vsock::init(mmio) {
        Ok(dev) => dev,
        Err(e) => {
            say!("virtio-vsock set-up failed: {}", e);
            exit(vsock::EXIT_DEVICE)
        }
    };
    let mut ram = [(0u64, 0u64); MAX_MEMMAP];
    let n = ram_ranges(memmap, &mut ram);
    let ram_end = ram[..n].iter().map(|&(_, end)| end).max().unwrap_or(0);
    vsock_orders::run(&mut dev, &orders.vsock, orders.exit_after, ram_end);
}

/// `tiny.alloc`, `tiny.free`, `tiny.evil` and `tiny.balloon`: builds the
/// page pool, allocates and frees, then drives the balloon device (which
/// returns only with `tiny.exit-after`).
fn pool_orders(orders: &Orders, memmap: &[MemmapEntry], cmdline: &[u8], ram_bytes: u64, touched: u64) {
    let floor = floor();
    let mut ram = [(0u64, 0u64); MAX_MEMMAP];
    let n = ram_ranges(memmap, &mut ram);
    let ram = &ram[..n];
    let Some(mut pool) = pages::setup(ram, floor, touched) else {
        say!("no RAM for the page pool above {:#x}", floor);
        exit(EXIT_NO_RAM)
    };
    say!(
        "pool {} pages ({} MiB) at {:#x}-{:#x}, {} pages of metadata",
        pool.free(),
        pool.free() * pool::PAGE / MIB,
        pool.first_pfn() * pool::PAGE,
        pool.end_pfn() * pool::PAGE,
        pool.count(pool::State::Meta)
    );
    // The evil cases check that the guest's own memory survives them.
    let alloc = orders
        .alloc
        .or(orders.evil.map(|_| EVIL_ALLOC_BYTES));
    if let Some(bytes) = alloc {
        match pages::alloc(&mut pool, bytes) {
            Ok(n) => say!("allocated {} pages ({} MiB), pattern written", n, n * pool::PAGE / MIB),
            Err(short) => {
                say!(
                    "not enough RAM to allocate {} MiB: {} MiB free in the pool",
                    bytes / MIB,
                    short.free * pool::PAGE / MIB
                );
                exit(EXIT_NO_RAM)
            }
        }
    }
    if let Some(bytes) = orders.free {
        let n = pages::free(&mut pool, bytes);
        say!("freed {} pages ({} MiB)", n, n * pool::PAGE / MIB);
    }
    if !orders.wants_balloon() {
        return;
    }
    let Some(mmio) = virtio_mmio::find(cmdline, balloon::DEVICE_ID, balloon::CONFIG_BYTES) else {
        say!("no virtio-balloon device (virtio_mmio.device= on the command line)");
        exit(balloon::EXIT_DEVICE)
    };
    let mut dev = match balloon::Balloon::init(mmio, ram_bytes, &pool) {
        Ok(dev) => dev,
        Err(e) => {
            say!("virtio-balloon set-up failed: {}", e);
            exit(balloon::EXIT_DEVICE)
        }
    };
    if let Some(case) = orders.evil {
        let ram_end = ram.iter().map(|&(_, end)| end).max().unwrap_or(0);
        dev.evil(&mut pool, case, ram_end);
    }
    dev.run(&mut pool, orders.exit_after, orders.report_every_ms(), orders.balloon_log);
    say!(
        "balloon loop done: actual={} pages, {} stats buffers returned, allocated memory intact={}",
        pool.count(pool::State::Balloon),
        dev.stats_returned(),
        if pages::allocated_intact(&pool) { "yes" } else { "no" }
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

/// FNV-1a, 64 bits: how the host checks that the initrd arrived intact.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
