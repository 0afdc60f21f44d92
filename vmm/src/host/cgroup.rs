//! Memory cgroups for pools of VMs, the cgroupfs side: find this process's
//! memory cgroup, create a child with a limit, read its usage and OOM
//! counters, remove it. A vCPU waits out a full cgroup with
//! [`super::charge_wait::ChargeWait`].
//!
//! The daemon places a pool of VMs in a child cgroup it creates below its
//! own (`<own>/vmm-<pool>`); the pool's limit is then enforced by the
//! kernel, and the daemon decides who gives way before the kernel does.
//!
//! | | cgroup v1 | cgroup v2 |
//! |---|---|---|
//! | limit | `memory.limit_in_bytes` | `memory.max` |
//! | usage | `memory.usage_in_bytes` | `memory.current` |
//! | charges refused at the limit | `memory.failcnt` | `memory.events` `max` |
//! | the kernel's OOM killer in the pool | **off**: `memory.oom_control` `oom_kill_disable 1`; a task that faults at the limit waits (`under_oom 1`) until memory is freed | stays on as the backstop (v2 has no switch); `memory.oom.group 0`, so it kills one process, not the pool |
//! | kills by the kernel's OOM killer | `memory.oom_control` `oom_kill` | `memory.events` `oom_kill` |
//!
//! Under cgroup v2 a cgroup whose children get the memory controller may
//! hold no processes itself (the root excepted). A daemon alone in its own
//! cgroup therefore moves itself into a leaf below it (`<own>/vmm-daemon`)
//! before enabling `+memory` in its own `cgroup.subtree_control`, and
//! undoes both when it removes its pools; with other processes in its
//! cgroup it refuses, saying so. Nothing ever leaves the daemon's own
//! subtree.
//!
//! Every path is joined from a root found in `/proc/self/mountinfo` (or
//! given by a test) and fixed names; pool names are checked by the caller.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Memory cgroup version, told apart by which limit file a directory has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupVersion {
    /// `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`.
    V1,
    /// `memory.max`, `memory.swap.max`.
    V2,
}

/// The nominal-limit file of a memory cgroup (see
/// [`PoolCgroup::configure`]).
pub(crate) fn nominal_file(version: CgroupVersion) -> &'static str {
    match version {
        CgroupVersion::V1 => "memory.soft_limit_in_bytes",
        CgroupVersion::V2 => "memory.high",
    }
}

/// A v1 limit at or above this is "no limit" (the kernel's
/// `PAGE_COUNTER_MAX` in bytes, rounded down to a 64 KiB page).
pub(crate) const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_0000;

/// Swap a memory cgroup must still be able to use for reclaim there to
/// count as a way out of its limit: below this, a refused charge is a
/// wait for memory, as on a host without swap.
pub const SWAP_ROOM: u64 = 4 << 20;

/// The files that say how much more a memory cgroup may swap: its
/// swappiness (v1 `memory.swappiness`; v2 has none and uses
/// `vm.swappiness`), and its swap usage and limit (v1
/// `memory.memsw.{usage,limit}_in_bytes`, memory + swap; v2
/// `memory.swap.{current,max}`, swap alone). Missing swap files mean swap
/// accounting is off: no limit.
pub(crate) fn swap_files(dir: &Path, version: CgroupVersion) -> [PathBuf; 3] {
    match version {
        CgroupVersion::V1 => [
            dir.join("memory.swappiness"),
            dir.join("memory.memsw.usage_in_bytes"),
            dir.join("memory.memsw.limit_in_bytes"),
        ],
        CgroupVersion::V2 => [
            PathBuf::from("/proc/sys/vm/swappiness"),
            dir.join("memory.swap.current"),
            dir.join("memory.swap.max"),
        ],
    }
}

/// Bytes reclaim in a memory cgroup could still push out to swap: 0 at
/// swappiness 0, else the host's free swap (`host_swap_free`), capped by
/// what the cgroup's own swap limit leaves (`swap_usage`, `swap_limit` as
/// [`swap_files`] holds them). Under v1 those count memory + swap, so what
/// they leave is the room for new charges that reclaim can make by
/// swapping (moving a page to swap does not change them). The one rule of
/// both the daemon ([`PoolCgroup::swap_room`]) and the VMM's vCPUs
/// ([`crate::vm::charge_wait`]).
pub(crate) fn swap_room_of(
    swappiness: u64,
    host_swap_free: u64,
    swap_usage: Option<u64>,
    swap_limit: Option<u64>,
) -> u64 {
    if swappiness == 0 {
        return 0;
    }
    let own = match (swap_usage, swap_limit) {
        (Some(u), Some(l)) => l.saturating_sub(u),
        _ => u64::MAX,
    };
    host_swap_free.min(own)
}

/// The host's free swap in bytes (`sysinfo(2)`: no file, no allocation).
pub fn host_swap_free() -> u64 {
    // SAFETY: sysinfo(2) fills the zeroed struct it is given.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to that struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return 0;
    }
    (info.freeswap as u64).saturating_mul(u64::from(info.mem_unit.max(1)))
}

/// The leaf the daemon moves itself into under cgroup v2 (see the module
/// documentation).
pub const V2_DAEMON_LEAF: &str = "vmm-daemon";

