//! `PUT /logger` and `vmm run --log-path`: the VMM's messages (all written
//! to standard error) go to a file or named pipe from then on.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Makes `path` (appended to, created if missing) the process's standard
/// error. A named pipe is opened for reading too, so that opening it does
/// not wait for a reader (as Firecracker does).
pub fn redirect_stderr(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display())))?;
    // SAFETY: dup2 on two valid descriptors: `file`'s, open for the whole
    // call, and 2. It atomically replaces descriptor 2, which Rust's
    // standard error writes to by number, so nothing holds a stale copy.
    let rc = unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
