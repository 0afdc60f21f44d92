//! Memory-cgroup pools: a pool of VMs in a child cgroup of the daemon's own
//! memory cgroup, with a limit the kernel enforces. Configured as
//! `{"memcg_pools": {"<pool>": <limit bytes>}}`.
//!
//! - **Start**: the daemon creates `<own memory cgroup>/vmm-<pool>` for
//!   each pool and sets its limit ([`crate::host::cgroup`]). Under cgroup v1
//!   it turns the kernel's OOM killer off there (`oom_kill_disable`), so
//!   the kernel never kills inside a pool: a VM that faults at the limit
//!   waits for memory (its vCPU through [`crate::vm::charge_wait::ChargeWait`])
//!   and the daemon decides. Under cgroup v2 there is no such switch: the
//!   kernel's memcg OOM killer stays the backstop if the daemon is too
//!   slow (`memory.oom.group` 0: it kills one process, not the pool).
//! - **Spawn**: a VM whose `pool` is a memcg pool joins the pool's cgroup
//!   between fork and exec, before its VMM allocates anything, and its
//!   [`crate::oom::Placement`] names the cgroup, so the `memcg` constraint
//!   finds it.
//! - **Monitor**: usage, limit and OOM counters of each pool cgroup, in
//!   `GET /oom` and `/metrics`.
//! - **Policy**: a pool whose tasks wait for memory (v1 `under_oom`, or
//!   charges refused at the limit since the last tick) goes through the
//!   same balloon-first reclaim and OOM decision as a budget pool
//!   ([`super::policy`]), until its usage is back under 95 % of the limit;
//!   the decision under `CONSTRAINT_MEMCG` with the configured limit as
//!   `totalpages`. Under cgroup v1 a pool that is merely near its limit
//!   (95 %) is no pressure: nobody lacks memory yet, and the daemon keeps
//!   from talking to VMMs that may be about to stall in a full cgroup.
//!   Under cgroup v2, where the kernel's OOM killer acts at the limit,
//!   95 % is pressure already.
//! - **Reserve**: a full cgroup stalls or fails every thread in it that
//!   needs memory, the VMMs' API threads included, and without them no
//!   balloon can be inflated. Measured here: the idle VMMs' API threads
//!   sat in `mem_cgroup_oom_synchronize`; a new connection thread's
//!   sigaltstack `mmap` failed and std aborted that VMM; `accept` failed
//!   with `ENFILE` and the `eprintln!` reporting it panicked on `ENOMEM`
//!   from the log file. So when tasks of a full pool wait, the daemon lends
//!   the pool [`RESERVE`] bytes above its limit before it talks to any of
//!   its VMMs, and takes them back once usage is under 95 % again; a
//!   waiting vCPU leaves the loan alone
//!   ([`crate::vm::charge_wait::ChargeWait`]), so it goes to the VMMs'
//!   housekeeping and reclaim can work.
//! - **Stop**: once its VMs are gone, each pool cgroup is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::{lock, Daemon, DaemonError};
use crate::daemon_api::events::{CgroupVersionName, DomainFigures, KernelOomKiller, MemcgFigures};
use crate::daemon_api::{ConstraintKind, Event, PoolView};
use crate::host::cgroup::{
    host_swap_free, CgroupError, CgroupVersion, MemcgStats, MemoryHierarchy, PoolCgroup, SWAP_ROOM,
};
use crate::host::memcg_events::MemcgEvents;
use crate::host::procfs::ProcFs;
use crate::oom::constraint::Constraint;
use crate::oom::DomainLimit;

/// The mark (percent of a memcg pool's limit) reclaim brings usage under;
/// below it the lent reserve is returned. Under cgroup v2, usage above it
/// is pressure already.
pub const MEMCG_HIGH_PERCENT: u64 = 95;

/// What a full pool is lent above its limit while the daemon reclaims:
/// room for the VMMs' own threads (stacks, heap, kernel memory), not for
/// guests.
pub const RESERVE: u64 = 16 << 20;

/// How long removal waits for a pool's last processes to go.
const REMOVE_WAIT: Duration = Duration::from_secs(5);

/// The cgroup directory name of pool `pool`.
pub fn cgroup_name(pool: &str) -> String {
    format!("vmm-{pool}")
}

