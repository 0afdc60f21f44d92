//! The API's Unix socket file: made with mode 0600 before anyone can
//! connect, a stale one replaced, a live one refused, and removed at the
//! end only if it is still ours.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::error::ServerError;

/// Pending connections the kernel queues before `accept`.
const BACKLOG: libc::c_int = 64;

/// The socket file we created, known by device and inode.
#[derive(Debug)]
pub(crate) struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file if it is still the socket we bound (not one that
    /// another process put there since).
    pub fn remove(&self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path) {
            if meta.dev() == self.dev && meta.ino() == self.ino {
                let _ = fs::remove_file(&self.path);
            }
        }
    }
}

/// Binds a listening socket at `path` with mode 0600.
///
/// The listener is non-blocking (the accept loop polls it). The socket is
/// bound, then made 0600, and only then listens: until `listen` every
/// `connect` is refused, so no one connects through a laxer mode.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, SocketFile), ServerError> {
    let io_err = |what, source| ServerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let addr = socket_address(path)?;
    clear_stale(path)?;

    // SAFETY: plain system call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io_err("socket", io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    let addr_len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + path.as_os_str().len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `addr_len` does not exceed
    // its size (checked in `socket_address`).
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            addr_len as libc::socklen_t,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EADDRINUSE) {
            return Err(ServerError::SocketInUse(path.to_path_buf()));
        }
        return Err(io_err("bind", err));
    }
    let meta = match fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::symlink_metadata(path))
    {
        Ok(meta) => meta,
        Err(e) => {
            let _ = fs::remove_file(path);
            return Err(io_err("chmod 0600", e));
        }
    };
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    // SAFETY: plain system call on a descriptor we own.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
        let err = io::Error::last_os_error();
        file.remove();
        return Err(io_err("listen", err));
    }
    Ok((UnixListener::from(fd), file))
}

fn socket_address(path: &Path) -> Result<libc::sockaddr_un, ServerError> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if bytes.is_empty() {
        return Err(ServerError::BadPath(
            path.to_path_buf(),
            "the path is empty",
        ));
    }
    if bytes.contains(&0) {
        return Err(ServerError::BadPath(
            path.to_path_buf(),
            "the path holds a NUL byte",
        ));
    }
    // Leave room for the terminating NUL.
    if bytes.len() >= addr.sun_path.len() {
        return Err(ServerError::BadPath(
            path.to_path_buf(),
            "the path is longer than a Unix socket address allows (107 bytes)",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(addr)
}

/// Removes a socket file nobody listens on; refuses a live socket or a
/// path that is not a socket.
fn clear_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Io {
                what: "stat",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            fs::remove_file(path).map_err(|source| ServerError::Io {
                what: "remove the stale socket",
                path: path.to_path_buf(),
                source,
            })
        }
        Err(source) => Err(ServerError::Io {
            what: "check whether the existing socket is live",
            path: path.to_path_buf(),
            source,
        }),
    }
}