/// Why a pool's memory cgroup could not be found, made, read or removed.
/// Every variant names the path to look at.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot find this process's memory cgroup: {0}")]
    NotFound(String),
    #[error(
        "{dir}: the cgroup v2 memory controller is not available here \
         (cgroup.controllers: {controllers:?}); a memcg pool needs the memory \
         controller delegated to the daemon's cgroup (or a cgroup v1 memory \
         hierarchy, where it may be bound instead)"
    )]
    NoMemoryController { dir: PathBuf, controllers: String },
    #[error(
        "{path} is not writable ({source}); the daemon needs write access to \
         its own memory cgroup to create pools below it"
    )]
    NotWritable { path: PathBuf, source: io::Error },
    #[error(
        "{dir}: a limit of {limit} bytes is below the {usage} bytes already \
         charged there"
    )]
    LimitBelowUsage {
        dir: PathBuf,
        limit: u64,
        usage: u64,
    },
    #[error(
        "{dir} still holds processes {pids:?} (VMs of an earlier daemon?); \
         stop them or remove the cgroup"
    )]
    InUse { dir: PathBuf, pids: Vec<u32> },
    #[error(
        "{dir}: cgroup v2 lets no process stay in a cgroup whose children get \
         the memory controller, and processes other than this daemon are in \
         it ({pids:?}); start the daemon in a cgroup of its own"
    )]
    InternalProcesses { dir: PathBuf, pids: Vec<u32> },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: unexpected contents {text:?} ({reason})")]
    Malformed {
        path: PathBuf,
        text: String,
        reason: &'static str,
    },
}

fn io_err<'p>(what: &'static str, path: &'p Path) -> impl FnOnce(io::Error) -> CgroupError + 'p {
    move |source| match source.raw_os_error() {
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => CgroupError::NotWritable {
            path: path.to_path_buf(),
            source,
        },
        _ => CgroupError::Io {
            what,
            path: path.to_path_buf(),
            source,
        },
    }
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Io {
        what: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `value` to a cgroup file in one `write(2)`, as the kernel wants.
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(false)
        .open(path)
        .map_err(io_err("open", path))?;
    f.write_all(value.as_bytes()).map_err(io_err("write", path))
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    text.trim().parse().map_err(|_| CgroupError::Malformed {
        path: path.to_path_buf(),
        text: text.to_string(),
        reason: "expected a byte count",
    })
}

fn read_u64(path: &Path) -> Result<u64, CgroupError> {
    parse_u64(path, &read(path)?)
}

/// A limit file: `None` is no limit (v2 `max`, v1 `PAGE_COUNTER_MAX`).
fn read_limit(path: &Path) -> Result<Option<u64>, CgroupError> {
    let text = read(path)?;
    if text.trim() == "max" {
        return Ok(None);
    }
    let v = parse_u64(path, &text)?;
    Ok((v < V1_UNLIMITED).then_some(v))
}

/// `key value` lines (`memory.events`, `memory.oom_control`).
pub(crate) fn keyed(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() == Some(key) {
            return w
                .next()
                .and_then(|v| v.parse().ok())
                .map(Some)
                .ok_or_else(|| CgroupError::Malformed {
                    path: path.to_path_buf(),
                    text: line.to_string(),
                    reason: "expected `<key> <number>`",
                });
        }
    }
    Ok(None)
}

/// The pids listed in a `cgroup.procs` file.
fn read_pids(path: &Path) -> Result<Vec<u32>, CgroupError> {
    let text = read(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.trim().parse().map_err(|_| CgroupError::Malformed {
                path: path.to_path_buf(),
                text: l.to_string(),
                reason: "expected a pid per line",
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` is a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let digit = |k: usize| u32::from(b[i + k] - b'0');
            let v = digit(1) * 64 + digit(2) * 8 + digit(3);
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/mountinfo`, as far as cgroups care.
struct Mount {
    /// The cgroup path the mount shows at its mount point (not `/` with a
    /// cgroup namespace or a bind mount of a subtree).
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: String,
}

fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut left = left.split_whitespace();
            let root = unescape(left.nth(3)?);
            let point = PathBuf::from(unescape(left.next()?));
            let mut right = right.split_whitespace();
            let fstype = right.next()?.to_string();
            let super_options = right.nth(1).unwrap_or("").to_string();
            Some(Mount {
                root,
                point,
                fstype,
                super_options,
            })
        })
        .collect()
}

/// `path` (a cgroup path from `/proc/self/cgroup`) under `mount`.
fn dir_in(mount: &Mount, path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rel = path.strip_prefix(root)?;
    if !(rel.is_empty() || rel.starts_with('/')) {
        return None;
    }
    Some(mount.point.join(rel.trim_start_matches('/')))
}

/// What the daemon changed in its own v2 cgroup, to undo at the end.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct V2Delegation {
    /// The leaf this process moved itself into.
    moved_to: Option<PathBuf>,
    /// Whether it wrote `+memory` to its own `cgroup.subtree_control`.
    enabled_memory: bool,
}

/// This process's memory cgroup: where pools are created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryHierarchy {
    version: CgroupVersion,
    own: PathBuf,
    /// v2: whether `own` is the root of the hierarchy (exempt from the
    /// no-internal-processes rule).
    own_is_root: bool,
    delegation: V2Delegation,
}

impl MemoryHierarchy {
    /// This process's memory cgroup, from `/proc/self/cgroup` and
    /// `/proc/self/mountinfo`: the v1 `memory` hierarchy where one is
    /// mounted and holds us, else the cgroup v2 mount.
    pub fn of_self() -> Result<Self, CgroupError> {
        let cgroup = read(Path::new("/proc/self/cgroup"))?;
        let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
        Self::locate(&cgroup, &mountinfo, None)
    }

    /// Like [`Self::of_self`], but only the cgroup v2 hierarchy.
    pub fn v2_of_self() -> Result<Self, CgroupError> {
        let cgroup = read(Path::new("/proc/self/cgroup"))?;
        let mountinfo = read(Path::new("/proc/self/mountinfo"))?;
        Self::locate(&cgroup, &mountinfo, Some(CgroupVersion::V2))
    }