/// The daemon's memcg pools, created at start and removed at stop (or when
/// dropped, should the daemon end another way).
#[derive(Default)]
pub struct MemcgPools {
    hierarchy: Mutex<Option<MemoryHierarchy>>,
    pools: BTreeMap<String, PoolCgroup>,
    /// Pools whose files could not be read last tick (one event each).
    unreadable: Mutex<BTreeSet<String>>,
    /// What the last tick saw, per pool.
    ticks: Mutex<BTreeMap<String, Tick>>,
}

/// A pool as the last tick saw it.
#[derive(Default)]
struct Tick {
    failcnt: u64,
    /// Since when the pool has been full, and whether charges were
    /// refused meanwhile.
    full_since: Option<std::time::Instant>,
    refused_while_full: bool,
    /// Since when the pool has had [`RESERVE`] lent.
    lent_since: Option<std::time::Instant>,
    /// Since when the kernel has had a task of the pool waiting for
    /// memory (v1 `under_oom`).
    under_oom_since: Option<std::time::Instant>,
}

/// How long a pool must be full, with charges refused, before the daemon
/// lends it the reserve: by then a guest whose fault was refused is
/// waiting in [`crate::vm::charge_wait::ChargeWait`], which leaves the loan
/// alone; lent earlier, while that guest's charge is still being retried
/// in the kernel, the charge would succeed and the guest eat the reserve.
/// (Two ticks, when the daemon only looked every 100 ms.)
const LEND_AFTER: Duration = Duration::from_millis(100);

/// How long after a pool fills the supervisor ticks fast for it (well past
/// [`LEND_AFTER`]); beyond that only pressure keeps it fast.
const FAST_WHILE_FILLING: Duration = Duration::from_secs(1);

/// A pool watcher's usage threshold: this far below the limit, so that
/// the daemon wakes as the pool fills, before the first refused charge.
const WAKE_BELOW_LIMIT: u64 = 2 << 20;

impl MemcgPools {
    /// Creates a cgroup with its limit for each `pool → bytes`; none if
    /// `limits` is empty (the memory cgroup is then not even looked for).
    /// On an error, what was created is removed again.
    ///
    /// A cgroup a previous daemon left with VMMs in it is taken over when
    /// every one of them is in `adoptable`, with any reserve it had lent
    /// still counted as lent.
    pub fn create(
        limits: &BTreeMap<String, u64>,
        adoptable: &BTreeSet<u32>,
    ) -> Result<Self, DaemonError> {
        let mut made = MemcgPools::default();
        if limits.is_empty() {
            return Ok(made);
        }
        let mut hierarchy = MemoryHierarchy::of_self().map_err(|error| DaemonError::MemcgPool {
            pool: limits.keys().next().cloned().unwrap_or_default(),
            error,
        })?;
        for (pool, &bytes) in limits {
            match hierarchy.create_pool_adopting(&cgroup_name(pool), bytes, adoptable) {
                Ok(cg) => {
                    if cg.reserve_lent() {
                        lock(&made.ticks)
                            .entry(pool.clone())
                            .or_default()
                            .lent_since = Some(std::time::Instant::now());
                    }
                    made.pools.insert(pool.clone(), cg);
                }
                Err(error) => {
                    *lock(&made.hierarchy) = Some(hierarchy);
                    made.remove_all();
                    return Err(DaemonError::MemcgPool {
                        pool: pool.clone(),
                        error,
                    });
                }
            }
        }
        *lock(&made.hierarchy) = Some(hierarchy);
        Ok(made)
    }

    pub fn get(&self, pool: &str) -> Option<&PoolCgroup> {
        self.pools.get(pool)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &PoolCgroup)> {
        self.pools.iter()
    }

    /// Removes every pool cgroup, waiting for its processes to go, and
    /// undoes what a v2 delegation changed; the outcome per pool.
    pub fn remove_all(&self) -> Vec<(String, Result<(), CgroupError>)> {
        let mut out: Vec<_> = self
            .pools
            .iter()
            .map(|(name, cg)| (name.clone(), cg.remove(REMOVE_WAIT)))
            .collect();
        if let Some(h) = lock(&self.hierarchy).as_mut() {
            if let Err(e) = h.restore() {
                out.push(("(own cgroup)".into(), Err(e)));
            }
        }
        out
    }
}

impl Drop for MemcgPools {
    fn drop(&mut self) {
        // Already gone after a normal stop; this covers the other ends.
        for (pool, r) in self.remove_all() {
            if let Err(e) = r {
                log::warn!("memcg pool {pool}: {e}");
            }
        }
    }
}

