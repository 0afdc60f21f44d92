//! Monitor, host side: how much memory the host has and how many OOM kills
//! its kernel has done — `/proc/meminfo` and `/proc/vmstat`.
//!
//! Everything is read through a [`ProcFs`] root so that tests can point it
//! at a fixture tree; the live host is [`ProcFs::host`]. Memory pressure
//! (PSI) is in [`super::psi`].

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why a host file could not be used. Every variant names the file, so an
/// operator can look at it.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: no `{field}` line (is this a Linux procfs file? `{field}` exists since {since})"
    )]
    MissingField {
        path: PathBuf,
        field: &'static str,
        since: &'static str,
    },
    #[error("{path}: line {line}: {reason}: {text:?}")]
    Malformed {
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        text: String,
        reason: &'static str,
    },
}

/// The size of a base page, as the running kernel uses it (`PAGE_SIZE`):
/// the unit of every count the OOM killer works with.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // sysconf cannot fail for _SC_PAGESIZE on Linux; 4 KiB is the fallback
    // only so that this function stays total.
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// A procfs mount: `/proc` on the live host, a fixture directory in tests.
///
/// Invariant: `root` is only ever joined with relative kernel file names
/// (`meminfo`, `pressure/memory`, ...), never with user input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcFs {
    root: PathBuf,
}

impl ProcFs {
    /// The host's own `/proc`.
    pub fn host() -> Self {
        Self::at("/proc")
    }

    /// A procfs-shaped tree at `root` (tests use fixture trees).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        ProcFs { root: root.into() }
    }

    /// The path of a kernel file below this root, e.g. `path("meminfo")`.
    pub fn path(&self, file: &str) -> PathBuf {
        self.root.join(file)
    }

    /// Reads a file below this root.
    pub fn read(&self, file: &str) -> Result<(PathBuf, String), HostError> {
        read_file(&self.path(file))
    }

    /// `/proc/meminfo`.
    pub fn meminfo(&self) -> Result<Meminfo, HostError> {
        let (path, text) = self.read("meminfo")?;
        Meminfo::parse(&text, &path)
    }

    /// The kernel's OOM kill counter, `oom_kill` in `/proc/vmstat`.
    pub fn oom_kill_count(&self) -> Result<u64, HostError> {
        let (path, text) = self.read("vmstat")?;
        oom_kill_count(&text, &path)
    }
}

pub(crate) fn read_file(path: &Path) -> Result<(PathBuf, String), HostError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok((path.to_path_buf(), text)),
        Err(source) => Err(HostError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The host-wide memory figures the OOM manager needs, in bytes.
///
/// `MemTotal` is `totalram_pages()` (pages the buddy allocator manages:
/// physical RAM minus what firmware and the kernel reserved at boot), and
/// `SwapTotal` is `total_swap_pages` (plus, only while a `swapoff` runs,
/// the pages it has still to bring back). Both are printed in kB, so both
/// are exact multiples of the page size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meminfo {
    pub mem_total: u64,
    pub mem_free: u64,
    /// The kernel's estimate of what can be allocated without swapping.
    pub mem_available: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl Meminfo {
    /// Parses the text of `/proc/meminfo`; `path` only labels errors.
    ///
    /// The five fields must be present and well formed; other lines are
    /// not looked at (their set changes with every kernel config).
    pub fn parse(text: &str, path: &Path) -> Result<Self, HostError> {
        let field = |name: &'static str, since: &'static str| {
            kib_line(text, path, name)?.ok_or_else(|| HostError::MissingField {
                path: path.to_path_buf(),
                field: name,
                since,
            })
        };
        Ok(Meminfo {
            mem_total: field("MemTotal", "Linux 2.6")?,
            mem_free: field("MemFree", "Linux 2.6")?,
            mem_available: field("MemAvailable", "Linux 3.14")?,
            swap_total: field("SwapTotal", "Linux 2.6")?,
            swap_free: field("SwapFree", "Linux 2.6")?,
        })
    }

    /// `totalram_pages() + total_swap_pages`: the `totalpages` of an
    /// unconstrained OOM and the denominator of `/proc/<pid>/oom_score`.
    pub fn totalpages(&self, page_size: u64) -> u64 {
        self.mem_total / page_size + self.swap_total / page_size
    }
}

/// One NUMA node's memory, from `/sys/devices/system/node/node<N>/meminfo`
/// (lines like `Node 1 MemFree:  123 kB`), in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeMeminfo {
    pub mem_total: u64,
    pub mem_free: u64,
    pub active_file: u64,
    pub inactive_file: u64,
    pub s_reclaimable: u64,
}

