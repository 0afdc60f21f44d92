//! Reading the PVH `hvm_start_info` the loader left in guest memory.
//!
//! Layout (Xen `hvm_start_info`, all little endian):
//!
//! | offset | field            | version |
//! |-------:|------------------|---------|
//! | 0      | magic u32 = 0x336ec578 | 0 |
//! | 4      | version u32      | 0 |
//! | 8      | flags u32        | 0 |
//! | 12     | nr_modules u32   | 0 |
//! | 16     | modlist_paddr u64| 0 |
//! | 24     | cmdline_paddr u64| 0 |
//! | 32     | rsdp_paddr u64   | 0 |
//! | 40     | memmap_paddr u64 | 1 |
//! | 48     | memmap_entries u32 | 1 |
//! | 52     | reserved u32     | 1 |
//!
//! Memory-map entries are `{ addr u64, size u64, type u32, reserved u32 }`,
//! type 1 = RAM. Module entries (the initrd) are `{ paddr u64, size u64,
//! cmdline_paddr u64, reserved u64 }`.
//!
//! Invariant: every host-provided address is checked against
//! [`crate::boot::MAPPED_LIMIT`] before it is read (a fault would be a triple
//! fault), and everything the guest keeps is copied out, so later memory
//! tests may overwrite the originals.

use crate::boot::MAPPED_LIMIT;

/// `hvm_start_info.magic`.
pub const MAGIC: u32 = 0x336e_c578;
/// Memory-map entry type for usable RAM.
pub const TYPE_RAM: u32 = 1;
/// Most memory-map entries kept; further entries are counted but ignored.
pub const MAX_MEMMAP: usize = 128;
/// Longest command line kept, in bytes (the rest is cut off).
pub const MAX_CMDLINE: usize = 4096;

/// The raw structure (version 1 layout).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawStartInfo {
    magic: u32,
    version: u32,
    flags: u32,
    nr_modules: u32,
    modlist_paddr: u64,
    cmdline_paddr: u64,
    rsdp_paddr: u64,
    memmap_paddr: u64,
    memmap_entries: u32,
    reserved: u32,
}

/// One memory-map entry, end exclusive.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct MemmapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
    pub reserved: u32,
}

impl MemmapEntry {
    /// First address after the entry (saturating on a lying host).
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// What the guest learned from `hvm_start_info`.
pub struct StartInfo {
    pub cmdline_paddr: u64,
    pub nr_modules: u32,
    pub modlist_paddr: u64,
    /// Entries as announced (may exceed [`MAX_MEMMAP`]).
    pub memmap_entries: u32,
    pub memmap_paddr: u64,
}

/// Why `hvm_start_info` could not be used.
pub enum StartInfoError {
    /// The address is 0 or not inside the mapped range.
    BadAddress(u64),
    /// The magic field holds this value instead of [`MAGIC`].
    BadMagic(u32),
}

/// True if `len` bytes at `addr` lie inside the identity-mapped range.
pub fn readable(addr: u64, len: u64) -> bool {
    addr != 0 && addr.checked_add(len).is_some_and(|end| end <= MAPPED_LIMIT)
}

impl StartInfo {
    /// Reads and checks the structure at `paddr`.
    pub fn read(paddr: u64) -> Result<StartInfo, StartInfoError> {
        if !readable(paddr, core::mem::size_of::<RawStartInfo>() as u64) {
            return Err(StartInfoError::BadAddress(paddr));
        }
        // SAFETY: the range is identity-mapped (checked above) and any bit
        // pattern is a valid `RawStartInfo`; the read is unaligned-safe.
        let raw = unsafe { core::ptr::read_unaligned(paddr as *const RawStartInfo) };
        if raw.magic != MAGIC {
            return Err(StartInfoError::BadMagic(raw.magic));
        }
        // Version 0 has no memory map; its memmap fields hold other data.
        let (memmap_paddr, memmap_entries) = if raw.version >= 1 {
            (raw.memmap_paddr, raw.memmap_entries)
        } else {
            (0, 0)
        };
        Ok(StartInfo {
            cmdline_paddr: raw.cmdline_paddr,
            nr_modules: raw.nr_modules,
            modlist_paddr: raw.modlist_paddr,
            memmap_entries,
            memmap_paddr,
        })
    }

    /// Copies up to [`MAX_MEMMAP`] memory-map entries into `out` and returns
    /// how many were copied (0 if the map is absent or not readable).
    pub fn copy_memmap(&self, out: &mut [MemmapEntry; MAX_MEMMAP]) -> usize {
        let n = (self.memmap_entries as usize).min(MAX_MEMMAP);
        let entry_size = core::mem::size_of::<MemmapEntry>() as u64;
        if n == 0 || !readable(self.memmap_paddr, n as u64 * entry_size) {
            return 0;
        }
        for (i, slot) in out.iter_mut().take(n).enumerate() {
            let addr = self.memmap_paddr + i as u64 * entry_size;
            // SAFETY: inside the readable range checked above; any bit
            // pattern is a valid `MemmapEntry`.
            *slot = unsafe { core::ptr::read_unaligned(addr as *const MemmapEntry) };
        }
        n
    }

    /// The first module (the initrd) as `(paddr, size)`, if one is
    /// announced and both its entry and its bytes are readable.
    pub fn first_module(&self) -> Option<(u64, u64)> {
        if self.nr_modules == 0 || !readable(self.modlist_paddr, 16) {
            return None;
        }
        // SAFETY: 16 readable bytes (checked above); any bit pattern is a
        // valid pair of u64.
        let (paddr, size) = unsafe {
            (
                core::ptr::read_unaligned(self.modlist_paddr as *const u64),
                core::ptr::read_unaligned((self.modlist_paddr + 8) as *const u64),
            )
        };
        readable(paddr, size).then_some((paddr, size))
    }

    /// True if the announced memory map exists but cannot be read.
    pub fn memmap_unreadable(&self) -> bool {
        let entry_size = core::mem::size_of::<MemmapEntry>() as u64;
        let n = (self.memmap_entries as usize).min(MAX_MEMMAP) as u64;
        n != 0 && !readable(self.memmap_paddr, n * entry_size)
    }

    /// Copies the NUL-terminated command line into `out` and returns its
    /// bytes (empty if there is none or it is not readable). A command line
    /// longer than [`MAX_CMDLINE`] is cut off.
    pub fn copy_cmdline<'a>(&self, out: &'a mut [u8; MAX_CMDLINE]) -> &'a [u8] {
        let base = self.cmdline_paddr;
        let mut len = 0;
        while len < MAX_CMDLINE && readable(base, len as u64 + 1) {
            // SAFETY: the byte is inside the identity-mapped range (checked
            // by `readable` in the loop condition).
            let byte = unsafe { core::ptr::read_volatile((base + len as u64) as *const u8) };
            if byte == 0 {
                break;
            }
            out[len] = byte;
            len += 1;
        }
        &out[..len]
    }
}
