//! The policy's shell. Each tick (the supervisor's, or at once when a
//! PSI trigger fires) it gathers a [`Snapshot`] of every OOM domain with
//! a limit — byte budgets, memory-cgroup pools ([`super::pools`]), the
//! host, bound NUMA node sets ([`crate::oom::domain`]) — runs the pure
//! pipeline ([`oom::out_of_memory`]) on it, and carries out the
//! [`Plan`]: balloon orders to the VMMs, events, the OOM decision
//! ([`super::decision`]). No policy lives here: every rule is in
//! [`crate::oom`], where it is unit-tested on synthetic snapshots.
//!
//! The state of the domains is locked only to plan and to record what
//! the VMMs answered, never across a call to a VMM.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::vm_client::{self, VmClientError};
use super::vms::is_live;
use super::{lock, Daemon};
use crate::daemon_api::events::{
    BalloonSkipped, BalloonStalled, DomainFigures, OomDecisionsRepeated, OomPressure, Reclaim,
    ReclaimReleased, SkipReason, SkippedBalloon,
};
use crate::daemon_api::{ConstraintKind, Event, OomPolicy, StuckDomain, VmState};
use crate::host::numa::{nodes_with_memory, NodeSet, Zoneinfo};
use crate::host::procfs::{NodeMeminfo, ProcFs};
use crate::host::psi::Pressure;
use crate::oom::constraint::Constraint;
use crate::oom::guest::{self, GuestReport};
use crate::oom::{
    self, BalloonReading, Domain, DomainLimit, Patience, Plan, RepeatedDecisions, Snapshot, Tick,
};

/// Where the kernel lists NUMA nodes and their meminfo.
const SYS_NODE: &str = "/sys/devices/system/node";

/// How long the policy waits for a VMM's balloon: one that does not
/// answer in time is skipped this tick (and said so), not waited on
/// while its domain starves.
const BALLOON_TIMEOUT: Duration = Duration::from_millis(250);

/// One member of a domain, as read this tick.
struct Member {
    id: String,
    sock: PathBuf,
    usage: u64,
    mem_mib: u64,
    has_balloon: bool,
    /// What its guest agent reported, if it has one.
    guest: Option<GuestReport>,
}

/// Per VM: the starved in-guest kills already acted on, and until when
/// its balloon is not asked again after one.
#[derive(Default)]
pub struct GuestsSeen {
    starved_kills: std::collections::BTreeMap<String, u64>,
    hold_until: std::collections::BTreeMap<String, Instant>,
}

/// The skips said in a `balloon_skipped` event: the others have their
/// own event (`balloon_stalled`) or are no fault (`nothing_to_give`) and
/// are listed in `oom_pressure` only.
fn reported_alone(reason: SkipReason) -> bool {
    !matches!(reason, SkipReason::Stalled | SkipReason::NothingToGive)
}

