//! The image file: a raw disk, opened read-only or read-write, with
//! positioned I/O (`pread64`, `pwrite64`) and `fdatasync`.
//!
//! The size is taken once, at open: the guest sees `capacity` sectors
//! (the size rounded down to whole sectors, so a partial last sector is
//! never reachable). If the file shrinks under a running guest, reads past
//! its new end fail as I/O errors (short reads are never handed to the
//! guest as data).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::config::SECTOR_SIZE;

/// Why the image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open the drive image {path:?} ({mode})")]
    Open {
        path: PathBuf,
        mode: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find the size of the drive image {path:?}")]
    Size {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An open image.
///
/// Invariant: `capacity_sectors * SECTOR_SIZE <= size at open`; every
/// access the device makes was checked against `capacity_sectors`.
#[derive(Debug)]
pub struct Disk {
    file: File,
    capacity_sectors: u64,
    read_only: bool,
}

impl Disk {
    /// Opens `path` read-only or read-write.
    pub fn open(path: &Path, read_only: bool) -> Result<Disk, DiskError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                mode: if read_only { "read-only" } else { "read-write" },
                source,
            })?;
        // Seeking works for block devices too, whose metadata says 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Disk {
            file,
            capacity_sectors: size / SECTOR_SIZE,
            read_only,
        })
    }

    /// The size the guest sees, in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Whether the image was opened read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Fills `buf` from byte `offset`; a short read (the file shrank) is an
    /// error.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at byte `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// `fdatasync`: what was written reaches stable storage.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}
