//! The automatic policy for pools with a byte budget: reclaim first, then
//! decide. Each tick (the supervisor's) compares a pool's usage (RSS + swap
//! of its VMMs) with its budget. Over budget:
//!
//! 1. **Reclaim**: inflate the balloons of the pool's VMs that report free
//!    memory (guest statistics), each by its share of the excess, weighted
//!    by what it can give beyond a floor it keeps. The kernel cannot do
//!    this: it sees a VMM as one big process, not a guest with free pages.
//! 2. **Decide**: only when usage has not fallen (no progress) for
//!    `no_progress_ms`, no earlier victim is still releasing memory
//!    ([`crate::oom::select`] checks), and the last kill is at least
//!    `min_kill_interval_ms` old, run the OOM decision for the pool.
//!
//! Back under 90 % of the budget, the balloons are deflated again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::vms::is_live;
use super::{lock, vm_client, Daemon};
use crate::daemon_api::VmState;

/// What the policy remembers about a pool between ticks.
#[derive(Debug, Default)]
pub struct PoolState {
    /// Lowest usage seen since the pool went over budget, and when.
    best_usage: u64,
    last_progress: Option<Instant>,
    /// Balloon targets the policy asked for, per VM, in MiB.
    requested_mib: BTreeMap<String, u32>,
}

/// A guest keeps at least this much of its free memory.
const FLOOR_MIB: u64 = 16;
/// Deflate once usage is below this fraction of the budget (percent).
const RELEASE_BELOW_PERCENT: u64 = 90;

/// One member of a pool, as read this tick.
struct Member {
    id: String,
    sock: PathBuf,
    usage: u64,
    mem_mib: u64,
    has_balloon: bool,
}

impl Daemon {
    /// One policy pass over every pool with a budget.
    pub fn enforce_budgets(&self) {
        for (pool, &budget) in self.budgets() {
            self.enforce_budget(pool, budget);
        }
    }

    fn enforce_budget(&self, pool: &str, budget: u64) {
        let members: Vec<Member> = self.with_vms(|vms| {
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
        });
        let usage: u64 = members.iter().map(|m| m.usage).sum();
        let policy = self.policy();
        let mut pools = lock(&self.pool_states);
        let st = pools.entry(pool.to_string()).or_default();

        if usage <= budget {
            st.last_progress = None;
            if usage * 100 < budget * RELEASE_BELOW_PERCENT && !st.requested_mib.is_empty() {
                for (id, _) in std::mem::take(&mut st.requested_mib) {
                    if let Some(m) = members.iter().find(|m| m.id == id) {
                        let _ = vm_client::set_balloon_target(&m.sock, 0);
                    }
                }
                self.events.push(
                    "reclaim_released",
                    json!({ "pool": pool, "usage_bytes": usage, "budget_bytes": budget }),
                );
            }
            return;
        }

        let now = Instant::now();
        if st.last_progress.is_none() || usage + (1 << 20) < st.best_usage {
            st.best_usage = usage;
            st.last_progress = Some(now);
        }
        if policy.reclaim_first {
            reclaim(self, pool, usage - budget, &members, st);
        }
        let stalled = now.duration_since(st.last_progress.unwrap_or(now))
            >= Duration::from_millis(policy.no_progress_ms);
        let rate_ok = lock(&self.last_kill).is_none_or(|t| {
            now.duration_since(t) >= Duration::from_millis(policy.min_kill_interval_ms)
        });
        if stalled && rate_ok {
            drop(pools);
            let reason = format!(
                "pool {pool} over its budget ({} MiB > {} MiB) with no progress for {} ms",
                usage >> 20,
                budget >> 20,
                policy.no_progress_ms
            );
            self.events.push("oom_pressure", json!({ "pool": pool, "usage_bytes": usage, "budget_bytes": budget, "why": reason }));
            let _ = self.oom_decide("budget", false, Some(pool));
            if let Some(st) = lock(&self.pool_states).get_mut(pool) {
                // A new round: the kill is the progress.
                st.last_progress = None;
            }
        }
    }
}

/// Inflates balloons of members with free memory by their fair share of
/// `excess` bytes. Only ever raises a target it asked for before.
fn reclaim(d: &Daemon, pool: &str, excess: u64, members: &[Member], st: &mut PoolState) {
    // What each guest can give: its reported free memory minus a floor,
    // minus what its balloon already holds.
    let givers: Vec<(&Member, u64, u32)> = members
        .iter()
        .filter(|m| m.has_balloon)
        .filter_map(|m| {
            let stats = vm_client::request(&m.sock, "GET", "/balloon/statistics", None).ok()?;
            let stats: serde_json::Value = serde_json::from_str(&stats).ok()?;
            let free = stats["free_memory"].as_u64()?;
            let actual_mib = stats["actual_mib"].as_u64().unwrap_or(0) as u32;
            let floor = (FLOOR_MIB << 20).max((m.mem_mib << 20) / 20);
            Some((m, free.saturating_sub(floor), actual_mib))
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
