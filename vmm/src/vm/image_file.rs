//! A kernel or initrd on disk: a regular file, opened once, whose size is
//! known before a byte of it is read.
//!
//! Why this matters: `std::fs::read("/dev/zero")` never ends, and a VMM
//! that reads an initrd into a heap buffer before checking it against
//! guest RAM grows until the host's OOM killer steps in (seen: 21 GiB for
//! `--mem 16M --initrd /dev/zero`). So the path is opened exactly once
//! (no check-then-open race), non-blocking (opening a FIFO must not wait
//! for a writer), `fstat`ed, and refused unless it is a regular file. The
//! caller compares [`ImageFile::size`] with the room it has before reading,
//! and then reads at most that many bytes, in bounded chunks, straight into
//! guest memory.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Why a boot image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("cannot open {what} {path}")]
    Open {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is a {kind}, not a regular file")]
    NotRegular {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
}

/// An opened boot image. Invariant: `file` is a regular file and `size`
/// was its length when it was opened.
#[derive(Debug)]
pub struct ImageFile {
    pub file: File,
    pub size: u64,
    pub path: PathBuf,
}

impl ImageFile {
    /// Opens `path` (a `what`: "kernel" or "initrd") and checks that it is
    /// a regular file.
    pub fn open(what: &'static str, path: &Path) -> Result<Self, ImageFileError> {
        let open_err = |source| ImageFileError::Open {
            what,
            path: path.into(),
            source,
        };
        // O_NONBLOCK only matters for what we refuse below (a FIFO or a
        // device must not block the open); regular files ignore it.
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(open_err)?;
        let meta = file.metadata().map_err(open_err)?;
        let kind = meta.file_type();
        if !kind.is_file() {
            return Err(ImageFileError::NotRegular {
                what,
                path: path.into(),
                kind: describe(&kind),
            });
        }
        Ok(ImageFile {
            file,
            size: meta.len(),
            path: path.into(),
        })
    }
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        "directory"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_opens_with_its_size() {
        let dir = std::env::temp_dir().join(format!("vmm-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("initrd");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let image = ImageFile::open("initrd", &path).unwrap();
        assert_eq!(image.size, 5000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn devices_directories_and_fifos_are_refused_without_reading() {
        let dir = std::env::temp_dir().join(format!("vmm-image-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, kind) in [
            (Path::new("/dev/zero"), "character device"),
            (dir.as_path(), "directory"),
            (fifo.as_path(), "FIFO"),
        ] {
            let err = ImageFile::open("initrd", path).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("initrd {} is a {kind}, not a regular file", path.display())
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
