//! cgroup v1 memory cgroups for the OOM scenario: find this process's own
//! memory cgroup, make a child with a limit, poll its counters cheaply,
//! and remove it (killing, by pid, whatever is still in it) on drop.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// This process's memory cgroup directory, when the memory controller is
/// a cgroup v1 hierarchy here (the scenario needs v1: `memory.failcnt`,
/// `memory.oom_control`); found the way the daemon finds its own.
pub fn own_memcg_v1() -> anyhow::Result<PathBuf> {
    use vmm::host::cgroup::{CgroupVersion, MemoryHierarchy};
    let own = MemoryHierarchy::of_self()?;
    if own.version() != CgroupVersion::V1 {
        bail!("the memory controller is not a cgroup v1 hierarchy here");
    }
    Ok(own.own().to_path_buf())
}

/// A memory cgroup directory this benchmark is responsible for: one it
/// made, or a daemon pool it wants to be sure is gone. On drop, every
/// process still in it is SIGKILLed by pid (only the benchmark's own VMMs,
/// or its daemon's, are ever placed there) and the directory removed.
pub struct CgroupDir {
    pub dir: PathBuf,
}

impl CgroupDir {
    /// Creates `dir` with a hard limit of `limit` bytes and the kernel's
    /// OOM killer on (`oom_kill_disable 0`), as a plain memory cgroup is.
    pub fn create(dir: &Path, limit: u64) -> anyhow::Result<CgroupDir> {
        fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let cg = CgroupDir {
            dir: dir.to_path_buf(),
        };
        write(&dir.join("memory.limit_in_bytes"), &limit.to_string())?;
        write(&dir.join("memory.oom_control"), "0")?;
        let oom = fs::read_to_string(dir.join("memory.oom_control"))?;
        if keyed(&oom, "oom_kill_disable") != Some(0) {
            bail!(
                "{}: the kernel's OOM killer is still off: {oom:?}",
                dir.display()
            );
        }
        Ok(cg)
    }

    /// Guards a directory someone else (the daemon) creates.
    pub fn guard(dir: &Path) -> CgroupDir {
        CgroupDir {
            dir: dir.to_path_buf(),
        }
    }

    /// `cgroup.procs`, open for writing: a child writes `0` to it between
    /// fork and exec to join before it allocates anything.
    pub fn open_procs(&self) -> anyhow::Result<File> {
        let path = self.dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for pid in self.pids() {
                // SAFETY: kill(2) of a pid read from a cgroup only the
                // benchmark's own VMMs (or its daemon's) are placed in.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) if Instant::now() >= deadline => {
                    eprintln!(
                        "vmm-bench: cannot remove memory cgroup {}: {e}",
                        self.dir.display()
                    );
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {text:?} to {}", path.display()))
}

/// The value of `key` in a `key value` per line file (`memory.oom_control`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// One look at a memory cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgSample {
    /// `memory.failcnt`: charges refused at the limit.
    pub failcnt: u64,
    pub usage: u64,
    /// `memory.limit_in_bytes` (the daemon raises it while it lends).
    pub limit: u64,
    /// `memory.oom_control` `oom_kill`: the kernel's OOM kills in it.
    pub oom_kill: u64,
    pub under_oom: bool,
}

/// The counters of a memory cgroup, kept open and read with `pread` at
/// offset 0 (a few µs each), so that polling every few ms costs little.
pub struct MemcgFiles {
    dir: PathBuf,
    failcnt: File,
    usage: File,
    limit: File,
    oom_control: File,
}

impl MemcgFiles {
    pub fn open(dir: &Path) -> anyhow::Result<MemcgFiles> {
        let open = |n: &str| {
            File::open(dir.join(n)).with_context(|| format!("cannot open {}/{n}", dir.display()))
        };
        Ok(MemcgFiles {
            dir: dir.to_path_buf(),
            failcnt: open("memory.failcnt")?,
            usage: open("memory.usage_in_bytes")?,
            limit: open("memory.limit_in_bytes")?,
            oom_control: open("memory.oom_control")?,
        })
    }

    pub fn read(&self) -> anyhow::Result<MemcgSample> {
        let number = |f: &File, name: &str| -> anyhow::Result<u64> {
            let text = read_small(f)?;
            text.trim()
                .parse()
                .with_context(|| format!("{}/{name}: not a number: {text:?}", self.dir.display()))
        };
        let oom = read_small(&self.oom_control)?;
        Ok(MemcgSample {
            failcnt: number(&self.failcnt, "memory.failcnt")?,
            usage: number(&self.usage, "memory.usage_in_bytes")?,
            limit: number(&self.limit, "memory.limit_in_bytes")?,
            oom_kill: keyed(&oom, "oom_kill").unwrap_or(0),
            under_oom: keyed(&oom, "under_oom").unwrap_or(0) != 0,
        })
    }
}

fn read_small(f: &File) -> anyhow::Result<String> {
    let mut buf = [0u8; 512];
    let n = f.read_at(&mut buf, 0).context("reading a cgroup file")?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oom_control_fields() {
        let t = "oom_kill_disable 1\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(t, "oom_kill"), Some(3));
        assert_eq!(keyed(t, "oom_kill_disable"), Some(1));
        assert_eq!(keyed(t, "missing"), None);
    }
}
