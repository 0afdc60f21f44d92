//! Constraint: which memory ran out, how big it is, and which VMs live in
//! it — the kernel's `constrained_alloc()` and `oom_cpuset_eligible()`.
//!
//! The answer matters twice. `totalpages` is the yardstick of
//! `oom_score_adj` (an adj of 500 is worth half of *this domain*, not half
//! of the host), and only VMs that can give memory back *to this domain*
//! may be killed: killing a VM in another pool frees nothing where it is
//! needed.
//!
//! | constraint | kernel | `totalpages` | eligible VMs |
//! |---|---|---|---|
//! | [`Constraint::Host`] | `CONSTRAINT_NONE` | RAM + swap | all |
//! | [`Constraint::Memcg`] | `CONSTRAINT_MEMCG` | the cgroup's limit (+ swap it may use) | those in the cgroup or below |
//! | [`Constraint::Nodes`] | `CONSTRAINT_CPUSET` / `_MEMORY_POLICY` | swap + present pages of the nodes | those bound to a node in the set, or unbound |
//! | [`Constraint::Budget`] | (ours) | the pool's byte budget | the pool's VMs |

use std::fmt;
use std::path::{Path, PathBuf};

use crate::host::cgroup::CgroupVersion;
use crate::host::numa::NodeSet;
use crate::host::numa::{node_present_pages, nodes_with_memory, NumaError};
use crate::host::procfs::{read_file, HostError, ProcFs};

/// Why a constraint could not be read or evaluated.
#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(
        "{path} is not a memory cgroup: it has neither memory.max (v2) nor \
         memory.limit_in_bytes (v1)"
    )]
    NotAMemcg { path: PathBuf },
    #[error("{path}: {text:?} is not a limit (expected a byte count{max})")]
    BadLimit {
        path: PathBuf,
        text: String,
        /// `" or \"max\""` for v2 files.
        max: &'static str,
    },
    #[error("{path}: {text:?} is not a swappiness (expected 0..=200)")]
    BadSwappiness { path: PathBuf, text: String },
    #[error(transparent)]
    Numa(#[from] NumaError),
    #[error("a NUMA node constraint needs at least one node")]
    NoNodes,
    #[error("pool {pool:?} has a budget of 0 bytes")]
    EmptyBudget { pool: String },
}

/// The domain an OOM is about. Built by the monitor at each decision from
/// what it observed (which limit or budget was hit), so a `Memcg` carries
/// the limit as it was read then.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Constraint {
    /// The whole host ran short.
    Host,
    /// A memory cgroup holding a pool of VMs hit its limit.
    Memcg { path: PathBuf, limit: MemcgLimit },
    /// The VMs bound to these NUMA nodes ran short there.
    Nodes { nodes: NodeSet },
    /// A pool went over the byte budget the operator gave it; enforced by
    /// the daemon alone, no kernel limit behind it.
    Budget { pool: String, bytes: u64 },
}

impl Constraint {
    /// A [`Constraint::Memcg`] for the cgroup directory `path`, reading its
    /// limit now. `proc` is needed for cgroup v2, whose swappiness is the
    /// global `vm.swappiness`.
    pub fn memcg(path: impl Into<PathBuf>, proc: &ProcFs) -> Result<Self, ConstraintError> {
        let path = path.into();
        let limit = MemcgLimit::read(&path, proc)?;
        Ok(Constraint::Memcg { path, limit })
    }

    /// A [`Constraint::Nodes`]; an empty set is refused.
    pub fn nodes(nodes: NodeSet) -> Result<Self, ConstraintError> {
        if nodes.is_empty() {
            return Err(ConstraintError::NoNodes);
        }
        Ok(Constraint::Nodes { nodes })
    }

    /// A [`Constraint::Budget`]; a zero budget is refused.
    pub fn budget(pool: impl Into<String>, bytes: u64) -> Result<Self, ConstraintError> {
        let pool = pool.into();
        if bytes == 0 {
            return Err(ConstraintError::EmptyBudget { pool });
        }
        Ok(Constraint::Budget { pool, bytes })
    }
}

/// Where a VM's memory lives, as far as constraints care.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// The operator's pool (budgets are per pool).
    pub pool: Option<String>,
    /// The memory cgroup directory of the VMM process.
    pub cgroup: Option<PathBuf>,
    /// The NUMA nodes guest RAM is bound to; `None`: unbound, may use any.
    pub nodes: Option<NodeSet>,
}

