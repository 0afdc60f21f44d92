//! A vCPU waiting out a full memory cgroup instead of dying of it.
//!
//! This runs in the VMM (`vmm run`), on the vCPU thread, exactly when its
//! memory cgroup is at its limit: it reads cgroup files it opened earlier
//! into stack buffers and allocates nothing. The daemon's side of the same
//! protocol (the nominal limit, the reserve it lends) is
//! `daemon::pools`; the cgroupfs layout is [`super::cgroup`].

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::host::cgroup::{
    host_swap_free, keyed, nominal_file, swap_files, swap_room_of, CgroupVersion, MemoryHierarchy,
    SWAP_ROOM, V1_UNLIMITED,
};

/// Lets a vCPU thread wait out a full memory cgroup.
///
/// Guest RAM is faulted in by KVM on the vCPU's behalf (`get_user_pages`
/// inside `KVM_RUN`), not by a user-mode fault, so when the VMM's memory
/// cgroup is at its limit and its OOM killer is off (v1
/// `oom_kill_disable`), the kernel does not put the thread to sleep until
/// memory is freed as it would for a process's own fault: the charge fails
/// and `KVM_RUN` returns `EFAULT` (`ENOMEM` for KVM's own page-table
/// pages), which a VMM would take for a fatal error. Measured on this
/// development host (kernel 6.18, PVM): a tiny guest touching 100 MiB in a
/// 64 MiB v1 cgroup got `EFAULT` and no `KVM_EXIT_MEMORY_FAULT` detail.
///
/// With this, the vCPU instead waits and runs again (the faulting guest
/// instruction is simply retried) once there is room, as long as the
/// failure was the cgroup refusing charges (its `failcnt`, v2
/// `memory.events` `max`, rose); an `EFAULT` while the counter stands
/// still is a real fault and ends the VM as before.
///
/// "Room" leaves the daemon a way to reclaim: a full cgroup stalls every
/// thread in it that needs a page, the VMMs' API threads included, and
/// without them no balloon can be inflated. So the daemon lends a full
/// pool a small reserve (it raises the hard limit for a while, see
/// `daemon::pools`) and a waiting vCPU does not take it: it runs again
/// only when the hard limit is back at the nominal one (v1
/// `memory.soft_limit_in_bytes`, v2 `memory.high`, which the daemon sets
/// to the pool's limit and leaves alone) and [`HEADROOM`] bytes are free
/// under it. Without a nominal limit (a cgroup the daemon did not make),
/// the hard limit alone counts.
///
/// With swap, nothing frees room while everyone waits: the kernel makes
/// room by swapping out only when a charge asks for it. A charge refused
/// although the cgroup may swap (reclaim fell behind swap writeback;
/// measured here, issue 9: a tiny guest touching 96 MiB in a 48 MiB pool
/// waited for room until the daemon killed it) is retried after
/// [`SWAP_RETRY`], so that the retried fault reclaims, as long as
/// [`SWAP_ROOM`] of swap is left (the rule of
/// [`crate::host::cgroup::swap_room_of`]) and no reserve is lent.
pub struct ChargeWait {
    /// This process's memory cgroup files, kept open and read once
    /// already: at the limit, opening a cgroup file or giving it its first
    /// read buffer is itself a charge that fails.
    files: Option<WaitFiles>,
    /// The refused-charges counter at the last look.
    last: u64,
    /// When the vCPU last came out of a wait.
    last_wait: Option<Instant>,
}

/// Free bytes under the limit a waiting vCPU leaves to everyone else.
pub const HEADROOM: u64 = 4 << 20;
/// How long a vCPU whose charge was refused in a cgroup that may swap
/// waits before its fault is retried: time for swap writeback to finish.
pub const SWAP_RETRY: Duration = Duration::from_millis(5);
/// Longest sleep between two looks.
const MAX_BACKOFF: Duration = Duration::from_millis(50);
/// A vCPU that ran this long without a refused charge starts a new
/// episode (logged again).
const EPISODE_GAP: Duration = Duration::from_secs(1);

