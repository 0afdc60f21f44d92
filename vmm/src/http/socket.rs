//! The API's Unix socket file: made with mode 0600 before anyone can
//! connect, in place only once it listens, a stale one replaced, a live
//! one refused, and removed at the end only if it is still ours.

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
///
/// All of that happens under a temporary name in the same directory, and
/// the listening socket is renamed to `path` last: whoever waits for
/// `path` to appear (the daemon for a VM's socket, a script) can connect
/// as soon as it sees it, never in the window between `bind` and `listen`
/// where a connect is refused. Where the temporary name would not fit in a
/// socket address, the socket is bound at `path` directly and that window
/// exists.
pub(crate) fn bind(path: &Path) -> Result<(UnixListener, SocketFile), ServerError> {
    let io_err = |what, source| ServerError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    socket_address(path)?;
    clear_stale(path)?;
    let staging = staging_path(path).filter(|s| socket_address(s).is_ok());
    let bind_at = staging.as_deref().unwrap_or(path);
    let addr = socket_address(bind_at)?;
    // A staging name left by a process that died mid-start.
    if staging.is_some() {
        let _ = fs::remove_file(bind_at);
    }

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

    let addr_len =
        std::mem::offset_of!(libc::sockaddr_un, sun_path) + bind_at.as_os_str().len() + 1;
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
    let meta = match fs::set_permissions(bind_at, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::symlink_metadata(bind_at))
    {
        Ok(meta) => meta,
        Err(e) => {
            let _ = fs::remove_file(bind_at);
            return Err(io_err("chmod 0600", e));
        }
    };
    let mut file = SocketFile {
        path: bind_at.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    // SAFETY: plain system call on a descriptor we own.
    if unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) } != 0 {
        let err = io::Error::last_os_error();
        file.remove();
        return Err(io_err("listen", err));
    }
    if bind_at != path {
        // rename(2) keeps the inode: `file` still knows it.
        if let Err(e) = fs::rename(bind_at, path) {
            file.remove();
            return Err(io_err("move the socket into place", e));
        }
        file.path = path.to_path_buf();
    }
    Ok((UnixListener::from(fd), file))
}

/// `<dir>/.<name>.<pid>.bind`: where the socket for `path` is made before
/// it is moved into place; `None` for a path without a file name.
fn staging_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_string_lossy();
    Some(path.with_file_name(format!(".{name}.{}.bind", std::process::id())))
}

/// Whether `path` can be bound as a Unix socket (not empty, no NUL, at
/// most 107 bytes), so a caller can refuse a path before a server fails on it.
pub fn check_socket_path(path: &Path) -> Result<(), ServerError> {
    socket_address(path).map(|_| ())
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

/// Whether the process at the other end of `stream` may use the API: its
/// uid (`SO_PEERCRED`, what the kernel recorded at `connect`) is ours or
/// root's.
///
/// The socket file is 0600 already; this holds when that is not enough:
/// a socket file whose mode an operator widened, or a descriptor passed to
/// another user's process. Root is let in because it can bypass the file
/// mode and ptrace us anyway: refusing it would protect nothing.
pub(crate) fn peer_is_trusted(stream: &std::os::unix::net::UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain data; all zeroes is a valid value.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid cannot fail.
    rc == 0 && (cred.uid == 0 || cred.uid == unsafe { libc::geteuid() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmm-sock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A client that connects the moment the path appears is never
    /// refused: the socket shows up listening, with mode 0600, and no
    /// staging name is left behind.
    #[test]
    fn the_socket_appears_only_once_it_listens() {
        let dir = scratch("appear");
        for round in 0..100 {
            let path = dir.join(format!("api{round}.sock"));
            let seen = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (path, seen) = (path.clone(), seen.clone());
                std::thread::spawn(move || {
                    while !path.exists() {
                        std::hint::spin_loop();
                    }
                    seen.store(true, Ordering::SeqCst);
                    UnixStream::connect(&path).map(|_| ())
                })
            };
            let (_listener, file) = bind(&path).unwrap();
            let connected = watcher.join().unwrap();
            assert!(seen.load(Ordering::SeqCst));
            assert!(connected.is_ok(), "round {round}: {connected:?}");
            let mode = fs::symlink_metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            assert_eq!(file.path(), path);
            file.remove();
            assert!(!path.exists());
        }
        let left: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A path so long that the staging name would not fit is bound in
    /// place, as before.
    #[test]
    fn a_path_near_the_limit_is_bound_in_place() {
        let dir = scratch("long");
        let room = 107 - dir.as_os_str().len() - 1;
        let path = dir.join("x".repeat(room - 2));
        assert!(socket_address(&path).is_ok());
        assert!(socket_address(&staging_path(&path).unwrap()).is_err());
        let (_listener, file) = bind(&path).unwrap();
        UnixStream::connect(&path).unwrap();
        file.remove();
        fs::remove_dir_all(&dir).unwrap();
    }
}
