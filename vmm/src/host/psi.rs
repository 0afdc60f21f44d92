//! Monitor, pressure side: PSI, the kernel's measure of how much time tasks
//! lose waiting for memory, and PSI *triggers*, which wake the daemon the
//! moment a stall threshold is crossed instead of at its next timer tick.
//!
//! `/proc/pressure/memory` and a cgroup v2 `memory.pressure` have the same
//! format and the same trigger interface; everything here takes either.
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! `some`: at least one task stalled on memory; `full`: all non-idle tasks
//! stalled at once. `avgN` are percentages of wall time over N seconds,
//! `total` is cumulative stall time in microseconds.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::procfs::{read_file, HostError, ProcFs};

/// Which PSI line: some tasks stalled, or all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    Some,
    Full,
}

impl Stall {
    fn as_str(self) -> &'static str {
        match self {
            Stall::Some => "some",
            Stall::Full => "full",
        }
    }
}

/// One line of a pressure file.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PressureLine {
    /// Percent of the last 10 s stalled (0.00..=100.00).
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Cumulative stall time since boot (or since the cgroup was created).
    pub total: Duration,
}

/// A whole pressure file.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pressure {
    pub some: PressureLine,
    /// Absent only in `/proc/pressure/cpu` before Linux 5.13; memory always
    /// has it.
    pub full: Option<PressureLine>,
}

impl Pressure {
    /// Reads a pressure file (`/proc/pressure/memory`, `memory.pressure`).
    pub fn read(path: &Path) -> Result<Self, HostError> {
        let (path, text) = read_file(path)?;
        Self::parse(&text, &path)
    }

    /// Parses the text of a pressure file; `path` only labels errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, HostError> {
        let mut some = None;
        let mut full = None;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let malformed = |reason| HostError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                text: line.to_string(),
                reason,
            };
            let mut words = line.split_whitespace();
            let slot = match words.next() {
                Some("some") => &mut some,
                Some("full") => &mut full,
                _ => return Err(malformed("expected a `some` or `full` line")),
            };
            let mut value = |key: &str| {
                words
                    .next()
                    .and_then(|w| w.strip_prefix(key))
                    .and_then(|w| w.strip_prefix('='))
                    .ok_or_else(|| malformed("expected avg10= avg60= avg300= total="))
            };
            let avg = |s: &str| {
                s.parse::<f64>()
                    .ok()
                    .filter(|a| (0.0..=100.0).contains(a))
                    .ok_or_else(|| malformed("an average is not a percentage"))
            };
            let parsed = PressureLine {
                avg10: avg(value("avg10")?)?,
                avg60: avg(value("avg60")?)?,
                avg300: avg(value("avg300")?)?,
                total: value("total")?
                    .parse()
                    .map(Duration::from_micros)
                    .map_err(|_| malformed("total is not a whole number of µs"))?,
            };
            if slot.replace(parsed).is_some() {
                return Err(malformed("line repeated"));
            }
        }
        Ok(Pressure {
            some: some.ok_or_else(|| HostError::MissingField {
                path: path.to_path_buf(),
                field: "some",
                since: "Linux 4.20 with CONFIG_PSI (and psi=1 where it defaults off)",
            })?,
            full,
        })
    }
}

impl ProcFs {
    /// `/proc/pressure/memory`.
    pub fn memory_pressure(&self) -> Result<Pressure, HostError> {
        Pressure::read(&self.path("pressure/memory"))
    }
}

/// A PSI trigger: "wake me when tasks stall on memory for `threshold` within
/// any `window`".
///
/// The kernel's rules (`psi_trigger_create`): `window` from 500 ms to 10 s,
/// `0 < threshold <= window`; and since Linux 6.5, a process without
/// `CAP_SYS_RESOURCE` may only use windows that are whole multiples of 2 s
/// (its triggers ride on the 2 s averaging work, so they also fire up to
/// 2 s later than a privileged one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TriggerSpec {
    pub stall: Stall,
    pub threshold: Duration,
    pub window: Duration,
}

const WINDOW_MIN: Duration = Duration::from_millis(500);
const WINDOW_MAX: Duration = Duration::from_secs(10);
const UNPRIVILEGED_WINDOW_UNIT: Duration = Duration::from_secs(2);

impl TriggerSpec {
    /// Checks the kernel's rules here, so a bad spec fails with a reason
    /// rather than the kernel's bare EINVAL.
    pub fn validate(&self) -> Result<(), PsiError> {
        let bad = |reason: &str| Err(PsiError::BadSpec(format!("{self}: {reason}")));
        if !(WINDOW_MIN..=WINDOW_MAX).contains(&self.window) {
            return bad("the window must be between 500 ms and 10 s");
        }
        if self.threshold.is_zero() || self.threshold > self.window {
            return bad("the stall threshold must be above zero and at most the window");
        }
        Ok(())
    }

