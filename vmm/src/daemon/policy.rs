//! The automatic policy: reclaim first, then decide. Each tick (the
//! supervisor's, or at once when a PSI trigger fires) compares the usage
//! of each OOM domain with its limit, whatever sets it ([`PoolLimit`]):
//!
//! - a pool's byte **budget** the daemon alone enforces (usage: RSS + swap
//!   of the pool's VMMs; pressure: over the budget);
//! - a pool's **memory cgroup** the kernel enforces ([`super::pools`];
//!   usage: what the cgroup is charged, which can never pass the limit;
//!   pressure: tasks wait for memory there, see [`super::pools`] for when
//!   exactly);
//! - the **host** (usage: `MemTotal - MemAvailable`; pressure: available
//!   memory, and swap if there is any, under
//!   `host_min_available_permille`, earlyoom's rule), whose members are
//!   all VMs, whatever their pool, as the kernel's global OOM killer
//!   considers every task;
//! - each **NUMA node set** VMs are bound to, unless it holds all of the
//!   host's memory (usage: the nodes' memory less what could be allocated
//!   there, from their own meminfo; pressure: that under the same
//!   `host_min_available_permille`), whose members are the VMs bound to
//!   those nodes and the unbound ones.
//!
//! Under pressure:
//!
//! 1. **Reclaim**: inflate the balloons of the domain's VMs that report
//!    free memory (guest statistics), each by its share of the excess,
//!    weighted by what it can give beyond a floor it keeps. The kernel
//!    cannot do this: it sees a VMM as one big process, not a guest with
//!    free pages. A balloon that does not follow is **stalled**
//!    ([`super::balloon_stall`]): it gets no more asks for a while and
//!    the events say so.
//! 2. **Decide**: only when reclaim has made no progress (neither did the
//!    pool's usage fall nor did any of its VMs shrink) for
//!    `no_progress_ms`, no earlier
//!    victim is still releasing memory ([`crate::oom::select`] checks), and
//!    the last kill is at least `min_kill_interval_ms` old, run the OOM
//!    decision for the domain (`CONSTRAINT_BUDGET`, `CONSTRAINT_MEMCG`,
//!    `CONSTRAINT_NONE` or `CONSTRAINT_MEMORY_POLICY`).
//!
//! A VM that shrinks counts as progress because in a memory cgroup at its
//! limit whatever the balloons free is taken at once by the VM waiting for
//! it: the pool's usage stays at the limit while reclaim works, but memory
//! moves from the idle guests to the one that needs it.
//!
//! Reclaim requests grow while pressure lasts (a memory cgroup shows at
//! most a few percent of its limit as excess, however much its waiting
//! tasks need), and are capped by what the host really holds of each
//! guest's free memory. Without reclaim (`reclaim_first: false`) there is
//! no progress to wait for, and the decision runs at once.
//!
//! Well clear of the limit again (90 % of a pool's limit; twice the
//! minimum available on the host) for [`RELEASE_HOLD`], the balloons the
//! domain inflated are let go, half at a time, unless another domain still
//! holds them.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::balloon_stall::{InflateState, InflateWatch};
use super::vms::is_live;
use super::{lock, vm_client, Daemon};
use crate::daemon_api::events::{
    BalloonAsk, BalloonRelease, BalloonStalled, DomainFigures, DomainName, DomainUsage,
    HostFigures, NodeFigures, OomPressure, Reclaim, ReclaimReleased,
};
use crate::daemon_api::{ConstraintKind, Event, VmState};
use crate::host::numa::{nodes_with_memory, NodeSet};
use crate::host::procfs::{Meminfo, NodeMeminfo, ProcFs};
use crate::host::psi::Pressure;
use crate::oom::constraint::Constraint;
use crate::oom::guest::{self, GuestReport};

