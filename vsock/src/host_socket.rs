//! The few Unix-socket calls std does not offer without blocking: a
//! non-blocking `connect`, and reading a host's handshake line without
//! taking the bytes behind it.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Connects to the stream socket at `path` without blocking. A Unix
/// `connect` completes at once or fails: `ECONNREFUSED` (nobody listens),
/// `ENOENT` (no such file), `EAGAIN` (the listener's backlog is full; a
/// blocking socket would wait here). The stream returned is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all zeros is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path does not fit a Unix socket address",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un, NUL-terminated within its
    // size (checked above), and `len` does not exceed it.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

/// Copies up to `buf.len()` bytes that wait on `stream` into `buf`
/// without consuming them (`MSG_PEEK`), without blocking. `Ok(0)` is end
/// of file.
pub fn peek(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;

    #[test]
    fn connects_without_blocking_or_fails_at_once() {
        let dir = std::env::temp_dir().join(format!("vsock-hs-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let err = connect_nonblocking(&path).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        let listener = UnixListener::bind(&path).unwrap();
        let mut s = connect_nonblocking(&path).unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.write_all(b"hi").unwrap();
        let mut b = [0u8; 8];
        // Non-blocking: data that has arrived is there.
        std::thread::sleep(std::time::Duration::from_millis(10));
        assert_eq!(s.read(&mut b).unwrap(), 2);
        assert_eq!(
            s.read(&mut b).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        let _ = std::fs::remove_dir(&dir);
        let long = Path::new("/tmp").join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
    }

    #[test]
    fn peek_leaves_the_bytes() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            peek(&a, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        b.write_all(b"CONNECT").unwrap();
        assert_eq!(peek(&a, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"CONN");
        let mut all = [0u8; 16];
        assert_eq!((&a).read(&mut all).unwrap(), 7);
        drop(b);
        assert_eq!(peek(&a, &mut buf).unwrap(), 0);
    }
}
