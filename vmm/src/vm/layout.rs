//! The guest-physical address map of a microVM.
//!
//! ```text
//! 0x0000_0000 ┬ RAM (real-mode IVT/BDA area, unused by our guests)
//! 0x0000_0500 │ GDT used for the boot vCPU state
//! 0x0000_6000 │ PVH `hvm_start_info`
//! 0x0000_7000 │ PVH memmap / bzImage `boot_params` (zero page)
//! 0x0000_9000 │ PML4 / boot stack area (bzImage 64-bit entry)
//! 0x0002_0000 │ kernel command line (up to CMDLINE_MAX_SIZE)
//! 0x0009_fc00 ┼ end of low RAM as announced in e820 (EBDA starts here)
//! 0x000e_0000 ┼ ACPI tables (RSDP first), reserved in e820
//! 0x0010_0000 ┼ high RAM: kernel image, initrd at the top, …
//! min(mem,3G) ┼ end of RAM below 4 GiB
//! 0xc000_0000 ┼ 32-bit MMIO hole: virtio-mmio windows from MMIO_DEVICES_START
//! 0xfec0_0000 │ IOAPIC
//! 0xfee0_0000 │ LAPIC
//! 0x1_0000_0000 ┼ RAM above 4 GiB, when mem > 3 GiB
//! ```
//!
//! Invariant: every RAM byte is backed by exactly one region of
//! [`ram_regions`], and the e820 table / PVH memmap built from
//! [`e820_entries`] describes those regions and nothing else as RAM.

/// GDT for the boot vCPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// Up to four 8-byte GDT entries.
pub const BOOT_GDT_MAX: usize = 4;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries follow start_info on the next page.
pub const MEMMAP_START: u64 = 0x7000;
/// bzImage `boot_params` (the "zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for a bzImage 64-bit entry.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for a bzImage 64-bit entry.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we accept, including the terminating NUL.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of the low RAM e820 entry (start of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the legacy BIOS area, where the RSDP is searched for.
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area (exclusive).
pub const ACPI_END: u64 = 0x10_0000;
/// Kernels and the tiny guest load at and above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole. RAM below 4 GiB ends here at the latest.
pub const MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO hole.
pub const MMIO32_SIZE: u64 = 0x4000_0000;
/// First virtio-mmio device window.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
/// Size of each virtio-mmio device window.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// IOAPIC MMIO window.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO window.
pub const LAPIC_START: u64 = 0xfee0_0000;
/// RAM beyond what fits below the hole continues here.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// Smallest guest we boot: below this even the tiny guest's image, page tables
/// and stack do not fit comfortably.
pub const MIN_MEM_SIZE: u64 = 8 << 20;

/// The RAM regions for a guest of `mem_size` bytes: one below the MMIO hole
/// and, for guests larger than 3 GiB, one above 4 GiB.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(MMIO32_START);
    let mut regions = vec![(0, low)];
    if mem_size > low {
        regions.push((RAM_64BIT_START, mem_size - low));
    }
    regions
}

/// Kind of an e820 / PVH memmap entry (values of the E820 and PVH specs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Kind {
    Ram = 1,
    Reserved = 2,
}

/// One e820 entry: `(start, size, kind)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: E820Kind,
}

/// The memory map announced to the guest, identical for e820 (bzImage) and
/// the PVH memmap. It mirrors [`ram_regions`] exactly, minus the legacy hole
/// between the EBDA and 1 MiB, where the ACPI tables sit in a reserved entry.
pub fn e820_entries(mem_size: u64) -> Vec<E820Entry> {
    let mut entries = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820Kind::Ram,
        },
        E820Entry {
            addr: ACPI_START,
            size: ACPI_END - ACPI_START,
            kind: E820Kind::Reserved,
        },
    ];
    for (start, size) in ram_regions(mem_size) {
        let start = start.max(HIMEM_START);
        let end = if start == HIMEM_START {
            size
        } else {
            start + size
        };
        if end > start {
            entries.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820Kind::Ram,
            });
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_region_below_the_hole() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        let e820 = e820_entries(128 << 20);
        assert_eq!(e820.len(), 3);
        assert_eq!(
            e820[2],
            E820Entry {
                addr: HIMEM_START,
                size: (128 << 20) - HIMEM_START,
                kind: E820Kind::Ram
            }
        );
    }

    #[test]
    fn large_guest_splits_around_the_mmio_hole() {
        let mem = 4u64 << 30;
        assert_eq!(
            ram_regions(mem),
            vec![(0, MMIO32_START), (RAM_64BIT_START, 1 << 30)]
        );
        let e820 = e820_entries(mem);
        let ram: u64 = e820
            .iter()
            .filter(|e| e.kind == E820Kind::Ram)
            .map(|e| e.size)
            .sum();
        // The legacy hole (EBDA .. 1 MiB) is the only RAM not announced.
        assert_eq!(ram, mem - (HIMEM_START - EBDA_START));
        assert!(e820
            .iter()
            .all(|e| e.addr + e.size <= MMIO32_START || e.addr >= RAM_64BIT_START));
    }
}