impl Daemon {
    /// One policy pass over every domain with a limit: byte budgets,
    /// memory-cgroup pools, the host, and bound NUMA node sets.
    pub fn enforce_limits(&self) {
        let policy = self.policy();
        // The least headroom of this tick's polled domains, for the next
        // tick's length ([`Self::headroom`]).
        self.headroom.store(u64::MAX, Ordering::Relaxed);
        for (pool, &budget) in self.budgets() {
            let domain = Domain::Pool(pool.clone());
            let members = self.members(&domain);
            let usage = members.iter().map(|m| m.usage).sum();
            self.enforce(
                domain,
                DomainLimit::budget(usage, budget),
                &members,
                &policy,
            );
        }
        for (pool, limit) in self.memcg_limits(policy.reclaim_first) {
            let domain = Domain::Pool(pool);
            let members = self.members(&domain);
            self.enforce(domain, limit, &members, &policy);
        }
        // Also with the line at 0 (off): never under pressure then, but
        // balloons inflated before are let go.
        let permille = policy.host_min_available_permille;
        // Unreadable meminfo leaves the host to the kernel this tick.
        if let Ok(m) = ProcFs::host().meminfo() {
            let mut limit = DomainLimit::host(&m, 0, permille);
            if limit.pressure {
                // Short by MemAvailable: count the free pages on per-CPU
                // lists too (not read on calm ticks: zoneinfo is long).
                let pcp = Zoneinfo::read(&ProcFs::host())
                    .map_or(0, |z| z.pcp_free_pages() * self.page_size);
                limit = DomainLimit::host(&m, pcp, permille);
            }
            self.give_back_to_starved_guests(limit.pressure);
            if let (true, DomainFigures::Host(host)) = (limit.pressure, &mut limit.figures) {
                // For the events only: not read on calm ticks.
                let psi = Pressure::read(Path::new("/proc/pressure/memory")).ok();
                host.psi_some_avg10 = psi.as_ref().map(|p| p.some.avg10);
                host.psi_full_avg10 = psi.as_ref().and_then(|p| p.full).map(|f| f.avg10);
            }
            let members = self.members(&Domain::Host);
            self.enforce(Domain::Host, limit, &members, &policy);
        }
        for nodes in self.bound_node_sets() {
            let sys = Path::new(SYS_NODE);
            // A node that cannot be read leaves its set to the host's
            // domain this tick.
            let infos: Result<Vec<_>, _> =
                nodes.iter().map(|n| NodeMeminfo::read(sys, n)).collect();
            if let Ok(infos) = infos {
                let domain = Domain::Nodes(nodes);
                let members = self.members(&domain);
                self.enforce(
                    domain,
                    DomainLimit::nodes(&infos, permille),
                    &members,
                    &policy,
                );
            }
        }
    }

    /// Balloons of guests whose kernel OOM-killed for want of memory since
    /// the last tick give half their pages back, the host permitting
    /// ([`guest::deflate_after_guest_oom`]); such a guest is then left out
    /// of reclaim for [`guest::AFTER_GUEST_OOM_HOLD`].
    fn give_back_to_starved_guests(&self, host_short: bool) {
        // Only the VMs whose agent reported a starved kill not acted on
        // yet: on a calm tick this is one look at the agents, no walk of
        // the VM table and no call to a VMM.
        let reports = self.agents.reports();
        let fresh: Vec<(String, u64, u64)> = {
            let seen = &lock(&self.guests).starved_kills;
            reports
                .into_iter()
                .filter_map(|(id, r)| {
                    let before = seen.get(&id).copied().unwrap_or(0);
                    (r.starved_kills > before)
                        .then(|| (id, r.starved_kills, r.starved_kills - before))
                })
                .collect()
        };
        for (id, kills, new) in fresh {
            let sock = self.with_vms(|vms| {
                vms.get(&id)
                    .filter(|v| v.spec.balloon.is_some() && v.state == VmState::Running)
                    .map(|v| v.api_sock.clone())
            });
            let actual = match sock {
                // Nothing to give back: no balloon, or the VM is gone.
                None => None,
                Some(ref sock) => match vm_client::balloon_within(sock, Duration::from_millis(250))
                {
                    Ok(b) => Some(b.actual_mib),
                    // Asked again next tick.
                    Err(_) => continue,
                },
            };
            lock(&self.guests).starved_kills.insert(id.clone(), kills);
            let (Some(sock), Some(actual)) = (sock, actual) else {
                continue;
            };
            let Some(target) = guest::deflate_after_guest_oom(actual, new, host_short) else {
                continue;
            };
            if vm_client::set_balloon_target(&sock, target).is_err() {
                continue;
            }
            // Every domain's asks for this VM are lowered with it, so the
            // release logic does not ask for them back.
            for st in lock(&self.pool_states).values_mut() {
                st.lower_ask(&id, target);
            }
            lock(&self.guests)
                .hold_until
                .insert(id.clone(), Instant::now() + guest::AFTER_GUEST_OOM_HOLD);
            self.events.push(Event::BalloonGivenBack {
                vm: id,
                from_mib: actual,
                to_mib: target,
                guest_kills: new,
            });
        }
    }

