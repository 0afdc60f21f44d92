//! Reclaim: which balloons to inflate, by how much, and when to let them
//! go. The kernel cannot do this: it sees a VMM as one big process, not a
//! guest with free pages.
//!
//! Under pressure each guest that reports free memory is asked for its
//! share of the domain's excess, weighted by what it can give beyond a
//! floor it keeps ([`BalloonReading::can_give`]); guests under their own
//! memory pressure are asked last ([`super::guest::reclaim_order`]). A
//! request only ever raises a target asked before, and grows while the
//! pressure lasts ([`ASK_GROWTH_MAX_SHIFT`]). A balloon that does not
//! follow is stalled ([`super::stall`]) and left out for a while.
//!
//! Calm again (under the domain's `release_below`) for [`RELEASE_HOLD`],
//! the balloons are let go half at a time, unless another domain still
//! holds them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::domain::DomainLimit;
use super::guest;
use super::stall::{InflateState, STALL_BACKOFF};
use super::state::DomainState;
use crate::daemon_api::events::{BalloonAsk, BalloonRelease, SkipReason, SkippedBalloon};

/// A guest keeps at least this much of its free memory.
pub const FLOOR_MIB: u64 = 16;

/// A domain's reclaim request doubles with every tick the pressure lasts,
/// up to this many times: a memory cgroup's usage can never show more
/// than the last few percent of its limit as excess, while the tasks that
/// wait may need far more, and only a refused charge after the previous
/// round says so. 2^5 times the excess is asked after half a second.
pub const ASK_GROWTH_MAX_SHIFT: u32 = 5;

/// How long a domain must stay calm before its balloons are let go, and
/// then between two halvings of their targets. Letting go at once (as
/// after a kill) hands the freed memory straight back to the guests that
/// were squeezed, and if they use it the domain fills and kills again.
pub const RELEASE_HOLD: Duration = Duration::from_secs(10);

/// A member's balloon as its VMM and guest agent report it this tick.
#[derive(Debug, Clone, PartialEq)]
pub struct BalloonReading {
    pub vm: String,
    /// Guest RAM, MiB.
    pub mem_mib: u64,
    /// What the host holds of the VM (its VMM's RSS + swap), bytes.
    pub usage: u64,
    /// Guest-reported free memory, bytes.
    pub free: u64,
    /// Pages the balloon holds now, MiB.
    pub actual_mib: u32,
    /// The guest is under its own memory pressure (its agent says so).
    pub pressured: bool,
    /// The guest OOM-killed for want of memory lately and is not asked
    /// again until [`guest::AFTER_GUEST_OOM_HOLD`] has passed.
    pub held_after_guest_oom: bool,
}

impl BalloonReading {
    /// What a guest always keeps out of its balloon, bytes: 16 MiB or a
    /// twentieth of its RAM, whichever is more.
    pub fn floor(&self) -> u64 {
        (FLOOR_MIB << 20).max((self.mem_mib << 20) / 20)
    }

    /// The largest balloon target the policy may ask for, MiB: guest RAM
    /// less the floor. Whatever the guest reports: statistics lag the
    /// balloon (a guest's free memory is read before its last inflation
    /// shows), and asks built on stale free memory once reached 100 % of
    /// guest RAM (issue 9).
    pub fn max_target_mib(&self) -> u32 {
        self.mem_mib
            .saturating_sub(self.floor().div_ceil(1 << 20))
            .min(u64::from(u32::MAX)) as u32
    }

    /// What the guest can give, bytes: its reported free memory minus a
    /// floor it keeps, and no more than the host holds of it. Free pages
    /// the guest never touched cost the host nothing: ballooning them
    /// frees nothing, and deflating them later would grow the VM past
    /// where it started. The host holds the VMM's resident memory less
    /// what the guest uses (its RAM less its free pages and its balloon).
    pub fn can_give(&self) -> u64 {
        let mem = self.mem_mib << 20;
        let used = mem.saturating_sub(self.free.saturating_add(u64::from(self.actual_mib) << 20));
        let held = self.usage.saturating_sub(used);
        self.free.saturating_sub(self.floor()).min(held)
    }
}

