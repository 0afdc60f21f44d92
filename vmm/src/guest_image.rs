//! The tiny test guest (`resources/tiny-guest`), compiled by `build.rs` and
//! embedded so that `vmm run` boots something with no downloads.

/// The guest's PVH ELF image.
pub static TINY_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tiny-guest.elf"));

/// Drops this process's page-table mappings of `image` (read-only data of
/// our own executable) once it has been copied into guest RAM, so the copy
/// we no longer need stops counting in the VMM's RSS. The pages stay in
/// the page cache; touching them again simply maps them back.
pub fn unmap_resident_pages(image: &'static [u8]) {
    let page = 4096usize;
    let start = (image.as_ptr() as usize).next_multiple_of(page);
    let end = (image.as_ptr() as usize + image.len()) & !(page - 1);
    if end > start {
        // SAFETY: [start, end) lies inside `image`, a 'static read-only
        // mapping of our executable; MADV_DONTNEED on a private file mapping
        // with no written pages only drops PTEs: later reads fault the same
        // bytes back in from the page cache. Failure just leaves them mapped.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}
