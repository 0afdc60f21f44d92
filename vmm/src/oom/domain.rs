//! OOM domains: the memories that can run out, and whether one is short
//! now. Each has a limit and a usage, whatever sets the limit:
//!
//! - a pool's byte **budget** the daemon alone enforces (usage: RSS + swap
//!   of the pool's VMMs; short: over the budget);
//! - a pool's **memory cgroup** the kernel enforces (usage: what the
//!   cgroup is charged, which can never pass the limit; short: tasks wait
//!   for memory there — the daemon's `pools` module says when exactly);
//! - the **host** (usage: `MemTotal` less what is available; short:
//!   available memory, and swap if there is any, under
//!   `host_min_available_permille`, earlyoom's rule), whose members are
//!   all VMs, as the kernel's global OOM killer considers every task;
//! - each **NUMA node set** VMs are bound to, unless it holds all of the
//!   host's memory (usage: the nodes' memory less what could be allocated
//!   there; short: that under the same permille), whose members are the
//!   VMs bound to those nodes and the unbound ones.

use std::fmt;

use crate::daemon_api::events::{DomainFigures, DomainName, DomainUsage, HostFigures, NodeFigures};
use crate::daemon_api::ConstraintKind;
use crate::host::numa::NodeSet;
use crate::host::procfs::{Meminfo, NodeMeminfo};

/// An OOM domain the policy watches. Ordered, so that it can key the
/// policy's memory of each domain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Domain {
    /// The whole host: every VM.
    Host,
    /// One pool with a budget or a memory cgroup: its VMs.
    Pool(String),
    /// A NUMA node set some VMs are bound to: those VMs and the unbound
    /// ones (who may have pages there too), as the kernel's
    /// `CONSTRAINT_MEMORY_POLICY` counts them.
    Nodes(NodeSet),
}

impl Domain {
    /// Names the domain in an event: `pool` or `nodes`; the host is the
    /// domain of an event that names neither.
    pub fn name(&self) -> DomainName {
        match self {
            Domain::Host => DomainName::default(),
            Domain::Pool(pool) => DomainName {
                pool: Some(pool.clone()),
                nodes: None,
            },
            Domain::Nodes(nodes) => DomainName {
                pool: None,
                nodes: Some(nodes.to_string()),
            },
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Host => f.write_str("the host"),
            Domain::Pool(p) => write!(f, "pool {p}"),
            Domain::Nodes(n) => write!(f, "NUMA nodes {n}"),
        }
    }
}

/// Deflate once a pool's usage is below this fraction of its limit
/// (percent).
pub const RELEASE_BELOW_PERCENT: u64 = 90;

/// A domain's limit and usage as read this tick, whatever enforces the
/// limit.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainLimit {
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
    /// Whether the domain is short of memory now.
    pub pressure: bool,
    /// Tasks of the domain wait for memory (memory cgroups).
    pub waiting: bool,
}