/// The open files of [`ChargeWait`].
struct WaitFiles {
    dir: PathBuf,
    version: CgroupVersion,
    counter: File,
    usage: File,
    limit: File,
    nominal: Option<File>,
    /// Swappiness, swap usage and swap limit ([`swap_files`]); the last
    /// two absent where swap is not accounted.
    swappiness: Option<File>,
    swap_usage: Option<File>,
    swap_limit: Option<File>,
}

/// Reads a small cgroup file from offset 0 into a stack buffer: no
/// allocation, as this runs when memory is short.
fn read_small(file: &File, f: impl FnOnce(&str) -> Option<u64>) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 512];
    let n = file.read_at(&mut buf, 0).ok()?;
    f(std::str::from_utf8(&buf[..n]).ok()?.trim())
}

/// A limit as [`ChargeWait`] reads it: `u64::MAX` is none.
fn small_limit(file: &File) -> Option<u64> {
    read_small(file, |t| {
        if t == "max" {
            return Some(u64::MAX);
        }
        t.parse()
            .ok()
            .map(|v: u64| if v >= V1_UNLIMITED { u64::MAX } else { v })
    })
}

impl WaitFiles {
    fn open(dir: &Path, version: CgroupVersion) -> Option<Self> {
        let names = match version {
            CgroupVersion::V1 => [
                "memory.failcnt",
                "memory.usage_in_bytes",
                "memory.limit_in_bytes",
            ],
            CgroupVersion::V2 => ["memory.events", "memory.current", "memory.max"],
        };
        let open = |n: &str| File::open(dir.join(n)).ok();
        let [swappiness, swap_usage, swap_limit] = swap_files(dir, version);
        let files = WaitFiles {
            dir: dir.to_path_buf(),
            version,
            counter: open(names[0])?,
            usage: open(names[1])?,
            limit: open(names[2])?,
            nominal: open(nominal_file(version)),
            swappiness: File::open(swappiness).ok(),
            swap_usage: File::open(swap_usage).ok(),
            swap_limit: File::open(swap_limit).ok(),
        };
        // The first read gives each file its kernel buffer, now.
        files.refused()?;
        files.usage()?;
        files.room_limit()?;
        files.swap_room();
        Some(files)
    }

    fn refused(&self) -> Option<u64> {
        read_small(&self.counter, |t| match self.version {
            CgroupVersion::V1 => t.parse().ok(),
            CgroupVersion::V2 => keyed(&self.dir, t, "max").ok().flatten(),
        })
    }

    fn usage(&self) -> Option<u64> {
        read_small(&self.usage, |t| t.parse().ok())
    }

    /// Bytes reclaim could still push out to swap (0 when unknown).
    fn swap_room(&self) -> u64 {
        let Some(swappiness) = self
            .swappiness
            .as_ref()
            .and_then(|f| read_small(f, |t| t.parse().ok()))
        else {
            return 0;
        };
        let swap_usage = self
            .swap_usage
            .as_ref()
            .and_then(|f| read_small(f, |t| t.parse().ok()));
        let swap_limit = self
            .swap_limit
            .as_ref()
            .and_then(small_limit)
            .filter(|l| *l != u64::MAX);
        swap_room_of(swappiness, host_swap_free(), swap_usage, swap_limit)
    }

    /// The limit a waiting vCPU may grow to again: the hard limit, but
    /// `None` while it is above the nominal one (a reserve is lent).
    fn room_limit(&self) -> Option<Option<u64>> {
        let hard = small_limit(&self.limit)?;
        let nominal = match &self.nominal {
            Some(f) => small_limit(f)?,
            None => u64::MAX,
        };
        Some((hard <= nominal).then_some(hard))
    }
}

impl ChargeWait {
    /// For this process's memory cgroup; waits for nothing where there is
    /// none.
    pub fn for_this_process() -> Self {
        let h = MemoryHierarchy::of_self().ok();
        Self::watching(h.as_ref().map(|h| (h.own(), h.version())))
    }

