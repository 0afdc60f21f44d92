//! Host-side configuration (Firecracker's `guest_cid` and `uds_path`), the
//! device's limits, the feature bits and the configuration space
//! (virtio 1.2, sections 5.10.3 and 5.10.4).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Stream sockets are supported (virtio 1.2). Linux does not know the bit
/// and acks nothing but `VERSION_1`; with no type feature negotiated the
/// device acts as if this one were.
pub const VIRTIO_VSOCK_F_STREAM: u64 = 1 << 0;

/// Maximum size of each of the three queues.
pub const QUEUE_SIZE: u16 = 256;
/// Queue indices: rx (device → driver), tx (driver → device), event.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;

/// `sun_path` holds 108 bytes with the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// `_` and up to ten digits appended for guest-initiated connections.
const PORT_SUFFIX_MAX: usize = 11;

/// The device as the host configures it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID: 3 up to 2^32 - 2 (0-2 are reserved, and
    /// 2^32 - 1 is `VMADDR_CID_ANY`; Linux keeps CIDs in 32 bits).
    pub guest_cid: u64,
    /// Host processes connect here (`CONNECT <port>\n`); guest connections
    /// to port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// Why a configuration cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("guest_cid {0} is reserved or out of range (3..=4294967294)")]
    Cid(u64),
    #[error("uds_path is empty")]
    EmptyPath,
    #[error("uds_path {path:?} is too long: with the `_<port>` suffix of guest-initiated connections it must fit a Unix socket address ({max} bytes at most)")]
    PathTooLong { path: PathBuf, max: usize },
    #[error("uds_path {0:?} contains a NUL byte")]
    NulInPath(PathBuf),
}

impl VsockConfig {
    /// Checks the CID and that every socket path derived from `uds_path`
    /// fits `sun_path`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(3..=u64::from(u32::MAX - 1)).contains(&self.guest_cid) {
            return Err(ConfigError::Cid(self.guest_cid));
        }
        let bytes = self.uds_path.as_os_str().as_bytes();
        if bytes.is_empty() {
            return Err(ConfigError::EmptyPath);
        }
        if bytes.contains(&0) {
            return Err(ConfigError::NulInPath(self.uds_path.clone()));
        }
        let max = SUN_PATH_MAX - PORT_SUFFIX_MAX;
        if bytes.len() > max {
            return Err(ConfigError::PathTooLong {
                path: self.uds_path.clone(),
                max,
            });
        }
        Ok(())
    }

    /// Where a guest connection to host port `port` goes: `<uds_path>_<port>`.
    pub fn port_path(&self, port: u32) -> PathBuf {
        port_path(&self.uds_path, port)
    }
}

/// `<uds_path>_<port>`.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut p = uds_path.as_os_str().to_owned();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// The bounds that keep a guest (or a host process) from making the VMM
/// use unbounded memory or descriptors. The worst case of buffered guest
/// data is `max_connections * conn_buf_size` (4 MiB with the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open connections, host- and guest-initiated together; more are
    /// refused (`RST` to the guest, the host stream closed).
    pub max_connections: usize,
    /// Host streams accepted that have not yet sent their `CONNECT` line.
    pub max_pending_host: usize,
    /// Per-connection buffer for guest data a slow host reader has not
    /// taken (advertised to the guest as `buf_alloc`).
    pub conn_buf_size: u32,
    /// How long a host stream may take to send its `CONNECT` line.
    pub connect_line_timeout: Duration,
    /// How long the guest may take to answer a host-initiated `REQUEST`.
    pub connect_timeout: Duration,
    /// How long a connection the guest shut down may take to hand its
    /// buffered data to the host reader before it is reset.
    pub close_timeout: Duration,
    /// `RST`s to connections that do not exist, waiting for rx buffers.
    /// When full, the device stops taking tx packets until the guest posts
    /// rx buffers (each tx packet can cause at most one such `RST`).
    pub max_stray_rsts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            max_pending_host: 16,
            conn_buf_size: 64 * 1024,
            connect_line_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(2),
            max_stray_rsts: 64,
        }
    }
}

/// The configuration space: `guest_cid`, le64, read-only.
pub(crate) fn read_config(guest_cid: u64, offset: u64, data: &mut [u8]) {
    let space = guest_cid.to_le_bytes();
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

    fn cfg(cid: u64, path: &str) -> VsockConfig {
        VsockConfig {
            guest_cid: cid,
            uds_path: path.into(),
        }
    }

    #[test]
    fn cids_and_paths() {
        assert_eq!(cfg(3, "/tmp/v.sock").validate(), Ok(()));
        assert_eq!(cfg(0xffff_fffe, "v").validate(), Ok(()));
        for cid in [0, 1, 2, 0xffff_ffff, 1 << 32] {
            assert_eq!(cfg(cid, "/tmp/v").validate(), Err(ConfigError::Cid(cid)));
        }
        assert_eq!(cfg(3, "").validate(), Err(ConfigError::EmptyPath));
        assert!(cfg(3, &"a".repeat(96)).validate().is_ok());
        assert!(matches!(
            cfg(3, &"a".repeat(97)).validate(),
            Err(ConfigError::PathTooLong { max: 96, .. })
        ));
        assert!(matches!(
            cfg(3, "a\0b").validate(),
            Err(ConfigError::NulInPath(_))
        ));
    }

    #[test]
    fn port_paths() {
        assert_eq!(
            cfg(3, "/tmp/v.sock").port_path(1024),
            PathBuf::from("/tmp/v.sock_1024")
        );
        // The longest suffix fits in sun_path.
        let long = cfg(3, &"a".repeat(96));
        let p = long.port_path(u32::MAX);
        assert_eq!(p.as_os_str().len(), SUN_PATH_MAX);
    }

    #[test]
    fn config_space_is_the_cid_and_zeros_after() {
        let mut b = [0xaa; 12];
        read_config(0x1122_3344_5566_7788, 0, &mut b);
        assert_eq!(
            b,
            [0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0, 0, 0]
        );
        let mut b = [0xaa; 4];
        read_config(3, 4, &mut b);
        assert_eq!(b, [0; 4]);
        read_config(3, u64::MAX, &mut b);
        assert_eq!(b, [0; 4]);
    }
}
