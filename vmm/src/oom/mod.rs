//! The host OOM manager: the kernel's OOM design (`mm/oom_kill.c`) applied
//! one level up, to whole VMs, with one thing the kernel cannot do — ask a
//! guest for memory back before anyone dies.
//!
//! # The pipeline
//!
//! Read top to bottom, like the kernel's `out_of_memory()`.
//! [`out_of_memory`] runs the pipeline for one domain ([`domain`]) and
//! one tick: a pure function of a [`Snapshot`] the daemon gathered and
//! of the domain's [`DomainState`], returning the [`Plan`] the daemon
//! carries out. Stages 1, 2, 5 and 6 read and act on the host; the
//! selection itself ([`select`]) is pure again.
//!
//! 1. **Monitor** — what the host and each VM hold, and how much the host
//!    is stalling. Host: [`crate::host::procfs`] (`/proc/meminfo`, `/proc/vmstat`
//!    `oom_kill`) and [`crate::host::psi`] (pressure lines, and PSI triggers that wake
//!    the daemon through `poll` the moment stalls cross a threshold). Per
//!    VM: [`crate::host::memstat`] (the kernel's rss/swap/page-table counters of
//!    the VMM process); each VM's balloon and guest agent
//!    ([`guest`]); memory-cgroup pools (`crate::host::cgroup`). Gathered
//!    by the daemon's policy into a [`Snapshot`].
//! 2. **Constraint** — [`constraint::constrained_alloc`]: which memory ran
//!    out (the host, a pool's memory cgroup, a NUMA node set, a pool's byte
//!    budget), its size in pages (`totalpages`, the yardstick of
//!    `oom_score_adj`) and the VMs that live in it.
//! 3. **Reclaim** — [`reclaim`]: inflate the balloons of guests with free
//!    memory first, fairly, above each guest's floor; let them go, slowly,
//!    once the domain is calm. Balloons that do not follow are stalled
//!    ([`stall`]) and left alone for a while.
//! 4. **Decide** — [`decide`]: are we really out of memory? Reclaim made
//!    no progress for a while, the last kill is far enough back; a domain
//!    whose decisions find no victim says so once, then counts.
//! 5. **Select** — [`badness::oom_badness`] for every eligible VM, highest
//!    wins; `oom_score_adj` -1000 and VMs being reaped are never chosen.
//!    [`badness::oom_score`] is the 0..=2000 figure users know from
//!    `/proc/<pid>/oom_score`. [`select::select_bad_vm`] is the loop, with
//!    its knob (kill the fastest grower) and the table it dumps.
//! 6. **Kill and reap** — SIGKILL through a pidfd, `process_mrelease`, or
//!    the VMM's own `MADV_DONTNEED` release: the daemon's `process`
//!    module, the one stage that is all I/O.
//!
//! # What is checked against the kernel
//!
//! The tests score real processes with [`badness`] from `/proc/<pid>/status`
//! and compare with the kernel's `/proc/<pid>/oom_score`; they arm a real
//! PSI trigger and make real memory pressure in a scratch memory cgroup
//! below the test's own. Constraint sizes are checked on fixture trees
//! (`vmm/tests/fixtures/oom/`) for 2- and 4-node hosts and cgroup v1/v2.

pub mod badness;
pub mod constraint;
pub mod decide;
pub mod domain;
pub mod guest;
pub mod reclaim;
pub mod select;
pub mod stall;
pub mod state;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub use decide::{Decided, Patience, RepeatedDecisions};
pub use domain::{Domain, DomainLimit};
pub use reclaim::{BalloonReading, ReclaimPlan};
pub use state::DomainState;

use crate::daemon_api::events::{BalloonRelease, SkippedBalloon};

pub use badness::{oom_badness, oom_score, OomScoreAdj, VmUsage};
pub use constraint::{constrained_alloc, Constraint, Placement, Scope};

/// What the daemon read of one domain this tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub limit: DomainLimit,
    /// Each member VM and what the host holds of it (RSS + swap), bytes.
    pub members: Vec<(String, u64)>,
    /// The members' balloons, read only under pressure with reclaim
    /// first.
    pub balloons: Vec<BalloonReading>,
    /// Balloons that could not be read, and why.
    pub unread: Vec<SkippedBalloon>,
}

/// The clock and what the tick knows beyond the domain.
#[derive(Debug, Clone, Copy)]
pub struct Tick<'a> {
    pub now: Instant,
    pub patience: Patience,
    /// The last kill, in any domain.
    pub last_kill: Option<Instant>,
    /// VMs whose balloons another domain still asks for.
    pub held_elsewhere: &'a BTreeSet<String>,
}

/// What the daemon is to do for one domain this tick.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plan {
    /// Calm long enough: balloons to let go to these targets (maybe none
    /// left to deflate, but a step was taken).
    pub release: Option<Vec<BalloonRelease>>,
    /// Pressure: the balloons to ask, and those found stalled or left
    /// out.
    pub reclaim: Option<ReclaimPlan>,
    /// Run the OOM decision; the time since the pressure was first seen.
    pub decide: Option<Duration>,
    /// A stuck domain calmed down: its unreported repeats.
    pub repeated: Option<RepeatedDecisions>,
}

/// One tick of the OOM pipeline for one domain, top to bottom.
pub fn out_of_memory(st: &mut DomainState, snap: &Snapshot, tick: &Tick<'_>) -> Plan {
    let now = tick.now;
    let limit = &snap.limit;

    // Calm: forget the episode; let balloons go after a hold-off.
    if !limit.pressure {
        st.last_progress = None;
        st.pressure_since = None;
        st.pressure_ticks = 0;
        st.last_usage.clear();
        st.inflating.clear();
        st.skips_reported.clear();
        return Plan {
            release: reclaim::let_go(st, limit, tick.held_elsewhere, now),
            repeated: decide::unstuck(st, now),
            ..Plan::default()
        };
    }

    // Pressure: since when, and has anything got better since last tick?
    let since = *st.pressure_since.get_or_insert(now);
    st.calm_since = None;
    decide::note_progress(st, limit, &snap.members, now);

    // Reclaim: ask the balloons for the excess, more each tick it lasts.
    let reclaim = tick.patience.reclaim_first.then(|| {
        let excess = reclaim::ask_size(limit, st.pressure_ticks);
        let mut plan = reclaim::plan_asks(st, excess, &snap.balloons, now);
        plan.skipped.extend(snap.unread.iter().cloned());
        plan
    });
    st.pressure_ticks = st.pressure_ticks.saturating_add(1);

    // Decide: only when reclaim has had its chance.
    let decide = decide::out_of_patience(st, tick.patience, tick.last_kill, now)
        .then(|| now.saturating_duration_since(since));
    Plan {
        reclaim,
        decide,
        ..Plan::default()
    }
}