/// An OOM domain the policy watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain<'a> {
    /// The whole host: every VM.
    Host,
    /// One pool with a budget or a memory cgroup: its VMs.
    Pool(&'a str),
    /// A NUMA node set some VMs are bound to: those VMs and the unbound
    /// ones (who may have pages there too), as the kernel's
    /// `CONSTRAINT_MEMORY_POLICY` counts them.
    Nodes(&'a NodeSet),
}

impl Domain<'_> {
    /// Names the domain in an event: `pool` or `nodes`; the host is the
    /// domain of an event that names neither.
    fn name(self) -> DomainName {
        match self {
            Domain::Host => DomainName::default(),
            Domain::Pool(pool) => DomainName {
                pool: Some(pool.into()),
                nodes: None,
            },
            Domain::Nodes(nodes) => DomainName {
                pool: None,
                nodes: Some(nodes.to_string()),
            },
        }
    }

    /// The key of its [`PoolState`]; pool names cannot start with `(`.
    fn key(self) -> String {
        match self {
            Domain::Host => "(host)".into(),
            Domain::Pool(p) => p.into(),
            Domain::Nodes(n) => format!("(nodes {n})"),
        }
    }
}

impl fmt::Display for Domain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Host => f.write_str("the host"),
            Domain::Pool(p) => write!(f, "pool {p}"),
            Domain::Nodes(n) => write!(f, "NUMA nodes {n}"),
        }
    }
}

/// What the policy remembers about a domain between ticks.
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
    /// How each balloon asked follows its target.
    inflating: BTreeMap<String, InflateWatch>,
    /// When this episode of pressure was first seen.
    pressure_since: Option<Instant>,
    /// Ticks in a row under pressure: each doubles the reclaim request
    /// (see [`ASK_GROWTH_MAX_SHIFT`]).
    pressure_ticks: u32,
    /// Since when the domain has been calm (no pressure), for the
    /// hold-off before balloons are let go.
    calm_since: Option<Instant>,
}

/// A domain's reclaim request doubles with every tick the pressure lasts,
/// up to this many times: a memory cgroup's usage can never show more
/// than the last few percent of its limit as excess, while the tasks that
/// wait may need far more, and only a refused charge after the previous
/// round says so. 2^5 times the excess is asked after half a second.
const ASK_GROWTH_MAX_SHIFT: u32 = 5;

/// How long a domain must stay calm before its balloons are let go, and
/// then between two halvings of their targets. Letting go at once (as
/// after a kill) hands the freed memory straight back to the guests that
/// were squeezed, and if they use it the domain fills and kills again.
const RELEASE_HOLD: Duration = Duration::from_secs(10);

/// A domain's limit and usage as read this tick, whatever enforces the
/// limit.
pub struct PoolLimit {
    /// What sets the limit (a budget the daemon alone enforces, a memory
    /// cgroup the kernel does, the host, NUMA nodes; it names the trigger
    /// of the decision), with the figures behind it, for the events.
    pub figures: DomainFigures,
    /// Bytes the domain uses.
    pub usage: u64,
    /// The budget, the cgroup's limit or the host's RAM, in bytes.
    pub limit: u64,
    /// What reclaim aims to bring usage down to: the budget itself, 95 %
    /// of a cgroup's limit, or the host's RAM less its minimum available.
    pub high: u64,
    /// Below this usage the balloons the domain inflated are let go.
    pub release_below: u64,
    /// Whether the domain is under pressure now.
    pub pressure: bool,
    /// Tasks of the domain wait for memory (memory cgroups).
    pub waiting: bool,
}

/// Deflate once a pool's usage is below this fraction of its limit
/// (percent).
pub const RELEASE_BELOW_PERCENT: u64 = 90;

impl PoolLimit {
    fn budget(usage: u64, budget: u64) -> Self {
        PoolLimit {
            figures: DomainFigures::Budget {
                budget_bytes: budget,
            },
            usage,
            limit: budget,
            high: budget,
            release_below: budget / 100 * RELEASE_BELOW_PERCENT,
            pressure: usage > budget,
            waiting: false,
        }
    }

    /// What sets the limit.
    pub fn kind(&self) -> ConstraintKind {
        self.figures.kind()
    }

    /// The host against `host_min_available_permille` (earlyoom's rule:
    /// available memory short and, if there is swap, free swap short too).
    pub fn host(m: &Meminfo, permille: u16) -> Self {
        let share = |total: u64| (u128::from(total) * u128::from(permille) / 1000) as u64;
        let min_available = share(m.mem_total);
        let swap_short = m.swap_total == 0 || m.swap_free < share(m.swap_total);
        let usage = m.mem_total.saturating_sub(m.mem_available);
        PoolLimit {
            figures: DomainFigures::Host(HostFigures {
                mem_available_bytes: m.mem_available,
                mem_total_bytes: m.mem_total,
                swap_free_bytes: m.swap_free,
                swap_total_bytes: m.swap_total,
                min_available_bytes: min_available,
                psi_some_avg10: None,
                psi_full_avg10: None,
            }),
            usage,
            limit: m.mem_total,
            high: m.mem_total - min_available,
            release_below: m.mem_total.saturating_sub(2 * min_available),
            pressure: m.mem_available < min_available && swap_short,
            waiting: false,
        }
    }

