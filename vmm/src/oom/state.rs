//! What the policy remembers about one domain between ticks. The pipeline
//! ([`super::out_of_memory`]) reads and updates it; the daemon keeps one
//! per [`super::Domain`] and tells it what its asks came to.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::stall::InflateWatch;
use crate::daemon_api::events::SkipReason;

/// One domain's memory of pressure, progress, balloons asked and
/// decisions made.
///
/// Invariants: `pressure_since`, `last_progress` and `inflating` are set
/// only while the domain is under pressure, `calm_since` only while it is
/// not; `requested_mib` never holds a 0 target.
#[derive(Debug, Default)]
pub struct DomainState {
    /// Usage at the last progress, and when that was.
    pub(super) best_usage: u64,
    pub(super) last_progress: Option<Instant>,
    /// Each VM's usage at the last tick, and the bytes VMs gave back
    /// (shrank by) since the last progress.
    pub(super) last_usage: BTreeMap<String, u64>,
    pub(super) shrunk: u64,
    /// Balloon targets the policy asked for, per VM, in MiB.
    pub(super) requested_mib: BTreeMap<String, u32>,
    /// How each balloon asked follows its target.
    pub(super) inflating: BTreeMap<String, InflateWatch>,
    /// When this episode of pressure was first seen.
    pub(super) pressure_since: Option<Instant>,
    /// Ticks in a row under pressure: each doubles the reclaim request
    /// (see [`super::reclaim::ASK_GROWTH_MAX_SHIFT`]).
    pub(super) pressure_ticks: u32,
    /// Since when the domain has been calm (no pressure), for the
    /// hold-off before balloons are let go.
    pub(super) calm_since: Option<Instant>,
    /// Balloons reported skipped in this episode, and why: each is said
    /// once per episode, not once per tick.
    pub(super) skips_reported: BTreeSet<(String, SkipReason)>,
    /// Decisions that found no victim, while they keep finding none.
    pub(super) stuck: Option<Stuck>,
}

/// A domain whose decisions find no VM to kill (all `-1000`, or all
/// being reaped already) while its pressure lasts: the kernel would loop
/// on such an OOM; we say so once, then count.
#[derive(Debug, Clone, PartialEq)]
pub struct Stuck {
    /// The first such decision.
    pub since: Instant,
    /// Why the selection found no victim (its `reason`).
    pub reason: String,
    /// Decisions made since, all alike.
    pub decisions: u64,
    /// When the count was last reported, and the decisions counted then.
    pub(super) reported_at: Instant,
    pub(super) reported: u64,
}

impl DomainState {
    /// The policy asked `vm`'s balloon for `target_mib` at `now`, while
    /// it held `actual_mib`; the VMM took the order.
    pub fn asked(&mut self, vm: &str, target_mib: u32, actual_mib: u32, now: Instant) {
        if target_mib == 0 {
            self.requested_mib.remove(vm);
        } else {
            self.requested_mib.insert(vm.to_string(), target_mib);
        }
        self.inflating
            .entry(vm.to_string())
            .or_default()
            .asked(now, target_mib, actual_mib);
    }

    /// The target asked of `vm`'s balloon, if any.
    pub fn requested(&self, vm: &str) -> Option<u32> {
        self.requested_mib.get(vm).copied()
    }

    /// `vm`'s balloon was set to `target_mib` by someone else (a starved
    /// guest given memory back): an ask above it is lowered to it, so
    /// the release step does not ask for more than is held.
    pub fn lower_ask(&mut self, vm: &str, target_mib: u32) {
        if let Some(asked) = self.requested_mib.get_mut(vm) {
            *asked = (*asked).min(target_mib);
            if *asked == 0 {
                self.requested_mib.remove(vm);
            }
        }
    }

    /// Whether this domain still asks anything of `vm`'s balloon.
    pub fn holds(&self, vm: &str) -> bool {
        self.requested_mib.contains_key(vm)
    }

    /// The skips not yet reported in this episode, marked reported now.
    pub fn fresh_skips<'s>(
        &mut self,
        skips: impl IntoIterator<Item = (&'s str, SkipReason)>,
    ) -> Vec<(&'s str, SkipReason)> {
        skips
            .into_iter()
            .filter(|(vm, why)| self.skips_reported.insert((vm.to_string(), *why)))
            .collect()
    }

    /// Whether the domain is under pressure (since the last tick) and
    /// its decisions can still do something about it (it is not stuck).
    pub fn pressed(&self) -> bool {
        self.pressure_since.is_some() && self.stuck.is_none()
    }

    /// The domain's decisions find no victim now, if so.
    pub fn stuck(&self) -> Option<&Stuck> {
        self.stuck.as_ref()
    }
}