    /// The NUMA node sets live VMs are bound to, except those that hold
    /// all of the host's memory (the host's domain is theirs).
    fn bound_node_sets(&self) -> Vec<NodeSet> {
        let mut sets: Vec<NodeSet> = self.with_vms(|vms| {
            vms.values()
                .filter(|v| is_live(v.state))
                .filter_map(|v| v.placement.nodes.clone())
                .collect()
        });
        if sets.is_empty() {
            // The common case: no zoneinfo read every tick for nothing.
            return sets;
        }
        sets.sort();
        sets.dedup();
        let with_memory = nodes_with_memory(&ProcFs::host()).ok();
        sets.retain(|s| with_memory.as_ref().is_some_and(|all| !all.is_subset(s)));
        sets
    }

    fn members(&self, domain: &Domain) -> Vec<Member> {
        let reports = self.agents.reports();
        self.with_vms(|vms| {
            vms.values()
                .filter(|v| is_live(v.state))
                .filter(|v| match domain {
                    Domain::Host => true,
                    Domain::Pool(p) => v.spec.pool.as_ref() == Some(p),
                    Domain::Nodes(n) => v.placement.nodes.as_ref().is_none_or(|b| b.intersects(n)),
                })
                .map(|v| Member {
                    id: v.id.clone(),
                    sock: v.api_sock.clone(),
                    usage: v.usage_bytes(),
                    mem_mib: u64::from(v.spec.mem_mib),
                    has_balloon: v.spec.balloon.is_some() && v.state == VmState::Running,
                    guest: reports.get(&v.id).copied(),
                })
                .collect()
        })
    }

    /// One domain, one tick: snapshot, plan, carry out.
    fn enforce(&self, domain: Domain, limit: DomainLimit, members: &[Member], policy: &OomPolicy) {
        let now = Instant::now();
        // Memory-cgroup pools wake the daemon through the kernel's
        // events; every other domain only through the tick.
        if !matches!(limit.kind(), ConstraintKind::Memcg) {
            let headroom = if limit.pressure {
                0
            } else {
                limit.high.saturating_sub(limit.usage)
            };
            self.headroom.fetch_min(headroom, Ordering::Relaxed);
        }
        // Balloons are asked before the domains' state is locked.
        let (balloons, unread) = if limit.pressure && policy.reclaim_first {
            self.read_balloons(members, now)
        } else {
            Default::default()
        };
        let snap = Snapshot {
            limit,
            members: members.iter().map(|m| (m.id.clone(), m.usage)).collect(),
            balloons,
            unread,
        };
        let last_kill = *lock(&self.last_kill);
        let plan = {
            let mut states = lock(&self.pool_states);
            let held_elsewhere: BTreeSet<String> = states
                .iter()
                .filter(|(d, _)| **d != domain)
                .flat_map(|(_, st)| members.iter().filter(|m| st.holds(&m.id)))
                .map(|m| m.id.clone())
                .collect();
            let tick = Tick {
                now,
                patience: Patience {
                    reclaim_first: policy.reclaim_first,
                    no_progress: Duration::from_millis(policy.no_progress_ms),
                    min_kill_interval: Duration::from_millis(policy.min_kill_interval_ms),
                },
                last_kill,
                held_elsewhere: &held_elsewhere,
            };
            oom::out_of_memory(states.entry(domain.clone()).or_default(), &snap, &tick)
        };
        self.carry_out_plan(&domain, &snap, members, plan, policy, now);
    }