    /// The least change that counts as progress: 0.1 % of the limit, at
    /// least 1 MiB. On a host of many GiB, the noise of every other
    /// process's allocations must not pass for reclaim working.
    fn progress_step(&self) -> u64 {
        (self.limit / 1000).max(1 << 20)
    }

    /// A NUMA node set against `host_min_available_permille`, from the
    /// nodes' own meminfo: short when what could be allocated there
    /// ([`NodeMeminfo::available`]) is under that share of their memory.
    /// Swap does not help a bound VM's node, so it is not counted.
    pub fn nodes(nodes: &[NodeMeminfo], permille: u16) -> Self {
        let total: u64 = nodes.iter().map(|n| n.mem_total).sum();
        let available: u64 = nodes.iter().map(|n| n.available()).sum::<u64>().min(total);
        let min_available = (u128::from(total) * u128::from(permille) / 1000) as u64;
        PoolLimit {
            figures: DomainFigures::Nodes(NodeFigures {
                available_bytes: available,
                min_available_bytes: min_available,
                mem_free_bytes: nodes.iter().map(|n| n.mem_free).sum::<u64>(),
            }),
            usage: total - available,
            limit: total,
            high: total - min_available,
            release_below: total.saturating_sub(2 * min_available),
            pressure: available < min_available,
            waiting: false,
        }
    }

    /// The domain's usage and figures, for an event.
    fn event(&self, domain: Domain<'_>) -> DomainUsage {
        DomainUsage {
            domain: domain.name(),
            figures: self.figures.clone(),
            usage_bytes: self.usage,
            limit_bytes: self.limit,
        }
    }

    fn why(&self, domain: Domain<'_>, no_progress_ms: u64) -> String {
        let (usage, limit) = (self.usage >> 20, self.limit >> 20);
        let kind = self.kind();
        let state = match kind {
            ConstraintKind::Budget => format!("is over its budget ({usage} MiB > {limit} MiB)"),
            ConstraintKind::Host | ConstraintKind::Nodes => format!(
                "{} short of memory ({} MiB available, under the minimum of {} MiB)",
                if kind == ConstraintKind::Host {
                    "is"
                } else {
                    "are"
                },
                (self.limit - self.usage) >> 20,
                (self.limit - self.high) >> 20
            ),
            _ if self.waiting => format!(
                "is at {usage} MiB of its memory cgroup limit of {limit} MiB, tasks waiting for memory,"
            ),
            _ => format!("is at {usage} MiB of its memory cgroup limit of {limit} MiB"),
        };
        format!("{domain} {state} with no progress for {no_progress_ms} ms")
    }
}

/// Where the kernel lists NUMA nodes and their meminfo.
const SYS_NODE: &str = "/sys/devices/system/node";

/// A guest keeps at least this much of its free memory.
const FLOOR_MIB: u64 = 16;

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
    starved_kills: BTreeMap<String, u64>,
    hold_until: BTreeMap<String, Instant>,
}

/// A member's balloon as its VMM reports it.
struct Balloon<'m> {
    member: &'m Member,
    /// Guest-reported free memory, bytes.
    free: u64,
    actual_mib: u32,
}

