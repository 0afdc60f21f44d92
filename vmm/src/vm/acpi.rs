//! ACPI tables for one microVM: how a stock Linux kernel learns its CPUs, its
//! interrupt controllers, COM1 and the virtio-mmio devices without any
//! `virtio_mmio.device=` command-line arguments.
//!
//! We describe a *hardware-reduced* ACPI platform (no PM timer, no SCI, no
//! FACS, no fixed-feature hardware at all), which is what a VMM without a
//! chipset can honestly claim. The tables, in the order they sit in memory:
//!
//! ```text
//! ACPI_START  RSDP (rev 2) ──► XSDT ──► FACP (FADT) ──► DSDT (X_DSDT)
//!                                  └──► APIC (MADT)
//! ```
//!
//! Invariants of a built [`AcpiTables`]:
//! - the RSDP is at [`ACPI_START`], 16-byte aligned, where both the PVH
//!   `rsdp_paddr` and Linux's legacy scan of `0xe0000..0x100000` find it;
//! - every table lies inside `[ACPI_START, ACPI_END)`, the range that the
//!   e820 map / PVH memmap announce as reserved, and no two tables overlap;
//! - every checksum is final (the RSDP's 20-byte and extended ones included):
//!   nothing may be patched after [`AcpiTables::build`].

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags as FadtFlags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::layout::{ACPI_END, ACPI_START, IOAPIC_START, LAPIC_START};
// The DSDT must describe COM1 exactly as the device model decodes and wires it.
use crate::devices::serial::{COM1_GSI, COM1_LEN, COM1_PORT};

/// OEM ID in every table header and the RSDP; Linux prints it at boot.
const OEM_ID: [u8; 6] = *b"VMMOOM";
/// OEM table ID; the spec wants the same value in every table of one platform.
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const OEM_REVISION: u32 = 1;

/// DSDT revision 2 and above means 64-bit AML integers.
const DSDT_REVISION: u8 = 2;

/// Pins of KVM's in-kernel IOAPIC (`KVM_IOAPIC_NUM_PINS`). The MADT does not
/// carry this number (Linux reads it from the IOAPIC itself), but a GSI at or
/// above it can never fire, so we refuse it here rather than let a guest
/// driver wait forever.
pub const IOAPIC_PINS: u32 = 24;
/// Every virtio-mmio device needs a pin of its own (its interrupt is declared
/// exclusive), and COM1 already holds one.
pub const MAX_VIRTIO_MMIO_SLOTS: usize = IOAPIC_PINS as usize - 1;

/// KVM's IOAPIC resets its ID register to 0; the MADT must say the same.
const IOAPIC_ID: u8 = 0;

/// Tables after the RSDP start on 8-byte boundaries so that their 64-bit
/// fields are naturally aligned (the spec does not require it; Linux maps
/// the tables byte-wise anyway).
const TABLE_ALIGN: u64 = 8;

/// IA-PC boot architecture flags (FADT `IAPC_BOOT_ARCH`, ACPI 6.5 §5.2.9.3).
///
/// - bit 0 (legacy devices) clear: COM1 is enumerated through the DSDT.
/// - bit 1 (8042) clear on purpose: the VMM only implements the i8042 reset
///   command. With the bit clear Linux marks the controller "firmware absent"
///   and the i8042 driver does not probe ports 0x60/0x64 at all (saving the
///   probe's timeouts), while the reboot path still writes 0xfe to port 0x64,
///   which is the one command we do implement.
/// - bit 2 (VGA not present): keeps Linux away from the VGA ports and memory.
/// - bit 5 (CMOS RTC not present): we emulate no RTC at 0x70/0x71; without
///   the bit Linux registers an `rtc_cmos` device and pokes those ports.
const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 5);

// The RSDP search and the 32-bit MADT address fields rely on these.
const _: () = assert!(ACPI_START % 16 == 0);
const _: () = assert!(ACPI_START < ACPI_END);
const _: () = assert!(LAPIC_START <= u32::MAX as u64);
const _: () = assert!(IOAPIC_START <= u32::MAX as u64);
// The IO resource descriptor has an 8-bit length.
const _: () = assert!(COM1_LEN <= u8::MAX as u16);

