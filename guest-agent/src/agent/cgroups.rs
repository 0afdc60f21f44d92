//! cgroup v2 `memory.events` of the guest's memory cgroups.
//!
//! Frugal: the tree under the cgroup2 mount is walked (bounded in depth and
//! count; not at all when the root's `cgroup.controllers` lacks `memory`)
//! at start, every few minutes and when a kill names a cgroup not
//! watched yet; each watched cgroup's `memory.events` stays open, so
//! checking it is one `pread`. Checks run on the tick and right after a
//! kill; a cgroup is reported when its counters changed, and at first
//! sight when it has OOM history.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::protocol::{MemcgEvents, MAX_PATH};

use super::procfs::parse_memory_events;
use super::sys;

/// Cgroups watched at most.
pub const MAX_CGROUPS: usize = 64;
/// Levels below the root walked.
pub const MAX_DEPTH: usize = 4;

#[derive(Debug)]
struct Watched {
    /// `/`-rooted path below the mount.
    name: String,
    file: File,
    last: Option<MemcgEvents>,
}

#[derive(Debug)]
pub struct CgroupWatch {
    root: PathBuf,
    watched: Vec<Watched>,
}

impl CgroupWatch {
    pub fn new(root: PathBuf) -> Self {
        CgroupWatch {
            root,
            watched: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.watched.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// Whether `cgroup` (as the kernel prints it, `/a/b`) is watched.
    pub fn watches(&self, cgroup: &str) -> bool {
        self.watched.iter().any(|w| w.name == cgroup)
    }

    /// Walks the tree and starts watching cgroups not watched yet.
    /// Returns how many were added.
    pub fn rescan(&mut self) -> usize {
        // Not a cgroup2 mount, or one without the memory controller (a
        // kernel without CONFIG_MEMCG): nothing to walk.
        // (open + pread + close: read_to_string would add a statx.)
        let mut buf = [0u8; 256];
        let n = sys::open(&self.root.join("cgroup.controllers"), libc::O_RDONLY)
            .and_then(|f| sys::pread0(&f, &mut buf))
            .unwrap_or(0);
        if !buf[..n]
            .split(|b| b.is_ascii_whitespace())
            .any(|c| c == b"memory")
        {
            return 0;
        }
        let mut added = 0;
        // Breadth first, so that a big tree fills the budget with the top
        // levels, where pools and services are.
        let mut level: Vec<(PathBuf, String)> = vec![(self.root.clone(), String::new())];
        for _ in 0..MAX_DEPTH {
            let mut next = Vec::new();
            for (dir, name) in &level {
                let Ok(rd) = std::fs::read_dir(dir) else {
                    continue;
                };
                for ent in rd.flatten() {
                    if !ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        continue;
                    }
                    let child = format!("{}/{}", name, ent.file_name().to_string_lossy());
                    if child.len() > MAX_PATH {
                        continue;
                    }
                    next.push((ent.path(), child));
                }
            }
            for (dir, name) in &next {
                if self.watched.len() >= MAX_CGROUPS {
                    return added;
                }
                if self.watches(name) {
                    continue;
                }
                // Only cgroups with the memory controller have the file.
                if let Ok(file) = sys::open(&dir.join("memory.events"), libc::O_RDONLY) {
                    self.watched.push(Watched {
                        name: name.clone(),
                        file,
                        last: None,
                    });
                    added += 1;
                }
            }
            if next.is_empty() {
                break;
            }
            level = next;
        }
        added
    }

    /// Reads every watched cgroup's counters; reports what changed.
    /// Cgroups that went away are forgotten.
    pub fn check(&mut self, buf: &mut [u8], out: &mut dyn FnMut(MemcgEvents)) {
        self.watched.retain_mut(|w| {
            let n = match sys::pread0(&w.file, buf) {
                Ok(n) => n,
                // ENODEV: the cgroup was removed.
                Err(_) => return false,
            };
            let Some(mut ev) = parse_memory_events(&buf[..n]) else {
                return true;
            };
            ev.cgroup.clone_from(&w.name);
            let report = match &w.last {
                None => ev.oom > 0 || ev.oom_kill > 0 || ev.oom_group_kill > 0,
                Some(last) => *last != ev,
            };
            if report {
                out(ev.clone());
            }
            w.last = Some(ev);
            true
        });
    }

    /// The root this watch walks.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("guest-agent-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn events(dir: &Path, oom: u64, kill: u64) {
        std::fs::write(
            dir.join("memory.events"),
            format!("low 0\nhigh 0\nmax 5\noom {oom}\noom_kill {kill}\noom_group_kill 0\n"),
        )
        .unwrap();
    }

    #[test]
    fn watches_and_reports_changes() {
        let root = tmpdir("watch");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("quiet")).unwrap();
        std::fs::create_dir_all(root.join("nomem")).unwrap();
        let mut w = CgroupWatch::new(root.clone());
        assert_eq!(w.rescan(), 0, "no cgroup.controllers: not cgroup2");
        std::fs::write(root.join("cgroup.controllers"), "cpu io pids\n").unwrap();
        assert_eq!(w.rescan(), 0, "no memory controller");
        std::fs::write(root.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        events(&root.join("a"), 0, 0);
        events(&root.join("a/b"), 1, 1);
        events(&root.join("quiet"), 0, 0);
        assert_eq!(w.rescan(), 3);
        assert!(w.watches("/a/b"));
        assert!(!w.watches("/nomem"));
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        w.check(&mut buf, &mut |e| got.push(e));
        // First sight: only the cgroup with OOM history.
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].cgroup.as_str(), got[0].oom_kill), ("/a/b", 1));
        got.clear();
        w.check(&mut buf, &mut |e| got.push(e));
        assert!(got.is_empty());
        events(&root.join("quiet"), 1, 1);
        w.check(&mut buf, &mut |e| got.push(e));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].cgroup, "/quiet");
        // Rescan adds nothing twice.
        assert_eq!(w.rescan(), 0);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
