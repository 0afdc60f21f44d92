//! Host-side configuration (Firecracker's `drive_id`, `path_on_host`,
//! `is_read_only`, `is_root_device`), the feature bits, the request limits
//! and the configuration space (virtio 1.2, sections 5.2.3 and 5.2.4).

use std::path::PathBuf;

/// Bytes per sector: the unit of `capacity` and of request headers,
/// whatever the image's or the host's block size.
pub const SECTOR_SIZE: u64 = 512;

/// `VIRTIO_BLK_F_SIZE_MAX`: `size_max` holds the largest data segment.
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
/// `VIRTIO_BLK_F_SEG_MAX`: `seg_max` holds the most data segments.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// `VIRTIO_BLK_F_RO`: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// `VIRTIO_BLK_F_FLUSH`: the device takes `FLUSH` requests (and caches
/// writes until one comes; without it every write is synced).
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Maximum size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The request queue's index: the device has one queue.
pub const REQUEST_QUEUE: usize = 0;

/// The most data segments (descriptors) a driver may put in a request
/// (`seg_max`). Linux needs the queue to hold `seg_max + 2` descriptors
/// (header and status) for one request.
pub const SEG_MAX: u32 = 128;
/// The largest data segment (`size_max`).
pub const SIZE_MAX: u32 = 64 * 1024;
/// The most data bytes in one request: `seg_max * size_max`, so a driver
/// that honours both (Linux derives its request size limit from them)
/// never exceeds it. Bigger requests are refused. The bound exists
/// because requests run synchronously on the VMM's event loop: one request
/// holds the loop (and every other device) for at most this much I/O.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Data goes between the image and guest memory through a host buffer of
/// this size, one piece at a time, so a request costs this much host
/// memory whatever its size.
pub const IO_CHUNK_BYTES: usize = 256 * 1024;

/// Longest drive id (Firecracker's limit for its ids).
pub const MAX_DRIVE_ID_LEN: usize = 64;
/// Bytes of the `GET_ID` answer (virtio 1.2, 5.2.6): the drive id,
/// truncated to this, NUL-padded when shorter.
pub const ID_BYTES: usize = 20;

/// The device as the host configures it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// Names the drive in the API and is the `GET_ID` answer: 1 to 64
    /// ASCII letters, digits, `_` or `-`.
    pub drive_id: String,
    /// The raw image file.
    pub path: PathBuf,
    /// Open the image read-only and offer `VIRTIO_BLK_F_RO`.
    pub read_only: bool,
    /// The guest's root device (`root=/dev/vda` on the kernel command
    /// line); the VMM attaches it first so that it is `vda`.
    pub is_root_device: bool,
}

/// Why a configuration cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("drive_id {0:?} must be 1 to {MAX_DRIVE_ID_LEN} ASCII letters, digits, '_' or '-'")]
    DriveId(String),
    #[error("the path of drive {0:?} is empty")]
    EmptyPath(String),
}

impl BlockConfig {
    /// Checks the drive id and that there is a path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = &self.drive_id;
        let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if id.is_empty() || id.len() > MAX_DRIVE_ID_LEN || !id.chars().all(ok_char) {
            return Err(ConfigError::DriveId(id.clone()));
        }
        if self.path.as_os_str().is_empty() {
            return Err(ConfigError::EmptyPath(id.clone()));
        }
        Ok(())
    }

    /// The `GET_ID` answer: the id's first [`ID_BYTES`] bytes, NUL-padded.
    pub fn id_bytes(&self) -> [u8; ID_BYTES] {
        let mut out = [0u8; ID_BYTES];
        let id = self.drive_id.as_bytes();
        let n = id.len().min(ID_BYTES);
        out[..n].copy_from_slice(&id[..n]);
        out
    }
}

/// The configuration space (`struct virtio_blk_config`), read-only: the
/// fields we fill are `capacity` (le64 at 0), `size_max` (le32 at 8) and
/// `seg_max` (le32 at 12); the rest of the structure reads as zeros, as
/// does everything past it.
pub(crate) fn read_config(capacity_sectors: u64, offset: u64, data: &mut [u8]) {
    let mut space = [0u8; 16];
    space[..8].copy_from_slice(&capacity_sectors.to_le_bytes());
    space[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
    space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| space.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str, path: &str) -> BlockConfig {
        BlockConfig {
            drive_id: id.into(),
            path: path.into(),
            read_only: false,
            is_root_device: false,
        }
    }

    #[test]
    fn drive_ids_and_paths() {
        assert_eq!(cfg("rootfs", "/img").validate(), Ok(()));
        assert_eq!(cfg("a-b_C9", "/img").validate(), Ok(()));
        assert!(cfg(&"x".repeat(64), "/img").validate().is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert_eq!(
                cfg(bad, "/img").validate(),
                Err(ConfigError::DriveId(bad.into())),
                "{bad:?}"
            );
        }
        assert_eq!(
            cfg("d", "").validate(),
            Err(ConfigError::EmptyPath("d".into()))
        );
    }

    #[test]
    fn get_id_answer_is_truncated_or_padded() {
        assert_eq!(&cfg("root", "/i").id_bytes()[..5], b"root\0");
        let long = cfg("abcdefghijklmnopqrstuvwxyz", "/i").id_bytes();
        assert_eq!(&long, b"abcdefghijklmnopqrst");
    }

    #[test]
    fn config_space_capacity_size_max_seg_max_then_zeros() {
        let mut b = [0xaa; 20];
        read_config(0x1122_3344_5566_7788, 0, &mut b);
        assert_eq!(&b[..8], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(&b[8..12], &SIZE_MAX.to_le_bytes());
        assert_eq!(&b[12..16], &SEG_MAX.to_le_bytes());
        assert_eq!(&b[16..], &[0; 4]);
        let mut b = [0xaa; 4];
        read_config(7, 4, &mut b);
        assert_eq!(b, [0; 4]);
        read_config(7, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
        assert_eq!(MAX_REQUEST_BYTES, 8 << 20);
    }
}