impl DomainLimit {
    /// A pool's byte budget against the RSS + swap of its VMMs.
    pub fn budget(usage: u64, budget: u64) -> Self {
        DomainLimit {
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
    ///
    /// `pcp_free` is the free memory parked on per-CPU lists
    /// ([`crate::host::numa::Zoneinfo::pcp_free`]), which `MemAvailable`
    /// misses: after a kill most of the victim's memory can sit there
    /// for seconds, and a host judged by `MemAvailable` alone would see
    /// no progress and kill again (issue 9). Pass 0 when it was not read.
    pub fn host(m: &Meminfo, pcp_free: u64, permille: u16) -> Self {
        let share = |total: u64| (u128::from(total) * u128::from(permille) / 1000) as u64;
        let min_available = share(m.mem_total);
        let available = m.mem_available.saturating_add(pcp_free).min(m.mem_total);
        let swap_short = m.swap_total == 0 || m.swap_free < share(m.swap_total);
        DomainLimit {
            figures: DomainFigures::Host(HostFigures {
                mem_available_bytes: m.mem_available,
                mem_total_bytes: m.mem_total,
                swap_free_bytes: m.swap_free,
                swap_total_bytes: m.swap_total,
                min_available_bytes: min_available,
                pcp_free_bytes: (pcp_free > 0).then_some(pcp_free),
                psi_some_avg10: None,
                psi_full_avg10: None,
            }),
            usage: m.mem_total - available,
            limit: m.mem_total,
            high: m.mem_total - min_available,
            release_below: m.mem_total.saturating_sub(2 * min_available),
            pressure: available < min_available && swap_short,
            waiting: false,
        }
    }

    /// A NUMA node set against `host_min_available_permille`, from the
    /// nodes' own meminfo: short when what could be allocated there
    /// ([`NodeMeminfo::available`]) is under that share of their memory.
    /// Swap does not help a bound VM's node, so it is not counted.
    pub fn nodes(nodes: &[NodeMeminfo], permille: u16) -> Self {
        let total: u64 = nodes.iter().map(|n| n.mem_total).sum();
        let available: u64 = nodes.iter().map(|n| n.available()).sum::<u64>().min(total);
        let min_available = (u128::from(total) * u128::from(permille) / 1000) as u64;
        DomainLimit {
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

    /// The least change that counts as progress: 0.1 % of the limit, at
    /// least 1 MiB. On a host of many GiB, the noise of every other
    /// process's allocations must not pass for reclaim working.
    pub fn progress_step(&self) -> u64 {
        (self.limit / 1000).max(1 << 20)
    }

    /// The domain's usage and figures, for an event.
    pub fn event(&self, domain: &Domain) -> DomainUsage {
        DomainUsage {
            domain: domain.name(),
            figures: self.figures.clone(),
            usage_bytes: self.usage,
            limit_bytes: self.limit,
        }
    }

    /// The host's swap, when it has some: it is short only because free
    /// swap is short too ([`DomainLimit::host`]), which the why must say.
    fn swap_shortage(&self) -> String {
        match &self.figures {
            DomainFigures::Host(h) if h.swap_total_bytes > 0 => format!(
                ", and {} MiB of {} MiB swap free",
                h.swap_free_bytes >> 20,
                h.swap_total_bytes >> 20
            ),
            _ => String::new(),
        }
    }

    /// Why the domain is out of memory, in words, with the figures.
    pub fn why(&self, domain: &Domain, no_progress_ms: u64) -> String {
        let (usage, limit) = (self.usage >> 20, self.limit >> 20);
        let kind = self.kind();
        let state = match kind {
            ConstraintKind::Budget => format!("is over its budget ({usage} MiB > {limit} MiB)"),
            ConstraintKind::Host | ConstraintKind::Nodes => format!(
                "{} short of memory ({} MiB available, under the minimum of {} MiB{})",
                if kind == ConstraintKind::Host {
                    "is"
                } else {
                    "are"
                },
                (self.limit - self.usage) >> 20,
                (self.limit - self.high) >> 20,
                self.swap_shortage()
            ),
            _ if self.waiting => format!(
                "is at {usage} MiB of its memory cgroup limit of {limit} MiB, tasks waiting for memory,"
            ),
            _ => format!("is at {usage} MiB of its memory cgroup limit of {limit} MiB"),
        };
        format!("{domain} {state} with no progress for {no_progress_ms} ms")
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        let short = DomainLimit::host(&meminfo(800 << 20, 0, 0), 0, 50);
        assert!(short.pressure);
        assert_eq!(short.kind(), ConstraintKind::Host);
        assert_eq!(short.usage, 16 * GIB - (800 << 20));
        let min = 16 * GIB * 50 / 1000;
        assert_eq!(short.limit - short.high, min);
        // Reclaim aims for the minimum; release waits for twice that.
        assert_eq!(short.release_below, 16 * GIB - 2 * min);
        assert!(!DomainLimit::host(&meminfo(900 << 20, 0, 0), 0, 50).pressure);
        // Plenty of free swap: not short yet (earlyoom's rule).
        assert!(!DomainLimit::host(&meminfo(800 << 20, 8 * GIB, 4 * GIB), 0, 50).pressure);
        let swap_short = DomainLimit::host(&meminfo(800 << 20, 8 * GIB, 400 << 20), 0, 50);
        assert!(swap_short.pressure);
        assert_eq!(
            swap_short.why(&Domain::Host, 2000),
            "the host is short of memory (800 MiB available, under the minimum of 819 MiB, \
             and 400 MiB of 8192 MiB swap free) with no progress for 2000 ms"
        );
        // 1000 ‰: always short; the why names the figures.
        let all = DomainLimit::host(&meminfo(15 * GIB, 0, 0), 0, 1000);
        assert!(all.pressure);
        assert_eq!(
            all.why(&Domain::Host, 2000),
            "the host is short of memory (15360 MiB available, under the minimum of 16384 MiB) \
             with no progress for 2000 ms"
        );
        let event = serde_json::to_value(all.event(&Domain::Host)).unwrap();
        assert_eq!(event["min_available_bytes"], 16 * GIB);
        assert_eq!(event["constraint"], "host");
        assert!(event.get("pool").is_none());
        assert!(event.get("pcp_free_bytes").is_none(), "not read: not shown");
    }

    /// Issue 9: after a kill, most of the victim's memory sat on per-CPU
    /// lists, missing from MemAvailable. Counted, the host is not short.
    #[test]
    fn free_pages_on_per_cpu_lists_are_available() {
        let m = meminfo(500 << 20, 0, 0);
        assert!(DomainLimit::host(&m, 0, 50).pressure);
        let after_kill = DomainLimit::host(&m, 816 << 20, 50);
        assert!(!after_kill.pressure);
        assert_eq!(after_kill.usage, 16 * GIB - (1316 << 20));
        let event = serde_json::to_value(after_kill.event(&Domain::Host)).unwrap();
        assert_eq!(event["pcp_free_bytes"], 816u64 << 20);
        assert_eq!(
            event["mem_available_bytes"],
            500u64 << 20,
            "as the kernel says"
        );
        // Never more available than there is memory.
        assert_eq!(DomainLimit::host(&m, u64::MAX, 50).usage, 0);
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
        let one = DomainLimit::nodes(&[n1], 50);
        assert!(one.pressure);
        assert_eq!(one.limit - one.usage, 550_000 << 10);
        let set: NodeSet = "1".parse().unwrap();
        let domain = Domain::Nodes(set);
        assert_eq!(
            one.why(&domain, 2000),
            "NUMA nodes 1 are short of memory (537 MiB available, under the minimum of \
             1600 MiB) with no progress for 2000 ms"
        );
        assert_eq!(one.event(&domain).domain.nodes.as_deref(), Some("1"));
        // With node 0's plenty beside it, the pair is not short.
        assert!(!DomainLimit::nodes(&[n0, n1], 50).pressure);
    }

    #[test]
    fn progress_is_at_least_a_thousandth_of_the_limit() {
        let host = DomainLimit::host(&meminfo(GIB, 0, 0), 0, 50);
        assert_eq!(host.progress_step(), 16 * GIB / 1000);
        assert_eq!(DomainLimit::budget(0, 360 << 20).progress_step(), 1 << 20);
    }

    #[test]
    fn domains_are_named_in_events_and_words() {
        let pool = Domain::Pool("a".into());
        assert_eq!(pool.name().pool.as_deref(), Some("a"));
        assert_eq!(pool.to_string(), "pool a");
        assert_eq!(Domain::Host.name(), DomainName::default());
        // The host sorts first: the order the policy's memory is kept in.
        assert!(Domain::Host < pool);
    }
}