    /// Finds the memory cgroup that `proc_cgroup` (the text of
    /// `/proc/<pid>/cgroup`) names, in the mounts of `mountinfo`; `only`
    /// restricts the search to one version.
    pub fn locate(
        proc_cgroup: &str,
        mountinfo: &str,
        only: Option<CgroupVersion>,
    ) -> Result<Self, CgroupError> {
        let mounts = mounts(mountinfo);
        let mut memberships = proc_cgroup.lines().filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((controllers, path.trim_end()))
        });
        let v1 = memberships
            .clone()
            .find(|(c, _)| c.split(',').any(|c| c == "memory"));
        if let (Some((_, path)), None | Some(CgroupVersion::V1)) = (v1, only) {
            let mount = mounts
                .iter()
                .find(|m| m.fstype == "cgroup" && m.super_options.split(',').any(|o| o == "memory"))
                .ok_or_else(|| {
                    CgroupError::NotFound(
                        "/proc/self/cgroup names a v1 memory cgroup, but no cgroup \
                         mount with the memory controller is visible"
                            .into(),
                    )
                })?;
            let own = dir_in(mount, path).ok_or_else(|| {
                CgroupError::NotFound(format!(
                    "memory cgroup {path} is outside the mount at {} (root {})",
                    mount.point.display(),
                    mount.root
                ))
            })?;
            return Ok(MemoryHierarchy::at(CgroupVersion::V1, own, false));
        }
        if only == Some(CgroupVersion::V1) {
            return Err(CgroupError::NotFound(
                "not in a cgroup v1 memory hierarchy".into(),
            ));
        }
        let path = memberships
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p)
            .ok_or_else(|| {
                CgroupError::NotFound(
                    "/proc/self/cgroup has neither a v1 memory line nor a v2 `0::` line".into(),
                )
            })?;
        let mount = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .ok_or_else(|| CgroupError::NotFound("no cgroup2 mount is visible".into()))?;
        let own = dir_in(mount, path).ok_or_else(|| {
            CgroupError::NotFound(format!(
                "cgroup {path} is outside the cgroup2 mount at {} (root {})",
                mount.point.display(),
                mount.root
            ))
        })?;
        let is_root = own == mount.point && mount.root == "/";
        Ok(MemoryHierarchy::at(CgroupVersion::V2, own, is_root))
    }

    /// A hierarchy whose own cgroup is `own` (tests point it at fixture
    /// trees); `own_is_root`: v2's root cgroup, which may hold processes
    /// and still give its children controllers.
    pub fn at(version: CgroupVersion, own: impl Into<PathBuf>, own_is_root: bool) -> Self {
        MemoryHierarchy {
            version,
            own: own.into(),
            own_is_root,
            delegation: V2Delegation::default(),
        }
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// This process's memory cgroup directory.
    pub fn own(&self) -> &Path {
        &self.own
    }

    /// Creates (or takes over, when a stopped daemon left it empty)
    /// `<own>/<name>` with a memory limit of `limit` bytes, the kernel's OOM
    /// killer off inside it under v1 and `memory.oom.group` 0 under v2.
    pub fn create_pool(&mut self, name: &str, limit: u64) -> Result<PoolCgroup, CgroupError> {
        self.create_pool_adopting(name, limit, &BTreeSet::new())
    }

    /// [`Self::create_pool`] for a restarted daemon: a cgroup whose
    /// processes are all in `adoptable` (the VMMs it takes back) is taken
    /// over with them, and its hard limit is left alone when it is above
    /// `limit`: that is a reserve the previous daemon lent (see
    /// [`PoolCgroup::reserve_lent`]).
    pub fn create_pool_adopting(
        &mut self,
        name: &str,
        limit: u64,
        adoptable: &BTreeSet<u32>,
    ) -> Result<PoolCgroup, CgroupError> {
        if self.version == CgroupVersion::V2 {
            self.delegate_memory()?;
        }
        let dir = self.own.join(name);
        let created = match fs::create_dir(&dir) {
            Ok(()) => true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io_err("create", &dir)(e)),
        };
        let pool = PoolCgroup {
            version: self.version,
            dir,
            limit,
        };
        match pool.configure(limit, adoptable) {
            Ok(limit) => Ok(PoolCgroup { limit, ..pool }),
            Err(e) => {
                if created {
                    let _ = fs::remove_dir(&pool.dir);
                }
                Err(e)
            }
        }
    }

    /// cgroup v2: makes sure children of our own cgroup get the memory
    /// controller (see the module documentation).
    fn delegate_memory(&mut self) -> Result<(), CgroupError> {
        let controllers_file = self.own.join("cgroup.controllers");
        let controllers = read(&controllers_file)?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(CgroupError::NoMemoryController {
                dir: self.own.clone(),
                controllers: controllers.trim().to_string(),
            });
        }
        let subtree = self.own.join("cgroup.subtree_control");
        if read(&subtree)?.split_whitespace().any(|c| c == "memory") {
            return Ok(());
        }
        if !self.own_is_root {
            let me = std::process::id();
            let pids = read_pids(&self.own.join("cgroup.procs"))?;
            if pids.iter().any(|&p| p != me) {
                return Err(CgroupError::InternalProcesses {
                    dir: self.own.clone(),
                    pids,
                });
            }
            if pids.contains(&me) {
                let leaf = self.own.join(V2_DAEMON_LEAF);
                match fs::create_dir(&leaf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_err("create", &leaf)(e)),
                }
                write(&leaf.join("cgroup.procs"), &me.to_string())?;
                self.delegation.moved_to = Some(leaf);
            }
        }
        write(&subtree, "+memory")?;
        self.delegation.enabled_memory = true;
        Ok(())
    }

    /// Undoes what [`Self::create_pool`] changed in our own v2 cgroup
    /// (after the pools are removed): `-memory`, back into our own cgroup,
    /// the leaf removed. Best effort; the first error is returned.
    pub fn restore(&mut self) -> Result<(), CgroupError> {
        let d = std::mem::take(&mut self.delegation);
        let mut first = Ok(());
        let mut keep = |r: Result<(), CgroupError>| {
            if first.is_ok() {
                first = r;
            }
        };
        if d.enabled_memory {
            keep(write(&self.own.join("cgroup.subtree_control"), "-memory"));
        }
        if let Some(leaf) = d.moved_to {
            keep(write(
                &self.own.join("cgroup.procs"),
                &std::process::id().to_string(),
            ));
            keep(fs::remove_dir(&leaf).map_err(io_err("remove", &leaf)));
        }
        first
    }
}

