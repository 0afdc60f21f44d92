//! The policy's rules, each on the pure pipeline with a synthetic clock
//! and synthetic snapshots: no process, no VM, no sleeping.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::reclaim::RELEASE_HOLD;
use super::stall::STALL_BACKOFF;
use super::*;
use crate::daemon_api::events::{SkipReason, SkippedBalloon};

const MIB: u64 = 1 << 20;

/// A pool with a 1000 MiB budget; `usage` is what its VMs use in all.
fn budget(usage_mib: u64) -> DomainLimit {
    DomainLimit::budget(usage_mib * MIB, 1000 * MIB)
}

/// One VM "a" of 512 MiB with a balloon: `free_mib` free in the guest,
/// all of it held by the host, `actual_mib` in the balloon.
fn balloon(vm: &str, free_mib: u64, actual_mib: u32) -> BalloonReading {
    BalloonReading {
        vm: vm.into(),
        mem_mib: 512,
        usage: 512 * MIB,
        free: free_mib * MIB,
        actual_mib,
        pressured: false,
        held_after_guest_oom: false,
    }
}

fn snap(limit: DomainLimit, balloons: Vec<BalloonReading>) -> Snapshot {
    let members = balloons
        .iter()
        .map(|b| (b.vm.clone(), limit.usage / balloons.len().max(1) as u64))
        .collect();
    Snapshot {
        limit,
        members,
        balloons,
        unread: Vec::new(),
    }
}

/// The clock and knobs of one test: the default policy's 2 s without
/// progress and 1 s between kills, reclaim first.
struct Clock {
    t0: Instant,
    none: BTreeSet<String>,
    patience: Patience,
}

impl Clock {
    fn new() -> Self {
        Clock {
            t0: Instant::now(),
            none: BTreeSet::new(),
            patience: Patience {
                reclaim_first: true,
                no_progress: Duration::from_millis(2000),
                min_kill_interval: Duration::from_millis(1000),
            },
        }
    }

    fn at(&self, ms: u64) -> Tick<'_> {
        Tick {
            now: self.t0 + Duration::from_millis(ms),
            patience: self.patience,
            last_kill: None,
            held_elsewhere: &self.none,
        }
    }
}

/// Asks granted as planned, as the daemon records them.
fn grant(st: &mut DomainState, plan: &Plan, tick: &Tick<'_>) {
    if let Some(r) = &plan.reclaim {
        for (ask, actual) in r.asks.iter().zip(&r.actual_mib) {
            st.asked(&ask.vm, ask.target_mib, *actual, tick.now);
        }
    }
}

fn targets(plan: &Plan) -> Vec<(String, u32)> {
    plan.reclaim
        .iter()
        .flat_map(|r| &r.asks)
        .map(|a| (a.vm.clone(), a.target_mib))
        .collect()
}

#[test]
fn a_calm_domain_plans_nothing() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let plan = out_of_memory(
        &mut st,
        &snap(budget(500), vec![balloon("a", 300, 0)]),
        &c.at(0),
    );
    assert_eq!(plan, Plan::default());
}

#[test]
fn pressure_asks_fair_shares_weighted_by_what_each_can_give() {
    let c = Clock::new();
    let mut st = DomainState::default();
    // 30 MiB over budget; a can give 300 - 25.6 (floor) MiB, b a third.
    let s = snap(
        budget(1030),
        vec![balloon("a", 300, 0), balloon("b", 116, 0)],
    );
    let plan = out_of_memory(&mut st, &s, &c.at(0));
    let r = plan.reclaim.as_ref().unwrap();
    assert_eq!(r.excess, 30 * MIB);
    let t = targets(&plan);
    assert_eq!(t.len(), 2);
    let (a, b) = (t[0].1, t[1].1);
    assert!(a > b && a + b >= 30 && a + b <= 32, "{t:?}");
    assert!(plan.decide.is_none(), "reclaim gets its chance first");
}