/// A balloon found stalled this tick, for its event.
#[derive(Debug, Clone, PartialEq)]
pub struct StalledBalloon {
    pub vm: String,
    pub target_mib: Option<u32>,
    pub actual_mib: u32,
    /// Growth over the last window, MiB/s, one decimal.
    pub rate_mib_s: f64,
    pub backoff: Duration,
}

/// What reclaim asks of the balloons this tick.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReclaimPlan {
    /// What is asked for in all, bytes.
    pub excess: u64,
    /// New, higher targets; the VMM's answer goes back through
    /// [`DomainState::asked`].
    pub asks: Vec<BalloonAsk>,
    /// The balloon each ask was built on held this much, MiB (by index).
    pub actual_mib: Vec<u32>,
    /// Balloons found stalled just now.
    pub stalled: Vec<StalledBalloon>,
    /// Balloons left out, and why.
    pub skipped: Vec<SkippedBalloon>,
}

/// How much to ask for after `pressure_ticks` ticks of pressure: the
/// excess over the domain's `high` mark (at least 1 MiB), doubled per
/// tick up to [`ASK_GROWTH_MAX_SHIFT`] times.
pub fn ask_size(limit: &DomainLimit, pressure_ticks: u32) -> u64 {
    let shift = pressure_ticks.min(ASK_GROWTH_MAX_SHIFT);
    limit.usage.saturating_sub(limit.high).max(1 << 20) << shift
}

/// Plans this tick's asks: each usable balloon with something to give
/// gets its fair share of `excess`, weighted by what it can give, rounded
/// up to MiB and capped by its floor. Stalled balloons, balloons backing
/// off and guests held after their own OOM are skipped, with the reason.
pub fn plan_asks(
    st: &mut DomainState,
    excess: u64,
    balloons: &[BalloonReading],
    now: Instant,
) -> ReclaimPlan {
    let mut plan = ReclaimPlan {
        excess,
        ..Default::default()
    };
    let skip = |plan: &mut ReclaimPlan, vm: &str, reason| {
        plan.skipped.push(SkippedBalloon {
            vm: vm.to_string(),
            reason,
            detail: None,
        })
    };
    let mut candidates = Vec::new();
    for b in balloons {
        let state = match st.inflating.get_mut(&b.vm) {
            Some(w) => w.observe(now, b.actual_mib),
            None => InflateState::Settled,
        };
        match state {
            InflateState::Stalled { rate_mib_s } => {
                plan.stalled.push(StalledBalloon {
                    vm: b.vm.clone(),
                    target_mib: st.requested(&b.vm),
                    actual_mib: b.actual_mib,
                    rate_mib_s: (rate_mib_s * 10.0).round() / 10.0,
                    backoff: STALL_BACKOFF,
                });
                skip(&mut plan, &b.vm, SkipReason::Stalled);
            }
            InflateState::BackingOff => skip(&mut plan, &b.vm, SkipReason::Stalled),
            InflateState::Settled | InflateState::Inflating if b.held_after_guest_oom => {
                skip(&mut plan, &b.vm, SkipReason::AfterGuestOom)
            }
            InflateState::Settled | InflateState::Inflating => match b.can_give() {
                g if g >= 1 << 20 => candidates.push((b, g)),
                _ => skip(&mut plan, &b.vm, SkipReason::NothingToGive),
            },
        }
    }
    let order: Vec<(u64, bool)> = candidates.iter().map(|(b, g)| (*g, b.pressured)).collect();
    let givers: Vec<(&BalloonReading, u64)> = guest::reclaim_order(&order, excess)
        .into_iter()
        .map(|i| candidates[i])
        .collect();
    let total: u64 = givers.iter().map(|(_, g)| g).sum();
    for (b, can_give) in givers {
        let share =
            (u128::from(excess.min(total)) * u128::from(can_give) / u128::from(total)) as u64;
        let share_mib = share.div_ceil(1 << 20).min(can_give >> 20) as u32;
        let target = b
            .actual_mib
            .saturating_add(share_mib)
            .min(b.max_target_mib());
        let asked_before = st.requested(&b.vm).unwrap_or(0);
        // Only ever raise: a lower ask would deflate a balloon that
        // inflated on an earlier tick's larger share.
        if share_mib == 0 || target <= asked_before {
            continue;
        }
        plan.asks.push(BalloonAsk {
            vm: b.vm.clone(),
            target_mib: target,
            can_give_mib: can_give >> 20,
        });
        plan.actual_mib.push(b.actual_mib);
    }
    plan
}