/// One virtio-mmio transport window and the GSI (IOAPIC pin) it raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmioSlot {
    /// Guest-physical base of the register window; must lie below 4 GiB
    /// because ACPI describes it with a `Memory32Fixed` descriptor.
    pub base: u64,
    /// Size of the window in bytes (non-zero).
    pub size: u64,
    /// Interrupt line, edge-triggered, active-high, not shared.
    pub gsi: u32,
}

/// What the tables describe.
#[derive(Clone, Copy, Debug)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs; vCPU `i` gets APIC ID `i` and ACPI processor UID `i`.
    /// 255 at most, which keeps every APIC ID below the xAPIC broadcast ID.
    pub vcpus: u8,
    /// The virtio-mmio devices, announced as `LNRO0005` devices in order.
    /// Do not also pass them on the kernel command line: Linux would probe
    /// each device twice.
    pub virtio_mmio: &'a [VirtioMmioSlot],
}

/// Why the tables could not be built or written.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("a microVM needs at least one vCPU")]
    NoVcpus,
    #[error("{count} virtio-mmio devices requested, at most {MAX_VIRTIO_MMIO_SLOTS} fit (one IOAPIC pin each)")]
    TooManyDevices { count: usize },
    #[error("virtio-mmio slot {index}: window {base:#x}+{size:#x} must be non-empty and end at or below 4 GiB")]
    WindowNot32Bit { index: usize, base: u64, size: u64 },
    #[error("virtio-mmio slot {index}: window overlaps the one of slot {other}")]
    WindowOverlap { index: usize, other: usize },
    #[error("virtio-mmio slot {index}: GSI {gsi} is not an IOAPIC pin (0..{IOAPIC_PINS})")]
    GsiOutOfRange { index: usize, gsi: u32 },
    #[error("virtio-mmio slot {index}: GSI {gsi} is already used by {owner}")]
    GsiInUse {
        index: usize,
        gsi: u32,
        owner: String,
    },
    #[error("ACPI table {signature} would end at {end:#x}, past the ACPI area end {ACPI_END:#x}")]
    AreaFull { signature: &'static str, end: u64 },
    #[error("writing ACPI table {signature} at {addr:#x} into guest memory: {source}")]
    GuestMemory {
        signature: &'static str,
        addr: u64,
        #[source]
        source: GuestMemoryError,
    },
}

/// One finished table at its guest-physical address.
#[derive(Clone, Debug)]
struct Table {
    signature: &'static str,
    addr: u64,
    bytes: Vec<u8>,
}

/// The ACPI tables of one microVM, laid out at their guest addresses with the
/// RSDP at [`ACPI_START`] and every checksum final (see the module docs for
/// the invariants).
#[derive(Clone, Debug)]
pub struct AcpiTables {
    /// In address order; the RSDP comes first.
    tables: Vec<Table>,
}

impl AcpiTables {
    /// Builds RSDP, XSDT, FADT, MADT and DSDT for `cfg`.
    ///
    /// Fails on a configuration Linux could not use (no vCPU, a window above
    /// 4 GiB, overlapping windows, a GSI outside the IOAPIC or used twice)
    /// and if the tables would not fit below [`ACPI_END`].
    pub fn build(cfg: &AcpiConfig) -> Result<AcpiTables, AcpiError> {
        validate(cfg)?;
        let mut area = Area::new();
        // The RSDP must be first (at ACPI_START), but it points at the XSDT,
        // which is built last: reserve its place now, fill it in at the end.
        let rsdp_addr = area.place("RSDP", Rsdp::len())?;
        // Each table is built once the addresses it refers to are known:
        // DSDT and MADT refer to nothing, the FADT to the DSDT, the XSDT to
        // the FADT and the MADT.
        let dsdt = area.push("DSDT", dsdt_bytes(cfg.virtio_mmio))?;
        let madt = area.push("APIC", madt_bytes(cfg.vcpus))?;
        let fadt = area.push("FACP", fadt_bytes(dsdt))?;
        let xsdt = area.push("XSDT", xsdt_bytes(&[fadt, madt]))?;
        let mut tables = area.into_tables();
        tables.insert(
            0,
            Table {
                signature: "RSDP",
                addr: rsdp_addr,
                bytes: aml_bytes(&Rsdp::new(OEM_ID, xsdt)),
            },
        );
        Ok(AcpiTables { tables })
    }