/// Issue 10: the request doubles with every tick the pressure lasts (a
/// memory cgroup shows only the last few percent of its limit as excess),
/// up to 2^5 times.
#[test]
fn the_request_doubles_while_pressure_lasts_up_to_32_times() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let mut excess = Vec::new();
    for tick in 0..8u64 {
        let s = snap(budget(1004), vec![balloon("a", 400, 0)]);
        let plan = out_of_memory(&mut st, &s, &c.at(tick * 100));
        excess.push(plan.reclaim.unwrap().excess / MIB);
    }
    assert_eq!(excess, [4, 8, 16, 32, 64, 128, 128, 128]);
    // Calm resets it.
    out_of_memory(&mut st, &snap(budget(500), vec![]), &c.at(900));
    let plan = out_of_memory(&mut st, &snap(budget(1004), vec![]), &c.at(1000));
    assert_eq!(plan.reclaim.unwrap().excess, 4 * MIB);
}

#[test]
fn targets_only_rise_and_never_pass_the_floor() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let t0 = c.at(0);
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1064), vec![balloon("a", 300, 0)]),
        &t0,
    );
    assert_eq!(targets(&plan), [("a".to_string(), 64)]);
    grant(&mut st, &plan, &t0);
    // The guest inflated to 64; the domain is still over, by less: the
    // request (doubled) still asks for more than what was asked before.
    let t1 = c.at(100);
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1010), vec![balloon("a", 236, 64)]),
        &t1,
    );
    assert_eq!(targets(&plan), [("a".to_string(), 64 + 20)]);
    grant(&mut st, &plan, &t1);
    // A smaller share than asked before: no ask (never a deflation).
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1001), vec![balloon("a", 216, 10)]),
        &c.at(200),
    );
    assert!(targets(&plan).is_empty(), "{:?}", targets(&plan));
    // What it can give keeps the guest's floor: 500 MiB free less 25.6.
    let mut st = DomainState::default();
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1999), vec![balloon("a", 500, 0)]),
        &c.at(0),
    );
    assert_eq!(targets(&plan), [("a".to_string(), 474)]);
    // Stale statistics (free memory the balloon already took) never
    // take a target past 512 MiB less the floor.
    let mut st = DomainState::default();
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1999), vec![balloon("a", 500, 100)]),
        &c.at(0),
    );
    assert_eq!(targets(&plan), [("a".to_string(), 512 - 26)]);
}

/// Issue 10: a rule with no test before. Calm below `release_below` for
/// 10 s, the balloons are halved; 10 s more, halved again; calm but near
/// the limit restarts the hold-off.
#[test]
fn balloons_are_let_go_half_at_a_time_after_a_calm_hold_off() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let t = c.at(0);
    st.asked("a", 100, 0, t.now);
    st.asked("b", 1, 0, t.now);
    let calm = |usage| snap(budget(usage), vec![]);
    assert_eq!(out_of_memory(&mut st, &calm(500), &c.at(0)).release, None);
    assert_eq!(
        out_of_memory(&mut st, &calm(500), &c.at(9_999)).release,
        None
    );
    let first = out_of_memory(&mut st, &calm(500), &c.at(10_000))
        .release
        .unwrap();
    let halves: Vec<(String, u32)> = first.iter().map(|r| (r.vm.clone(), r.target_mib)).collect();
    assert_eq!(halves, [("a".into(), 50), ("b".into(), 0)]);
    assert_eq!(st.requested("a"), Some(50));
    assert_eq!(st.requested("b"), None, "let go entirely");
    // Calm, but at 95 % of the budget: not well clear, the hold restarts.
    assert_eq!(
        out_of_memory(&mut st, &calm(950), &c.at(15_000)).release,
        None
    );
    assert_eq!(
        out_of_memory(&mut st, &calm(500), &c.at(24_999)).release,
        None
    );
    let second = out_of_memory(&mut st, &calm(500), &c.at(25_000))
        .release
        .unwrap();
    assert_eq!(second[0].target_mib, 25);
    assert_eq!(RELEASE_HOLD, Duration::from_secs(10));
}