    /// Watching the memory cgroup directory `dir` (tests point it at a
    /// fixture). A cgroup without a hard limit now is not watched: its
    /// charges are not refused, and the files would hold descriptors in
    /// every VMM for nothing (a limit set on it later is not seen; the
    /// daemon sets a pool's limit before any VM joins it).
    fn watching(cgroup: Option<(&Path, CgroupVersion)>) -> Self {
        let files = cgroup
            .and_then(|(dir, version)| WaitFiles::open(dir, version))
            .filter(|f| small_limit(&f.limit).is_some_and(|l| l != u64::MAX));
        let last = files.as_ref().and_then(WaitFiles::refused).unwrap_or(0);
        ChargeWait {
            files,
            last,
            last_wait: None,
        }
    }

    /// After `KVM_RUN` failed with `errno`: whether that was the cgroup
    /// refusing a charge. If so, this has waited until there is room (or
    /// until `stop` says the VM is ending) and the caller runs the vCPU
    /// again. `who` names the vCPU in the line logged once per episode.
    pub fn retry_after(
        &mut self,
        errno: i32,
        who: &dyn fmt::Display,
        stop: &dyn Fn() -> bool,
    ) -> bool {
        if errno != libc::EFAULT && errno != libc::ENOMEM {
            return false;
        }
        let Some(files) = &self.files else {
            return false;
        };
        let Some(now) = files.refused() else {
            return false;
        };
        let rising = now > self.last;
        self.last = now;
        if !rising {
            return false;
        }
        let new_episode = self.last_wait.is_none_or(|t| t.elapsed() >= EPISODE_GAP);
        if new_episode {
            // No panic if stderr cannot take it (its file may be charged
            // to the same full cgroup: then this line is lost, and the one
            // after the wait, written once there is room, tells).
            let _ = writeln!(
                io::stderr(),
                "vmm: {who}: guest RAM could not be charged to memory cgroup {} \
                 (at its limit); waiting for memory",
                files.dir.display()
            );
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(1);
        while !stop() {
            let (Some(usage), Some(room)) = (files.usage(), files.room_limit()) else {
                std::thread::sleep(MAX_BACKOFF);
                break;
            };
            if room.is_some_and(|limit| usage.saturating_add(HEADROOM) <= limit) {
                break;
            }
            // No loan, and swap left: the retried fault makes room.
            if room.is_some() && started.elapsed() >= SWAP_RETRY && files.swap_room() >= SWAP_ROOM {
                break;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if new_episode {
            let _ = writeln!(
                io::stderr(),
                "vmm: {who}: memory cgroup {} has room again after {} ms of waiting",
                files.dir.display(),
                started.elapsed().as_millis()
            );
        }
        self.last_wait = Some(Instant::now());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroup::tests::Tree;
    use std::fs::{self, OpenOptions};

    fn v1_wait_files(t: &Tree, usage: &str, limit: &str, failcnt: &str) -> PathBuf {
        t.dir(
            "pool",
            &[
                ("memory.failcnt", failcnt),
                ("memory.usage_in_bytes", usage),
                ("memory.limit_in_bytes", limit),
                ("memory.soft_limit_in_bytes", limit),
            ],
        )
    }

    #[test]
    fn charge_wait_retries_only_while_the_cgroup_refuses_charges() {
        let t = Tree::new("charge");
        let mib = |m: u64| format!("{}\n", m << 20);
        let d = v1_wait_files(&t, &mib(60), &mib(64), "10\n");
        let mut w = ChargeWait::watching(Some((&d, CgroupVersion::V1)));
        let (vcpu, never) = ("vcpu0", || false);
        // Nothing refused since we looked: a real fault.
        assert!(!w.retry_after(libc::EFAULT, &vcpu, &never));
        fs::write(d.join("memory.failcnt"), "25\n").unwrap();
        assert!(
            !w.retry_after(libc::EINVAL, &vcpu, &never),
            "not a charge failure"
        );
        // Refused, and 4 MiB free: run again at once.
        assert!(w.retry_after(libc::EFAULT, &vcpu, &never));
        assert!(
            !w.retry_after(libc::EFAULT, &vcpu, &never),
            "counter stood still"
        );
        fs::write(d.join("memory.failcnt"), "26\n").unwrap();
        assert!(w.retry_after(libc::ENOMEM, &vcpu, &never));
        // v2 counts refusals in memory.events.
        let e = t.dir(
            "v2",
            &[
                ("memory.events", "low 0\nhigh 0\nmax 3\noom 0\n"),
                ("memory.current", "0\n"),
                ("memory.max", "max\n"),
            ],
        );
        // No limit: not watched (no descriptors held for nothing).
        let mut w = ChargeWait::watching(Some((&e, CgroupVersion::V2)));
        fs::write(e.join("memory.events"), "low 0\nhigh 0\nmax 4\noom 0\n").unwrap();
        assert!(!w.retry_after(libc::EFAULT, &vcpu, &never));
        fs::write(e.join("memory.max"), "67108864\n").unwrap();
        let mut w = ChargeWait::watching(Some((&e, CgroupVersion::V2)));
        fs::write(e.join("memory.events"), "low 0\nhigh 0\nmax 5\noom 0\n").unwrap();
        assert!(w.retry_after(libc::EFAULT, &vcpu, &never));
        // Without a memory cgroup it never waits.
        let mut none = ChargeWait::watching(None);
        assert!(!none.retry_after(libc::EFAULT, &vcpu, &never));
    }

    /// A full cgroup: the vCPU waits until memory is freed under the
    /// nominal limit, and not while the daemon lends a reserve above it.
    #[test]
    fn charge_wait_waits_for_room_and_leaves_a_loan_alone() {
        let t = Tree::new("charge-wait");
        let mib = |m: u64| format!("{}\n", m << 20);
        let d = v1_wait_files(&t, &mib(64), &mib(64), "1\n");
        let mut w = ChargeWait::watching(Some((&d, CgroupVersion::V1)));
        fs::write(d.join("memory.failcnt"), "2\n").unwrap();
        let dir = d.clone();
        let t0 = Instant::now();
        // In place and the same length, as the vCPU reads concurrently
        // (a kernel file changes at once; a truncated fixture would not).
        let overwrite = move |file: &str, text: String| {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new().write(true).open(dir.join(file)).unwrap();
            f.write_all_at(text.as_bytes(), 0).unwrap();
        };
        let freer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            // The daemon lends 16 MiB: still no room for the vCPU.
            overwrite("memory.limit_in_bytes", mib(80));
            std::thread::sleep(Duration::from_millis(150));
            // Reclaim frees memory under the loan: still lent, no room.
            overwrite("memory.usage_in_bytes", mib(58));
            std::thread::sleep(Duration::from_millis(150));
            // ... and the loan is returned.
            overwrite("memory.limit_in_bytes", mib(64));
        });
        assert!(w.retry_after(libc::EFAULT, &"vcpu0", &|| false));
        let waited = t0.elapsed();
        freer.join().unwrap();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        // Stuck again, the VM ends: no waiting for room.
        fs::write(d.join("memory.usage_in_bytes"), mib(64)).unwrap();
        fs::write(d.join("memory.failcnt"), "3\n").unwrap();
        let t0 = Instant::now();
        assert!(w.retry_after(libc::EFAULT, &"vcpu0", &|| true));
        assert!(t0.elapsed() < Duration::from_millis(100));
        // A cgroup without a nominal limit: the hard one alone counts.
        fs::remove_file(d.join("memory.soft_limit_in_bytes")).unwrap();
        let mut w = ChargeWait::watching(Some((&d, CgroupVersion::V1)));
        fs::write(d.join("memory.failcnt"), "4\n").unwrap();
        fs::write(d.join("memory.limit_in_bytes"), mib(80)).unwrap();
        let t0 = Instant::now();
        assert!(w.retry_after(libc::EFAULT, &"vcpu0", &|| false));
        assert!(t0.elapsed() < Duration::from_millis(100));
    }
}