    /// Guest-physical address of the RSDP (always [`ACPI_START`]); this is
    /// what goes into PVH `hvm_start_info.rsdp_paddr`.
    pub fn rsdp_addr(&self) -> u64 {
        self.tables[0].addr
    }

    /// Every table as `(signature, guest address, bytes)`, in address order,
    /// starting with `"RSDP"`; the others are `"DSDT"`, `"APIC"`, `"FACP"`
    /// and `"XSDT"`.
    pub fn tables(&self) -> impl Iterator<Item = (&str, u64, &[u8])> {
        self.tables
            .iter()
            .map(|t| (t.signature, t.addr, t.bytes.as_slice()))
    }

    /// Copies every table to its address in guest memory. Fails if the guest
    /// memory does not back all of `[ACPI_START, end of the last table)`.
    pub fn write_to<M: GuestMemory>(&self, mem: &M) -> Result<(), AcpiError> {
        for t in &self.tables {
            mem.write_slice(&t.bytes, GuestAddress(t.addr))
                .map_err(|source| AcpiError::GuestMemory {
                    signature: t.signature,
                    addr: t.addr,
                    source,
                })?;
        }
        Ok(())
    }
}

/// Rejects configurations that would give Linux tables it cannot use.
fn validate(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.vcpus == 0 {
        return Err(AcpiError::NoVcpus);
    }
    let slots = cfg.virtio_mmio;
    if slots.len() > MAX_VIRTIO_MMIO_SLOTS {
        return Err(AcpiError::TooManyDevices { count: slots.len() });
    }
    for (index, slot) in slots.iter().enumerate() {
        check_window(index, slot)?;
        check_gsi(index, slot.gsi, &slots[..index])?;
        check_overlap(index, slot, &slots[..index])?;
    }
    Ok(())
}

/// `Memory32Fixed` holds a 32-bit base and a 32-bit length, and the window
/// must end at or below 4 GiB.
fn check_window(index: usize, slot: &VirtioMmioSlot) -> Result<(), AcpiError> {
    let fits = slot.size > 0
        && u32::try_from(slot.size).is_ok()
        && slot
            .base
            .checked_add(slot.size)
            .is_some_and(|end| end <= 1 << 32);
    if !fits {
        let (base, size) = (slot.base, slot.size);
        return Err(AcpiError::WindowNot32Bit { index, base, size });
    }
    Ok(())
}

/// The GSI must be an IOAPIC pin that nobody else holds: the device's
/// interrupt is edge-triggered and declared exclusive, like COM1's.
fn check_gsi(index: usize, gsi: u32, earlier: &[VirtioMmioSlot]) -> Result<(), AcpiError> {
    if gsi >= IOAPIC_PINS {
        return Err(AcpiError::GsiOutOfRange { index, gsi });
    }
    let owner = if gsi == COM1_GSI {
        Some("COM1".to_string())
    } else {
        earlier
            .iter()
            .position(|s| s.gsi == gsi)
            .map(|other| format!("virtio-mmio slot {other}"))
    };
    match owner {
        Some(owner) => Err(AcpiError::GsiInUse { index, gsi, owner }),
        None => Ok(()),
    }
}

/// Linux would refuse to claim the second of two overlapping windows.
fn check_overlap(
    index: usize,
    slot: &VirtioMmioSlot,
    earlier: &[VirtioMmioSlot],
) -> Result<(), AcpiError> {
    let overlaps =
        |o: &VirtioMmioSlot| slot.base < o.base + o.size && o.base < slot.base + slot.size;
    match earlier.iter().position(overlaps) {
        Some(other) => Err(AcpiError::WindowOverlap { index, other }),
        None => Ok(()),
    }
}

/// Hands out addresses in `[ACPI_START, ACPI_END)` in increasing order and
/// keeps the tables placed so far.
struct Area {
    next: u64,
    tables: Vec<Table>,
}

impl Area {
    fn new() -> Self {
        Area {
            next: ACPI_START,
            tables: Vec::new(),
        }
    }

