//! Loading a guest: kernel image (PVH ELF or bzImage), command line, initrd
//! and the boot information structure each protocol expects.

use std::io::{Cursor, Read, Seek};
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::image_file::{ImageFile, ImageFileError};
use super::layout::{self, E820Entry};
use super::memory::GuestRam;
use super::regs::EntryPoint;
use super::stop_signals;

/// The kernel to boot.
#[derive(Clone, Debug)]
pub enum KernelImage {
    /// An image compiled into the binary (the tiny test guest).
    Embedded(&'static [u8]),
    /// A PVH ELF (`vmlinux`) or bzImage on disk.
    File(PathBuf),
}

/// The result of loading: where the vCPU starts and with which argument.
#[derive(Clone, Copy, Debug)]
pub struct BootSetup {
    pub entry: EntryPoint,
    /// Guest address of `hvm_start_info` (PVH) or `boot_params` (bzImage).
    pub boot_info: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Image(#[from] ImageFileError),
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is neither an ELF (vmlinux) nor a bzImage kernel")]
    UnknownFormat(String),
    #[error("ELF kernel {0} has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y or boot its bzImage")]
    NoPvhEntry(String),
    #[error("cannot load kernel {name} (is guest memory large enough for it?)")]
    Load {
        name: String,
        source: linux_loader::loader::Error,
    },
    #[error("kernel command line is {len} bytes; at most {max} fit", max = layout::CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong { len: usize },
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("initrd {path} ended after {read} of its {size} bytes (it changed while being read)")]
    InitrdShort { path: PathBuf, read: u64, size: u64 },
    #[error("stopped by signal {0} while loading the guest")]
    Stopped(u8),
    #[error("cannot write {what} into guest memory: {reason}")]
    Write { what: &'static str, reason: String },
}

/// Magic value of `hvm_start_info` (the PVH ABI, xen/include/public/arch-x86/hvm/start_info.h).
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// Loader type in `boot_params.hdr.type_of_loader`: "undefined" (0xff).
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// `loadflags`: the kernel was loaded high (at 1 MiB).
const LOADED_HIGH: u8 = 0x01;
/// The 64-bit entry of a bzImage sits 0x200 past its protected-mode start.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// Loads `kernel`, `initrd` and `cmdline` into `mem` and writes the boot
/// information, pointing the guest at the ACPI RSDP at `rsdp`.
pub fn load_guest(
    mem: &GuestRam,
    kernel: &KernelImage,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp: u64,
) -> Result<BootSetup, BootError> {
    write_cmdline(mem, cmdline)?;
    let loaded = load_kernel(mem, kernel)?;
    let initrd = initrd
        .map(|p| load_initrd(mem, p, loaded.kernel_end))
        .transpose()?;
    match (loaded.setup_header, loaded.pvh_boot_cap) {
        (_, PvhBootCapability::PvhEntryPresent(entry)) => {
            write_start_info(mem, rsdp, initrd)?;
            Ok(BootSetup {
                entry: EntryPoint::Pvh { entry: entry.0 },
                boot_info: layout::PVH_INFO_START,
            })
        }
        (Some(hdr), _) => {
            write_boot_params(mem, hdr, cmdline, rsdp, initrd)?;
            Ok(BootSetup {
                entry: EntryPoint::Linux64 {
                    entry: loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                },
                boot_info: layout::ZERO_PAGE_START,
            })
        }
        (None, _) => Err(BootError::NoPvhEntry(kernel.name())),
    }
}

impl KernelImage {
    fn name(&self) -> String {
        match self {
            KernelImage::Embedded(_) => "<embedded tiny guest>".to_string(),
            KernelImage::File(p) => p.display().to_string(),
        }
    }
}

fn load_kernel(mem: &GuestRam, kernel: &KernelImage) -> Result<KernelLoaderResult, BootError> {
    match kernel {
        KernelImage::Embedded(bytes) => load_image(mem, &mut Cursor::new(*bytes), &kernel.name()),
        // The loaders read only what the image's own headers describe,
        // into guest memory, which bounds them; the file must just be one
        // that ends (a regular file).
        KernelImage::File(path) => {
            let mut image = ImageFile::open("kernel", path)?;
            load_image(mem, &mut image.file, &kernel.name())
        }
    }
}

/// Picks the loader from the image's magic: `\x7fELF` or a bzImage setup
/// header ("HdrS" at 0x202).
fn load_image<F: Read + vm_memory::ReadVolatile + Seek>(
    mem: &GuestRam,
    image: &mut F,
    name: &str,
) -> Result<KernelLoaderResult, BootError> {
    let mut head = [0u8; 0x206];
    let got = read_up_to(image, &mut head).map_err(|source| BootError::Read {
        what: "kernel",
        path: name.into(),
        source,
    })?;
    image.rewind().map_err(|source| BootError::Read {
        what: "kernel",
        path: name.into(),
        source,
    })?;
    let highmem = Some(GuestAddress(layout::HIMEM_START));
    let result = if got >= 4 && head[..4] == *b"\x7fELF" {
        Elf::load(mem, None, image, highmem)
    } else if got >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        BzImage::load(mem, None, image, highmem)
    } else {
        return Err(BootError::UnknownFormat(name.to_string()));
    };
    let loaded = result.map_err(|source| BootError::Load {
        name: name.to_string(),
        source,
    })?;
    if head[..4] == *b"\x7fELF"
        && !matches!(loaded.pvh_boot_cap, PvhBootCapability::PvhEntryPresent(_))
    {
        return Err(BootError::NoPvhEntry(name.to_string()));
    }
    Ok(loaded)
}

fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn write_cmdline(mem: &GuestRam, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= layout::CMDLINE_MAX_SIZE {
        return Err(BootError::CmdlineTooLong { len: cmdline.len() });
    }
    if cmdline.contains('\0') {
        return Err(BootError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(|e| BootError::Write {
            what: "command line",
            reason: e.to_string(),
        })
}

/// An initrd placed in guest RAM: `(address, size)`.
type LoadedInitrd = (u64, u64);

/// How much of an initrd is read between two looks at pending stop
/// signals: SIGTERM must stop a VMM that loads a large initrd from a slow
/// disk, and the signals are blocked (they are read from a signalfd once
/// the VM's event loop runs).
const INITRD_CHUNK: u64 = 8 << 20;

/// Places the initrd page-aligned at the top of RAM below 4 GiB, where
/// kernels look for it and where it stays clear of the kernel image.
///
/// The size comes from `fstat` before anything is read, and at most that
/// many bytes are read, straight into guest memory: no host buffer, and a
/// file that grows meanwhile cannot make us read more.
fn load_initrd(mem: &GuestRam, path: &Path, kernel_end: u64) -> Result<LoadedInitrd, BootError> {
    let mut image = ImageFile::open("initrd", path)?;
    let size = image.size;
    let low_ram_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().0 + r.len())
        .unwrap_or(0);
    let too_large = || BootError::InitrdTooLarge {
        path: path.into(),
        size,
        kernel_end,
        limit: low_ram_end,
    };
    let addr = low_ram_end.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end.max(layout::HIMEM_START) {
        return Err(too_large());
    }
    let mut read = 0;
    while read < size {
        if let Some(signal) = stop_signals::take_pending() {
            return Err(BootError::Stopped(signal));
        }
        let chunk = (size - read).min(INITRD_CHUNK) as usize;
        mem.read_exact_volatile_from(GuestAddress(addr + read), &mut image.file, chunk)
            .map_err(|e| match e {
                vm_memory::GuestMemoryError::PartialBuffer { completed, .. } => {
                    BootError::InitrdShort {
                        path: path.into(),
                        read: read + completed as u64,
                        size,
                    }
                }
                other => BootError::Write {
                    what: "initrd",
                    reason: other.to_string(),
                },
            })?;
        read += chunk as u64;
    }
    Ok((addr, size))
}

/// PVH: `hvm_start_info` at PVH_INFO_START, the memmap right after it, and
/// the initrd as module 0.
fn write_start_info(
    mem: &GuestRam,
    rsdp: u64,
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = layout::e820_entries(mem_size(mem))
        .into_iter()
        .map(|E820Entry { addr, size, kind }| hvm_memmap_table_entry {
            addr,
            size,
            type_: kind as u32,
            reserved: 0,
        })
        .collect();
    let modlist_addr = layout::MEMMAP_START
        + (memmap.len() * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: layout::CMDLINE_START,
        rsdp_paddr: rsdp,
        memmap_paddr: layout::MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(initrd.is_some()),
        modlist_paddr: if initrd.is_some() { modlist_addr } else { 0 },
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(layout::PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(layout::MEMMAP_START));
    if let Some((paddr, size)) = initrd {
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(modlist_addr),
        );
    }
    PvhBootConfigurator::write_bootparams::<GuestRam>(&params, mem).map_err(|e| BootError::Write {
        what: "PVH start_info",
        reason: e.to_string(),
    })
}

/// bzImage: the zero page with the kernel's own setup header, our e820 map,
/// command line, initrd and RSDP.
fn write_boot_params(
    mem: &GuestRam,
    hdr: linux_loader::loader::bootparam::setup_header,
    cmdline: &str,
    rsdp: u64,
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.loadflags |= LOADED_HIGH;
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    let e820 = layout::e820_entries(mem_size(mem));
    if e820.len() > params.e820_table.len() {
        return Err(BootError::Write {
            what: "e820 table",
            reason: format!("{} entries do not fit", e820.len()),
        });
    }
    for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind as u32,
        };
    }
    params.e820_entries = e820.len() as u8;
    let bp = BootParams::new(&params, GuestAddress(layout::ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestRam>(&bp, mem).map_err(|e| BootError::Write {
        what: "boot_params",
        reason: e.to_string(),
    })
}

/// Total guest RAM in bytes.
pub fn mem_size(mem: &GuestRam) -> u64 {
    mem.iter().map(|r| r.len()).sum()
}

/// Reads a NUL-terminated string from guest memory (test and debug helper).
pub fn read_cstr(mem: &GuestRam, addr: u64, max: usize) -> Option<String> {
    let mut buf = vec![0u8; max];
    mem.read_slice(&mut buf, GuestAddress(addr)).ok()?;
    let end = buf.iter().position(|&b| b == 0)?;
    String::from_utf8(buf[..end].to_vec()).ok()
}