impl Balloon<'_> {
    /// What a guest always keeps out of its balloon, bytes: 16 MiB or a
    /// twentieth of its RAM, whichever is more.
    fn floor(&self) -> u64 {
        (FLOOR_MIB << 20).max((self.member.mem_mib << 20) / 20)
    }

    /// The largest balloon target the policy may ask for, MiB: guest RAM
    /// less the floor. Whatever the guest reports: statistics lag the
    /// balloon (a guest's free memory is read before its last inflation
    /// shows), and asks built on stale free memory once reached 100 % of
    /// guest RAM (issue 9).
    fn max_target_mib(&self) -> u32 {
        (self
            .member
            .mem_mib
            .saturating_sub(self.floor().div_ceil(1 << 20))) as u32
    }

    /// What the guest can give, bytes: its reported free memory minus a
    /// floor it keeps, and no more than the host holds of it. Free pages
    /// the guest never touched cost the host nothing: ballooning them
    /// frees nothing, and deflating them later would grow the VM past
    /// where it started. The host holds the VMM's resident memory less
    /// what the guest uses (its RAM less its free pages and its balloon).
    fn can_give(&self) -> u64 {
        let mem = self.member.mem_mib << 20;
        let floor = self.floor();
        let used = mem.saturating_sub(self.free + (u64::from(self.actual_mib) << 20));
        let held = self.member.usage.saturating_sub(used);
        self.free.saturating_sub(floor).min(held)
    }
}

