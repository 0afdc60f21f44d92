//! Decide: is the domain really out of memory? The kernel declares OOM
//! when reclaim has failed; so do we, with reclaim that is slower (a
//! guest inflates its balloon in tens of milliseconds, not microseconds)
//! and so given time: a decision runs only once the domain has made no
//! progress for `no_progress_ms`, and no sooner than `min_kill_interval_ms`
//! after the last kill. Whether an earlier victim still releases memory
//! is the selection's question ([`super::select`]), as in the kernel's
//! `oom_evaluate_task`.
//!
//! Progress is either the domain's usage falling, or its VMs shrinking:
//! in a memory cgroup at its limit whatever the balloons free is taken at
//! once by the VM waiting for it, so the pool's usage stays at the limit
//! while memory moves from the idle guests to the one that needs it.
//!
//! A domain whose decisions find no victim (every VM `-1000`) would
//! decide again every few seconds for as long as the pressure lasts;
//! the first such decision is reported, the repeats are counted
//! ([`Stuck`]) and reported every [`STUCK_REPORT_EVERY`] and when it ends.

use std::time::{Duration, Instant};

use super::domain::DomainLimit;
use super::state::{DomainState, Stuck};

/// How often a stuck domain's repeated decisions are reported.
pub const STUCK_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Notes this tick's usage of the domain and of each member (VM id,
/// bytes): progress is the domain's usage a step below its best since
/// the last progress, or its members together a step smaller.
pub fn note_progress(
    st: &mut DomainState,
    limit: &DomainLimit,
    members: &[(String, u64)],
    now: Instant,
) {
    for (vm, usage) in members {
        let before = st.last_usage.insert(vm.clone(), *usage);
        st.shrunk += before.map_or(0, |b| b.saturating_sub(*usage));
    }
    st.last_usage
        .retain(|vm, _| members.iter().any(|(m, _)| m == vm));
    let step = limit.progress_step();
    if st.last_progress.is_none()
        || limit.usage.saturating_add(step) < st.best_usage
        || st.shrunk >= step
    {
        st.best_usage = limit.usage;
        st.shrunk = 0;
        st.last_progress = Some(now);
    }
}

/// The knobs a decision waits on, from the operator's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Whether reclaim runs first; without it there is no progress to
    /// wait for.
    pub reclaim_first: bool,
    pub no_progress: Duration,
    pub min_kill_interval: Duration,
}

/// Whether to run the OOM decision now: no progress for long enough
/// (at once without reclaim, as the kernel does), and the last kill
/// (`last_kill`, any domain's) far enough back.
pub fn out_of_patience(
    st: &DomainState,
    patience: Patience,
    last_kill: Option<Instant>,
    now: Instant,
) -> bool {
    let no_progress = !patience.reclaim_first
        || now.saturating_duration_since(st.last_progress.unwrap_or(now)) >= patience.no_progress;
    let rate_ok =
        last_kill.is_none_or(|t| now.saturating_duration_since(t) >= patience.min_kill_interval);
    no_progress && rate_ok
}

/// Decisions a stuck domain made without a report: how many, why, since
/// when; `ongoing` false once the domain is no longer stuck.
#[derive(Debug, Clone, PartialEq)]
pub struct RepeatedDecisions {
    pub reason: String,
    pub decisions: u64,
    pub stuck_for: Duration,
    pub ongoing: bool,
}

/// What to report of a decision just made.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// Report it (its pressure and decision events); false for a repeat
    /// of a stuck domain's decision.
    pub report: bool,
    /// The stuck domain's repeats to report now, if any.
    pub repeated: Option<RepeatedDecisions>,
}

/// A decision ran at `now`: it found a victim, or none for `no_victim`
/// (the selection's reason). The next decision waits for a new round of
/// no progress: the kill is the progress.
pub fn decided(st: &mut DomainState, now: Instant, no_victim: Option<&str>) -> Decided {
    st.last_progress = None;
    match (no_victim, st.stuck.as_mut()) {
        (Some(reason), Some(s)) if s.reason == reason => {
            s.decisions += 1;
            let due = now.saturating_duration_since(s.reported_at) >= STUCK_REPORT_EVERY;
            let repeated = due.then(|| {
                let r = RepeatedDecisions {
                    reason: s.reason.clone(),
                    decisions: s.decisions - s.reported,
                    stuck_for: now.saturating_duration_since(s.since),
                    ongoing: true,
                };
                s.reported_at = now;
                s.reported = s.decisions;
                r
            });
            Decided {
                report: false,
                repeated,
            }
        }
        (no_victim, _) => {
            let repeated = unstuck(st, now);
            st.stuck = no_victim.map(|reason| Stuck {
                since: now,
                reason: reason.to_string(),
                decisions: 1,
                reported_at: now,
                reported: 1,
            });
            Decided {
                report: true,
                repeated,
            }
        }
    }
}

/// The domain is no longer stuck (a victim was found, the reason changed,
/// or the pressure ended): the repeats not reported yet, if any.
pub fn unstuck(st: &mut DomainState, now: Instant) -> Option<RepeatedDecisions> {
    let s = st.stuck.take()?;
    (s.decisions > s.reported).then(|| RepeatedDecisions {
        reason: s.reason,
        decisions: s.decisions - s.reported,
        stuck_for: now.saturating_duration_since(s.since),
        ongoing: false,
    })
}