/// A calm tick: after [`RELEASE_HOLD`] under `release_below`, halve every
/// target asked and start a new hold-off. Returns the new targets of the
/// balloons to deflate (none held by another domain, `held_elsewhere`);
/// `None` when it is not time yet.
pub fn let_go(
    st: &mut DomainState,
    limit: &DomainLimit,
    held_elsewhere: &BTreeSet<String>,
    now: Instant,
) -> Option<Vec<BalloonRelease>> {
    let calm_since = *st.calm_since.get_or_insert(now);
    if limit.usage >= limit.release_below {
        // Calm, but not well clear of the limit: the hold-off restarts.
        st.calm_since = Some(now);
        return None;
    }
    if now.saturating_duration_since(calm_since) < RELEASE_HOLD || st.requested_mib.is_empty() {
        return None;
    }
    st.calm_since = Some(now);
    let mut released = Vec::new();
    for (vm, mib) in std::mem::take(&mut st.requested_mib) {
        let next = mib / 2;
        if next > 0 {
            st.requested_mib.insert(vm.clone(), next);
        }
        // A VM another domain still reclaims from keeps its balloon.
        if !held_elsewhere.contains(&vm) {
            released.push(BalloonRelease {
                vm,
                target_mib: next,
            });
        }
    }
    Some(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn reading(mem_mib: u64, usage: u64, free: u64, actual_mib: u32) -> BalloonReading {
        BalloonReading {
            vm: "vm".into(),
            mem_mib,
            usage,
            free,
            actual_mib,
            pressured: false,
            held_after_guest_oom: false,
        }
    }

    #[test]
    fn a_guest_gives_only_free_memory_the_host_holds() {
        // 192 MiB guest using 16 MiB, 176 MiB free, floor 16 MiB.
        let touched = reading(192, 140 * MIB, 176 * MIB, 0); // touched 124 MiB more, freed it
        assert_eq!(touched.can_give(), 124 * MIB, "what the host holds of it");
        let fresh = reading(192, 20 * MIB, 176 * MIB, 0); // free memory never touched
        assert_eq!(fresh.can_give(), 4 * MIB);
        // Plenty resident: the floor is what limits.
        let full = reading(192, 200 * MIB, 100 * MIB, 32);
        assert_eq!(full.can_give(), 84 * MIB);
    }

    /// Issue 9: asks reached 192 of 192 MiB while the guest could give 19:
    /// its statistics still showed free memory the balloon had taken.
    /// Whatever it reports, a target never goes past RAM less the floor.
    #[test]
    fn no_target_goes_past_the_floor_whatever_the_guest_reports() {
        let stale = reading(192, 192 * MIB, 150 * MIB, 170);
        assert_eq!(stale.max_target_mib(), 176, "192 MiB less a 16 MiB floor");
        assert!(stale.actual_mib + (stale.can_give() >> 20) as u32 > stale.max_target_mib());
        let mut st = DomainState::default();
        let plan = plan_asks(&mut st, 512 * MIB, &[stale], Instant::now());
        assert_eq!(plan.asks[0].target_mib, 176);
        let big = reading(1024, 1024 * MIB, 900 * MIB, 0);
        assert_eq!(
            big.max_target_mib(),
            1024 - 52,
            "a twentieth of 1 GiB, rounded up"
        );
    }
}