/// Anything that has a [`Placement`] (a VM record of the daemon).
pub trait Placed {
    fn placement(&self) -> &Placement;
}

impl<T: Placed> Placed for &T {
    fn placement(&self) -> &Placement {
        (*self).placement()
    }
}

impl fmt::Display for Constraint {
    /// The kernel's `CONSTRAINT_*` names, with what they are about.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Constraint::Host => f.write_str("CONSTRAINT_NONE (host)"),
            Constraint::Memcg { path, .. } => write!(f, "CONSTRAINT_MEMCG ({})", path.display()),
            Constraint::Nodes { nodes } => write!(f, "CONSTRAINT_MEMORY_POLICY (nodes {nodes})"),
            Constraint::Budget { pool, bytes } => {
                write!(f, "CONSTRAINT_BUDGET (pool {pool}, {} MiB)", bytes >> 20)
            }
        }
    }
}

impl Placed for Placement {
    fn placement(&self) -> &Placement {
        self
    }
}

/// The answer of [`constrained_alloc`].
#[derive(Debug)]
pub struct Scope<'v, V> {
    /// Pages in the domain; never 0 (the kernel's `?: 1`), so it can
    /// always divide.
    pub totalpages: u64,
    /// How `totalpages` was arrived at, for the decision's event.
    pub basis: Basis,
    /// The VMs that may be chosen, in the order given.
    pub eligible: Vec<&'v V>,
}

/// How a [`Scope`]'s `totalpages` was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// `totalram_pages() + total_swap_pages`.
    HostRamAndSwap,
    /// `mem_cgroup_get_max()`: the limit, plus the swap it may use.
    MemcgLimit,
    /// The cgroup has no limit, so it cannot be what ran out: the host's.
    MemcgUnlimited,
    /// `total_swap_pages + node_present_pages()` of each node.
    NodePresentPagesAndSwap,
    /// The set holds every node with memory: no constraint at all, as the
    /// kernel's `nodes_subset(node_states[N_MEMORY], *nodemask)` decides.
    NodesCoverAllMemory,
    /// The pool's byte budget in pages.
    Budget,
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Basis::HostRamAndSwap => "host RAM + swap",
            Basis::MemcgLimit => "memory cgroup limit (+ its swap)",
            Basis::MemcgUnlimited => "memory cgroup without a limit: host RAM + swap",
            Basis::NodePresentPagesAndSwap => "present pages of the nodes + swap",
            Basis::NodesCoverAllMemory => "the nodes hold all memory: host RAM + swap",
            Basis::Budget => "pool budget",
        })
    }
}

/// Sizes the domain of `constraint` and picks the VMs that live in it.
///
/// Reads `meminfo` (and `zoneinfo` for nodes) from `proc` each time: RAM
/// can be hot-plugged and swap turned on or off while the daemon runs.
pub fn constrained_alloc<'v, V: Placed>(
    constraint: &Constraint,
    proc: &ProcFs,
    page_size: u64,
    vms: &'v [V],
) -> Result<Scope<'v, V>, ConstraintError> {
    let meminfo = proc.meminfo()?;
    let host_totalpages = meminfo.totalpages(page_size);
    let total_swap_pages = meminfo.swap_total / page_size;
    let pick = |eligible: &dyn Fn(&Placement) -> bool| {
        vms.iter().filter(|vm| eligible(vm.placement())).collect()
    };

    let (totalpages, basis, eligible) = match constraint {
        Constraint::Host => (host_totalpages, Basis::HostRamAndSwap, pick(&|_| true)),
        Constraint::Memcg { path, limit } => {
            let in_cgroup = |p: &Placement| p.cgroup.as_ref().is_some_and(|c| c.starts_with(path));
            match limit.max_pages(page_size, total_swap_pages) {
                Some(max) => (max, Basis::MemcgLimit, pick(&in_cgroup)),
                None => (host_totalpages, Basis::MemcgUnlimited, pick(&in_cgroup)),
            }
        }
        Constraint::Nodes { nodes } => {
            let present = node_present_pages(proc)?;
            let with_memory = nodes_with_memory(proc)?;
            if let Some(node) = nodes.iter().find(|n| !present.contains_key(n)) {
                return Err(NumaError::UnknownNode {
                    node,
                    known: with_memory,
                }
                .into());
            }
            // A VM whose RAM may come from any node of the set can give
            // memory back to it; an unbound VM can be anywhere, so it may.
            let shares_a_node =
                |p: &Placement| p.nodes.as_ref().is_none_or(|n| n.intersects(nodes));
            if with_memory.is_subset(nodes) {
                (
                    host_totalpages,
                    Basis::NodesCoverAllMemory,
                    pick(&shares_a_node),
                )
            } else {
                let sum: u64 = nodes.iter().map(|n| present[&n]).sum();
                (
                    total_swap_pages + sum,
                    Basis::NodePresentPagesAndSwap,
                    pick(&shares_a_node),
                )
            }
        }
        Constraint::Budget { pool, bytes } => {
            let in_pool = |p: &Placement| p.pool.as_deref() == Some(pool.as_str());
            (bytes / page_size, Basis::Budget, pick(&in_pool))
        }
    };
    Ok(Scope {
        totalpages: totalpages.max(1),
        basis,
        eligible,
    })
}

