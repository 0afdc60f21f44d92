//! The architectural state a vCPU starts in: segments and control registers
//! for the boot protocol, general registers, FPU, MSRs and LAPIC LINT pins.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::layout;
use super::memory::GuestRam;

/// Where the vCPU starts executing and with which register contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh { entry: u64 },
    /// Linux 64-bit boot protocol: long mode on identity page tables,
    /// RSI = `boot_params`.
    Linux64 { entry: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write boot {what} to guest memory")]
    Memory {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
    #[error("KVM rejected the vCPU {what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM accepted only {set} of {total} boot MSRs (first rejected: {first_rejected:#x})")]
    Msrs {
        set: usize,
        total: usize,
        first_rejected: u32,
    },
}

// Control register and EFER bits.
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT selectors (index * 8) of [`boot_gdt`].
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

/// A GDT descriptor from its access/flag bits, base and limit (the Intel
/// SDM's layout: flags in bits 8-15 and 20-23 of the high dword).
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The hidden part of a segment register matching a GDT descriptor.
fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = bit(55);
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        // With 4 KiB granularity the limit counts pages.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: if bit(47) == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// The boot GDT: null, code, data, TSS. The code segment is 32-bit for PVH
/// and 64-bit (L=1) for the Linux 64-bit entry.
fn boot_gdt(entry: EntryPoint) -> [u64; layout::BOOT_GDT_MAX] {
    let code = match entry {
        EntryPoint::Pvh { .. } => gdt_entry(0xc09b, 0, 0xfffff),
        EntryPoint::Linux64 { .. } => gdt_entry(0xa09b, 0, 0xfffff),
    };
    [
        0,
        code,
        gdt_entry(0xc093, 0, 0xfffff),
        gdt_entry(0x808b, 0, 0xfffff),
    ]
}

/// Sets segments, descriptor tables and control registers for `entry`,
/// writing the GDT (and for the 64-bit entry, identity page tables covering
/// the first 1 GiB with 2 MiB pages) into guest memory.
pub fn setup_sregs(vcpu: &VcpuFd, mem: &GuestRam, entry: EntryPoint) -> Result<(), RegsError> {
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("special registers"))?;

    let gdt = boot_gdt(entry);
    for (i, desc) in gdt.iter().enumerate() {
        write_mem(mem, layout::BOOT_GDT_START + i as u64 * 8, *desc, "GDT")?;
    }
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    // No IDT: interrupts stay off until the guest installs its own.
    sregs.idt.base = 0;
    sregs.idt.limit = 0;

    let code = segment_from_gdt(gdt[1], CODE_SELECTOR);
    let data = segment_from_gdt(gdt[2], DATA_SELECTOR);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment_from_gdt(gdt[3], TSS_SELECTOR);

    match entry {
        EntryPoint::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryPoint::Linux64 { .. } => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = layout::PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs).map_err(kvm("special registers"))
}

/// PML4 → one PDPT → one PD of 512 2 MiB pages: the first 1 GiB identity
/// mapped, which the Linux 64-bit entry requires for its image and boot data.
fn write_identity_page_tables(mem: &GuestRam) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    write_mem(
        mem,
        layout::PML4_START,
        layout::PDPTE_START | PRESENT_RW,
        "PML4",
    )?;
    write_mem(
        mem,
        layout::PDPTE_START,
        layout::PDE_START | PRESENT_RW,
        "PDPT",
    )?;
    for i in 0..512u64 {
        write_mem(
            mem,
            layout::PDE_START + i * 8,
            (i << 21) | PRESENT_RW | PAGE_SIZE_2M,
            "PD",
        )?;
    }
    Ok(())
}

fn write_mem(mem: &GuestRam, addr: u64, val: u64, what: &'static str) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::Memory { what, source })
}

/// General registers for `entry`; `boot_info` is the start_info or
/// boot_params address.
pub fn setup_regs(vcpu: &VcpuFd, entry: EntryPoint, boot_info: u64) -> Result<(), RegsError> {
    let mut regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        EntryPoint::Pvh { entry } => {
            regs.rip = entry;
            regs.rbx = boot_info;
        }
        EntryPoint::Linux64 { entry } => {
            regs.rip = entry;
            regs.rsi = boot_info;
            regs.rsp = layout::BOOT_STACK_POINTER;
            regs.rbp = layout::BOOT_STACK_POINTER;
        }
    }
    vcpu.set_regs(&regs).map_err(|source| RegsError::Kvm {
        what: "registers",
        source,
    })
}

/// x87 control word and MXCSR at their reset values (all exceptions masked).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|source| RegsError::Kvm {
        what: "FPU state",
        source,
    })
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: without it Linux maps all RAM
/// uncached. IA32_ARCH_CAPABILITIES is deliberately not touched: PVM hosts
/// refuse the host's value.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The boot MSR values: syscall MSRs cleared, TSC at 0, fast strings on,
/// MTRRs default write-back.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).expect("boot MSR list fits a KVM MSR array");
    let set = vcpu.set_msrs(&msrs).map_err(|source| RegsError::Kvm {
        what: "MSRs",
        source,
    })?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            total: entries.len(),
            first_rejected: entries[set].index,
        });
    }
    Ok(())
}

/// LAPIC local vector table: LINT0 as ExtINT (the PIC's output) and LINT1
/// as NMI, the wiring of a PC that Linux expects on the BSP.
pub fn setup_lapic_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const DELIVERY_EXTINT: u32 = 0x7;
    const DELIVERY_NMI: u32 = 0x4;
    let kvm = |what| move |source| RegsError::Kvm { what, source };
    let mut lapic = vcpu.get_lapic().map_err(kvm("LAPIC state"))?;
    let mut set_delivery = |offset: usize, mode: u32| {
        let mut raw = [0u8; 4];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = lapic.regs[offset + i] as u8;
        }
        let val = (u32::from_le_bytes(raw) & !0x700) | (mode << 8);
        for (i, b) in val.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    };
    set_delivery(APIC_LVT0, DELIVERY_EXTINT);
    set_delivery(APIC_LVT1, DELIVERY_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("LAPIC state"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_round_trip_into_segments() {
        let code32 = gdt_entry(0xc09b, 0, 0xfffff);
        assert_eq!(code32, 0x00cf_9b00_0000_ffff);
        let seg = segment_from_gdt(code32, CODE_SELECTOR);
        assert_eq!(
            (
                seg.base,
                seg.limit,
                seg.type_,
                seg.db,
                seg.l,
                seg.g,
                seg.present
            ),
            (0, 0xffff_ffff, 0xb, 1, 0, 1, 1)
        );
        let code64 = segment_from_gdt(gdt_entry(0xa09b, 0, 0xfffff), CODE_SELECTOR);
        assert_eq!((code64.l, code64.db), (1, 0));
        let data = segment_from_gdt(gdt_entry(0xc093, 0, 0xfffff), DATA_SELECTOR);
        assert_eq!((data.type_, data.s, data.dpl), (0x3, 1, 0));
        let tss = segment_from_gdt(gdt_entry(0x808b, 0, 0xfffff), TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s, tss.present), (0xb, 0, 1));
    }
}
