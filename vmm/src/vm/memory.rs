//! Guest RAM: private anonymous memory laid out by [`layout::ram_regions`]
//! and registered with KVM, one memory slot per region.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::layout;

/// Guest RAM of one microVM.
pub type GuestRam = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {size} bytes is too small: at least {min} bytes are needed", min = layout::MIN_MEM_SIZE)]
    TooSmall { size: u64 },
    #[error("guest memory size {size} is not a multiple of the 4 KiB page size")]
    Unaligned { size: u64 },
    #[error("cannot map {size} bytes of guest memory")]
    Mmap {
        size: u64,
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("cannot advise the kernel about guest memory")]
    Madvise(#[source] std::io::Error),
    #[error("KVM refused guest memory slot {slot} at {addr:#x}")]
    Slot {
        slot: u32,
        addr: u64,
        source: kvm_ioctls::Error,
    },
}

/// Maps guest RAM of `mem_size` bytes. The mapping is private, anonymous and
/// `MAP_NORESERVE` (vm-memory's default), so untouched guest pages cost the
/// host nothing: host RSS grows only as the guest touches memory.
///
/// Each region is marked `MADV_NOHUGEPAGE`: the balloon gives memory back
/// in 4 KiB pages, and a transparent huge page would have to be split (or
/// would stay resident) when the guest returns part of it. The distinct
/// flag also keeps each region its own VMA, never merged with a
/// neighbouring anonymous mapping, so `/proc/<pid>/smaps` shows guest RAM
/// residency exactly (the OOM monitor and `GET /vm` read it there).
pub fn create_guest_ram(mem_size: u64) -> Result<GuestRam, MemoryError> {
    if mem_size < layout::MIN_MEM_SIZE {
        return Err(MemoryError::TooSmall { size: mem_size });
    }
    if mem_size % 4096 != 0 {
        return Err(MemoryError::Unaligned { size: mem_size });
    }
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    let ram = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Mmap {
        size: mem_size,
        source,
    })?;
    for region in ram.iter() {
        // SAFETY: the range is exactly one live mapping owned by `ram`;
        // MADV_NOHUGEPAGE changes no contents, only future THP decisions.
        let ret = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_NOHUGEPAGE,
            )
        };
        if ret != 0 {
            return Err(MemoryError::Madvise(std::io::Error::last_os_error()));
        }
    }
    Ok(ram)
}

/// Registers every region of `ram` with KVM.
pub fn register_guest_ram(vm: &VmFd, ram: &GuestRam) -> Result<(), MemoryError> {
    for (slot, region) in ram.iter().enumerate() {
        let slot = slot as u32;
        let region_desc = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the host range [userspace_addr, +memory_size) is a live
        // mapping owned by `ram`, which the VM keeps alive for as long as the
        // VM file descriptor exists (both live in `Vm`, and vCPUs hold
        // clones of the same `GuestMemoryMmap`).
        unsafe { vm.set_user_memory_region(region_desc) }.map_err(|source| MemoryError::Slot {
            slot,
            addr: region.start_addr().0,
            source,
        })?;
    }
    Ok(())
}

/// Host address range `[start, end)` of each guest RAM region, for RSS
/// accounting against `/proc/self/smaps`.
pub fn host_ranges(ram: &GuestRam) -> Vec<(u64, u64)> {
    ram.iter()
        .map(|r| (r.as_ptr() as u64, r.as_ptr() as u64 + r.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_tiny_and_unaligned_guests() {
        assert!(matches!(
            create_guest_ram(1 << 20),
            Err(MemoryError::TooSmall { .. })
        ));
        assert!(matches!(
            create_guest_ram((16 << 20) + 1),
            Err(MemoryError::Unaligned { .. })
        ));
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let ram = create_guest_ram(4 << 30).unwrap();
        assert_eq!(ram.num_regions(), 2);
        assert!(ram.address_in_range(GuestAddress(layout::MMIO32_START - 1)));
        assert!(!ram.address_in_range(GuestAddress(layout::MMIO32_START)));
        assert!(ram.address_in_range(GuestAddress(layout::RAM_64BIT_START)));
    }
}
