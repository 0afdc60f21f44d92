//! The stock Debian cloud kernel boots through our PVH entry far enough to
//! show that it accepted our machine: memory map, ACPI tables, MADT, KVM.
//!
//! On PVM hosts (no VMX/SVM) the kernel cannot finish booting: guest CPL0
//! code runs through KVM's instruction emulator (see DESIGN.md), so these
//! tests read the early boot log and then stop the VM.

use std::time::Duration;

use vmm_integration_tests::{require_kvm, stock_kernel, VmProcess};

/// Seconds of emulated early boot are slow; a line later than this is a
/// failure. The first line comes ~9 s after start on a quiet PVM host;
/// at load 6 (three of these tests at once beside other builds) it took
/// over 60 s.
const EARLY: Duration = Duration::from_secs(180);

/// `noxsave`: on PVM hosts the kernel's CPUID at CPL0 sees the host's XSAVE
/// whatever our CPUID table says, and `xrstor` is not emulated.
const CMDLINE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 noxsave vmm.test=early-boot";

fn boot_stock_kernel(mem: &str, vcpus: &str) -> VmProcess {
    require_kvm();
    let vmlinux = stock_kernel("vmlinux");
    VmProcess::start(&[
        "run",
        "--kernel",
        vmlinux.to_str().unwrap(),
        "--mem",
        mem,
        "--vcpus",
        vcpus,
        "--cmdline",
        CMDLINE,
        // With a balloon, so the DSDT the kernel finds has its LNRO0005
        // device (the kernel dies before it interprets AML, though).
        "--balloon",
        "",
    ])
}

fn expect(vm: &mut VmProcess, needle: &str) -> String {
    match vm.wait_for(needle, EARLY) {
        Some(line) => line.text,
        None => panic!(
            "the kernel never printed {needle:?}; its output:\n{}",
            vm.output()
        ),
    }
}

#[test]
fn stock_kernel_accepts_our_machine() {
    let mut vm = boot_stock_kernel("256M", "2");
    expect(&mut vm, &format!("Command line: {CMDLINE}"));
    // Our memmap exactly. Linux's PVH entry adds the ISA hole
    // (0xa0000-0xfffff) as reserved, which absorbs our ACPI range.
    expect(
        &mut vm,
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
    );
    expect(
        &mut vm,
        "BIOS-e820: [mem 0x00000000000a0000-0x00000000000fffff] reserved",
    );
    expect(
        &mut vm,
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
    );
    expect(&mut vm, "Hypervisor detected: KVM");
    // Our ACPI tables: the RSDP where start_info points, then each table.
    expect(&mut vm, "ACPI: RSDP 0x00000000000E0000 000024 (v02 VMMOOM)");
    for table in ["XSDT", "FACP", "DSDT", "APIC"] {
        let line = expect(&mut vm, &format!("ACPI: {table} 0x00000000000E0"));
        assert!(line.contains("VMMOOM MICROVM"), "{line}");
    }
    // The MADT as the kernel understood it: our IOAPIC, one LAPIC per vCPU.
    expect(
        &mut vm,
        "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23",
    );
    expect(&mut vm, "smpboot: Allowing 2 CPUs, 0 hotplug CPUs");
    let out = vm.output();
    assert!(!out.contains("ACPI BIOS Error"), "{out}");
    assert!(!out.contains("Incorrect checksum"), "{out}");
    vm.kill();
}

#[test]
fn memory_above_4g_is_announced_after_the_mmio_hole() {
    let mut vm = boot_stock_kernel("4G", "1");
    expect(
        &mut vm,
        "BIOS-e820: [mem 0x0000000000100000-0x00000000bfffffff] usable",
    );
    expect(
        &mut vm,
        "BIOS-e820: [mem 0x0000000100000000-0x000000013fffffff] usable",
    );
    expect(&mut vm, "Hypervisor detected: KVM");
    vm.kill();
}

/// The bzImage path (64-bit boot protocol, `boot_params` with our e820 and
/// RSDP). Slow here: the kernel's LZ4 decompressor runs under emulation for
/// about 90 s before the kernel proper prints its first line.
#[test]
fn stock_bzimage_boots_through_the_64bit_protocol() {
    require_kvm();
    let bzimage = stock_kernel("bzImage");
    let mut vm = VmProcess::start(&[
        "run",
        "--kernel",
        bzimage.to_str().unwrap(),
        "--mem",
        "256M",
        "--cmdline",
        CMDLINE,
    ]);
    let decompressed = Duration::from_secs(400);
    for needle in [
        format!("Command line: {CMDLINE}"),
        // boot_params carries our e820 as is: no ISA hole is added here.
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable".into(),
        "BIOS-e820: [mem 0x00000000000e0000-0x00000000000fffff] reserved".into(),
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable".into(),
        "Hypervisor detected: KVM".into(),
        "ACPI: RSDP 0x00000000000E0000 000024 (v02 VMMOOM)".into(),
    ] {
        if vm.wait_for(&needle, decompressed).is_none() {
            panic!(
                "the bzImage kernel never printed {needle:?}; its output:\n{}",
                vm.output()
            );
        }
    }
    vm.kill();
}
