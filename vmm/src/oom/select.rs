//! Select: which VM dies. The kernel's `select_bad_process()` and
//! `oom_evaluate_task()`, one level up: every eligible VM is scored with
//! [`oom_badness`]; the highest score is the victim. A VM already being
//! reaped aborts the selection, as a task with `MMF_OOM_SKIP` not yet set
//! does in the kernel: its memory is on the way back, and killing a second
//! VM for the same shortage would be one kill too many.

use serde::{Deserialize, Serialize};

use super::badness::{oom_badness, oom_score, VmUsage};

/// One VM as the selection sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub id: String,
    pub usage: VmUsage,
    /// Growth of resident memory in bytes per second over the last samples
    /// (for `kill_fastest_grower`); 0 when unknown.
    pub growth_bytes_per_s: i64,
}

/// A row of the table every decision records (`oom_dump_tasks`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CandidateRow {
    pub id: String,
    pub rss_pages: u64,
    pub swap_pages: u64,
    pub pgtables_pages: u64,
    pub oom_score_adj: i16,
    /// `None`: never chosen (-1000, or being reaped).
    pub badness: Option<i64>,
    /// The `/proc/<pid>/oom_score` this badness corresponds to.
    pub oom_score: u32,
    pub growth_bytes_per_s: i64,
}

/// The outcome of a selection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub totalpages: u64,
    pub table: Vec<CandidateRow>,
    /// Index into `table`.
    pub victim: Option<usize>,
    /// Why this victim, or why none.
    pub reason: String,
}

/// How to choose.
#[derive(Clone, Copy, Debug, Default)]
pub struct SelectPolicy {
    /// Kill the VM whose memory grows fastest instead of the largest
    /// (the `oom_kill_allocating_task` sysctl, where "allocating" is
    /// "growing": we cannot see which guest's allocation failed).
    pub kill_fastest_grower: bool,
}

/// Scores `candidates` against `totalpages` and picks the victim.
pub fn select_bad_vm(candidates: &[Candidate], totalpages: u64, policy: SelectPolicy) -> Selection {
    let table: Vec<CandidateRow> = candidates.iter().map(|c| evaluate(c, totalpages)).collect();
    let mut selection = Selection {
        totalpages,
        table,
        victim: None,
        reason: String::new(),
    };

    if let Some(reaping) = candidates.iter().find(|c| c.usage.being_reaped) {
        selection.reason = format!(
            "VM {} is still releasing its memory; waiting for it instead of killing another",
            reaping.id
        );
        return selection;
    }
    let eligible = || {
        selection
            .table
            .iter()
            .enumerate()
            .filter(|(_, r)| r.badness.is_some())
    };
    let victim = if policy.kill_fastest_grower {
        eligible()
            .filter(|(_, r)| r.growth_bytes_per_s > 0)
            .max_by_key(|(i, r)| (r.growth_bytes_per_s, std::cmp::Reverse(*i)))
            .map(|(i, r)| {
                (
                    i,
                    format!("fastest grower: +{} KiB/s", r.growth_bytes_per_s / 1024),
                )
            })
    } else {
        None
    };
    // Ties go to the first VM in the table, like the kernel's strict `>`.
    let victim = victim.or_else(|| {
        eligible()
            .max_by_key(|(i, r)| (r.badness, std::cmp::Reverse(*i)))
            .map(|(i, r)| {
                (
                    i,
                    format!(
                        "highest badness: {} pages (oom_score {})",
                        r.badness.unwrap_or(0),
                        r.oom_score
                    ),
                )
            })
    });
    match victim {
        Some((i, reason)) => {
            selection.victim = Some(i);
            selection.reason = reason;
        }
        None => {
            selection.reason =
                "no eligible VM: every candidate has oom_score_adj -1000 or none exists".into()
        }
    }
    selection
}

/// `oom_evaluate_task()` for one VM.
fn evaluate(c: &Candidate, totalpages: u64) -> CandidateRow {
    let badness = oom_badness(&c.usage, totalpages);
    CandidateRow {
        id: c.id.clone(),
        rss_pages: c.usage.rss_pages(),
        swap_pages: c.usage.swap_pages,
        pgtables_pages: c.usage.pgtables_pages,
        oom_score_adj: c.usage.oom_score_adj.get(),
        badness,
        oom_score: oom_score(badness, totalpages),
        growth_bytes_per_s: c.growth_bytes_per_s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oom::badness::OomScoreAdj;

    fn vm(id: &str, rss_pages: u64, adj: i16, growth: i64) -> Candidate {
        Candidate {
            id: id.into(),
            usage: VmUsage {
                rss_anon_pages: rss_pages,
                oom_score_adj: OomScoreAdj::try_from(i64::from(adj)).unwrap(),
                ..Default::default()
            },
            growth_bytes_per_s: growth,
        }
    }

    #[test]
    fn the_largest_vm_dies() {
        let s = select_bad_vm(
            &[vm("a", 100, 0, 0), vm("b", 300, 0, 0), vm("c", 200, 0, 0)],
            1_000_000,
            SelectPolicy::default(),
        );
        assert_eq!(s.victim, Some(1));
        assert_eq!(s.table[1].badness, Some(300));
    }

    #[test]
    fn adj_shifts_the_choice_and_minus_1000_is_never_chosen() {
        // adj 500 adds 500 * (1_000_000 / 1000) = 500_000 pages.
        let s = select_bad_vm(
            &[vm("big", 400_000, 0, 0), vm("small", 1_000, 500, 0)],
            1_000_000,
            SelectPolicy::default(),
        );
        assert_eq!(s.table[s.victim.unwrap()].id, "small");
        let s = select_bad_vm(
            &[vm("big", 900_000, -1000, 0), vm("small", 10, 0, 0)],
            1_000_000,
            SelectPolicy::default(),
        );
        assert_eq!(s.table[s.victim.unwrap()].id, "small");
        let s = select_bad_vm(
            &[vm("only", 900_000, -1000, 0)],
            1_000_000,
            SelectPolicy::default(),
        );
        assert_eq!(s.victim, None);
        assert!(s.reason.contains("-1000"));
    }

    #[test]
    fn a_vm_being_reaped_blocks_another_kill() {
        let mut reaping = vm("dying", 10, 0, 0);
        reaping.usage.being_reaped = true;
        let s = select_bad_vm(
            &[vm("big", 900, 0, 0), reaping],
            1_000_000,
            SelectPolicy::default(),
        );
        assert_eq!(s.victim, None);
        assert!(s.reason.contains("dying"));
    }

    #[test]
    fn fastest_grower_when_asked() {
        let vms = [vm("big", 900, 0, 10), vm("grower", 100, 0, 1 << 20)];
        let s = select_bad_vm(
            &vms,
            1_000_000,
            SelectPolicy {
                kill_fastest_grower: true,
            },
        );
        assert_eq!(s.table[s.victim.unwrap()].id, "grower");
        // Nobody grows: fall back to badness.
        let vms = [vm("big", 900, 0, 0), vm("small", 100, 0, 0)];
        let s = select_bad_vm(
            &vms,
            1_000_000,
            SelectPolicy {
                kill_fastest_grower: true,
            },
        );
        assert_eq!(s.table[s.victim.unwrap()].id, "big");
    }

    #[test]
    fn ties_go_to_the_first() {
        let s = select_bad_vm(
            &[vm("a", 5, 0, 0), vm("b", 5, 0, 0)],
            1_000,
            SelectPolicy::default(),
        );
        assert_eq!(s.victim, Some(0));
    }
}