#[test]
fn a_balloon_another_domain_holds_is_not_let_go() {
    let mut c = Clock::new();
    let mut st = DomainState::default();
    st.asked("a", 100, 0, c.t0);
    st.asked("b", 100, 0, c.t0);
    c.none.insert("a".into());
    let calm = snap(budget(500), vec![]);
    out_of_memory(&mut st, &calm, &c.at(0));
    let release = out_of_memory(&mut st, &calm, &c.at(10_000))
        .release
        .unwrap();
    assert_eq!(release.len(), 1);
    assert_eq!(release[0].vm, "b");
    assert_eq!(
        st.requested("a"),
        Some(50),
        "this domain's ask halves all the same"
    );
}

/// No decision before `no_progress_ms` without progress; the decision
/// says how long the pressure lasted.
#[test]
fn the_decision_waits_for_no_progress() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let over = || snap(budget(1100), vec![]);
    for ms in [0, 500, 1000, 1999] {
        assert!(
            out_of_memory(&mut st, &over(), &c.at(ms)).decide.is_none(),
            "{ms} ms"
        );
    }
    let plan = out_of_memory(&mut st, &over(), &c.at(2000));
    assert_eq!(plan.decide, Some(Duration::from_millis(2000)));
}

#[test]
fn usage_falling_or_vms_shrinking_is_progress() {
    let c = Clock::new();
    let mut st = DomainState::default();
    out_of_memory(&mut st, &snap(budget(1100), vec![]), &c.at(0));
    // 2 MiB lower at 1.5 s: progress, the wait starts again.
    out_of_memory(&mut st, &snap(budget(1098), vec![]), &c.at(1500));
    assert!(
        out_of_memory(&mut st, &snap(budget(1098), vec![]), &c.at(3000))
            .decide
            .is_none()
    );
    assert!(
        out_of_memory(&mut st, &snap(budget(1098), vec![]), &c.at(3500))
            .decide
            .is_some()
    );

    // A memcg at its limit: usage cannot fall, but a VM that shrinks
    // (its balloon gave memory to the one that waits) is progress.
    let mut st = DomainState::default();
    let at_limit = |a: u64, b: u64| Snapshot {
        limit: budget(1001),
        members: vec![("a".into(), a * MIB), ("b".into(), b * MIB)],
        balloons: vec![],
        unread: vec![],
    };
    out_of_memory(&mut st, &at_limit(600, 401), &c.at(0));
    out_of_memory(&mut st, &at_limit(590, 411), &c.at(1500));
    assert!(out_of_memory(&mut st, &at_limit(590, 411), &c.at(3000))
        .decide
        .is_none());
    assert!(out_of_memory(&mut st, &at_limit(590, 411), &c.at(3500))
        .decide
        .is_some());
}

#[test]
fn kills_are_rate_limited_across_domains() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let over = snap(budget(1100), vec![]);
    out_of_memory(&mut st, &over, &c.at(0));
    let mut t = c.at(2000);
    t.last_kill = Some(c.t0 + Duration::from_millis(1500));
    assert!(
        out_of_memory(&mut st, &over, &t).decide.is_none(),
        "0.5 s after a kill"
    );
    let mut t = c.at(2500);
    t.last_kill = Some(c.t0 + Duration::from_millis(1500));
    assert!(
        out_of_memory(&mut st, &over, &t).decide.is_some(),
        "1 s after"
    );
}

#[test]
fn without_reclaim_the_decision_runs_at_once() {
    let mut c = Clock::new();
    c.patience.reclaim_first = false;
    let mut st = DomainState::default();
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1100), vec![balloon("a", 300, 0)]),
        &c.at(0),
    );
    assert!(plan.reclaim.is_none(), "no balloon is asked");
    assert_eq!(plan.decide, Some(Duration::ZERO));
}

