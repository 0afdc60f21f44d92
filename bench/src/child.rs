//! A VMM process under measurement: spawned with its stdout on a pipe, its
//! serial lines time-stamped as they arrive, and always killed and reaped.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

/// What the stdout reader saw, with the instant it saw it.
enum Event {
    Line(Instant, String),
    Eof,
    Error(std::io::Error),
}

/// A spawned VMM (ours or QEMU). Dropping it kills (SIGKILL) and reaps the
/// process if that has not happened yet, so no run leaves a process behind.
pub struct Guest {
    label: String,
    child: Child,
    pidfd: OwnedFd,
    events: Receiver<Event>,
    reader: Option<JoinHandle<()>>,
    stderr_path: PathBuf,
    /// Every line read so far, with the instant the reader got it.
    seen: Vec<(Instant, String)>,
    reaped: bool,
}

impl Guest {
    /// Spawns `cmd` with stdin from /dev/null, stdout on a pipe and stderr
    /// into `stderr_path`. Returns the instant taken right before
    /// `Command::spawn`, from which start-up is measured.
    pub fn spawn(
        label: &str,
        cmd: &mut Command,
        stderr_path: &Path,
    ) -> anyhow::Result<(Instant, Guest)> {
        let stderr = File::create(stderr_path)
            .with_context(|| format!("cannot create {}", stderr_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        let t0 = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {label} ({:?})", cmd.get_program()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let pidfd = match pidfd_open(child.id()) {
            Ok(fd) => fd,
            Err(e) => {
                kill_and_reap(&mut child);
                return Err(e).context("pidfd_open");
            }
        };
        let (tx, events) = mpsc::channel();
        let reader = std::thread::Builder::new()
            .name("stdout-reader".into())
            .spawn(move || read_lines(stdout, tx))
            .context("cannot start the stdout reader thread")?;
        Ok((
            t0,
            Guest {
                label: label.to_string(),
                child,
                pidfd,
                events,
                reader: Some(reader),
                stderr_path: stderr_path.to_path_buf(),
                seen: Vec::new(),
                reaped: false,
            },
        ))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the first line that starts with `prefix` and returns the
    /// instant the reader got it. Earlier lines are kept (see [`Guest::lines`]).
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> anyhow::Result<Instant> {
        self.wait_line_text(prefix, timeout).map(|(at, _)| at)
    }

    /// Like [`Guest::wait_line`], with the line itself. Only lines not seen
    /// by an earlier wait are considered.
    pub fn wait_line_text(
        &mut self,
        prefix: &str,
        timeout: Duration,
    ) -> anyhow::Result<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(Event::Line(at, line)) => {
                    let hit = line.starts_with(prefix);
                    self.seen.push((at, line.clone()));
                    if hit {
                        return Ok((at, line));
                    }
                }
                Ok(Event::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    let status = self.reap_now();
                    bail!(
                        "{} ended (status {status}) before printing '{prefix}'{}",
                        self.label,
                        self.diagnostics()
                    );
                }
                Ok(Event::Error(e)) => {
                    bail!(
                        "reading the output of {}: {e}{}",
                        self.label,
                        self.diagnostics()
                    )
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "{} printed no '{prefix}' within {timeout:?}{}",
                    self.label,
                    self.diagnostics()
                ),
            }
        }
    }

    /// Waits for the process to exit on its own and reaps it; returns the
    /// instant of the reap and the exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<(Instant, ExitStatus)> {
        let mut pfd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n > 0 {
                break;
            }
            if n == 0 {
                bail!(
                    "{} did not exit within {timeout:?}{}",
                    self.label,
                    self.diagnostics()
                );
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).context("poll on a pidfd");
            }
        }
        let status = self.child.wait().context("waitpid")?;
        let at = Instant::now();
        self.reaped = true;
        Ok((at, status))
    }

    /// SIGKILL by pid, then reap.
    pub fn kill(&mut self) {
        if !self.reaped {
            kill_and_reap(&mut self.child);
            self.reaped = true;
        }
    }

    fn reap_now(&mut self) -> String {
        // The output ended: the process is exiting. Give it a moment, then
        // make sure it is gone.
        match self.wait_exit(Duration::from_secs(5)) {
            Ok((_, status)) => status.to_string(),
            Err(_) => {
                self.kill();
                "killed".to_string()
            }
        }
    }

    /// The output seen so far and the process's stderr, for error messages.
    fn diagnostics(&self) -> String {
        let mut s = String::new();
        if !self.seen.is_empty() {
            s.push_str("\n  stdout:\n");
            for (_, line) in &self.seen {
                s.push_str("    ");
                s.push_str(line);
                s.push('\n');
            }
        }
        let mut err = String::new();
        if let Ok(mut f) = File::open(&self.stderr_path) {
            let _ = f.read_to_string(&mut err);
        }
        let err = err.trim();
        if !err.is_empty() {
            s.push_str("\n  stderr:\n");
            for line in err.lines().take(40) {
                s.push_str("    ");
                s.push_str(line);
                s.push('\n');
            }
        }
        s
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
        if let Some(reader) = self.reader.take() {
            // The pipe's write end died with the process: the reader ends.
            let _ = reader.join();
        }
    }
}

fn read_lines(stdout: impl Read, tx: mpsc::Sender<Event>) {
    let mut reader = BufReader::new(stdout);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => {
                let _ = tx.send(Event::Eof);
                return;
            }
            Ok(_) => {
                let at = Instant::now();
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                if tx.send(Event::Line(at, line)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = tx.send(Event::Error(e));
                return;
            }
        }
    }
}

fn kill_and_reap(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // The child is not reaped yet, so its pid cannot have been reused.
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = child.wait();
}

pub(crate) fn pidfd_open(pid: u32) -> anyhow::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(anyhow!(std::io::Error::last_os_error()));
    }
    // SAFETY: the kernel just gave us this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
