//! The host OOM manager: the kernel's OOM design (`mm/oom_kill.c`) applied
//! one level up, to whole VMs, with one thing the kernel cannot do — ask a
//! guest for memory back before anyone dies.
//!
//! # The pipeline
//!
//! Read top to bottom, like `out_of_memory()`:
//!
//! 1. **Monitor** — what the host and each VM hold, and how much the host
//!    is stalling. Host: [`crate::host::procfs`] (`/proc/meminfo`, `/proc/vmstat`
//!    `oom_kill`) and [`crate::host::psi`] (pressure lines, and PSI triggers that wake
//!    the daemon through `poll` the moment stalls cross a threshold). Per
//!    VM: [`crate::host::memstat`] (the kernel's rss/swap/page-table counters of
//!    the VMM process). *Still to come: balloon and guest-agent reports,
//!    cgroup usage and `memory.events`.*
//! 2. **Constraint** — [`constraint::constrained_alloc`]: which memory ran
//!    out (the host, a pool's memory cgroup, a NUMA node set, a pool's byte
//!    budget), its size in pages (`totalpages`, the yardstick of
//!    `oom_score_adj`) and the VMs that live in it.
//! 3. **Reclaim** — inflate the balloons of guests with free or reclaimable
//!    memory first, fairly, above each VM's floor; deflate when pressure is
//!    gone. *Not written yet.*
//! 4. **Decide** — are we really out of memory? Reclaim made no progress
//!    for a while, no earlier victim is still releasing memory (the
//!    kernel's `oom_evaluate_task` abort), rate limits. *Not written yet.*
//! 5. **Select** — [`badness::oom_badness`] for every eligible VM, highest
//!    wins; `oom_score_adj` -1000 and VMs being reaped are never chosen.
//!    [`badness::oom_score`] is the 0..=2000 figure users know from
//!    `/proc/<pid>/oom_score`. *The selection loop and its knobs (kill the
//!    fastest grower, dump the table) are not written yet.*
//! 6. **Kill and reap** — SIGKILL through a pidfd, `process_mrelease`, or
//!    the VMM's own `MADV_DONTNEED` release. *Not written yet.*
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
pub mod guest;
pub mod select;

pub use badness::{oom_badness, oom_score, OomScoreAdj, VmUsage};
pub use constraint::{constrained_alloc, Constraint, Placement, Scope};