    /// Reserves `len` bytes at the next aligned address.
    fn place(&mut self, signature: &'static str, len: usize) -> Result<u64, AcpiError> {
        let addr = self.next.next_multiple_of(TABLE_ALIGN);
        let end = addr + len as u64;
        if end > ACPI_END {
            return Err(AcpiError::AreaFull { signature, end });
        }
        self.next = end;
        Ok(addr)
    }

    /// Places a finished table and returns its address.
    fn push(&mut self, signature: &'static str, bytes: Vec<u8>) -> Result<u64, AcpiError> {
        let addr = self.place(signature, bytes.len())?;
        self.tables.push(Table {
            signature,
            addr,
            bytes,
        });
        Ok(addr)
    }

    fn into_tables(self) -> Vec<Table> {
        self.tables
    }
}

/// Serialises any `acpi_tables` object.
fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// XSDT listing the given tables. The DSDT is not listed: it is reached
/// through the FADT, and the spec forbids listing it in the XSDT.
fn xsdt_bytes(entries: &[u64]) -> Vec<u8> {
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for &addr in entries {
        xsdt.add_entry(addr);
    }
    aml_bytes(&xsdt)
}

/// FADT of a hardware-reduced platform. With HW_REDUCED_ACPI set, Linux
/// ignores every fixed-hardware block (PM1, PM timer, GPE, SCI, FACS), so
/// leaving them zero is correct rather than lazy.
fn fadt_bytes(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(FadtFlags::HwReducedAcpi)
        // "No fixed-feature power/sleep button": a hardware-reduced platform
        // has none, and without these bits Linux would register a fixed
        // "Power Button" input device that can never fire.
        .flag(FadtFlags::PwrButton)
        .flag(FadtFlags::SlpButton);
    // acpi_tables has no setter for this field, but it is public.
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    aml_bytes(&fadt.finalize())
}

/// MADT: one enabled local APIC per vCPU and the IOAPIC with GSIs from 0.
///
/// No interrupt source overrides: KVM's default GSI routing maps ISA IRQ n
/// to IOAPIC pin n, which is exactly what Linux assumes for ISA IRQs that
/// have no override (edge-triggered, active-high). An override such as the
/// usual IRQ0 -> GSI2 would only be right if the VMM routed it that way.
fn madt_bytes(vcpus: u8) -> Vec<u8> {
    let lapic = LocalInterruptController::Address(LAPIC_START as u32);
    let mut madt = MADT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, lapic);
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(IOAPIC_ID, IOAPIC_START as u32, 0));
    aml_bytes(&madt)
}

/// DSDT: `\_SB_.COM1` and one `\_SB_.Vnnn` per virtio-mmio slot.
fn dsdt_bytes(slots: &[VirtioMmioSlot]) -> Vec<u8> {
    let mut devices = com1_aml();
    for (index, slot) in slots.iter().enumerate() {
        devices.extend(virtio_mmio_aml(index, slot));
    }
    let body = Scope::raw("\\_SB_".into(), devices);
    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    // append_slice updates the length and the checksum.
    dsdt.append_slice(&body);
    dsdt.as_slice().to_vec()
}

/// The 16550 UART at 0x3f8, bound by Linux's 8250_pnp driver.
fn com1_aml() -> Vec<u8> {
    // IRQ 4 is an ISA interrupt: edge-triggered, active-high, exclusive,
    // matching what Linux assumes for it from the MADT (no override).
    let irq = Interrupt::new(true, true, false, false, COM1_GSI);
    let io = IO::new(COM1_PORT, COM1_PORT, 1, COM1_LEN as u8);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    device_aml("COM1", &EISAName::new("PNP0501"), 0, &crs)
}

