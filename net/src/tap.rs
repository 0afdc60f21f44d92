//! The host side: a TAP device the operator created, opened by name.
//!
//! `open` attaches to the TAP through `/dev/net/tun` (`openat` with
//! `O_RDWR | O_NONBLOCK | O_CLOEXEC`, then `ioctl`s `TUNSETIFF` with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, `TUNGETIFF`, `TUNSETVNETHDRSZ`
//! 12 and `TUNSETOFFLOAD` 0). Each `read` returns one frame behind a
//! 12-byte vnet header, each `write` sends one; neither blocks.
//!
//! We refuse to create a TAP: if `TUNSETIFF` made a new, non-persistent
//! one (there was no TAP of that name), it is closed again, which removes
//! it, and `open` fails. The operator owns the TAP's life and addresses.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::config::{MAX_TAP_NAME_LEN, VNET_HDR_LEN};

/// `IFF_PERSIST`, as `TUNGETIFF` reports it.
const IFF_PERSIST: i16 = 0x0800;

/// Why the TAP cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    #[error("TAP name {0:?} is longer than {MAX_TAP_NAME_LEN} bytes")]
    NameTooLong(String),
    #[error("cannot attach to TAP {name:?} (TUNSETIFF)")]
    Attach {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("there is no TAP {0:?} in this network namespace; create it first (ip tuntap add {0} mode tap)")]
    NoSuchTap(String),
    #[error("cannot configure TAP {name:?} ({what})")]
    Configure {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// `struct ifreq` as the TUN ioctls use it: the name and the flags.
#[repr(C)]
#[derive(Default)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    /// The rest of the union (`struct ifreq` is 40 bytes).
    _pad: [u8; 22],
}

/// An open TAP queue, nonblocking, with 12-byte vnet headers.
///
/// Invariant: `file` is attached to the persistent TAP `name` with
/// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, vnet header size
/// [`VNET_HDR_LEN`], no offloads.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing TAP `name`.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.len() > MAX_TAP_NAME_LEN {
            return Err(TapError::NameTooLong(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq::default();
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes, which `IfReq`
        // is, NUL-terminated name since len <= 15) and writes the name
        // back into it; `req` lives across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(TapError::Attach {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let mut got = IfReq::default();
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `got`, which is
        // one and outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut got) } < 0 {
            return Err(configure(name, "TUNGETIFF"));
        }
        if got.flags & IFF_PERSIST == 0 {
            // We just created it; closing `file` removes it again.
            return Err(TapError::NoSuchTap(name.to_string()));
        }
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer,
        // which points to `hdr_len`, alive across the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(configure(name, "TUNSETVNETHDRSZ"));
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned
        // long of TUN_F_* flags): no memory is passed.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
            return Err(configure(name, "TUNSETOFFLOAD"));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
        })
    }

    /// The TAP's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame, vnet header first, into `buf` (`read`); an error
    /// of kind `WouldBlock` when none is waiting.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Sends one frame, vnet header first (`write`).
    pub fn write_frame(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }
}

fn configure(name: &str, what: &'static str) -> TapError {
    TapError::Configure {
        name: name.to_string(),
        what,
        source: io::Error::last_os_error(),
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_missing_taps_are_refused() {
        assert!(matches!(
            Tap::open("a-name-too-long-for-linux"),
            Err(TapError::NameTooLong(_))
        ));
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
        // Without CAP_NET_ADMIN, attaching to a TAP that does not exist
        // fails in TUNSETIFF; with it, we notice we created it.
        match Tap::open("nettestnone0") {
            Err(TapError::NoSuchTap(_) | TapError::Attach { .. } | TapError::OpenTun(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