/// A memory cgroup's limits as `mem_cgroup_get_max()` uses them.
///
/// Invariant: `None` means unlimited (v2 `max`, or a value at the kernel's
/// `PAGE_COUNTER_MAX`, which v1 prints as 9223372036854771712).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemcgLimit {
    pub version: CgroupVersion,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// Bytes of swap the cgroup may use beyond `memory`: v2 `memory.swap.max`;
    /// v1 `memory.memsw.limit_in_bytes - memory.limit_in_bytes`. A missing
    /// file (swap accounting off) is unlimited, as in the kernel, whose
    /// counter then keeps its initial `PAGE_COUNTER_MAX`.
    pub swap: Option<u64>,
    /// The cgroup's swappiness (v1 `memory.swappiness`; v2 has none and
    /// uses `vm.swappiness`). At 0 the kernel counts no swap at all.
    pub swappiness: u32,
}

impl MemcgLimit {
    /// Reads the limits of the cgroup directory `dir`.
    pub fn read(dir: &Path, proc: &ProcFs) -> Result<Self, ConstraintError> {
        if dir.join("memory.max").exists() {
            let memory = read_limit(&dir.join("memory.max"), CgroupVersion::V2)?;
            let swap = read_optional_limit(&dir.join("memory.swap.max"), CgroupVersion::V2)?;
            let swappiness = read_swappiness(&proc.path("sys/vm/swappiness"))?;
            Ok(MemcgLimit {
                version: CgroupVersion::V2,
                memory,
                swap,
                swappiness,
            })
        } else if dir.join("memory.limit_in_bytes").exists() {
            let memory = read_limit(&dir.join("memory.limit_in_bytes"), CgroupVersion::V1)?;
            let memsw =
                read_optional_limit(&dir.join("memory.memsw.limit_in_bytes"), CgroupVersion::V1)?;
            let own = dir.join("memory.swappiness");
            let global = proc.path("sys/vm/swappiness");
            let swappiness = read_swappiness(if own.exists() { &own } else { &global })?;
            // The kernel refuses memsw < memory, so the difference is the
            // swap room; an unlimited memory limit makes it moot.
            let swap = match (memory, memsw) {
                (Some(m), Some(ms)) => Some(ms.saturating_sub(m)),
                _ => None,
            };
            Ok(MemcgLimit {
                version: CgroupVersion::V1,
                memory,
                swap,
                swappiness,
            })
        } else {
            Err(ConstraintError::NotAMemcg {
                path: dir.to_path_buf(),
            })
        }
    }

    /// `mem_cgroup_get_max()` in pages, or `None` without a memory limit:
    /// `limit + min(swap room, total_swap_pages)` when swappiness is not 0,
    /// else just the limit.
    pub fn max_pages(&self, page_size: u64, total_swap_pages: u64) -> Option<u64> {
        let memory = self.memory? / page_size;
        let swap = if self.swappiness == 0 {
            0
        } else {
            self.swap
                .map_or(total_swap_pages, |s| (s / page_size).min(total_swap_pages))
        };
        Some(memory + swap)
    }
}

/// `PAGE_COUNTER_MAX` (`LONG_MAX / PAGE_SIZE` pages) in bytes for 4 KiB
/// pages and above: any limit this large is "no limit".
const UNLIMITED_BYTES: u64 = (i64::MAX as u64 / 65536) * 65536;

fn read_limit(path: &Path, version: CgroupVersion) -> Result<Option<u64>, ConstraintError> {
    let (path, text) = read_file(path)?;
    parse_limit(&text, &path, version)
}