impl Daemon {
    /// Events for the pools created at start.
    pub(super) fn announce_memcg_pools(&self) {
        for (pool, cg) in self.memcg.iter() {
            // v1: off in the pool (the daemon decides); v2: no switch, the
            // kernel's memcg OOM killer stays the backstop.
            let (version, kernel_oom_killer) = match cg.version() {
                CgroupVersion::V1 => (CgroupVersionName::V1, KernelOomKiller::Off),
                CgroupVersion::V2 => (CgroupVersionName::V2, KernelOomKiller::Backstop),
            };
            self.events.push(Event::MemcgPoolCreated {
                pool: pool.clone(),
                cgroup: cg.dir().to_path_buf(),
                version,
                limit_bytes: cg.limit(),
                kernel_oom_killer,
            });
        }
    }

    /// A watcher on each pool's cgroup ([`MemcgEvents`]): readable when
    /// the pool fills (v1: nearly at its limit, or out of memory; v2: a
    /// `memory.events` counter moved), so that the supervisor wakes then.
    pub(super) fn memcg_watchers(
        &self,
    ) -> Vec<(
        String,
        Result<MemcgEvents, crate::host::memcg_events::MemcgEventsError>,
    )> {
        self.memcg
            .iter()
            .map(|(pool, cg)| {
                let threshold = cg.limit().saturating_sub(WAKE_BELOW_LIMIT);
                (
                    pool.clone(),
                    MemcgEvents::watch(cg.dir(), cg.version(), threshold),
                )
            })
            .collect()
    }

    /// Whether a pool has just filled up (the supervisor then looks
    /// often, to see refused charges and lend the reserve on time). A
    /// pool that stays full without pressure (one that swaps, or simply
    /// uses all it may) is looked at on the normal tick again after
    /// [`FAST_WHILE_FILLING`]: 10 ms ticks for good would cost the daemon
    /// CPU for nothing.
    pub(super) fn memcg_pool_full(&self) -> bool {
        lock(&self.memcg.ticks).values().any(|t| {
            t.full_since
                .is_some_and(|since| since.elapsed() < FAST_WHILE_FILLING)
        })
    }

