//! The process's log: `log`'s macros, written to standard error one line
//! at a time, as `<prefix>: <message>` (`vmm`, `vmm daemon`, `vmm ctl`).
//!
//! It never allocates and never fails: a line is formatted into a buffer
//! on the stack and written with one `write(2)` to fd 2, whose result is
//! ignored. That matters on the paths it serves: a VMM whose memory
//! cgroup is at its limit cannot count on an allocation, and `eprintln!`
//! panics when stderr fails (e.g. `ENOMEM` on a tmpfs in the same cgroup),
//! which would take the VM down for a message. A line longer than the
//! buffer is cut.
//!
//! `PUT /logger` and `vmm run --log-path` send it to a file or named pipe
//! from then on ([`redirect_stderr`]).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;

/// The longest line written, in bytes.
const LINE_MAX: usize = 1024;

/// The logger; its prefix is set once, by [`init`].
struct StderrLogger {
    prefix: OnceLock<&'static str>,
}

static LOGGER: StderrLogger = StderrLogger {
    prefix: OnceLock::new(),
};

/// Sends `log`'s records to standard error as `<prefix>: <message>`, at
/// `Info` and above (`VMM_LOG=debug` or `trace` for more, `warn` or
/// `error` for less). Later calls change nothing.
pub fn init(prefix: &'static str) {
    if LOGGER.prefix.set(prefix).is_err() {
        return;
    }
    let level = match std::env::var("VMM_LOG").as_deref() {
        Ok("trace") => log::LevelFilter::Trace,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        Ok("error") => log::LevelFilter::Error,
        Ok("off") => log::LevelFilter::Off,
        _ => log::LevelFilter::Info,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = LineBuf::new();
        let prefix = self.prefix.get().copied().unwrap_or("vmm");
        let _ = match record.level() {
            // Debug lines say where they come from; the others are for
            // operators and read as sentences.
            log::Level::Debug | log::Level::Trace => {
                writeln!(line, "{prefix}: {}: {}", record.target(), record.args())
            }
            _ => writeln!(line, "{prefix}: {}", record.args()),
        };
        line.emit();
    }

    fn flush(&self) {}
}

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
    // standard error and this logger write to by number, so nothing holds
    // a stale copy.
    let rc = unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A line on the stack; longer text is cut, and the last byte kept for
/// the newline.
pub struct LineBuf {
    bytes: [u8; LINE_MAX],
    len: usize,
}

impl LineBuf {
    pub fn new() -> Self {
        LineBuf {
            bytes: [0; LINE_MAX],
            len: 0,
        }
    }

    /// The line as it is written: a line that was cut still ends with a
    /// newline.
    pub fn finish(&mut self) -> &[u8] {
        if self.len == LINE_MAX && self.bytes[LINE_MAX - 1] != b'\n' {
            self.bytes[LINE_MAX - 1] = b'\n';
        }
        &self.bytes[..self.len]
    }

    /// One `write(2)` of [`LineBuf::finish`] to fd 2; the result is
    /// ignored on purpose.
    pub fn emit(&mut self) {
        let bytes = self.finish();
        // SAFETY: writes `bytes.len()` initialised bytes of our own buffer.
        let _ = unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
    }
}

impl Default for LineBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(LINE_MAX - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_and_still_ends_a_line() {
        let mut line = LineBuf::new();
        let _ = writeln!(line, "{}", "x".repeat(LINE_MAX * 2));
        let out = line.finish();
        assert_eq!(out.len(), LINE_MAX);
        assert_eq!(&out[LINE_MAX - 2..], b"x\n");
        let mut short = LineBuf::new();
        let _ = writeln!(short, "vmm: {}", 42);
        assert_eq!(short.finish(), b"vmm: 42\n");
    }
}
