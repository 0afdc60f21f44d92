//! Thin wrappers over the system calls the agent makes, each one call.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// CLOCK_MONOTONIC in ms (a vDSO call, no kernel entry where the clock
/// source allows it).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Opens `path` with `flags` (O_CLOEXEC added).
pub fn open(path: &Path, flags: libc::c_int) -> io::Result<File> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a NUL-terminated path.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// One `pread` at offset 0: the whole of a small /proc or cgroup file (a
/// seq_file renders it afresh at offset 0). A file longer than `buf` is
/// cut; the parsers cope with a cut last line.
pub fn pread0(f: &File, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for buf.len() bytes of writes.
        let r = unsafe { libc::pread(f.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        match cvt_size(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// One `read`.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes of writes.
    cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// One `write`.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes of reads.
    cvt_size(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// Whether `f` can be waited for with poll(): a character device
/// (/dev/kmsg), a FIFO or a socket, not a regular file.
pub fn is_pollable(f: &File) -> bool {
    f.metadata()
        .map(|m| !m.file_type().is_file() && !m.file_type().is_dir())
        .unwrap_or(false)
}

/// Where the agent connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Vsock { cid: u32, port: u32 },
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Vsock { cid, port } => write!(f, "vsock {cid}:{port}"),
            Target::Unix(p) => write!(f, "unix {}", p.display()),
        }
    }
}

/// Outcome of a non-blocking connect.
pub enum Connect {
    Done(OwnedFd),
    InProgress(OwnedFd),
}

/// A non-blocking stream socket connecting to `target`.
pub fn connect(target: &Target) -> io::Result<Connect> {
    let family = match target {
        Target::Vsock { .. } => libc::AF_VSOCK,
        Target::Unix(_) => libc::AF_UNIX,
    };
    // SAFETY: plain socket(2).
    let fd = cvt(unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    })?;
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let r = match target {
        Target::Vsock { cid, port } => {
            // SAFETY: all-zero is a valid sockaddr_vm.
            let mut sa: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
            sa.svm_family = libc::AF_VSOCK as libc::sa_family_t;
            sa.svm_cid = *cid;
            sa.svm_port = *port;
            // SAFETY: sa is a valid sockaddr_vm of the given size.
            unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_vm).cast(),
                    std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                )
            }
        }
        Target::Unix(path) => {
            // SAFETY: all-zero is a valid sockaddr_un.
            let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
            sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = path.as_os_str().as_bytes();
            if bytes.len() >= sa.sun_path.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "unix socket path too long",
                ));
            }
            for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
                *d = *s as libc::c_char;
            }
            // SAFETY: sa is a valid sockaddr_un of the given size.
            unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&sa as *const libc::sockaddr_un).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                )
            }
        }
    };
    if r == 0 {
        return Ok(Connect::Done(fd));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EINPROGRESS) {
        Ok(Connect::InProgress(fd))
    } else {
        Err(e)
    }
}

/// The outcome of a connect that was in progress (`SO_ERROR`).
pub fn take_socket_error(fd: RawFd) -> io::Result<()> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: err and len are valid for getsockopt to write.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    if err == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(err))
    }
}

/// One `sendmsg` of several buffers, without SIGPIPE.
pub fn send_vectored(fd: RawFd, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: all-zero is a valid msghdr; IoSlice is ABI-compatible with
    // iovec.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    // SAFETY: msg points at live buffers.
    cvt_size(unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) })
}

/// One non-blocking `recv`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes of writes.
    cvt_size(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) })
}

/// `poll` for at most `timeout_ms`; EINTR counts as a timeout.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: u64) -> io::Result<usize> {
    let t = timeout_ms.min(i32::MAX as u64) as libc::c_int;
    // SAFETY: fds is a valid array of pollfd.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, t) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(r as usize)
}

/// 16 hex digits of randomness (getrandom; pid and time if that fails).
pub fn random_id() -> String {
    let mut b = [0u8; 8];
    // SAFETY: b is valid for 8 bytes of writes.
    let r = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    let v = if r == 8 {
        u64::from_ne_bytes(b)
    } else {
        // SAFETY: getpid cannot fail.
        (u64::from(unsafe { libc::getpid() } as u32) << 32) ^ now_ms()
    };
    format!("{v:016x}")
}