impl NodeMeminfo {
    /// Reads node `node`'s meminfo below `sys_node`
    /// (`/sys/devices/system/node`, or a fixture tree).
    pub fn read(sys_node: &Path, node: u32) -> Result<Self, HostError> {
        let (path, text) = read_file(&sys_node.join(format!("node{node}/meminfo")))?;
        Self::parse(&text, &path, node)
    }

    /// Parses the text of node `node`'s meminfo; `path` labels errors.
    pub fn parse(text: &str, path: &Path, node: u32) -> Result<Self, HostError> {
        let prefix = format!("Node {node} ");
        // Without the prefix the lines read like /proc/meminfo's; line
        // numbers stay the same for errors.
        let text: String = text
            .lines()
            .map(|l| l.strip_prefix(&prefix).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let field = |name: &'static str| {
            kib_line(&text, path, name)?.ok_or_else(|| HostError::MissingField {
                path: path.to_path_buf(),
                field: name,
                since: "Linux 2.6.27",
            })
        };
        Ok(NodeMeminfo {
            mem_total: field("MemTotal")?,
            mem_free: field("MemFree")?,
            active_file: field("Active(file)")?,
            inactive_file: field("Inactive(file)")?,
            s_reclaimable: field("SReclaimable")?,
        })
    }

    /// What could be allocated on the node without swapping, estimated as
    /// `si_mem_available()` does for the host, less its watermark terms
    /// (per-node meminfo has none): free pages, plus half the file pages
    /// and half the reclaimable slab. Conservative: the kernel counts
    /// more of the page cache when it is large.
    pub fn available(&self) -> u64 {
        self.mem_free + (self.active_file + self.inactive_file) / 2 + self.s_reclaimable / 2
    }
}

/// Finds `name:   <n> kB` and returns `n` in bytes; `Ok(None)` when absent.
fn kib_line(text: &str, path: &Path, name: &str) -> Result<Option<u64>, HostError> {
    for (i, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        let malformed = |reason| HostError::Malformed {
            path: path.to_path_buf(),
            line: i + 1,
            text: line.to_string(),
            reason,
        };
        let number = rest
            .trim()
            .strip_suffix("kB")
            .ok_or_else(|| malformed("expected a value in kB"))?;
        let kib: u64 = number
            .trim()
            .parse()
            .map_err(|_| malformed("not a whole number of kB"))?;
        return kib
            .checked_mul(1024)
            .map(Some)
            .ok_or_else(|| malformed("value overflows 64 bits"));
    }
    Ok(None)
}