/// A pool's memory cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolCgroup {
    version: CgroupVersion,
    dir: PathBuf,
    /// The limit in bytes as the kernel took it (rounded down to pages).
    limit: u64,
}

impl PoolCgroup {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The limit in bytes as set.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn usage_file(&self) -> PathBuf {
        self.dir.join(match self.version {
            CgroupVersion::V1 => "memory.usage_in_bytes",
            CgroupVersion::V2 => "memory.current",
        })
    }

    /// Whether the hard limit is above the pool's limit now: a reserve is
    /// lent (by this daemon, or by the one before it).
    pub fn reserve_lent(&self) -> bool {
        read_limit(&self.limit_file()).is_ok_and(|hard| hard.is_some_and(|h| h > self.limit))
    }

    pub(crate) fn limit_file(&self) -> PathBuf {
        self.dir.join(match self.version {
            CgroupVersion::V1 => "memory.limit_in_bytes",
            CgroupVersion::V2 => "memory.max",
        })
    }

    /// Sets the limit and the OOM behaviour; returns the limit the kernel
    /// took.
    fn configure(&self, limit: u64, adoptable: &BTreeSet<u32>) -> Result<u64, CgroupError> {
        let pids = self.pids()?;
        if pids.iter().any(|p| !adoptable.contains(p)) {
            return Err(CgroupError::InUse {
                dir: self.dir.clone(),
                pids,
            });
        }
        let lent = !pids.is_empty() && read_limit(&self.limit_file())?.is_some_and(|h| h > limit);
        if !lent {
            self.set_limit(limit)?;
        }
        // The nominal limit too, which stays put while the daemon lends a
        // reserve above the hard one (see [`ChargeWait`]).
        let nominal = self.nominal_file();
        if nominal.exists() {
            write(&nominal, &limit.to_string())?;
        }
        match self.version {
            CgroupVersion::V1 => write(&self.dir.join("memory.oom_control"), "1")?,
            CgroupVersion::V2 => {
                let group = self.dir.join("memory.oom.group");
                if group.exists() {
                    write(&group, "0")?;
                }
            }
        }
        if lent {
            return Ok(limit);
        }
        Ok(read_limit(&self.limit_file())?.unwrap_or(limit))
    }

    /// The file holding the pool's nominal limit: v1
    /// `memory.soft_limit_in_bytes` (what the kernel shrinks the group to
    /// under host pressure), v2 `memory.high` (where it throttles).
    fn nominal_file(&self) -> PathBuf {
        self.dir.join(nominal_file(self.version))
    }

    /// Sets the memory limit to `limit` bytes (at creation, and when the
    /// daemon lends a full pool a reserve and takes it back). Refused when
    /// more than that is charged already: v1 would answer EBUSY after
    /// failing to reclaim, v2 would reclaim and then OOM-kill inside the
    /// cgroup.
    pub fn set_limit(&self, limit: u64) -> Result<(), CgroupError> {
        let usage = read_u64(&self.usage_file())?;
        let below = |usage| CgroupError::LimitBelowUsage {
            dir: self.dir.clone(),
            limit,
            usage,
        };
        if usage > limit {
            return Err(below(usage));
        }
        match write(&self.limit_file(), &limit.to_string()) {
            Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                Err(below(read_u64(&self.usage_file()).unwrap_or(usage)))
            }
            r => r,
        }
    }

    /// Bytes reclaim in the pool could still push out to swap now
    /// ([`swap_room_of`]), given the host's free swap.
    pub fn swap_room(&self, host_swap_free: u64) -> Result<u64, CgroupError> {
        let [swappiness, usage, limit] = swap_files(&self.dir, self.version);
        let optional = |p: &Path| -> Result<Option<u64>, CgroupError> {
            if p.exists() {
                read_u64(p).map(Some)
            } else {
                Ok(None)
            }
        };
        let swap_limit = if limit.exists() {
            read_limit(&limit)?
        } else {
            None
        };
        Ok(swap_room_of(
            read_u64(&swappiness)?,
            host_swap_free,
            optional(&usage)?,
            swap_limit,
        ))
    }

    /// Lowers the limit to `limit` bytes even below what is charged now:
    /// the kernel reclaims first, which, with swap room, pushes the excess
    /// out to swap. Cgroup v1 only, where a limit the kernel cannot reclaim
    /// down to is refused with `EBUSY` (v2 would OOM-kill in the cgroup
    /// instead): then it is [`CgroupError::LimitBelowUsage`].
    pub fn reclaim_to_limit(&self, limit: u64) -> Result<(), CgroupError> {
        if self.version != CgroupVersion::V1 {
            return self.set_limit(limit);
        }
        match write(&self.limit_file(), &limit.to_string()) {
            Err(CgroupError::Io { source, .. }) if source.raw_os_error() == Some(libc::EBUSY) => {
                Err(CgroupError::LimitBelowUsage {
                    dir: self.dir.clone(),
                    limit,
                    usage: read_u64(&self.usage_file()).unwrap_or(0),
                })
            }
            r => r,
        }
    }

    /// `cgroup.procs`, open for writing, close-on-exec: a child writes `0`
    /// to it between fork and exec to join the pool before it allocates
    /// anything (see `CommandExt::pre_exec`).
    pub fn open_procs(&self) -> Result<File, CgroupError> {
        let path = self.dir.join("cgroup.procs");
        OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_err("open", &path))
    }

    /// The processes in the pool.
    pub fn pids(&self) -> Result<Vec<u32>, CgroupError> {
        read_pids(&self.dir.join("cgroup.procs"))
    }

    /// Usage, limit and OOM counters now.
    pub fn stats(&self) -> Result<MemcgStats, CgroupError> {
        MemcgStats::read(&self.dir, self.version)
    }

    /// Removes the cgroup once its processes are gone, waiting up to
    /// `timeout` for them; a cgroup already gone is fine.
    pub fn remove(&self, timeout: Duration) -> Result<(), CgroupError> {
        let deadline = Instant::now() + timeout;
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    return Err(CgroupError::InUse {
                        dir: self.dir.clone(),
                        pids: self.pids().unwrap_or_default(),
                    })
                }
                Err(e) => return Err(io_err("remove", &self.dir)(e)),
            }
        }
    }
}