fn read_optional_limit(
    path: &Path,
    version: CgroupVersion,
) -> Result<Option<u64>, ConstraintError> {
    if path.exists() {
        read_limit(path, version)
    } else {
        Ok(None)
    }
}

fn parse_limit(
    text: &str,
    path: &Path,
    version: CgroupVersion,
) -> Result<Option<u64>, ConstraintError> {
    let value = text.trim();
    if version == CgroupVersion::V2 && value == "max" {
        return Ok(None);
    }
    let bytes: u64 = value.parse().map_err(|_| ConstraintError::BadLimit {
        path: path.to_path_buf(),
        text: value.chars().take(64).collect(),
        max: if version == CgroupVersion::V2 {
            " or \"max\""
        } else {
            ""
        },
    })?;
    Ok((bytes < UNLIMITED_BYTES).then_some(bytes))
}

fn read_swappiness(path: &Path) -> Result<u32, ConstraintError> {
    let (path, text) = read_file(path)?;
    text.trim()
        .parse()
        .ok()
        .filter(|s| *s <= 200)
        .ok_or_else(|| ConstraintError::BadSwappiness {
            path,
            text: text.trim().chars().take(64).collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/oom");

    fn proc(host: &str) -> ProcFs {
        ProcFs::at(format!("{FIXTURES}/{host}/proc"))
    }

    fn cgroup(name: &str) -> PathBuf {
        PathBuf::from(format!("{FIXTURES}/cgroup/{name}"))
    }

    fn nodes(s: &str) -> NodeSet {
        s.parse().unwrap()
    }

    fn vm(pool: &str, cgroup: Option<&Path>, bound: Option<&str>) -> Placement {
        Placement {
            pool: Some(pool.to_string()),
            cgroup: cgroup.map(Path::to_path_buf),
            nodes: bound.map(nodes),
        }
    }

    fn pools<V: Placed>(scope: &Scope<'_, V>) -> Vec<String> {
        let pool = |v: &&V| v.placement().pool.clone().unwrap_or_default();
        scope.eligible.iter().map(pool).collect()
    }
    #[test]
    fn an_empty_node_set_is_no_constraint() {
        assert!(matches!(
            Constraint::nodes(NodeSet::default()),
            Err(ConstraintError::NoNodes)
        ));
    }

    #[test]
    fn host_is_ram_plus_swap_and_everyone_is_eligible() {
        let vms = [vm("a", None, None), vm("b", None, Some("1"))];
        let s = constrained_alloc(&Constraint::Host, &proc("two-node"), 4096, &vms).unwrap();
        assert_eq!(s.totalpages, 16_384_000 + 2_097_151);
        assert_eq!(
            (s.basis, pools(&s)),
            (Basis::HostRamAndSwap, vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn nodes_on_a_two_node_host() {
        let p = proc("two-node");
        let vms = [
            vm("unbound", None, None),
            vm("on-0", None, Some("0")),
            vm("on-1", None, Some("1")),
            vm("on-both", None, Some("0-1")),
        ];
        let s = constrained_alloc(&Constraint::nodes(nodes("1")).unwrap(), &p, 4096, &vms).unwrap();
        // total_swap_pages + node_present_pages(1)
        assert_eq!(s.totalpages, 2_097_151 + 8_388_608);
        assert_eq!(s.basis, Basis::NodePresentPagesAndSwap);
        assert_eq!(pools(&s), ["unbound", "on-1", "on-both"]);
        // Both nodes: that is no constraint at all, RAM + swap as for Host.
        let s =
            constrained_alloc(&Constraint::nodes(nodes("0-1")).unwrap(), &p, 4096, &vms).unwrap();
        assert_eq!(
            (s.totalpages, s.basis),
            (16_384_000 + 2_097_151, Basis::NodesCoverAllMemory)
        );
        assert_eq!(s.eligible.len(), 4);
    }

    #[test]
    fn nodes_on_a_four_node_host_with_a_memoryless_node() {
        let p = proc("four-node");
        let vms = [
            vm("on-3", None, Some("3")),
            vm("on-2-3", None, Some("2-3")),
            vm("on-0", None, Some("0")),
        ];
        let s =
            constrained_alloc(&Constraint::nodes(nodes("2-3")).unwrap(), &p, 4096, &vms).unwrap();
        assert_eq!(s.totalpages, 4_194_304); // no swap on this one
        assert_eq!(pools(&s), ["on-3", "on-2-3"]);
        // Node 3 has no memory, so 0-2 already covers all of it, and the
        // kernel then counts RAM + swap (MemTotal 49000000 kB), not the
        // 12582782 present pages of the three nodes.
        let s =
            constrained_alloc(&Constraint::nodes(nodes("0-2")).unwrap(), &p, 4096, &vms).unwrap();
        assert_eq!(s.basis, Basis::NodesCoverAllMemory);
        assert_eq!(s.totalpages, 12_250_000);
        assert_eq!(pools(&s), ["on-2-3", "on-0"]);
        let e = constrained_alloc(&Constraint::nodes(nodes("2,9")).unwrap(), &p, 4096, &vms)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "NUMA node 9 does not exist here (nodes with memory: 0-2)"
        );
    }

    #[test]
    fn nodes_on_this_machine() {
        // One node: binding to it constrains nothing.
        let s = constrained_alloc::<Placement>(
            &Constraint::nodes(nodes("0")).unwrap(),
            &ProcFs::host(),
            4096,
            &[],
        );
        let host = constrained_alloc::<Placement>(&Constraint::Host, &ProcFs::host(), 4096, &[]);
        let (s, host) = (s.unwrap(), host.unwrap());
        assert_eq!(s.basis, Basis::NodesCoverAllMemory);
        assert_eq!(s.totalpages, host.totalpages);
    }
    #[test]
    fn memcg_v1_limit_and_its_members() {
        let p = proc("two-node"); // 2097151 swap pages, vm.swappiness 60
        let pool = cgroup("v1-limited");
        let c = Constraint::memcg(&pool, &p).unwrap();
        let Constraint::Memcg { limit, .. } = &c else {
            unreachable!()
        };
        // limit_in_bytes 512 MiB, memsw 768 MiB, memory.swappiness 10.
        assert_eq!(
            *limit,
            MemcgLimit {
                version: CgroupVersion::V1,
                memory: Some(512 << 20),
                swap: Some(256 << 20),
                swappiness: 10,
            }
        );
        let inside = pool.join("vm-a");
        let elsewhere = cgroup("v1-unlimited");
        let vms = [
            vm("a", Some(&inside), None),
            vm("pool", Some(&pool), None),
            vm("other", Some(&elsewhere), None),
            vm("none", None, None),
        ];
        let s = constrained_alloc(&c, &p, 4096, &vms).unwrap();
        assert_eq!(s.totalpages, 131_072 + 65_536);
        assert_eq!(
            (s.basis, pools(&s)),
            (Basis::MemcgLimit, vec!["a".into(), "pool".into()])
        );
        // A sibling whose name merely starts like the pool is not inside it.
        let sibling = PathBuf::from(format!("{}-2", pool.display()));
        assert!(
            constrained_alloc(&c, &p, 4096, &[vm("x", Some(&sibling), None)])
                .unwrap()
                .eligible
                .is_empty()
        );
        // Without swap on the host the swap room counts for nothing.
        let s = constrained_alloc(&c, &proc("one-node"), 4096, &vms).unwrap();
        assert_eq!(s.totalpages, 131_072);
    }

    #[test]
    fn memcg_v1_unlimited_falls_back_to_the_host() {
        let p = proc("two-node");
        let c = Constraint::memcg(cgroup("v1-unlimited"), &p).unwrap();
        let Constraint::Memcg { limit, .. } = &c else {
            unreachable!()
        };
        assert_eq!((limit.memory, limit.swap), (None, None));
        let s = constrained_alloc::<Placement>(&c, &p, 4096, &[]).unwrap();
        assert_eq!(
            (s.totalpages, s.basis),
            (16_384_000 + 2_097_151, Basis::MemcgUnlimited)
        );
    }

    #[test]
    fn memcg_v2_limits_and_max() {
        let p = proc("two-node");
        // memory.max 1 GiB, memory.swap.max 16 GiB (more than the host has).
        let c = Constraint::memcg(cgroup("v2-limited"), &p).unwrap();
        let Constraint::Memcg { limit, .. } = &c else {
            unreachable!()
        };
        assert_eq!(limit.version, CgroupVersion::V2);
        assert_eq!(limit.swappiness, 60); // vm.swappiness: v2 has no own
        let s = constrained_alloc::<Placement>(&c, &p, 4096, &[]).unwrap();
        assert_eq!(s.totalpages, 262_144 + 2_097_151);
        // memory.max "max": unlimited; no memory.swap.max file at all.
        let c = Constraint::memcg(cgroup("v2-max"), &p).unwrap();
        let Constraint::Memcg { limit, .. } = &c else {
            unreachable!()
        };
        assert_eq!((limit.memory, limit.swap), (None, None));
        let s = constrained_alloc::<Placement>(&c, &p, 4096, &[]).unwrap();
        assert_eq!(s.basis, Basis::MemcgUnlimited);
        // 64 MiB, swap.max "max", swappiness 0: no swap counted.
        let c = Constraint::memcg(cgroup("v2-noswap"), &proc("four-node")).unwrap();
        let Constraint::Memcg { limit, .. } = &c else {
            unreachable!()
        };
        assert_eq!(limit.max_pages(4096, 1 << 20), Some(16_384));
    }

    #[test]
    fn memcg_garbage_is_refused_clearly() {
        let p = proc("two-node");
        let e = Constraint::memcg(cgroup("garbage-v2"), &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(
                "garbage-v2/memory.max: \"lots\" is not a limit (expected a byte count or \"max\")"
            ),
            "{e}"
        );
        let e = Constraint::memcg(cgroup("garbage-v1"), &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with(
                "garbage-v1/memory.limit_in_bytes: \"-1\" is not a limit (expected a byte count)"
            ),
            "{e}"
        );
        let e = Constraint::memcg(cgroup("not-a-memcg"), &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not-a-memcg is not a memory cgroup: it has neither"),
            "{e}"
        );
        let e = Constraint::memcg(cgroup("bad-swappiness"), &p)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("memory.swappiness: \"high\" is not a swappiness"),
            "{e}"
        );
        let e = Constraint::memcg(cgroup("v2-limited"), &proc("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("sys/vm/swappiness"),
            "{e}"
        );
    }

    #[test]
    fn huge_limits_mean_unlimited() {
        let p = Path::new("memory.limit_in_bytes");
        // What v1 prints for "no limit" with 4 KiB pages (PAGE_COUNTER_MAX).
        assert_eq!(
            parse_limit("9223372036854771712\n", p, CgroupVersion::V1).unwrap(),
            None
        );
        // ... and with 64 KiB pages.
        assert_eq!(
            parse_limit("9223372036854710272", p, CgroupVersion::V1).unwrap(),
            None
        );
        assert_eq!(
            parse_limit("1099511627776", p, CgroupVersion::V1).unwrap(),
            Some(1 << 40)
        );
        assert!(parse_limit("max", p, CgroupVersion::V1).is_err());
        assert!(parse_limit("18446744073709551616", p, CgroupVersion::V2).is_err());
    }

    #[test]
    fn budget_is_the_pools_bytes() {
        let vms = [
            vm("gold", None, None),
            vm("silver", None, None),
            vm("gold", None, Some("1")),
        ];
        let c = Constraint::budget("gold", (3 << 30) + 100).unwrap();
        let s = constrained_alloc(&c, &proc("two-node"), 4096, &vms).unwrap();
        assert_eq!((s.totalpages, s.basis), (786_432, Basis::Budget));
        assert_eq!(pools(&s), ["gold", "gold"]);
        // Below one page the kernel's `?: 1` keeps it a divisor.
        let c = Constraint::Budget {
            pool: "tiny".into(),
            bytes: 100,
        };
        assert_eq!(
            constrained_alloc::<Placement>(&c, &proc("two-node"), 4096, &[])
                .unwrap()
                .totalpages,
            1
        );
        let e = Constraint::budget("empty", 0).unwrap_err().to_string();
        assert_eq!(e, "pool \"empty\" has a budget of 0 bytes");
    }

    #[test]
    fn a_real_memcg_below_our_own() {
        let cg = crate::host::testing::ScratchMemcg::create("constraint", 48 << 20);
        let host = ProcFs::host();
        let page = crate::host::procfs::page_size();
        let c = Constraint::memcg(cg.dir(), &host).unwrap();
        let inside = vm("inside", Some(&cg.dir().join("vm-1")), None);
        let s = constrained_alloc(&c, &host, page, std::slice::from_ref(&inside)).unwrap();
        assert_eq!(s.basis, Basis::MemcgLimit);
        assert_eq!(s.eligible.len(), 1);
        let swap_pages = host.meminfo().unwrap().swap_total / page;
        // 48 MiB, plus at most the host's swap.
        assert!(
            (s.totalpages - (48 << 20) / page) <= swap_pages,
            "{}",
            s.totalpages
        );
        if swap_pages == 0 {
            assert_eq!(s.totalpages, (48 << 20) / page);
        }
    }
}