    /// Each member's balloon and guest statistics, asked of all VMMs at
    /// once, each within [`BALLOON_TIMEOUT`]; those that cannot be read,
    /// with why.
    fn read_balloons(
        &self,
        members: &[Member],
        now: Instant,
    ) -> (Vec<BalloonReading>, Vec<SkippedBalloon>) {
        let with_balloon: Vec<&Member> = members.iter().filter(|m| m.has_balloon).collect();
        let answers = vm_client::ask_each(&with_balloon, |m| {
            vm_client::balloon_statistics_within(&m.sock, BALLOON_TIMEOUT)
        });
        let held = lock(&self.guests);
        let (mut read, mut unread) = (Vec::new(), Vec::new());
        for (m, answer) in with_balloon.into_iter().zip(answers) {
            let skipped = |reason, detail| SkippedBalloon {
                vm: m.id.clone(),
                reason,
                detail,
            };
            match answer {
                Ok(stats) => match stats.free_memory {
                    Some(free) => read.push(BalloonReading {
                        vm: m.id.clone(),
                        mem_mib: m.mem_mib,
                        usage: m.usage,
                        free,
                        actual_mib: stats.actual_mib,
                        pressured: m.guest.is_some_and(|r| r.pressured()),
                        held_after_guest_oom: held.hold_until.get(&m.id).is_some_and(|t| *t > now),
                    }),
                    None => unread.push(skipped(SkipReason::NoStatistics, None)),
                },
                Err(VmClientError::Status { status, message }) => unread.push(skipped(
                    SkipReason::NoStatistics,
                    Some(format!("{status}: {message}")),
                )),
                Err(e) => unread.push(skipped(SkipReason::Unreachable, Some(e.to_string()))),
            }
        }
        (read, unread)
    }

    /// Carries out one domain's plan: balloons let go or asked, events,
    /// and the OOM decision.
    fn carry_out_plan(
        &self,
        domain: &Domain,
        snap: &Snapshot,
        members: &[Member],
        plan: Plan,
        policy: &OomPolicy,
        now: Instant,
    ) {
        let sock = |vm: &str| {
            members
                .iter()
                .find(|m| m.id == vm)
                .map(|m| m.sock.as_path())
        };
        if let Some(repeated) = plan.repeated {
            self.report_repeats(domain, repeated);
        }
        if let Some(release) = plan.release {
            let targets: Vec<_> = release
                .into_iter()
                .filter_map(|r| Some((sock(&r.vm)?, r)))
                .collect();
            let done = vm_client::ask_each(&targets, |(sock, r)| {
                vm_client::set_balloon_target(sock, r.target_mib).is_ok()
            });
            let balloons = targets
                .into_iter()
                .zip(done)
                .filter(|(_, ok)| *ok)
                .map(|((_, r), _)| r)
                .collect();
            self.events.push(Event::ReclaimReleased(ReclaimReleased {
                usage: snap.limit.event(domain),
                balloons,
            }));
        }
        let mut skipped = Vec::new();
        if let Some(reclaim) = plan.reclaim {
            for s in reclaim.stalled {
                self.events.push(Event::BalloonStalled(BalloonStalled {
                    domain: domain.name(),
                    vm: s.vm,
                    target_mib: s.target_mib,
                    actual_mib: s.actual_mib,
                    rate_mib_s: s.rate_mib_s,
                    backoff_s: s.backoff.as_secs(),
                }));
            }
            let orders: Vec<_> = reclaim
                .asks
                .iter()
                .zip(&reclaim.actual_mib)
                .filter_map(|(ask, actual)| Some((sock(&ask.vm)?, ask, *actual)))
                .collect();
            let answers = vm_client::ask_each(&orders, |(sock, ask, _)| {
                vm_client::set_balloon_target_within(sock, ask.target_mib, BALLOON_TIMEOUT)
            });
            skipped = reclaim.skipped;
            let mut asked = Vec::new();
            for ((_, ask, actual), answer) in orders.into_iter().zip(answers) {
                match answer {
                    Ok(()) => asked.push((ask.clone(), actual)),
                    Err(e) => skipped.push(SkippedBalloon {
                        vm: ask.vm.clone(),
                        reason: SkipReason::AskFailed,
                        detail: Some(e.to_string()),
                    }),
                }
            }
            let fresh: Vec<SkippedBalloon> = {
                let mut states = lock(&self.pool_states);
                let st = states.entry(domain.clone()).or_default();
                for (ask, actual) in &asked {
                    st.asked(&ask.vm, ask.target_mib, *actual, now);
                }
                let reportable = skipped.iter().filter(|s| reported_alone(s.reason));
                let fresh: BTreeSet<(String, SkipReason)> = st
                    .fresh_skips(reportable.map(|s| (s.vm.as_str(), s.reason)))
                    .into_iter()
                    .map(|(vm, why)| (vm.to_string(), why))
                    .collect();
                skipped
                    .iter()
                    .filter(|s| fresh.contains(&(s.vm.clone(), s.reason)))
                    .cloned()
                    .collect()
            };
            for balloon in fresh {
                self.events.push(Event::BalloonSkipped(BalloonSkipped {
                    domain: domain.name(),
                    balloon,
                }));
            }
            if !asked.is_empty() {
                self.events.push(Event::Reclaim(Reclaim {
                    domain: domain.name(),
                    constraint: snap.limit.kind(),
                    excess_bytes: reclaim.excess,
                    balloons: asked.into_iter().map(|(ask, _)| ask).collect(),
                }));
            }
        }
        if let Some(waited) = plan.decide {
            self.decide(domain, snap, skipped, waited, policy, now);
        }
    }