/// After a decision the next one waits for a new round of no progress:
/// one shortage, one kill, unless the kill did not help.
#[test]
fn after_a_decision_a_new_round_of_patience() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let over = snap(budget(1100), vec![]);
    out_of_memory(&mut st, &over, &c.at(0));
    assert!(out_of_memory(&mut st, &over, &c.at(2000)).decide.is_some());
    decide::decided(&mut st, c.at(2000).now, None);
    assert!(out_of_memory(&mut st, &over, &c.at(2100)).decide.is_none());
    assert!(out_of_memory(&mut st, &over, &c.at(4000)).decide.is_none());
    assert!(out_of_memory(&mut st, &over, &c.at(4100)).decide.is_some());
}

/// Issue 9: after a kill ~816 MiB sat on per-CPU lists; by MemAvailable
/// alone the host stayed short and would have killed again 2 s later.
#[test]
fn one_host_shortage_freed_onto_per_cpu_lists_is_one_kill() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let m = |available_mib: u64| crate::host::Meminfo {
        mem_total: 16 << 30,
        mem_free: available_mib * MIB / 2,
        mem_available: available_mib * MIB,
        swap_total: 0,
        swap_free: 0,
    };
    let host = |available, pcp_mib: u64| Snapshot {
        limit: DomainLimit::host(&m(available), pcp_mib * MIB, 50),
        members: vec![],
        balloons: vec![],
        unread: vec![],
    };
    out_of_memory(&mut st, &host(500, 0), &c.at(0));
    assert!(out_of_memory(&mut st, &host(500, 0), &c.at(2000))
        .decide
        .is_some());
    decide::decided(&mut st, c.at(2000).now, None);
    // The victim's 1000 MiB: MemAvailable up by only 184 MiB, the rest
    // on per-CPU lists, for seconds.
    let mut kills = 0;
    for ms in (2100..12_000).step_by(100) {
        let plan = out_of_memory(&mut st, &host(684, 816), &c.at(ms));
        kills += usize::from(plan.decide.is_some());
    }
    assert_eq!(kills, 0);
    // Without counting them it would have killed again.
    let mut st = DomainState::default();
    out_of_memory(&mut st, &host(684, 0), &c.at(0));
    assert!(out_of_memory(&mut st, &host(684, 0), &c.at(2000))
        .decide
        .is_some());
}

/// A balloon asked that does not follow is stalled after a second and
/// left alone for 30 s, said once as stalled and listed as skipped.
#[test]
fn a_stalled_balloon_is_backed_off_from() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let t = c.at(0);
    let plan = out_of_memory(&mut st, &snap(budget(1064), vec![balloon("a", 300, 0)]), &t);
    grant(&mut st, &plan, &t);
    // It does not move.
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1064), vec![balloon("a", 300, 0)]),
        &c.at(500),
    );
    assert!(plan.reclaim.unwrap().stalled.is_empty(), "half a window");
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1064), vec![balloon("a", 300, 1)]),
        &c.at(1000),
    );
    let r = plan.reclaim.unwrap();
    assert_eq!(r.stalled.len(), 1);
    assert_eq!(r.stalled[0].rate_mib_s, 1.0);
    assert!(r.asks.is_empty());
    assert_eq!(r.skipped[0].reason, SkipReason::Stalled);
    // Backing off: skipped, not stalled again, not asked.
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1064), vec![balloon("a", 300, 1)]),
        &c.at(20_000),
    );
    let r = plan.reclaim.unwrap();
    assert!(r.stalled.is_empty() && r.asks.is_empty());
    assert_eq!(r.skipped[0].reason, SkipReason::Stalled);
    // The back-off over, it is asked again.
    let later = 1000 + STALL_BACKOFF.as_millis() as u64;
    let plan = out_of_memory(
        &mut st,
        &snap(budget(1064), vec![balloon("a", 300, 1)]),
        &c.at(later),
    );
    assert!(plan.reclaim.unwrap().asks.len() == 1);
}

