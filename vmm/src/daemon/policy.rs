//! The automatic policy for pools with a limit: reclaim first, then
//! decide. Each tick (the supervisor's) compares a pool's usage with its
//! limit, whatever sets it ([`PoolLimit`]): a byte **budget** the daemon
//! alone enforces (usage: RSS + swap of the pool's VMMs; pressure: over
//! the budget), or a **memory cgroup** the kernel enforces
//! ([`super::pools`]; usage: what the cgroup is charged, which can never
//! pass the limit; pressure: tasks wait for memory there, see
//! [`super::pools`] for when exactly). Under pressure:
//!
//! 1. **Reclaim**: inflate the balloons of the pool's VMs that report free
//!    memory (guest statistics), each by its share of the excess, weighted
//!    by what it can give beyond a floor it keeps. The kernel cannot do
//!    this: it sees a VMM as one big process, not a guest with free pages.
//! 2. **Decide**: only when reclaim has made no progress (neither did the
//!    pool's usage fall nor did any of its VMs shrink) for
//!    `no_progress_ms`, no earlier
//!    victim is still releasing memory ([`crate::oom::select`] checks), and
//!    the last kill is at least `min_kill_interval_ms` old, run the OOM
//!    decision for the pool (`CONSTRAINT_BUDGET` or `CONSTRAINT_MEMCG`).
//!
//! A VM that shrinks counts as progress because in a memory cgroup at its
//! limit whatever the balloons free is taken at once by the VM waiting for
//! it: the pool's usage stays at the limit while reclaim works, but memory
//! moves from the idle guests to the one that needs it.
//!
//! Back under 90 % of the limit, the balloons are deflated again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::vms::is_live;
use super::{lock, vm_client, Daemon};
use crate::daemon_api::VmState;

/// What the policy remembers about a pool between ticks.
#[derive(Debug, Default)]
pub struct PoolState {
    /// Usage at the last progress, and when that was.
    best_usage: u64,
    last_progress: Option<Instant>,
    /// Each VM's usage at the last tick, and the bytes VMs gave back
    /// (shrank by) since the last progress.
    last_usage: BTreeMap<String, u64>,
    shrunk: u64,
    /// Balloon targets the policy asked for, per VM, in MiB.
    requested_mib: BTreeMap<String, u32>,
}

/// A pool's limit and usage as read this tick, whatever enforces the limit.
pub struct PoolLimit {
    /// What sets the limit: `budget` (the daemon alone) or `memcg` (a
    /// memory cgroup, the kernel); names the trigger of the decision.
    pub kind: &'static str,
    /// Bytes the pool uses.
    pub usage: u64,
    /// The budget or the cgroup's limit, in bytes.
    pub limit: u64,
    /// What reclaim aims to bring usage down to: the budget itself, or
    /// 95 % of a cgroup's limit.
    pub high: u64,
    /// Whether the pool is under pressure now.
    pub pressure: bool,
    /// Tasks of the pool wait for memory (memory cgroups).
    pub waiting: bool,
    /// More for the events (a cgroup's path and counters).
    pub detail: Value,
}

impl PoolLimit {
    fn budget(usage: u64, budget: u64) -> Self {
        PoolLimit {
            kind: "budget",
            usage,
            limit: budget,
            high: budget,
            pressure: usage > budget,
            waiting: false,
            detail: Value::Null,
        }
    }

    /// The event body about this pool.
    fn event(&self, pool: &str) -> Value {
        let mut body = json!({
            "pool": pool,
            "constraint": self.kind,
            "usage_bytes": self.usage,
            "limit_bytes": self.limit,
        });
        if self.kind == "budget" {
            body["budget_bytes"] = json!(self.limit);
        }
        if let (Some(body), Some(detail)) = (body.as_object_mut(), self.detail.as_object()) {
            body.extend(detail.clone());
        }
        body
    }

    fn why(&self, pool: &str, no_progress_ms: u64) -> String {
        let (usage, limit) = (self.usage >> 20, self.limit >> 20);
        let state = match self.kind {
            "budget" => format!("over its budget ({usage} MiB > {limit} MiB)"),
            _ if self.waiting => format!(
                "at {usage} MiB of its memory cgroup limit of {limit} MiB, tasks waiting for memory,"
            ),
            _ => format!("at {usage} MiB of its memory cgroup limit of {limit} MiB"),
        };
        format!("pool {pool} {state} with no progress for {no_progress_ms} ms")
    }
}

/// A guest keeps at least this much of its free memory.
const FLOOR_MIB: u64 = 16;
/// Deflate once usage is below this fraction of the limit (percent).
const RELEASE_BELOW_PERCENT: u64 = 90;

/// One member of a pool, as read this tick.
struct Member {
    id: String,
    sock: PathBuf,
    usage: u64,
    mem_mib: u64,
    has_balloon: bool,
}

/// A member's balloon as its VMM reports it.
struct Balloon<'m> {
    member: &'m Member,
    /// Guest-reported free memory, bytes.
    free: u64,
    actual_mib: u32,
}

impl Daemon {
    /// One policy pass over every pool with a limit: byte budgets and
    /// memory-cgroup pools.
    pub fn enforce_budgets(&self) {
        for (pool, &budget) in self.budgets() {
            let members = self.members(pool);
            let usage = members.iter().map(|m| m.usage).sum();
            self.enforce_pool(pool, PoolLimit::budget(usage, budget), &members);
        }
        for (pool, limit) in self.memcg_limits() {
            let members = self.members(&pool);
            self.enforce_pool(&pool, limit, &members);
        }
    }