/// A virtio-mmio transport as Linux's `virtio_mmio` driver matches it over
/// ACPI: `_HID "LNRO0005"`, one memory window, one edge interrupt.
///
/// Edge, because the transport pulses an irqfd per notification (as
/// Firecracker does) and the driver acknowledges through InterruptACK; a
/// level line would need a resample eventfd to re-assert.
fn virtio_mmio_aml(index: usize, slot: &VirtioMmioSlot) -> Vec<u8> {
    // validate() guarantees the window fits in 32 bits.
    let mem = Memory32Fixed::new(true, slot.base as u32, slot.size as u32);
    // consumer, edge-triggered, active-high, exclusive
    let irq = Interrupt::new(true, true, false, false, slot.gsi);
    let crs = ResourceTemplate::new(vec![&mem, &irq]);
    device_aml(&virtio_device_name(index), &"LNRO0005", index as u32, &crs)
}

/// `Device (name) { Name (_HID, hid) Name (_UID, uid) Name (_CRS, crs) }`
fn device_aml(name: &str, hid: &dyn Aml, uid: u32, crs: &dyn Aml) -> Vec<u8> {
    let hid = Name::new("_HID".into(), hid);
    let uid = Name::new("_UID".into(), &uid);
    let crs = Name::new("_CRS".into(), crs);
    aml_bytes(&Device::new(name.into(), vec![&hid, &uid, &crs]))
}