    /// The nearest spec an unprivileged process may use: the window rounded
    /// up to a multiple of 2 s (at most 10 s), the threshold scaled with it
    /// so the stall *fraction* that fires stays the same.
    pub fn unprivileged(&self) -> TriggerSpec {
        let unit = UNPRIVILEGED_WINDOW_UNIT.as_micros();
        let w = self.window.as_micros();
        let window_us = (w.div_ceil(unit) * unit).clamp(unit, WINDOW_MAX.as_micros());
        let threshold_us = (self.threshold.as_micros() * window_us / w.max(1)).min(window_us);
        TriggerSpec {
            stall: self.stall,
            threshold: Duration::from_micros(threshold_us as u64),
            window: Duration::from_micros(window_us as u64),
        }
    }

    fn is_unprivileged_shape(&self) -> bool {
        self.window.as_micros() % UNPRIVILEGED_WINDOW_UNIT.as_micros() == 0
    }
}

impl std::fmt::Display for TriggerSpec {
    /// The kernel's syntax: `some 150000 1000000` (µs).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.stall.as_str(),
            self.threshold.as_micros(),
            self.window.as_micros()
        )
    }
}

/// Why a trigger could not be set up or waited on.
#[derive(Debug, thiserror::Error)]
pub enum PsiError {
    #[error("invalid PSI trigger {0}")]
    BadSpec(String),
    #[error(
        "cannot open {path} for a PSI trigger: {source} (before Linux 6.5 only \
         CAP_SYS_RESOURCE may open it for writing)"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path} refused the trigger `{spec}`: {source} (without CAP_SYS_RESOURCE \
         the window must be a multiple of 2 s; EBUSY: this open file already has one)"
    )]
    Refused {
        path: PathBuf,
        spec: TriggerSpec,
        #[source]
        source: io::Error,
    },
    #[error("polling the PSI trigger on {path}: {source}")]
    Poll {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the PSI trigger on {path} is gone (POLLERR: its cgroup was removed, or PSI is off)")]
    Gone { path: PathBuf },
}

/// An armed PSI trigger: an open pressure file whose fd reports `POLLPRI`
/// each time the stall threshold is crossed (at most once per window;
/// polling consumes the event). Closing it (drop) disarms it.
///
/// Invariant: `file` was opened `O_RDWR | O_NONBLOCK | O_CLOEXEC` and the
/// kernel accepted `spec` on it; one trigger per open file.
#[derive(Debug)]
pub struct PsiTrigger {
    file: File,
    path: PathBuf,
    spec: TriggerSpec,
}

impl PsiTrigger {
    /// Arms `spec` on the pressure file at `path` exactly as given.
    pub fn open(path: impl Into<PathBuf>, spec: TriggerSpec) -> Result<Self, PsiError> {
        let path = path.into();
        spec.validate()?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| PsiError::Open {
                path: path.clone(),
                source,
            })?;
        // The kernel overwrites the last byte of what it is given with a
        // NUL (psi_write: `buf[buf_size - 1] = '\0'`), so the string must
        // carry its own terminator or it loses its last digit.
        let text = format!("{spec}\0");
        match file.write(text.as_bytes()) {
            Ok(n) if n == text.len() => Ok(PsiTrigger { file, path, spec }),
            Ok(_) => Err(PsiError::Refused {
                path,
                spec,
                source: io::Error::new(io::ErrorKind::WriteZero, "short write"),
            }),
            Err(source) => Err(PsiError::Refused { path, spec, source }),
        }
    }

    /// Arms `spec`, or — when the kernel refuses it because this process
    /// lacks `CAP_SYS_RESOURCE` — [`TriggerSpec::unprivileged`]`(spec)`.
    /// [`PsiTrigger::spec`] tells which one is armed.
    pub fn open_adapting(path: impl Into<PathBuf>, spec: TriggerSpec) -> Result<Self, PsiError> {
        let path = path.into();
        match Self::open(path.clone(), spec) {
            Err(PsiError::Refused { source, .. })
                if source.raw_os_error() == Some(libc::EINVAL) && !spec.is_unprivileged_shape() =>
            {
                Self::open(path, spec.unprivileged())
            }
            other => other,
        }
    }

    /// The spec the kernel accepted.
    pub fn spec(&self) -> TriggerSpec {
        self.spec
    }

    /// The pressure file this trigger watches.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fd to register with an event loop, for `POLLPRI` / `EPOLLPRI`
    /// (it is always "readable" in the `POLLIN` sense; only PRI means an
    /// event). `POLLERR` means the trigger is gone.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Blocks until the trigger fires (`Ok(true)`) or `timeout` passes
    /// (`Ok(false)`). Retries on `EINTR` with the time that is left.
    pub fn wait(&self, timeout: Duration) -> Result<bool, PsiError> {
        Ok(!Self::wait_any(&[self], timeout)?.is_empty())
    }

    /// Blocks until one or more of `triggers` fire, or `timeout` passes:
    /// the indices of those that fired, none on a timeout. One `poll(2)`
    /// over all of them, so the host's and every pool's trigger wake the
    /// same loop. Retries on `EINTR` with the time that is left.
    pub fn wait_any(triggers: &[&PsiTrigger], timeout: Duration) -> Result<Vec<usize>, PsiError> {
        let mut pfds: Vec<libc::pollfd> = triggers
            .iter()
            .map(|t| super::poll::pollfd(t.file.as_raw_fd(), libc::POLLPRI))
            .collect();
        super::poll::wait(&mut pfds, timeout).map_err(|source| PsiError::Poll {
            path: triggers
                .first()
                .map_or_else(PathBuf::new, |t| t.path.clone()),
            source,
        })?;
        if let Some(gone) = pfds.iter().position(super::poll::failed) {
            return Err(PsiError::Gone {
                path: triggers[gone].path.clone(),
            });
        }
        Ok((0..pfds.len())
            .filter(|&i| pfds[i].revents & libc::POLLPRI != 0)
            .collect())
    }
}

