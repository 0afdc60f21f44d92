//! One daemon per state directory: an exclusive `flock` on
//! `<state-dir>/daemon.lock`, held for the daemon's life.
//!
//! Two daemons on one state directory would append to the same event log
//! with colliding `seq`s, and each would take the other's VMs' sockets and
//! files for its own. `flock` (not a pid file alone) because the kernel
//! drops the lock when the holder dies however it dies, `kill -9`
//! included, so a crashed daemon never blocks its successor. The holder's
//! pid is written into the file only to name it in the refusal.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why the state directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum StateLockError {
    #[error("another vmm daemon{holder} already uses the state directory {dir}: stop it first, or give this one its own --state-dir")]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock the state directory {dir}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock of `dir` (which must exist) without waiting.
    pub fn take(dir: &Path) -> Result<Self, StateLockError> {
        let io = |source| StateLockError::Io {
            dir: dir.into(),
            source,
        };
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join("daemon.lock"))
            .map_err(io)?;
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(StateLockError::Held {
                dir: dir.into(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("vmm-state-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = StateLock::take(&dir).unwrap();
        // flock locks belong to the open file description: a second open
        // in the same process conflicts just as another process would.
        let err = StateLock::take(&dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another vmm daemon (pid {}) already uses the state directory {}: stop it first, or give this one its own --state-dir",
                std::process::id(),
                dir.display()
            )
        );
        drop(first);
        StateLock::take(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