    /// The domain is out of memory: select, and report and act unless
    /// it is a stuck domain's repeat.
    fn decide(
        &self,
        domain: &Domain,
        snap: &Snapshot,
        skipped: Vec<SkippedBalloon>,
        waited: Duration,
        policy: &OomPolicy,
        now: Instant,
    ) {
        let constraint = match domain {
            Domain::Host => Ok(Constraint::Host),
            Domain::Pool(pool) => self.pool_constraint(pool),
            Domain::Nodes(nodes) => Constraint::nodes(nodes.clone()).map_err(Into::into),
        };
        let Ok(constraint) = constraint else { return };
        let Ok(selected) = self.select_victim(snap.limit.kind().into(), false, constraint) else {
            return;
        };
        let decided = {
            let mut states = lock(&self.pool_states);
            let st = states.entry(domain.clone()).or_default();
            oom::decide::decided(st, now, selected.no_victim())
        };
        if let Some(repeated) = decided.repeated {
            self.report_repeats(domain, repeated);
        }
        if !decided.report {
            return;
        }
        self.events.push(Event::OomPressure(OomPressure {
            usage: snap.limit.event(domain),
            why: snap.limit.why(domain, policy.no_progress_ms),
            // Pressure seen → this decision; the decision and kill
            // events carry the rest of the chain.
            pressure_to_decision_ms: waited.as_millis() as u64,
            stalled_balloons: skipped
                .iter()
                .filter(|s| s.reason == SkipReason::Stalled)
                .map(|s| s.vm.clone())
                .collect(),
            skipped_balloons: skipped,
        }));
        self.carry_out(selected);
    }

    /// Whether any domain is under pressure, or a pool is full: the
    /// supervisor then ticks fast (see `run`).
    /// The least headroom, in bytes, of the domains only the tick
    /// watches (the host, NUMA node sets, budgets) at the last
    /// [`Self::enforce_limits`]: what memory can fill before one of them
    /// is short; 0 when one is. `u64::MAX` when there is none.
    pub fn headroom(&self) -> u64 {
        self.headroom.load(Ordering::Relaxed)
    }

    pub fn pressed(&self) -> bool {
        self.memcg_pool_full() || lock(&self.pool_states).values().any(|st| st.pressed())
    }

    /// The domains whose decisions find no victim now.
    pub fn stuck_domains(&self) -> Vec<StuckDomain> {
        let now = Instant::now();
        lock(&self.pool_states)
            .iter()
            .filter_map(|(domain, st)| {
                let s = st.stuck()?;
                Some(StuckDomain {
                    domain: domain.name(),
                    reason: s.reason.clone(),
                    stuck_ms: now.saturating_duration_since(s.since).as_millis() as u64,
                    decisions: s.decisions,
                })
            })
            .collect()
    }

    fn report_repeats(&self, domain: &Domain, r: RepeatedDecisions) {
        self.events
            .push(Event::OomDecisionsRepeated(OomDecisionsRepeated {
                domain: domain.name(),
                reason: r.reason,
                decisions: r.decisions,
                stuck_ms: r.stuck_for.as_millis() as u64,
                ongoing: r.ongoing,
            }));
    }
}