/// The `oom_kill` line of `/proc/vmstat`: kills by the kernel's OOM killer
/// since boot, global and memcg alike (Linux 4.13+). A rise while the
/// daemon runs means the kernel acted before we did.
pub fn oom_kill_count(vmstat: &str, path: &Path) -> Result<u64, HostError> {
    for (i, line) in vmstat.lines().enumerate() {
        let mut words = line.split_whitespace();
        if words.next() != Some("oom_kill") {
            continue;
        }
        return words
            .next()
            .filter(|_| words.next().is_none())
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| HostError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                text: line.to_string(),
                reason: "expected `oom_kill <count>`",
            });
    }
    Err(HostError::MissingField {
        path: path.to_path_buf(),
        field: "oom_kill",
        since: "Linux 4.13",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> ProcFs {
        ProcFs::at(format!(
            "{}/tests/fixtures/oom/{name}/proc",
            env!("CARGO_MANIFEST_DIR")
        ))
    }

    #[test]
    fn node_meminfo_is_read_per_node_with_its_prefix() {
        let sys = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/oom/two-node/sys/devices/system/node"
        ));
        let n1 = NodeMeminfo::read(sys, 1).unwrap();
        assert_eq!(n1.mem_total, 32_768_000 << 10);
        assert_eq!(n1.mem_free, 300_000 << 10);
        // 300000 + 400000 / 2 + 100000 / 2 kB.
        assert_eq!(n1.available(), 550_000 << 10);
        // This machine's node 0, for real.
        let here = NodeMeminfo::read(Path::new("/sys/devices/system/node"), 0).unwrap();
        assert!(
            here.mem_total > 0 && here.mem_free <= here.mem_total,
            "{here:?}"
        );
        // Another node's lines are not this node's.
        let e = NodeMeminfo::read(sys, 0)
            .and_then(|_| {
                NodeMeminfo::parse("Node 1 MemTotal: 1 kB\n", Path::new("node0/meminfo"), 0)
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `MemTotal` line"), "{e}");
        assert!(NodeMeminfo::read(sys, 7).is_err());
    }

    #[test]
    fn meminfo_of_a_host_without_swap() {
        // A verbatim copy of this development machine's /proc/meminfo.
        let m = fixture("one-node").meminfo().unwrap();
        assert_eq!(m.mem_total, 24_682_416 << 10);
        assert_eq!(m.mem_available, 23_859_648 << 10);
        assert_eq!((m.swap_total, m.swap_free), (0, 0));
        // MemTotal is totalram_pages() in kB: 24682416 kB / 4 kB.
        assert_eq!(m.totalpages(4096), 6_170_604);
    }

    #[test]
    fn meminfo_with_swap_counts_swap_pages_too() {
        let m = fixture("two-node").meminfo().unwrap();
        assert_eq!(m.mem_total, 65_536_000 << 10);
        assert_eq!(m.swap_total, 8_388_604 << 10);
        // 16384000 RAM pages + 2097151 swap pages.
        assert_eq!(m.totalpages(4096), 16_384_000 + 2_097_151);
    }

    #[test]
    fn meminfo_errors_name_the_file_and_the_line() {
        let p = Path::new("/proc/meminfo");
        let e = Meminfo::parse("MemTotal: 100 kB\nMemFree: 1 kB\n", p).unwrap_err();
        assert!(
            e.to_string().contains("no `MemAvailable` line") && e.to_string().contains("3.14"),
            "{e}"
        );
        let text = "MemTotal: 100 kB\nMemFree: lots kB\n";
        let e = Meminfo::parse(text, p).unwrap_err().to_string();
        assert_eq!(
            e,
            "/proc/meminfo: line 2: not a whole number of kB: \"MemFree: lots kB\""
        );
        let e = Meminfo::parse("MemTotal: 100 MB\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected a value in kB"), "{e}");
        let e = Meminfo::parse("MemTotal: 99999999999999999 kB\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("overflows"), "{e}");
        // A name that merely starts like a wanted one is not it.
        let e = Meminfo::parse("MemTotalX: 1 kB\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `MemTotal` line"), "{e}");
        let e = fixture("missing").meminfo().unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("missing/proc/meminfo"),
            "{e}"
        );
    }

    #[test]
    fn vmstat_oom_kill() {
        assert_eq!(fixture("two-node").oom_kill_count().unwrap(), 3);
        let p = Path::new("/proc/vmstat");
        assert_eq!(oom_kill_count("pgfault 9\noom_kill 0\n", p).unwrap(), 0);
        let e = oom_kill_count("pgfault 9\n", p).unwrap_err().to_string();
        assert!(
            e.contains("no `oom_kill` line") && e.contains("4.13"),
            "{e}"
        );
        let e = oom_kill_count("oom_kill many\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: expected `oom_kill <count>`"), "{e}");
        // Not to be confused with its neighbours.
        assert!(oom_kill_count("oom_kill_x 1\n", p).is_err());
    }

    #[test]
    fn the_live_host_reads_cleanly() {
        let host = ProcFs::host();
        let m = host.meminfo().unwrap();
        assert!(m.mem_total > 0 && m.mem_available <= m.mem_total);
        assert_eq!(m.mem_total % page_size(), 0);
        host.oom_kill_count().unwrap();
        assert!(page_size().is_power_of_two());
    }
}