/// ACPI names are exactly four characters; `V000`..`V999` is plenty for
/// [`MAX_VIRTIO_MMIO_SLOTS`].
fn virtio_device_name(index: usize) -> String {
    const _: () = assert!(MAX_VIRTIO_MMIO_SLOTS <= 1000);
    format!("V{index:03}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use acpi_tables::fadt::FADT;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use vm_memory::GuestMemoryMmap;

    /// Slot `n` of a Firecracker-like layout: GSIs from 5 up, then wrapping
    /// to 0..3, so that the 23 slots that fit never touch COM1's GSI 4.
    fn slot(n: u64) -> VirtioMmioSlot {
        VirtioMmioSlot {
            base: 0xd000_0000 + n * 0x1000,
            size: 0x1000,
            gsi: (5 + n as u32) % IOAPIC_PINS,
        }
    }

    fn slots(count: u64) -> Vec<VirtioMmioSlot> {
        (0..count).map(slot).collect()
    }

    fn build(vcpus: u8, slots: &[VirtioMmioSlot]) -> AcpiTables {
        AcpiTables::build(&AcpiConfig {
            vcpus,
            virtio_mmio: slots,
        })
        .expect("tables build")
    }

    fn table<'a>(tables: &'a AcpiTables, sig: &str) -> (u64, &'a [u8]) {
        let (_, addr, bytes) = tables
            .tables()
            .find(|(s, _, _)| *s == sig)
            .expect("table present");
        (addr, bytes)
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u32_at(bytes: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
    }

    fn count(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .filter(|w| *w == needle)
            .count()
    }

    #[test]
    fn every_checksum_is_valid() {
        let tables = build(4, &slots(3));
        for (sig, _, bytes) in tables.tables() {
            if sig == "RSDP" {
                assert_eq!(sum(&bytes[..20]), 0, "RSDP 20-byte checksum");
                assert_eq!(bytes.len(), 36);
                assert_eq!(sum(bytes), 0, "RSDP extended checksum");
            } else {
                assert_eq!(&bytes[..4], sig.as_bytes());
                assert_eq!(u32_at(bytes, 4) as usize, bytes.len(), "{sig} length field");
                assert_eq!(sum(bytes), 0, "{sig} checksum");
            }
        }
    }

    #[test]
    fn tables_sit_in_the_acpi_area_without_overlap() {
        let tables = build(2, &slots(2));
        assert_eq!(tables.rsdp_addr(), ACPI_START);
        assert_eq!(tables.rsdp_addr() % 16, 0);
        let sigs: Vec<&str> = tables.tables().map(|(s, _, _)| s).collect();
        assert_eq!(sigs, ["RSDP", "DSDT", "APIC", "FACP", "XSDT"]);
        let mut end = ACPI_START;
        for (sig, addr, bytes) in tables.tables() {
            assert!(addr >= end, "{sig} overlaps the table before it");
            end = addr + bytes.len() as u64;
            assert!(end <= ACPI_END, "{sig} ends past ACPI_END");
        }
    }

    #[test]
    fn rsdp_is_revision_2_and_points_at_the_xsdt() {
        let tables = build(1, &[]);
        let (_, rsdp) = table(&tables, "RSDP");
        let (xsdt_addr, _) = table(&tables, "XSDT");
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(&rsdp[9..15], &OEM_ID);
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(u32_at(rsdp, 16), 0, "no RSDT");
        assert_eq!(u32_at(rsdp, 20), 36, "length");
        assert_eq!(u64_at(rsdp, 24), xsdt_addr);
    }

    #[test]
    fn xsdt_lists_exactly_the_fadt_and_the_madt() {
        let tables = build(2, &slots(1));
        let (_, xsdt) = table(&tables, "XSDT");
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        assert_eq!(
            entries,
            [table(&tables, "FACP").0, table(&tables, "APIC").0]
        );
    }

    #[test]
    fn fadt_is_hardware_reduced_and_points_at_the_dsdt() {
        let tables = build(1, &slots(1));
        let (_, fadt) = table(&tables, "FACP");
        assert_eq!(fadt.len(), FADT::len());
        assert_eq!(fadt[8], 6, "FADT major revision");
        assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT pointer unused");
        assert_eq!(u64_at(fadt, 140), table(&tables, "DSDT").0, "X_DSDT");
        assert_eq!(u64_at(fadt, 132), 0, "no FACS (X_FIRMWARE_CTRL)");
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        let boot_arch = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_eq!(boot_arch & (1 << 1), 0, "8042 must not be claimed");
        assert_ne!(boot_arch & (1 << 2), 0, "VGA not present");
        assert_ne!(boot_arch & (1 << 5), 0, "CMOS RTC not present");
    }

    #[test]
    fn madt_has_one_enabled_lapic_per_vcpu_and_one_ioapic() {
        for vcpus in [1u8, 3, 255] {
            let tables = build(vcpus, &[]);
            let (_, madt) = table(&tables, "APIC");
            assert_eq!(u32_at(madt, 36) as u64, LAPIC_START);
            let mut lapic_ids = Vec::new();
            let mut ioapics = Vec::new();
            let mut off = 44;
            while off < madt.len() {
                let (kind, len) = (madt[off], madt[off + 1] as usize);
                match kind {
                    0 => {
                        assert_eq!(u32_at(madt, off + 4), 1, "LAPIC enabled");
                        assert_eq!(madt[off + 2], madt[off + 3], "UID == APIC ID");
                        lapic_ids.push(madt[off + 3]);
                    }
                    1 => ioapics.push((u32_at(madt, off + 4) as u64, u32_at(madt, off + 8))),
                    other => panic!("unexpected MADT entry type {other}"),
                }
                off += len;
            }
            assert_eq!(off, madt.len());
            assert_eq!(lapic_ids, (0..vcpus).collect::<Vec<_>>());
            assert_eq!(ioapics, [(IOAPIC_START, 0)]);
        }
    }

    #[test]
    fn dsdt_has_com1_and_one_lnro0005_per_slot() {
        for n in [0, 1, 5, MAX_VIRTIO_MMIO_SLOTS as u64] {
            let tables = build(1, &slots(n));
            let (_, dsdt) = table(&tables, "DSDT");
            assert_eq!(count(dsdt, b"LNRO0005"), n as usize);
            assert_eq!(count(dsdt, b"COM1"), 1);
        }
    }

    #[test]
    fn zero_vcpus_is_refused() {
        let err = AcpiTables::build(&AcpiConfig {
            vcpus: 0,
            virtio_mmio: &[],
        })
        .unwrap_err();
        assert!(matches!(err, AcpiError::NoVcpus), "{err}");
    }

    #[test]
    fn too_many_devices_are_refused() {
        let too_many = slots(MAX_VIRTIO_MMIO_SLOTS as u64 + 1);
        let err = AcpiTables::build(&AcpiConfig {
            vcpus: 255,
            virtio_mmio: &too_many,
        })
        .unwrap_err();
        assert!(
            matches!(err, AcpiError::TooManyDevices { count: 24 }),
            "{err}"
        );
    }

    #[test]
    fn bad_slots_are_refused() {
        type Expect = fn(&AcpiError) -> bool;
        let cases: [(VirtioMmioSlot, Expect); 7] = [
            (
                VirtioMmioSlot {
                    base: 0xffff_f800,
                    size: 0x1000,
                    gsi: 9,
                },
                |e| matches!(e, AcpiError::WindowNot32Bit { .. }),
            ),
            (
                VirtioMmioSlot {
                    base: 0,
                    size: 1 << 32,
                    gsi: 9,
                },
                |e| matches!(e, AcpiError::WindowNot32Bit { .. }),
            ),
            (
                VirtioMmioSlot {
                    base: 0xd000_2000,
                    size: 0,
                    gsi: 9,
                },
                |e| matches!(e, AcpiError::WindowNot32Bit { .. }),
            ),
            (
                VirtioMmioSlot {
                    base: 0xd000_0800,
                    size: 0x1000,
                    gsi: 9,
                },
                |e| matches!(e, AcpiError::WindowOverlap { other: 0, .. }),
            ),
            (
                VirtioMmioSlot {
                    base: 0xd000_2000,
                    size: 0x1000,
                    gsi: 5,
                },
                |e| matches!(e, AcpiError::GsiInUse { gsi: 5, .. }),
            ),
            (
                VirtioMmioSlot {
                    base: 0xd000_2000,
                    size: 0x1000,
                    gsi: COM1_GSI,
                },
                |e| matches!(e, AcpiError::GsiInUse { gsi: 4, .. }),
            ),
            (
                VirtioMmioSlot {
                    base: 0xd000_2000,
                    size: 0x1000,
                    gsi: IOAPIC_PINS,
                },
                |e| matches!(e, AcpiError::GsiOutOfRange { .. }),
            ),
        ];
        for (bad, expected) in cases {
            let cfg_slots = [slot(0), bad];
            let err = AcpiTables::build(&AcpiConfig {
                vcpus: 1,
                virtio_mmio: &cfg_slots,
            })
            .unwrap_err();
            assert!(expected(&err), "{bad:?} gave {err}");
        }
    }

    #[test]
    fn tables_that_overflow_the_area_are_refused() {
        // The public configuration limits keep real tables far below the
        // 128 KiB area; the allocator must still refuse, not wrap.
        let mut area = Area::new();
        area.place("RSDP", Rsdp::len()).unwrap();
        let room = (ACPI_END - ACPI_START) as usize - 40;
        assert!(area.push("DSDT", vec![0; room]).is_ok());
        let err = area.push("APIC", vec![0; 1]).unwrap_err();
        assert!(
            matches!(err, AcpiError::AreaFull { signature: "APIC", end } if end > ACPI_END),
            "{err}"
        );
    }

    #[test]
    fn write_to_puts_the_rsdp_at_acpi_start() {
        let tables = build(2, &slots(2));
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        tables.write_to(&mem).unwrap();
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(ACPI_START)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        for (name, addr, bytes) in tables.tables() {
            let mut back = vec![0u8; bytes.len()];
            mem.read_slice(&mut back, GuestAddress(addr)).unwrap();
            assert_eq!(back, bytes, "{name} in guest memory");
        }
    }

    #[test]
    fn write_to_reports_missing_guest_memory() {
        let tables = build(1, &[]);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
        let err = tables.write_to(&mem).unwrap_err();
        assert!(
            matches!(
                err,
                AcpiError::GuestMemory {
                    signature: "RSDP",
                    ..
                }
            ),
            "{err}"
        );
    }

    /// A directory under the system temp dir, removed when dropped (even
    /// when the test panics).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let path = std::env::temp_dir().join(format!("{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `iasl` with `args` in `dir`; returns its combined output. A
    /// missing iasl is a failure, not a skip: these checks are the only
    /// independent reading of our tables on machines that cannot boot Linux.
    fn iasl(dir: &Path, args: &[&str]) -> String {
        let out = match Command::new("iasl").args(args).current_dir(dir).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("iasl not found: install acpica-tools (apt-get install acpica-tools) to check the ACPI tables")
            }
            Err(e) => panic!("running iasl: {e}"),
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "iasl {args:?} failed ({}):\n{text}",
            out.status
        );
        text
    }

    /// The first line of iasl's output or of the file it wrote that
    /// complains (iasl exits 0 on a bad checksum, so its words are what
    /// count), if any.
    fn iasl_complaint(texts: &[&str]) -> Option<String> {
        let complains = |l: &&str| {
            ["Error", "Warning", "Incorrect", "Invalid"]
                .iter()
                .any(|bad| l.contains(bad))
                && !l.contains(" 0 Errors, 0 Warnings")
        };
        texts
            .iter()
            .flat_map(|t| t.lines())
            .find(complains)
            .map(str::to_string)
    }

    #[test]
    fn iasl_disassembles_every_table_cleanly() {
        let virtio = slots(3);
        let tables = build(2, &virtio);
        let dir = TempDir::new("vmm-acpi-iasl");
        for (sig, _, bytes) in tables.tables() {
            let file = format!("{sig}.dat");
            std::fs::write(dir.0.join(&file), bytes).unwrap();
            if sig == "RSDP" {
                continue; // iasl cannot disassemble an RSDP: iasl_compiles_the_same_rsdp
            }
            let output = iasl(&dir.0, &["-d", &file]);
            let dsl = std::fs::read_to_string(dir.0.join(format!("{sig}.dsl"))).unwrap();
            let complaint = iasl_complaint(&[&output, &dsl]);
            assert_eq!(complaint, None, "iasl on {sig}:\n{output}\n{dsl}");
        }
        let dsl = std::fs::read_to_string(dir.0.join("DSDT.dsl")).unwrap();
        assert!(dsl.contains("EisaId (\"PNP0501\")"), "{dsl}");
        assert_eq!(dsl.matches("\"LNRO0005\"").count(), virtio.len(), "{dsl}");
        assert_eq!(
            dsl.matches("Memory32Fixed (ReadWrite,").count(),
            virtio.len(),
            "{dsl}"
        );
        for s in &virtio {
            let base_line = format!("0x{:08X},", s.base);
            assert!(
                dsl.lines()
                    .any(|l| l.contains(&base_line) && l.contains("Address Base")),
                "no Memory32Fixed base {base_line} in\n{dsl}"
            );
        }
    }

    /// The check above has teeth: a single flipped checksum bit is caught.
    #[test]
    fn iasl_complains_about_a_corrupted_checksum() {
        let tables = build(1, &slots(1));
        let dir = TempDir::new("vmm-acpi-iasl-bad");
        for sig in ["DSDT", "APIC"] {
            let mut bytes = table(&tables, sig).1.to_vec();
            bytes[9] ^= 1;
            std::fs::write(dir.0.join(format!("{sig}.dat")), &bytes).unwrap();
            let output = iasl(&dir.0, &["-d", &format!("{sig}.dat")]);
            let dsl = std::fs::read_to_string(dir.0.join(format!("{sig}.dsl"))).unwrap();
            let complaint = iasl_complaint(&[&output, &dsl]).unwrap_or_default();
            assert!(
                complaint.contains("checksum"),
                "a corrupted {sig} passed the iasl check:\n{output}"
            );
        }
    }

    /// iasl 20200925 refuses to disassemble a binary RSDP ("Loading an RSDP
    /// is not supported"), but its data-table compiler builds one and fills
    /// in both checksums itself: ours must come out byte for byte the same.
    #[test]
    fn iasl_compiles_the_same_rsdp() {
        let tables = build(1, &[]);
        let (xsdt_addr, _) = table(&tables, "XSDT");
        let source = format!(
            "Signature : \"RSD PTR \"\nChecksum : 00\nOem ID : \"{}\"\nRevision : 02\n\
             RSDT Address : 00000000\nLength : 00000024\nXSDT Address : {xsdt_addr:016X}\n\
             Extended Checksum : 00\nReserved : 000000\n",
            std::str::from_utf8(&OEM_ID).unwrap()
        );
        let dir = TempDir::new("vmm-acpi-iasl-rsdp");
        std::fs::write(dir.0.join("rsdp.asl"), source).unwrap();
        let output = iasl(&dir.0, &["rsdp.asl"]);
        assert_eq!(iasl_complaint(&[&output]), None, "{output}");
        let compiled = std::fs::read(dir.0.join("rsdp.aml")).unwrap();
        assert_eq!(compiled.as_slice(), table(&tables, "RSDP").1);
    }
}