/// A memory cgroup's usage and OOM counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemcgStats {
    pub usage_bytes: u64,
    /// `None`: no limit.
    pub limit_bytes: Option<u64>,
    /// Charges refused at the limit: v1 `memory.failcnt`, v2
    /// `memory.events` `max` (both count every refused try).
    pub failcnt: u64,
    /// v1: a task faulted at the limit and waits for memory, since the
    /// kernel's OOM killer is off (`under_oom`); v2: always false.
    pub under_oom: bool,
    /// v1: the kernel's OOM killer is off in the cgroup.
    pub oom_kill_disabled: bool,
    /// v2: times the kernel's OOM killer was invoked (`memory.events`
    /// `oom`); v1 has no such counter.
    pub oom_events: Option<u64>,
    /// Processes the kernel's OOM killer killed in the cgroup (v1
    /// `memory.oom_control` `oom_kill`, Linux 4.13+; v2 `memory.events`
    /// `oom_kill`).
    pub oom_kills: u64,
}

impl MemcgStats {
    /// Reads the cgroup directory `dir`.
    pub fn read(dir: &Path, version: CgroupVersion) -> Result<Self, CgroupError> {
        match version {
            CgroupVersion::V1 => {
                let oom_path = dir.join("memory.oom_control");
                let oom = read(&oom_path)?;
                let field = |k| keyed(&oom_path, &oom, k);
                Ok(MemcgStats {
                    usage_bytes: read_u64(&dir.join("memory.usage_in_bytes"))?,
                    limit_bytes: read_limit(&dir.join("memory.limit_in_bytes"))?,
                    failcnt: read_u64(&dir.join("memory.failcnt"))?,
                    under_oom: field("under_oom")?.unwrap_or(0) != 0,
                    oom_kill_disabled: field("oom_kill_disable")?.unwrap_or(0) != 0,
                    oom_events: None,
                    oom_kills: field("oom_kill")?.unwrap_or(0),
                })
            }
            CgroupVersion::V2 => {
                let events_path = dir.join("memory.events");
                let events = read(&events_path)?;
                let field = |k| keyed(&events_path, &events, k);
                Ok(MemcgStats {
                    usage_bytes: read_u64(&dir.join("memory.current"))?,
                    limit_bytes: read_limit(&dir.join("memory.max"))?,
                    failcnt: field("max")?.unwrap_or(0),
                    under_oom: false,
                    oom_kill_disabled: false,
                    oom_events: Some(field("oom")?.unwrap_or(0)),
                    oom_kills: field("oom_kill")?.unwrap_or(0),
                })
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A scratch directory tree standing in for cgroupfs (which creates a
    /// new cgroup's files itself; here the test writes them), removed on
    /// drop.
    pub(crate) struct Tree(PathBuf);

    impl Tree {
        pub(crate) fn new(name: &str) -> Tree {
            let root = std::env::temp_dir()
                .join(format!("vmm-cgroup-fixture-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            fs::create_dir_all(&root).unwrap();
            Tree(root)
        }

        /// Writes `files` (name, contents) into the directory `dir` below
        /// the root, creating it.
        pub(crate) fn dir(&self, dir: &str, files: &[(&str, &str)]) -> PathBuf {
            let d = self.0.join(dir);
            fs::create_dir_all(&d).unwrap();
            for (name, text) in files {
                fs::write(d.join(name), text).unwrap();
            }
            d
        }

        fn read(&self, file: &str) -> String {
            fs::read_to_string(self.0.join(file)).unwrap()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const UNLIMITED_V1: &str = "9223372036854771712\n";

    fn v1_files<'a>(usage: &'a str, procs: &'a str) -> Vec<(&'static str, &'a str)> {
        vec![
            ("memory.limit_in_bytes", UNLIMITED_V1),
            ("memory.soft_limit_in_bytes", UNLIMITED_V1),
            ("memory.usage_in_bytes", usage),
            ("memory.failcnt", "0\n"),
            (
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
            ),
            ("cgroup.procs", procs),
        ]
    }

    fn v2_files<'a>(usage: &'a str, procs: &'a str) -> Vec<(&'static str, &'a str)> {
        vec![
            ("memory.max", "max\n"),
            ("memory.high", "max\n"),
            ("memory.current", usage),
            (
                "memory.events",
                "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n",
            ),
            ("memory.oom.group", "1\n"),
            ("cgroup.procs", procs),
        ]
    }

    // This development machine, verbatim (cgroup v1 memory, v2 without it).
    const CGROUP_HERE: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/4172\n\
                               3:cpuset:/\n0::/\n";
    const MOUNTINFO_HERE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// Issue 9: what reclaim could still push out to swap decides whether
    /// a full pool is short of memory at all.
    #[test]
    fn swap_room_is_the_hosts_free_swap_within_the_cgroups_own_limit() {
        const MIB: u64 = 1 << 20;
        // No swap limit (v1 memsw unlimited, or accounting off).
        assert_eq!(swap_room_of(60, 192 * MIB, Some(50 * MIB), None), 192 * MIB);
        assert_eq!(swap_room_of(60, 192 * MIB, None, None), 192 * MIB);
        // Swappiness 0: the cgroup swaps nothing.
        assert_eq!(swap_room_of(0, 192 * MIB, None, None), 0);
        // Its own limit leaves less than the host has.
        assert_eq!(
            swap_room_of(60, 192 * MIB, Some(90 * MIB), Some(96 * MIB)),
            6 * MIB
        );
        assert_eq!(
            swap_room_of(60, 192 * MIB, Some(97 * MIB), Some(96 * MIB)),
            0
        );
        // No swap on the host: none.
        assert!(swap_room_of(60, 0, None, None) < SWAP_ROOM);
        // This host, now: whatever it has, without failing.
        let _ = host_swap_free();
    }

    #[test]
    fn finds_our_memory_cgroup_in_v1_and_v2() {
        let h = MemoryHierarchy::locate(CGROUP_HERE, MOUNTINFO_HERE, None).unwrap();
        assert_eq!(h.version(), CgroupVersion::V1);
        assert_eq!(h.own(), Path::new("/sys/fs/cgroup/memory/process_api/4172"));
        let v2 =
            MemoryHierarchy::locate(CGROUP_HERE, MOUNTINFO_HERE, Some(CgroupVersion::V2)).unwrap();
        assert_eq!(
            (v2.version(), v2.own(), v2.own_is_root),
            (CgroupVersion::V2, Path::new("/sys/fs/cgroup/unified"), true)
        );
        // A pure v2 host (systemd), the mount point with a space escaped.
        let h = MemoryHierarchy::locate(
            "0::/system.slice/vmm.service\n",
            "30 1 0:26 / /sys/fs/cgroup\\040x rw - cgroup2 cgroup2 rw,nsdelegate\n",
            None,
        )
        .unwrap();
        assert_eq!(
            (h.version(), h.own(), h.own_is_root),
            (
                CgroupVersion::V2,
                Path::new("/sys/fs/cgroup x/system.slice/vmm.service"),
                false
            )
        );
        // A container whose mount shows only its own subtree.
        let h = MemoryHierarchy::locate(
            "5:memory:/docker/abc/inner\n",
            "40 1 0:40 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
            None,
        )
        .unwrap();
        assert_eq!(h.own(), Path::new("/sys/fs/cgroup/memory/inner"));
    }

    #[test]
    fn no_memory_cgroup_is_a_clear_error() {
        let e = MemoryHierarchy::locate(
            "4:memory:/a\n",
            "41 31 0:38 / /u rw - cgroup2 cgroup2 rw\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("no cgroup mount with the memory controller"),
            "{e}"
        );
        let e = MemoryHierarchy::locate("0::/a\n", MOUNTINFO_HERE.lines().next().unwrap(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no cgroup2 mount"), "{e}");
        let e = MemoryHierarchy::locate(
            "5:memory:/elsewhere\n",
            "40 1 0:40 /docker/abc /m rw - cgroup cgroup rw,memory\n",
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("outside the mount"), "{e}");
        let e = MemoryHierarchy::locate("0::/\n", MOUNTINFO_HERE, Some(CgroupVersion::V1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in a cgroup v1 memory hierarchy"), "{e}");
    }

    #[test]
    fn v1_pool_gets_its_limit_and_no_kernel_oom_killer() {
        let t = Tree::new("v1");
        let own = t.dir("own", &v1_files("4096\n", "1\n"));
        t.dir("own/vmm-p", &v1_files("0\n", ""));
        let mut h = MemoryHierarchy::at(CgroupVersion::V1, &own, false);
        let pool = h.create_pool("vmm-p", 64 << 20).unwrap();
        assert_eq!(pool.dir(), own.join("vmm-p"));
        assert_eq!(pool.limit(), 64 << 20);
        assert_eq!(t.read("own/vmm-p/memory.limit_in_bytes"), "67108864");
        assert_eq!(t.read("own/vmm-p/memory.soft_limit_in_bytes"), "67108864");
        assert_eq!(t.read("own/vmm-p/memory.oom_control"), "1");
        // Our own cgroup is left alone.
        assert_eq!(t.read("own/memory.limit_in_bytes"), UNLIMITED_V1);
        fs::write(
            pool.dir().join("memory.oom_control"),
            "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n",
        )
        .unwrap();
        fs::write(pool.dir().join("memory.usage_in_bytes"), "67100000\n").unwrap();
        fs::write(pool.dir().join("memory.failcnt"), "42\n").unwrap();
        assert_eq!(
            pool.stats().unwrap(),
            MemcgStats {
                usage_bytes: 67_100_000,
                limit_bytes: Some(64 << 20),
                failcnt: 42,
                under_oom: true,
                oom_kill_disabled: true,
                oom_events: None,
                oom_kills: 0,
            }
        );
        assert_eq!(pool.pids().unwrap(), Vec::<u32>::new());
        assert!(h.restore().is_ok(), "v1 changes nothing in our own cgroup");
    }

    #[test]
    fn a_limit_below_usage_or_a_busy_cgroup_is_refused() {
        let t = Tree::new("refuse");
        let own = t.dir("own", &v1_files("0\n", ""));
        t.dir("own/vmm-full", &v1_files("104857600\n", ""));
        t.dir("own/vmm-busy", &v1_files("0\n", "4242\n4243\n"));
        let mut h = MemoryHierarchy::at(CgroupVersion::V1, &own, false);
        let e = h.create_pool("vmm-full", 64 << 20).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: a limit of 67108864 bytes is below the 104857600 bytes already charged there",
                own.join("vmm-full").display()
            )
        );
        assert_eq!(t.read("own/vmm-full/memory.limit_in_bytes"), UNLIMITED_V1);
        assert!(own.join("vmm-full").exists(), "not ours to remove");
        let e = h.create_pool("vmm-busy", 64 << 20).unwrap_err().to_string();
        assert!(
            e.ends_with(
                "vmm-busy still holds processes [4242, 4243] (VMs of an earlier \
                 daemon?); stop them or remove the cgroup"
            ),
            "{e}"
        );
        // Unless they are the VMMs a restarted daemon takes back: then the
        // pool is taken over with them, and a hard limit above the pool's
        // (a reserve its predecessor lent) is left as it is.
        let theirs = BTreeSet::from([4242]);
        let e = h.create_pool_adopting("vmm-busy", 64 << 20, &theirs);
        assert!(e.is_err(), "4243 is no VMM of ours");
        t.dir("own/vmm-busy", &[("memory.limit_in_bytes", "83886080\n")]);
        let ours = BTreeSet::from([4242, 4243]);
        let pool = h.create_pool_adopting("vmm-busy", 64 << 20, &ours).unwrap();
        assert_eq!(pool.limit(), 64 << 20);
        assert!(pool.reserve_lent());
        assert_eq!(t.read("own/vmm-busy/memory.limit_in_bytes"), "83886080\n");
        assert_eq!(
            t.read("own/vmm-busy/memory.soft_limit_in_bytes"),
            "67108864"
        );
        assert_eq!(t.read("own/vmm-busy/memory.oom_control"), "1");
        // A directory that is no cgroup: the one we made is removed again.
        let plain = t.dir("plain", &[]);
        let mut h = MemoryHierarchy::at(CgroupVersion::V1, &plain, false);
        let e = h.create_pool("vmm-x", 1 << 20).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("cgroup.procs"),
            "{e}"
        );
        assert!(!plain.join("vmm-x").exists());
    }

    #[test]
    fn an_unwritable_parent_is_a_clear_error() {
        // sysfs refuses mkdir even to root.
        let mut h = MemoryHierarchy::at(CgroupVersion::V1, "/sys", false);
        let e = h.create_pool("vmm-nope", 1 << 20).unwrap_err();
        assert!(matches!(e, CgroupError::NotWritable { .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.starts_with("/sys/vmm-nope is not writable ("), "{e}");
        assert!(
            e.ends_with(
                "the daemon needs write access to its own memory cgroup to \
                 create pools below it"
            ),
            "{e}"
        );
    }

    #[test]
    fn v2_without_the_memory_controller_is_refused() {
        let t = Tree::new("v2-none");
        let own = t.dir(
            "own",
            &[
                ("cgroup.controllers", "cpu io pids\n"),
                ("cgroup.subtree_control", ""),
                ("cgroup.procs", ""),
            ],
        );
        let mut h = MemoryHierarchy::at(CgroupVersion::V2, &own, false);
        let e = h.create_pool("vmm-p", 1 << 20).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: the cgroup v2 memory controller is not available here (cgroup.controllers: \
                 \"cpu io pids\"); a memcg pool needs the memory controller delegated to the \
                 daemon's cgroup (or a cgroup v1 memory hierarchy, where it may be bound instead)",
                own.display()
            )
        );
        assert!(!own.join("vmm-p").exists());
    }

    #[test]
    fn v2_delegation_moves_the_daemon_into_a_leaf_and_back() {
        let me = std::process::id().to_string();
        let t = Tree::new("v2");
        let own = t.dir(
            "own",
            &[
                ("cgroup.controllers", "cpu memory pids\n"),
                ("cgroup.subtree_control", "\n"),
                ("cgroup.procs", &format!("{me}\n")),
            ],
        );
        t.dir("own/vmm-daemon", &[("cgroup.procs", "")]);
        t.dir("own/vmm-p", &v2_files("0\n", ""));
        let mut h = MemoryHierarchy::at(CgroupVersion::V2, &own, false);
        let pool = h.create_pool("vmm-p", 256 << 20).unwrap();
        assert_eq!(t.read("own/vmm-daemon/cgroup.procs"), me);
        assert_eq!(t.read("own/cgroup.subtree_control"), "+memory");
        assert_eq!(t.read("own/vmm-p/memory.max"), "268435456");
        assert_eq!(t.read("own/vmm-p/memory.high"), "268435456");
        assert_eq!(t.read("own/vmm-p/memory.oom.group"), "0");
        fs::write(
            pool.dir().join("memory.events"),
            "low 0\nhigh 0\nmax 17\noom 2\noom_kill 1\n",
        )
        .unwrap();
        let s = pool.stats().unwrap();
        assert_eq!(
            (s.failcnt, s.oom_events, s.oom_kills, s.under_oom),
            (17, Some(2), 1, false)
        );
        assert_eq!(s.limit_bytes, Some(256 << 20));
        // What the kernel does on rmdir of an empty cgroup.
        fs::remove_file(own.join("vmm-daemon/cgroup.procs")).unwrap();
        h.restore().unwrap();
        assert_eq!(t.read("own/cgroup.subtree_control"), "-memory");
        assert_eq!(t.read("own/cgroup.procs"), me);
        assert!(!own.join("vmm-daemon").exists());
    }

    #[test]
    fn v2_refuses_to_leave_other_processes_in_an_inner_cgroup() {
        let t = Tree::new("v2-others");
        let procs = format!("1\n{}\n", std::process::id());
        let own = t.dir(
            "own",
            &[
                ("cgroup.controllers", "memory\n"),
                ("cgroup.subtree_control", ""),
                ("cgroup.procs", &procs),
            ],
        );
        let mut h = MemoryHierarchy::at(CgroupVersion::V2, &own, false);
        let e = h.create_pool("vmm-p", 1 << 20).unwrap_err().to_string();
        assert!(
            e.contains("processes other than this daemon are in it ([1, "),
            "{e}"
        );
        assert_eq!(t.read("own/cgroup.subtree_control"), "", "nothing changed");
        // The root cgroup may hold processes and delegate all the same.
        t.dir("own/vmm-p", &v2_files("0\n", ""));
        let mut root = MemoryHierarchy::at(CgroupVersion::V2, &own, true);
        root.create_pool("vmm-p", 1 << 20).unwrap();
        assert_eq!(t.read("own/cgroup.subtree_control"), "+memory");
        assert!(!own.join("vmm-daemon").exists());
        // Already delegated: nothing to do.
        fs::write(own.join("cgroup.subtree_control"), "memory pids\n").unwrap();
        let mut h = MemoryHierarchy::at(CgroupVersion::V2, &own, false);
        h.create_pool("vmm-p", 1 << 20).unwrap();
        assert_eq!(t.read("own/cgroup.subtree_control"), "memory pids\n");
        h.restore().unwrap();
        assert_eq!(t.read("own/cgroup.subtree_control"), "memory pids\n");
    }

    #[test]
    fn garbage_in_cgroup_files_is_refused() {
        let t = Tree::new("garbage");
        let d = t.dir(
            "g",
            &[
                ("memory.usage_in_bytes", "lots\n"),
                ("memory.limit_in_bytes", UNLIMITED_V1),
                ("memory.failcnt", "0\n"),
                ("memory.oom_control", "under_oom maybe\n"),
                ("memory.events", "max\n"),
                ("memory.current", "0\n"),
                ("memory.max", "max\n"),
            ],
        );
        let e = MemcgStats::read(&d, CgroupVersion::V1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "memory.usage_in_bytes: unexpected contents \"lots\\n\" (expected a byte count)"
            ),
            "{e}"
        );
        fs::write(d.join("memory.usage_in_bytes"), "0\n").unwrap();
        let e = MemcgStats::read(&d, CgroupVersion::V1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("memory.oom_control: unexpected contents \"under_oom maybe\""),
            "{e}"
        );
        let e = MemcgStats::read(&d, CgroupVersion::V2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("memory.events: unexpected contents \"max\""),
            "{e}"
        );
        fs::write(d.join("cgroup.procs"), "12\nx\n").unwrap();
        let e = read_pids(&d.join("cgroup.procs")).unwrap_err().to_string();
        assert!(e.contains("\"x\" (expected a pid per line)"), "{e}");
    }

    /// The v2 hierarchy of this machine has no memory controller: refused
    /// clearly, nothing created.
    #[test]
    fn v2_here_is_refused_when_it_lacks_the_memory_controller() {
        let Ok(mut h) = MemoryHierarchy::v2_of_self() else {
            return; // no cgroup2 mount here
        };
        let controllers =
            fs::read_to_string(h.own().join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "memory") {
            eprintln!("cgroup v2 has the memory controller here; refusal not tested");
            return;
        }
        let name = format!("vmm-test-v2-{}", std::process::id());
        let e = h.create_pool(&name, 64 << 20).unwrap_err();
        assert!(matches!(e, CgroupError::NoMemoryController { .. }), "{e}");
        assert!(!h.own().join(&name).exists());
    }

    /// A real v1 pool below our own memory cgroup: a child joins it between
    /// fork and exec, its memory is charged there, the pool goes away once
    /// the child is gone.
    #[test]
    fn a_real_v1_pool_below_our_own() {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let Ok(mut h) = MemoryHierarchy::of_self() else {
            eprintln!("no memory cgroup here; skipped");
            return;
        };
        if h.version() != CgroupVersion::V1 {
            eprintln!("not cgroup v1 here; skipped");
            return;
        }
        let name = format!("vmm-test-pool-{}", std::process::id());
        let pool = h.create_pool(&name, 48 << 20).unwrap();
        struct Cleanup<'a>(&'a PoolCgroup, Option<std::process::Child>);
        impl Drop for Cleanup<'_> {
            fn drop(&mut self) {
                if let Some(c) = &mut self.1 {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                let _ = self.0.remove(Duration::from_secs(5));
            }
        }
        let mut guard = Cleanup(&pool, None);
        assert_eq!(pool.limit(), 48 << 20);
        let s = pool.stats().unwrap();
        assert!(s.oom_kill_disabled && !s.under_oom, "{s:?}");
        assert_eq!(s.limit_bytes, Some(48 << 20));
        let soft = fs::read_to_string(pool.dir().join("memory.soft_limit_in_bytes")).unwrap();
        assert_eq!(soft.trim(), (48u64 << 20).to_string());
        let procs = pool.open_procs().unwrap();
        let fd = procs.as_raw_fd();
        let mut cmd = std::process::Command::new("python3");
        cmd.args([
            "-c",
            "b = bytearray(16 << 20); b[::4096] = b'x' * len(b[::4096]); print('ok', flush=True); import time; time.sleep(30)",
        ])
        .stdout(std::process::Stdio::piped());
        // SAFETY: write(2) on an open fd is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let mut child = cmd.spawn().unwrap();
        drop(procs);
        let mut line = String::new();
        io::BufRead::read_line(
            &mut io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ok");
        let pid = child.id();
        guard.1 = Some(child);
        assert_eq!(pool.pids().unwrap(), vec![pid]);
        let usage = pool.stats().unwrap().usage_bytes;
        assert!(
            usage >= 16 << 20,
            "the child's memory is charged to the pool: {usage}"
        );
        // Busy while the child lives.
        let e = pool
            .remove(Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("still holds processes"), "{e}");
        let mut child = guard.1.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        pool.remove(Duration::from_secs(5)).unwrap();
        assert!(!pool.dir().exists());
        h.restore().unwrap();
    }
}