    /// The `memory.pressure` file of each cgroup v2 pool, for a PSI
    /// trigger (v1 has none).
    pub(super) fn memcg_pressure_files(&self) -> impl Iterator<Item = (String, PathBuf)> + '_ {
        self.memcg
            .iter()
            .filter(|(_, cg)| cg.version() == CgroupVersion::V2)
            .map(|(pool, cg)| (pool.clone(), cg.dir().join("memory.pressure")))
    }

    /// The cgroup directory a new VM of `pool` joins, if it is a memcg pool.
    pub(super) fn memcg_of(&self, pool: Option<&str>) -> Option<&PoolCgroup> {
        self.memcg.get(pool?)
    }

    /// The OOM domain of a pool: its memory cgroup, or its budget.
    pub(super) fn pool_constraint(&self, pool: &str) -> Result<Constraint, DaemonError> {
        if let Some(cg) = self.memcg.get(pool) {
            let mut c = Constraint::memcg(cg.dir(), &ProcFs::host())?;
            // The configured limit, not the reserve lent on top of it.
            if let Constraint::Memcg { limit, .. } = &mut c {
                limit.memory = Some(cg.limit());
            }
            return Ok(c);
        }
        match self.budgets().get(pool) {
            Some(&bytes) => Ok(Constraint::budget(pool, bytes)?),
            None => Err(DaemonError::Invalid(format!(
                "pool '{pool}' has no budget or memory cgroup configured"
            ))),
        }
    }

    /// Each memcg pool's limit and usage now, for the policy; lends a
    /// full pool whose tasks wait the [`RESERVE`], and takes it back once
    /// usage is under the pressure mark. A pool whose files cannot be read
    /// is left out this tick, with an event.
    ///
    /// Without reclaim first (kill only) the decision need not wait for
    /// the loan: it asks the VMMs for nothing, so pressure starts as soon
    /// as tasks wait.
    pub(super) fn memcg_limits(&self, reclaim_first: bool) -> Vec<(String, DomainLimit)> {
        self.memcg
            .iter()
            .filter_map(|(pool, cg)| match cg.stats() {
                Ok(s) => {
                    lock(&self.memcg.unreadable).remove(pool);
                    Some((pool.clone(), self.memcg_tick(pool, cg, &s, reclaim_first)))
                }
                Err(e) => {
                    if !lock(&self.memcg.unreadable).insert(pool.clone()) {
                        return None;
                    }
                    self.events.push(Event::MemcgPoolUnreadable {
                        pool: pool.clone(),
                        error: e.to_string(),
                    });
                    None
                }
            })
            .collect()
    }

    fn memcg_tick(
        &self,
        pool: &str,
        cg: &PoolCgroup,
        s: &MemcgStats,
        reclaim_first: bool,
    ) -> DomainLimit {
        let limit = cg.limit();
        let high = limit / 100 * MEMCG_HIGH_PERCENT;
        let mut ticks = lock(&self.memcg.ticks);
        let tick = ticks.entry(pool.to_string()).or_default();
        let refused = s.failcnt > tick.failcnt;
        tick.failcnt = s.failcnt;
        let full = s.usage_bytes + (1 << 20) >= limit;
        let now = std::time::Instant::now();
        if full {
            tick.full_since.get_or_insert(now);
            tick.refused_while_full |= refused;
        } else {
            tick.full_since = None;
            tick.refused_while_full = false;
        }
        if s.under_oom {
            tick.under_oom_since.get_or_insert(now);
        } else {
            tick.under_oom_since = None;
        }
        // A pool that may still swap is not out of memory at its limit:
        // the kernel makes room by swapping out, a refused charge counts
        // no more than a page fault does, and a vCPU whose charge was
        // refused retries instead of waiting (ChargeWait). Only a task the
        // kernel keeps waiting tick after tick is short there (issue 9).
        let can_swap = cg
            .swap_room(host_swap_free())
            .is_ok_and(|room| room >= SWAP_ROOM);
        // Tasks wait: in the kernel (v1 under_oom) or vCPUs in ChargeWait.
        let lasted = |since: Option<std::time::Instant>| {
            since.is_some_and(|t| now.saturating_duration_since(t) >= LEND_AFTER)
        };
        let waiting = if can_swap {
            lasted(tick.under_oom_since)
        } else {
            s.under_oom || (full && tick.refused_while_full)
        };
        let lend = waiting && lasted(tick.full_since);
        // With swap, v1 takes a loan back by reclaiming down to the
        // limit (what the pool took of it goes out to swap).
        let reclaim_back = can_swap && cg.version() == CgroupVersion::V1;
        match tick.lent_since {
            None if lend => match cg.set_limit(limit + RESERVE) {
                Ok(()) => {
                    tick.lent_since = Some(std::time::Instant::now());
                    self.events.push(Event::MemcgReserveLent {
                        pool: pool.into(),
                        reserve_bytes: RESERVE,
                        usage_bytes: s.usage_bytes,
                        under_oom: s.under_oom,
                    });
                }
                Err(e) => {
                    self.events.push(Event::MemcgReserveFailed {
                        pool: pool.into(),
                        error: e.to_string(),
                    });
                }
            },
            // Not returned if the kernel refuses (usage rose again): next
            // tick.
            // With swap, a loan is taken back after LEND_AFTER whatever
            // happens meanwhile: a task that sleeps at the limit again
            // (the loan spent) would otherwise keep it lent for good,
            // with the pool stuck above its limit (seen in the swap test
            // with 10 ms ticks). The sleepers' clocks start again.
            Some(since)
                if (s.usage_bytes <= high && cg.set_limit(limit).is_ok())
                    || (reclaim_back
                        && (!lend || lasted(Some(since)))
                        && cg.reclaim_to_limit(limit).is_ok()) =>
            {
                tick.lent_since = None;
                tick.under_oom_since = None;
                tick.full_since = None;
                self.events.push(Event::MemcgReserveReturned {
                    pool: pool.into(),
                    usage_bytes: s.usage_bytes,
                    lent_ms: since.elapsed().as_millis() as u64,
                });
            }
            _ => {}
        }
        // Under v1, pressure starts with the loan, so that the VMMs are
        // only ever asked for memory while they have room to answer.
        // A pool that may swap is not short: the loan only wakes a task
        // the kernel put to sleep at the limit, and is taken back by
        // swapping out.
        let pressure = match cg.version() {
            CgroupVersion::V1 if can_swap => false,
            CgroupVersion::V1 if !reclaim_first => waiting || tick.lent_since.is_some(),
            CgroupVersion::V1 => lend || tick.lent_since.is_some(),
            CgroupVersion::V2 => waiting || s.usage_bytes > high,
        };
        DomainLimit {
            figures: DomainFigures::Memcg(MemcgFigures {
                cgroup: cg.dir().to_path_buf(),
                failcnt: s.failcnt,
                under_oom: s.under_oom,
                reserve_lent: tick.lent_since.is_some(),
                kernel_oom_kills: s.oom_kills,
            }),
            usage: s.usage_bytes,
            limit,
            high,
            release_below: limit / 100 * crate::oom::domain::RELEASE_BELOW_PERCENT,
            pressure,
            waiting,
        }
    }

    /// `GET /oom`: memcg pools show their cgroup's limit and usage (all it
    /// holds: guest RAM, the VMMs, their kernel memory and page cache), and
    /// are listed even with no VM.
    pub(super) fn memcg_pool_views(&self, views: &mut BTreeMap<String, PoolView>) {
        for (pool, cg) in self.memcg.iter() {
            let stats = cg.stats().ok();
            let view = views.entry(pool.clone()).or_insert(PoolView {
                name: pool.clone(),
                constraint: ConstraintKind::Memcg,
                limit_bytes: None,
                usage_bytes: 0,
                vms: 0,
            });
            view.constraint = ConstraintKind::Memcg;
            view.limit_bytes = Some(cg.limit());
            if let Some(s) = stats {
                view.usage_bytes = s.usage_bytes;
            }
        }
    }

    /// `/metrics`: usage, limit and OOM counters of each memcg pool.
    pub(super) fn render_memcg_metrics(&self, out: &mut String) {
        if self.memcg.iter().next().is_none() {
            return;
        }
        let rows: Vec<_> = self
            .memcg
            .iter()
            .filter_map(|(pool, cg)| Some((label(pool), cg.stats().ok()?)))
            .collect();
        type Field = fn(&MemcgStats) -> Option<u64>;
        let families: [(&str, &str, &str, Field); 6] = [
            (
                "vmm_memcg_pool_usage_bytes",
                "gauge",
                "Memory charged to each memcg pool's cgroup.",
                |s| Some(s.usage_bytes),
            ),
            (
                "vmm_memcg_pool_limit_bytes",
                "gauge",
                "The memory limit of each memcg pool's cgroup.",
                |s| s.limit_bytes,
            ),
            (
                "vmm_memcg_pool_failcnt_total",
                "counter",
                "Charges the pool's cgroup refused at its limit (v1 memory.failcnt, v2 memory.events max).",
                |s| Some(s.failcnt),
            ),
            (
                "vmm_memcg_pool_under_oom",
                "gauge",
                "1 while tasks of the pool wait for memory (cgroup v1 under_oom).",
                |s| Some(u64::from(s.under_oom)),
            ),
            (
                "vmm_memcg_pool_kernel_oom_total",
                "counter",
                "Invocations of the kernel's OOM killer in the pool (cgroup v2 memory.events oom).",
                |s| s.oom_events,
            ),
            (
                "vmm_memcg_pool_kernel_oom_kills_total",
                "counter",
                "Processes the kernel's OOM killer killed in the pool.",
                |s| Some(s.oom_kills),
            ),
        ];
        for (name, kind, help, field) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (pool, stats) in &rows {
                if let Some(v) = field(stats) {
                    let _ = writeln!(out, "{name}{{pool=\"{pool}\"}} {v}");
                }
            }
        }
    }

    /// Removes the pool cgroups (daemon stop, after its VMs are gone).
    pub(super) fn remove_memcg_pools(&self) {
        for (pool, r) in self.memcg.remove_all() {
            self.events.push(match r {
                Ok(()) => Event::MemcgPoolRemoved { pool },
                Err(e) => Event::MemcgPoolRemoveFailed {
                    pool,
                    error: e.to_string(),
                },
            });
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::daemon::process::ReapMethod;
    use crate::daemon::{config, DaemonConfig};
    use crate::daemon_api::DaemonBackend;

    fn cfg(name: &str) -> DaemonConfig {
        let state_dir =
            std::env::temp_dir().join(format!("vmm-pools-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state_dir);
        DaemonConfig {
            socket: state_dir.join("daemon.sock"),
            state_dir,
            vmm_bin: PathBuf::from("/nonexistent/vmm"),
            policy: crate::daemon_api::OomPolicy::default(),
            reap: ReapMethod::SigkillMrelease,
            budgets: BTreeMap::new(),
            memcg_pools: BTreeMap::new(),
        }
    }

    #[test]
    fn the_config_takes_memcg_pools_and_refuses_bad_ones() {
        let mut c = cfg("config");
        config::apply(
            &mut c,
            r#"{"budgets": {"b": 1048576}, "memcg_pools": {"m": 268435456}}"#,
        )
        .unwrap();
        assert_eq!(
            c.memcg_pools,
            BTreeMap::from([("m".to_string(), 256 << 20)])
        );
        for (text, why) in [
            (
                r#"{"memcg_pools": {"m": 0}}"#,
                "memory cgroup limit of pool 'm' is 0",
            ),
            (r#"{"memcg_pools": {"../x": 1}}"#, "pool: "),
            (r#"{"memcg_pools": {"m": -1}}"#, "invalid value"),
            (
                r#"{"budgets": {"m": 1}, "memcg_pools": {"m": 1}}"#,
                "pool 'm' has both a budget and a memory cgroup limit",
            ),
        ] {
            let e = config::apply(&mut cfg("config"), text)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn no_memcg_pools_touch_no_cgroup() {
        let pools = MemcgPools::create(&BTreeMap::new(), &BTreeSet::new()).unwrap();
        assert!(pools.iter().next().is_none());
        assert!(lock(&pools.hierarchy).is_none());
    }

    /// A daemon with a memcg pool on this machine (cgroup v1): the pool's
    /// cgroup below our own, with its limit and the kernel's OOM killer
    /// off; shown in `GET /oom` and `/metrics`; the OOM domain of the pool;
    /// removed at stop, and when a daemon is dropped without one.
    #[test]
    fn a_daemon_makes_its_memcg_pools_and_removes_them() {
        let Ok(own) = MemoryHierarchy::of_self() else {
            eprintln!("no memory cgroup here; skipped");
            return;
        };
        if own.version() != CgroupVersion::V1 {
            eprintln!("not cgroup v1 here; skipped");
            return;
        }
        let pool = format!("t{}", std::process::id());
        let dir = own.own().join(cgroup_name(&pool));
        let mut c = cfg("daemon");
        c.memcg_pools.insert(pool.clone(), 64 << 20);
        let state_dir = c.state_dir.clone();
        let d = Daemon::new(c.clone()).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.limit_in_bytes").trim(), "67108864");
        assert!(read("memory.oom_control").contains("oom_kill_disable 1"));
        let created = d
            .events
            .since(0)
            .into_iter()
            .find_map(|e| match e.event {
                Event::MemcgPoolCreated {
                    cgroup,
                    kernel_oom_killer,
                    ..
                } => Some((cgroup, kernel_oom_killer)),
                _ => None,
            })
            .expect("an event");
        assert_eq!(created, (dir.clone(), KernelOomKiller::Off));

        let view = d.oom();
        let p = view.pressure.pools.iter().find(|p| p.name == pool).unwrap();
        assert_eq!(
            (p.constraint, p.limit_bytes, p.vms),
            (ConstraintKind::Memcg, Some(64 << 20), 0)
        );
        let metrics = d.metrics();
        assert!(
            metrics.contains(&format!(
                "vmm_memcg_pool_limit_bytes{{pool=\"{pool}\"}} 67108864"
            )),
            "{metrics}"
        );
        assert!(metrics.contains(&format!(
            "vmm_memcg_pool_kernel_oom_kills_total{{pool=\"{pool}\"}} 0"
        )));
        let record = d
            .oom_decide(
                crate::daemon_api::events::DecisionTrigger::Manual,
                true,
                d.pool_constraint(&pool).unwrap(),
            )
            .unwrap();
        let decision = record.decision().unwrap();
        assert_eq!(
            decision.constraint,
            format!("CONSTRAINT_MEMCG ({})", dir.display())
        );
        assert_eq!(decision.totalpages, (64 << 20) / crate::host::page_size());
        assert_eq!(decision.victim, None);
        let e = d.pool_constraint("nope").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool 'nope' has no budget or memory cgroup configured"
        );

        d.stop_all();
        assert!(!dir.exists(), "removed at stop");
        assert!(d
            .events
            .since(0)
            .iter()
            .any(|e| e.kind() == "memcg_pool_removed"));
        drop(d);

        // A daemon that ends without stop_all still removes its pools.
        let d = Daemon::new(c).unwrap();
        assert!(dir.exists());
        drop(d);
        assert!(!dir.exists(), "removed on drop");
        let _ = std::fs::remove_dir_all(state_dir);
    }
}