    fn members(&self, pool: &str) -> Vec<Member> {
        self.with_vms(|vms| {
            vms.values()
                .filter(|v| v.spec.pool.as_deref() == Some(pool) && is_live(v.state))
                .map(|v| Member {
                    id: v.id.clone(),
                    sock: v.api_sock.clone(),
                    usage: v.memory().map_or(0, |m| m.rss + m.swap),
                    mem_mib: u64::from(v.spec.mem_mib),
                    has_balloon: v.spec.balloon.is_some() && v.state == VmState::Running,
                })
                .collect()
        })
    }

    fn enforce_pool(&self, pool: &str, lim: PoolLimit, members: &[Member]) {
        let usage = lim.usage;
        let policy = self.policy();
        let pressure = lim.pressure;
        // Balloons are asked before the pool's state is locked.
        let balloons = if pressure && policy.reclaim_first {
            balloons(members)
        } else {
            Vec::new()
        };
        let mut pools = lock(&self.pool_states);
        let st = pools.entry(pool.to_string()).or_default();

        if !pressure {
            st.last_progress = None;
            st.last_usage.clear();
            if usage * 100 < lim.limit * RELEASE_BELOW_PERCENT && !st.requested_mib.is_empty() {
                for (id, _) in std::mem::take(&mut st.requested_mib) {
                    if let Some(m) = members.iter().find(|m| m.id == id) {
                        let _ = vm_client::set_balloon_target(&m.sock, 0);
                    }
                }
                self.events.push("reclaim_released", lim.event(pool));
            }
            return;
        }

        let now = Instant::now();
        for m in members {
            let before = st.last_usage.insert(m.id.clone(), m.usage);
            st.shrunk += before.map_or(0, |b| b.saturating_sub(m.usage));
        }
        st.last_usage
            .retain(|id, _| members.iter().any(|m| &m.id == id));
        if st.last_progress.is_none() || usage + (1 << 20) < st.best_usage || st.shrunk >= 1 << 20 {
            st.best_usage = usage;
            st.shrunk = 0;
            st.last_progress = Some(now);
        }
        if policy.reclaim_first {
            let excess = usage.saturating_sub(lim.high).max(1 << 20);
            reclaim(self, pool, excess, &balloons, st);
        }
        let stalled = now.duration_since(st.last_progress.unwrap_or(now))
            >= Duration::from_millis(policy.no_progress_ms);
        let rate_ok = lock(&self.last_kill).is_none_or(|t| {
            now.duration_since(t) >= Duration::from_millis(policy.min_kill_interval_ms)
        });
        if stalled && rate_ok {
            drop(pools);
            let mut body = lim.event(pool);
            body["why"] = json!(lim.why(pool, policy.no_progress_ms));
            self.events.push("oom_pressure", body);
            let _ = self.oom_decide(lim.kind, false, Some(pool));
            if let Some(st) = lock(&self.pool_states).get_mut(pool) {
                // A new round: the kill is the progress.
                st.last_progress = None;
            }
        }
    }
}

/// The balloons of the members that have one, as their VMMs report them.
fn balloons(members: &[Member]) -> Vec<Balloon<'_>> {
    members
        .iter()
        .filter(|m| m.has_balloon)
        .filter_map(|m| {
            let stats = vm_client::request(&m.sock, "GET", "/balloon/statistics", None).ok()?;
            let stats: Value = serde_json::from_str(&stats).ok()?;
            Some(Balloon {
                member: m,
                free: stats["free_memory"].as_u64()?,
                actual_mib: stats["actual_mib"].as_u64().unwrap_or(0) as u32,
            })
        })
        .collect()
}

/// Inflates balloons of members with free memory by their fair share of
/// `excess` bytes. Only ever raises a target it asked for before.
fn reclaim(d: &Daemon, pool: &str, excess: u64, balloons: &[Balloon<'_>], st: &mut PoolState) {
    // What each guest can give: its reported free memory minus a floor,
    // minus what its balloon already holds.
    let givers: Vec<(&Member, u64, u32)> = balloons
        .iter()
        .map(|b| {
            let floor = (FLOOR_MIB << 20).max((b.member.mem_mib << 20) / 20);
            (b.member, b.free.saturating_sub(floor), b.actual_mib)
        })
        .filter(|(_, can_give, _)| *can_give >= 1 << 20)
        .collect();
    let total: u64 = givers.iter().map(|(_, g, _)| g).sum();
    if total == 0 {
        return;
    }
    let mut asked = Vec::new();
    for (m, can_give, actual_mib) in givers {
        // Fair share, weighted by what each can give; rounded up to MiB.
        let share = (excess.min(total) as u128 * can_give as u128 / total as u128) as u64;
        let share_mib = share.div_ceil(1 << 20).min(can_give >> 20) as u32;
        let target = actual_mib + share_mib;
        let prev = st.requested_mib.get(&m.id).copied().unwrap_or(0);
        if share_mib == 0 || target <= prev {
            continue;
        }
        if vm_client::set_balloon_target(&m.sock, target).is_ok() {
            st.requested_mib.insert(m.id.clone(), target);
            asked.push(json!({ "vm": m.id, "target_mib": target, "can_give_mib": can_give >> 20 }));
        }
    }
    if !asked.is_empty() {
        d.events.push(
            "reclaim",
            json!({ "pool": pool, "excess_bytes": excess, "balloons": asked }),
        );
    }
}