/// Every balloon left out is listed with why: unreachable ones from the
/// snapshot, guests held after their own OOM, guests with nothing to
/// give; and a guest under its own pressure is asked last.
#[test]
fn skipped_balloons_say_why_and_pressured_guests_come_last() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let mut held = balloon("held", 300, 0);
    held.held_after_guest_oom = true;
    let mut busy = balloon("busy", 300, 0);
    busy.pressured = true;
    let mut s = snap(
        budget(1020),
        vec![held, busy, balloon("full", 10, 0), balloon("calm", 300, 0)],
    );
    s.unread.push(SkippedBalloon {
        vm: "stopped".into(),
        reason: SkipReason::Unreachable,
        detail: Some("timed out".into()),
    });
    let plan = out_of_memory(&mut st, &s, &c.at(0));
    assert_eq!(targets(&plan), [("calm".to_string(), 20)]);
    let why: Vec<(String, SkipReason)> = plan
        .reclaim
        .unwrap()
        .skipped
        .into_iter()
        .map(|s| (s.vm, s.reason))
        .collect();
    assert_eq!(
        why,
        [
            ("held".into(), SkipReason::AfterGuestOom),
            ("full".into(), SkipReason::NothingToGive),
            ("stopped".into(), SkipReason::Unreachable),
        ]
    );
    // Said once per episode.
    let fresh = st.fresh_skips([("stopped", SkipReason::Unreachable)]);
    assert_eq!(fresh.len(), 1);
    assert!(st
        .fresh_skips([("stopped", SkipReason::Unreachable)])
        .is_empty());
    out_of_memory(&mut st, &snap(budget(500), vec![]), &c.at(100));
    assert_eq!(
        st.fresh_skips([("stopped", SkipReason::Unreachable)]).len(),
        1
    );
}

/// Issue 9: a pool whose VMs are all -1000 decided and reported every
/// ~2.1 s forever. The first is reported, the repeats counted: a count
/// every 60 s while it lasts, and the rest when it ends.
#[test]
fn a_stuck_domain_reports_once_then_counts() {
    let c = Clock::new();
    let mut st = DomainState::default();
    let why = "every eligible VM has oom_score_adj -1000";
    let first = decide::decided(&mut st, c.at(0).now, Some(why));
    assert!(first.report && first.repeated.is_none());
    let mut reported = Vec::new();
    for i in 1..=40u64 {
        let d = decide::decided(&mut st, c.at(i * 2100).now, Some(why));
        assert!(!d.report, "decision {i} is a repeat");
        reported.extend(d.repeated);
    }
    // 29 repeats by the first 60 s (at 2.1 s each), reported at 60.9 s.
    assert_eq!(reported.len(), 1);
    assert_eq!(reported[0].decisions, 29);
    assert!(reported[0].ongoing);
    assert_eq!(reported[0].stuck_for, Duration::from_millis(29 * 2100));
    assert_eq!(st.stuck().unwrap().decisions, 41);
    // Calm: the 11 not reported yet, once.
    let plan = out_of_memory(&mut st, &snap(budget(500), vec![]), &c.at(90_000));
    let last = plan.repeated.unwrap();
    assert_eq!((last.decisions, last.ongoing), (11, false));
    assert!(st.stuck().is_none());
    // A victim found ends it too, and is reported.
    decide::decided(&mut st, c.at(100_000).now, Some(why));
    decide::decided(&mut st, c.at(102_100).now, Some(why));
    let found = decide::decided(&mut st, c.at(104_200).now, None);
    assert!(found.report);
    assert_eq!(found.repeated.unwrap().decisions, 1);
    // A different reason is a new report.
    decide::decided(&mut st, c.at(110_000).now, Some(why));
    assert!(decide::decided(&mut st, c.at(112_100).now, Some("every VM is being reaped")).report);
}