impl Daemon {
    /// One policy pass over every domain with a limit: byte budgets,
    /// memory-cgroup pools, and the host.
    pub fn enforce_limits(&self) {
        for (pool, &budget) in self.budgets() {
            let members = self.members(Domain::Pool(pool));
            let usage = members.iter().map(|m| m.usage).sum();
            self.enforce(
                Domain::Pool(pool),
                PoolLimit::budget(usage, budget),
                &members,
            );
        }
        for (pool, limit) in self.memcg_limits() {
            let members = self.members(Domain::Pool(&pool));
            self.enforce(Domain::Pool(&pool), limit, &members);
        }
        // Also with the line at 0 (off): never under pressure then, but
        // balloons inflated before are let go.
        let permille = self.policy().host_min_available_permille;
        // Unreadable meminfo leaves the host to the kernel this tick.
        if let Ok(m) = ProcFs::host().meminfo() {
            let mut lim = PoolLimit::host(&m, permille);
            self.give_back_to_starved_guests(lim.pressure);
            if let (true, DomainFigures::Host(host)) = (lim.pressure, &mut lim.figures) {
                // For the events only: not read on calm ticks.
                let psi = Pressure::read(Path::new("/proc/pressure/memory")).ok();
                host.psi_some_avg10 = psi.as_ref().map(|p| p.some.avg10);
                host.psi_full_avg10 = psi.as_ref().and_then(|p| p.full).map(|f| f.avg10);
            }
            self.enforce(Domain::Host, lim, &self.members(Domain::Host));
        }
        for nodes in self.bound_node_sets() {
            let sys = Path::new(SYS_NODE);
            // A node that cannot be read leaves its set to the host's
            // domain this tick.
            let infos: Result<Vec<_>, _> =
                nodes.iter().map(|n| NodeMeminfo::read(sys, n)).collect();
            if let Ok(infos) = infos {
                let lim = PoolLimit::nodes(&infos, permille);
                let members = self.members(Domain::Nodes(&nodes));
                self.enforce(Domain::Nodes(&nodes), lim, &members);
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
                if let Some(asked) = st.requested_mib.get_mut(&id) {
                    *asked = (*asked).min(target);
                }
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

    fn members(&self, domain: Domain<'_>) -> Vec<Member> {
        let reports = self.agents.reports();
        self.with_vms(|vms| {
            vms.values()
                .filter(|v| is_live(v.state))
                .filter(|v| match domain {
                    Domain::Host => true,
                    Domain::Pool(p) => v.spec.pool.as_deref() == Some(p),
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

    fn enforce(&self, domain: Domain<'_>, lim: PoolLimit, members: &[Member]) {
        let usage = lim.usage;
        let policy = self.policy();
        let pressure = lim.pressure;
        // Balloons are asked before the domain's state is locked.
        let balloons = if pressure && policy.reclaim_first {
            balloons(members)
        } else {
            Vec::new()
        };
        let mut states = lock(&self.pool_states);
        let key = domain.key();

        if !pressure {
            let now = Instant::now();
            let st = states.entry(key.clone()).or_default();
            st.last_progress = None;
            st.pressure_since = None;
            st.pressure_ticks = 0;
            st.last_usage.clear();
            st.inflating.clear();
            let calm_since = *st.calm_since.get_or_insert(now);
            if usage >= lim.release_below {
                st.calm_since = Some(now);
            } else if now.duration_since(calm_since) >= RELEASE_HOLD && !st.requested_mib.is_empty()
            {
                // Halve each target; a new hold-off before the next step.
                st.calm_since = Some(now);
                let mut released = Vec::new();
                for (id, mib) in std::mem::take(&mut st.requested_mib) {
                    let next = mib / 2;
                    if next > 0 {
                        st.requested_mib.insert(id.clone(), next);
                    }
                    released.push((id, next));
                }
                // A VM another domain still reclaims from keeps its balloon.
                let states = &*states;
                let held = |id: &String| {
                    states
                        .iter()
                        .any(|(k, s)| *k != key && s.requested_mib.contains_key(id))
                };
                let mut deflated = Vec::new();
                for (id, mib) in released.iter().filter(|(id, _)| !held(id)) {
                    if let Some(m) = members.iter().find(|m| &m.id == id) {
                        if vm_client::set_balloon_target(&m.sock, *mib).is_ok() {
                            deflated.push(BalloonRelease {
                                vm: id.clone(),
                                target_mib: *mib,
                            });
                        }
                    }
                }
                self.events.push(Event::ReclaimReleased(ReclaimReleased {
                    usage: lim.event(domain),
                    balloons: deflated,
                }));
            }
            return;
        }

        let st = states.entry(key).or_default();
        let now = Instant::now();
        let since = *st.pressure_since.get_or_insert(now);
        st.calm_since = None;
        for m in members {
            let before = st.last_usage.insert(m.id.clone(), m.usage);
            st.shrunk += before.map_or(0, |b| b.saturating_sub(m.usage));
        }
        st.last_usage
            .retain(|id, _| members.iter().any(|m| &m.id == id));
        let step = lim.progress_step();
        if st.last_progress.is_none() || usage + step < st.best_usage || st.shrunk >= step {
            st.best_usage = usage;
            st.shrunk = 0;
            st.last_progress = Some(now);
        }
        let mut stalled = Vec::new();
        if policy.reclaim_first {
            let shift = st.pressure_ticks.min(ASK_GROWTH_MAX_SHIFT);
            let excess = usage.saturating_sub(lim.high).max(1 << 20) << shift;
            stalled = self.reclaim(domain, lim.kind(), excess, &balloons, st, now);
        }
        st.pressure_ticks = st.pressure_ticks.saturating_add(1);
        // Without reclaim there is no progress to wait for: decide at once
        // (the rate limit still holds), as the kernel does.
        let no_progress = !policy.reclaim_first
            || now.duration_since(st.last_progress.unwrap_or(now))
                >= Duration::from_millis(policy.no_progress_ms);
        let rate_ok = lock(&self.last_kill).is_none_or(|t| {
            now.duration_since(t) >= Duration::from_millis(policy.min_kill_interval_ms)
        });
        if no_progress && rate_ok {
            drop(states);
            self.events.push(Event::OomPressure(OomPressure {
                usage: lim.event(domain),
                why: lim.why(domain, policy.no_progress_ms),
                // Pressure seen → this decision; the decision and kill
                // events carry the rest of the chain.
                pressure_to_decision_ms: now.duration_since(since).as_millis() as u64,
                stalled_balloons: stalled,
            }));
            let constraint = match domain {
                Domain::Host => Ok(Constraint::Host),
                Domain::Pool(pool) => self.pool_constraint(pool),
                Domain::Nodes(nodes) => Constraint::nodes(nodes.clone()).map_err(Into::into),
            };
            if let Ok(constraint) = constraint {
                let _ = self.oom_decide(lim.kind().into(), false, constraint);
            }
            if let Some(st) = lock(&self.pool_states).get_mut(&domain.key()) {
                // A new round: the kill is the progress.
                st.last_progress = None;
            }
        }
    }

    /// Inflates balloons of members with free memory by their fair share
    /// of `excess` bytes; only ever raises a target it asked for before,
    /// and leaves stalled balloons alone. Returns the VMs whose balloons
    /// are stalled now.
    fn reclaim(
        &self,
        domain: Domain<'_>,
        kind: ConstraintKind,
        excess: u64,
        balloons: &[Balloon<'_>],
        st: &mut PoolState,
        now: Instant,
    ) -> Vec<String> {
        let mut stalled = Vec::new();
        let mut usable = Vec::new();
        for b in balloons {
            let id = &b.member.id;
            let state = match st.inflating.get_mut(id) {
                Some(w) => w.observe(now, b.actual_mib),
                None => InflateState::Settled,
            };
            match state {
                InflateState::Stalled { rate_mib_s } => {
                    self.events.push(Event::BalloonStalled(BalloonStalled {
                        domain: domain.name(),
                        vm: id.clone(),
                        target_mib: st.requested_mib.get(id).copied(),
                        actual_mib: b.actual_mib,
                        rate_mib_s: (rate_mib_s * 10.0).round() / 10.0,
                        backoff_s: super::balloon_stall::STALL_BACKOFF.as_secs(),
                    }));
                    stalled.push(id.clone());
                }
                InflateState::BackingOff => stalled.push(id.clone()),
                InflateState::Settled | InflateState::Inflating => usable.push(b),
            }
        }
        let now_held = |id: &String| {
            lock(&self.guests)
                .hold_until
                .get(id)
                .is_some_and(|until| *until > now)
        };
        let candidates: Vec<(&Balloon<'_>, u64)> = usable
            .into_iter()
            .filter(|b| !now_held(&b.member.id))
            .map(|b| (b, b.can_give()))
            .filter(|(_, can_give)| *can_give >= 1 << 20)
            .collect();
        // Guests under their own memory pressure last.
        let order: Vec<(u64, bool)> = candidates
            .iter()
            .map(|(b, g)| (*g, b.member.guest.is_some_and(|r| r.pressured())))
            .collect();
        let givers: Vec<(&Balloon<'_>, u64)> = guest::reclaim_order(&order, excess)
            .into_iter()
            .map(|i| candidates[i])
            .collect();
        let total: u64 = givers.iter().map(|(_, g)| g).sum();
        let mut asked = Vec::new();
        for (b, can_give) in givers {
            let m = b.member;
            // Fair share, weighted by what each can give; rounded up to MiB.
            let share = (excess.min(total) as u128 * can_give as u128 / total as u128) as u64;
            let share_mib = share.div_ceil(1 << 20).min(can_give >> 20) as u32;
            let target = (b.actual_mib + share_mib).min(b.max_target_mib());
            let prev = st.requested_mib.get(&m.id).copied().unwrap_or(0);
            if share_mib == 0 || target <= prev {
                continue;
            }
            if vm_client::set_balloon_target(&m.sock, target).is_ok() {
                st.requested_mib.insert(m.id.clone(), target);
                st.inflating
                    .entry(m.id.clone())
                    .or_default()
                    .asked(now, target, b.actual_mib);
                asked.push(BalloonAsk {
                    vm: m.id.clone(),
                    target_mib: target,
                    can_give_mib: can_give >> 20,
                });
            }
        }
        if !asked.is_empty() {
            self.events.push(Event::Reclaim(Reclaim {
                domain: domain.name(),
                constraint: kind,
                excess_bytes: excess,
                balloons: asked,
            }));
        }
        stalled
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

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn meminfo(available: u64, swap_total: u64, swap_free: u64) -> Meminfo {
        Meminfo {
            mem_total: 16 * GIB,
            mem_free: available / 2,
            mem_available: available,
            swap_total,
            swap_free,
        }
    }

    #[test]
    fn the_host_is_short_when_available_memory_and_swap_both_are() {
        // 5 % of 16 GiB is 819 MiB.
        let short = PoolLimit::host(&meminfo(800 << 20, 0, 0), 50);
        assert!(short.pressure);
        assert_eq!(short.kind(), ConstraintKind::Host);
        assert_eq!(short.usage, 16 * GIB - (800 << 20));
        let min = 16 * GIB * 50 / 1000;
        assert_eq!(short.limit - short.high, min);
        // Reclaim aims for the minimum; release waits for twice that.
        assert_eq!(short.release_below, 16 * GIB - 2 * min);
        assert!(!PoolLimit::host(&meminfo(900 << 20, 0, 0), 50).pressure);
        // Plenty of free swap: not short yet (earlyoom's rule).
        assert!(!PoolLimit::host(&meminfo(800 << 20, 8 * GIB, 4 * GIB), 50).pressure);
        assert!(PoolLimit::host(&meminfo(800 << 20, 8 * GIB, 400 << 20), 50).pressure);
        // 1000 ‰: always short; the why names the figures.
        let all = PoolLimit::host(&meminfo(15 * GIB, 0, 0), 1000);
        assert!(all.pressure);
        assert_eq!(
            all.why(Domain::Host, 2000),
            "the host is short of memory (15360 MiB available, under the minimum of 16384 MiB) \
             with no progress for 2000 ms"
        );
        let event = serde_json::to_value(all.event(Domain::Host)).unwrap();
        assert_eq!(event["min_available_bytes"], 16 * GIB);
        assert_eq!(event["constraint"], "host");
        assert!(event.get("pool").is_none());
    }

    #[test]
    fn a_node_set_is_short_when_its_nodes_are() {
        let sys = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/oom/two-node/sys/devices/system/node"
        ));
        let n0 = NodeMeminfo::read(sys, 0).unwrap();
        let n1 = NodeMeminfo::read(sys, 1).unwrap();
        // Node 1: 550000 kB of 32768000 available, under 5 % (1638400 kB).
        let one = PoolLimit::nodes(&[n1], 50);
        assert!(one.pressure);
        assert_eq!(one.limit - one.usage, 550_000 << 10);
        let set: NodeSet = "1".parse().unwrap();
        assert_eq!(
            one.why(Domain::Nodes(&set), 2000),
            "NUMA nodes 1 are short of memory (537 MiB available, under the minimum of \
             1600 MiB) with no progress for 2000 ms"
        );
        assert_eq!(
            one.event(Domain::Nodes(&set)).domain.nodes.as_deref(),
            Some("1")
        );
        // With node 0's plenty beside it, the pair is not short.
        assert!(!PoolLimit::nodes(&[n0, n1], 50).pressure);
        assert_eq!(Domain::Nodes(&set).key(), "(nodes 1)");
    }

    #[test]
    fn a_guest_gives_only_free_memory_the_host_holds() {
        const MIB: u64 = 1 << 20;
        let member = |usage: u64| Member {
            id: "vm".into(),
            sock: PathBuf::new(),
            usage,
            mem_mib: 192,
            has_balloon: true,
            guest: None,
        };
        // 192 MiB guest using 16 MiB, 176 MiB free, floor 16 MiB.
        let touched = member(140 * MIB); // it touched 124 MiB more, then freed it
        let b = Balloon {
            member: &touched,
            free: 176 * MIB,
            actual_mib: 0,
        };
        assert_eq!(b.can_give(), 124 * MIB, "what the host holds of it");
        let fresh = member(20 * MIB); // free memory never touched
        let b = Balloon {
            member: &fresh,
            free: 176 * MIB,
            actual_mib: 0,
        };
        assert_eq!(b.can_give(), 4 * MIB);
        // Plenty resident: the floor is what limits.
        let full = member(200 * MIB);
        let b = Balloon {
            member: &full,
            free: 100 * MIB,
            actual_mib: 32,
        };
        assert_eq!(b.can_give(), 84 * MIB);
    }

    /// Issue 9: asks reached 192 of 192 MiB while the guest could give 19:
    /// its statistics still showed free memory the balloon had taken.
    /// Whatever it reports, a target never goes past RAM less the floor.
    #[test]
    fn no_target_goes_past_the_floor_whatever_the_guest_reports() {
        const MIB: u64 = 1 << 20;
        let member = |mem_mib: u64| Member {
            id: "vm".into(),
            sock: PathBuf::new(),
            usage: mem_mib * MIB,
            mem_mib,
            has_balloon: true,
            guest: None,
        };
        let small = member(192);
        let stale = Balloon {
            member: &small,
            free: 150 * MIB,
            actual_mib: 170,
        };
        assert_eq!(stale.max_target_mib(), 176, "192 MiB less a 16 MiB floor");
        assert!(stale.actual_mib + (stale.can_give() >> 20) as u32 > stale.max_target_mib());
        let big = member(1024);
        let b = Balloon {
            member: &big,
            free: 900 * MIB,
            actual_mib: 0,
        };
        assert_eq!(
            b.max_target_mib(),
            1024 - 52,
            "a twentieth of 1 GiB, rounded up"
        );
    }

    #[test]
    fn progress_is_at_least_a_thousandth_of_the_limit() {
        let host = PoolLimit::host(&meminfo(GIB, 0, 0), 50);
        assert_eq!(host.progress_step(), 16 * GIB / 1000);
        assert_eq!(PoolLimit::budget(0, 360 << 20).progress_step(), 1 << 20);
    }
}