impl AsFd for PsiTrigger {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd()
    }
}

impl AsRawFd for PsiTrigger {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::testing::{Helper, Role, ScratchMemcg};
    use std::time::Instant;

    fn spec(stall: Stall, threshold_ms: u64, window_ms: u64) -> TriggerSpec {
        TriggerSpec {
            stall,
            threshold: Duration::from_millis(threshold_ms),
            window: Duration::from_millis(window_ms),
        }
    }

    #[test]
    fn parses_memory_pressure() {
        let p = Path::new("fixture");
        let text = "some avg10=1.44 avg60=0.26 avg300=0.05 total=279868\n\
                    full avg10=0.80 avg60=0.10 avg300=0.00 total=120000\n";
        let got = Pressure::parse(text, p).unwrap();
        assert_eq!(got.some.avg10, 1.44);
        assert_eq!(got.some.avg300, 0.05);
        assert_eq!(got.some.total, Duration::from_micros(279_868));
        assert_eq!(got.full.unwrap().total, Duration::from_millis(120));
        // cpu before 5.13: no full line.
        let cpu = Pressure::parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", p);
        assert_eq!(cpu.unwrap().full, None);
        let fixture = ProcFs::at(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/oom/two-node/proc"
        ));
        let got = fixture.memory_pressure().unwrap();
        assert_eq!(got.some.avg10, 12.5);
        assert_eq!(got.full.unwrap().avg60, 3.01);
    }

    #[test]
    fn pressure_garbage_is_refused_with_the_line() {
        let p = Path::new("/proc/pressure/memory");
        let cases = [
            ("", "no `some` line"),
            (
                "half avg10=0 avg60=0 avg300=0 total=0",
                "line 1: expected a `some` or `full`",
            ),
            (
                "some avg10=0.00 avg60=0.00 total=0",
                "expected avg10= avg60= avg300= total=",
            ),
            (
                "some avg10=101.00 avg60=0 avg300=0 total=0",
                "not a percentage",
            ),
            ("some avg10=x avg60=0 avg300=0 total=0", "not a percentage"),
            (
                "some avg10=0 avg60=0 avg300=0 total=-1",
                "total is not a whole number",
            ),
            (
                "some avg10=0 avg60=0 avg300=0 total=1\nsome avg10=0 avg60=0 avg300=0 total=2",
                "line 2: line repeated",
            ),
        ];
        for (text, want) in cases {
            let err = Pressure::parse(text, p).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains("/proc/pressure/memory"), "{err}");
        }
    }

    #[test]
    fn trigger_specs_follow_the_kernels_rules() {
        assert_eq!(
            spec(Stall::Some, 150, 1000).to_string(),
            "some 150000 1000000"
        );
        assert!(spec(Stall::Full, 100, 500).validate().is_ok());
        for bad in [
            spec(Stall::Some, 100, 400),
            spec(Stall::Some, 100, 10_001),
            spec(Stall::Some, 0, 1000),
            spec(Stall::Some, 1001, 1000),
        ] {
            let e = bad.validate().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid PSI trigger {bad}: ")),
                "{e}"
            );
        }
        // lmkd's 150 ms / 1 s becomes 300 ms / 2 s: the same 15 %.
        assert_eq!(
            spec(Stall::Some, 150, 1000).unprivileged(),
            spec(Stall::Some, 300, 2000)
        );
        let micros = |stall, t, w| TriggerSpec {
            stall,
            threshold: Duration::from_micros(t),
            window: Duration::from_micros(w),
        };
        assert_eq!(
            spec(Stall::Full, 700, 3000).unprivileged(),
            micros(Stall::Full, 933_333, 4_000_000)
        );
        assert_eq!(
            spec(Stall::Some, 500, 9000).unprivileged(),
            micros(Stall::Some, 555_555, 10_000_000)
        );
        assert_eq!(
            spec(Stall::Some, 100, 2000).unprivileged(),
            spec(Stall::Some, 100, 2000)
        );
        for s in [spec(Stall::Some, 1, 500), spec(Stall::Full, 10_000, 10_000)] {
            assert!(s.unprivileged().validate().is_ok(), "{s}");
        }
    }

    fn has_cap_sys_resource() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
            .unwrap();
        const CAP_SYS_RESOURCE: u32 = 24; // linux/capability.h
        eff & (1 << CAP_SYS_RESOURCE) != 0
    }

    /// A file next to the test binary: page cache that reclaim can drop.
    /// (Not the temp dir: on tmpfs, without swap, the pages could not be
    /// reclaimed and the scratch cgroup would hit its limit for good.)
    fn disk_backed_scratch_file(name: &str) -> std::path::PathBuf {
        let dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        // SAFETY: statfs is a plain C struct; all zeroes is valid.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path and a statfs buffer we own.
        assert_eq!(unsafe { libc::statfs(c.as_ptr(), &mut st) }, 0);
        assert_ne!(
            st.f_type,
            libc::TMPFS_MAGIC,
            "{} is tmpfs; the PSI test needs disk-backed page cache",
            dir.display()
        );
        dir.join(format!("vmm-oom-{name}-{}.bin", std::process::id()))
    }

    /// The trigger, for real, on this host's `/proc/pressure/memory`: armed,
    /// silent while nothing stalls, and woken by memory pressure that we
    /// make inside a small memory cgroup of our own (file pages thrashing
    /// against a 16 MiB limit: reclaim stalls, no OOM kill).
    #[test]
    fn trigger_fires_on_real_memory_pressure() {
        let path = ProcFs::host().path("pressure/memory");
        // The lmkd-style sub-2 s window: refused exactly when unprivileged.
        let fine = spec(Stall::Some, 150, 1000);
        match PsiTrigger::open(&path, fine) {
            Ok(t) => assert!(has_cap_sys_resource(), "armed {} without the cap", t.spec()),
            Err(PsiError::Refused { source, .. }) => {
                assert!(!has_cap_sys_resource(), "refused with the cap: {source}");
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
            }
            Err(e) => panic!("{e}"),
        }
        let adapted = PsiTrigger::open_adapting(&path, fine).unwrap();
        assert!(adapted.spec() == fine || adapted.spec() == fine.unprivileged());

        // One trigger per open file: the kernel says EBUSY to a second.
        let mut again = OpenOptions::new().write(true).open(&path).unwrap();
        again.write_all(b"some 100000 2000000\0").unwrap();
        let e = again.write(b"some 100000 2000000\0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBUSY));

        // A threshold that would need the whole machine stalled for 10 s
        // does not fire in 200 ms: wait() times out cleanly.
        let never = PsiTrigger::open(&path, spec(Stall::Full, 10_000, 10_000)).unwrap();
        let t0 = Instant::now();
        assert!(!never.wait(Duration::from_millis(200)).unwrap());
        assert!(t0.elapsed() >= Duration::from_millis(200));

        // 100 ms of `some` stall in 2 s (5 %): the thrash below makes 10-15 %.
        let trigger = PsiTrigger::open(&path, spec(Stall::Some, 100, 2000)).unwrap();
        let cg = ScratchMemcg::create("psi-trigger", 16 << 20);
        let file = disk_backed_scratch_file("psi-thrash");
        let thrash = Helper::spawn(Role::Thrash {
            procs: &cg.procs(),
            file: &file,
        });
        let t0 = Instant::now();
        // Polled together with the one that never fires: wait_any says
        // which one woke it.
        let woke = PsiTrigger::wait_any(&[&never, &trigger], Duration::from_secs(20)).unwrap();
        let waited = t0.elapsed();
        // Index 1 must be among those that woke it. (The 10 s full-stall
        // trigger has been seen to fire too on a loaded host, where the
        // thrash stalls everything: poll reports each ready one.)
        let fired = woke.contains(&1) && woke.iter().all(|&i| i < 2);
        drop(thrash);
        drop(cg);
        let _ = std::fs::remove_file(&file);
        let stalled = ProcFs::host().memory_pressure().unwrap();
        eprintln!(
            "PSI trigger `{}`: fired={fired} after {waited:?}; some avg10={} total={:?}",
            trigger.spec(),
            stalled.some.avg10,
            stalled.some.total
        );
        assert!(
            fired,
            "no PSI event of the right trigger in 20 s of thrashing: {woke:?}"
        );
    }
}
