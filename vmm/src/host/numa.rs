//! NUMA facts: node lists as the kernel writes them, and what
//! `/proc/zoneinfo` says about each node (present pages, per-CPU free
//! pages). Read by the VM (binding guest RAM), the OOM core (sizing a node
//! set) and the daemon's policy (counting free memory right).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::procfs::{HostError, ProcFs};

/// Why a node list is refused or nodes cannot be checked.
#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("bad NUMA node list {text:?}: {reason}")]
    BadNodeList { text: String, reason: &'static str },
    #[error("NUMA node {node} does not exist here (nodes with memory: {known})")]
    UnknownNode { node: u32, known: NodeSet },
    #[error("a NUMA node list needs at least one node")]
    NoNodes,
}

/// `node_present_pages()` of every node, from `/proc/zoneinfo`: the sum of
/// each zone's `present` pages.
///
/// Present pages, not the `MemTotal` of `/sys/devices/system/node/node*/meminfo`:
/// that one is the node's *managed* pages (present minus boot-time
/// reservations), which is what `si_meminfo_node()` reports, but the OOM
/// killer sums `node_present_pages()`. On some hosts they differ a lot: on
/// this development machine (`deferred_init=lazy`, pages handed to the
/// allocator only as needed) node 0's `MemTotal` read 9527876 kB while its
/// zones held 6291358 present pages (25165432 kB) and `/proc/meminfo`
/// said 24682416 kB.
pub fn node_present_pages(proc: &ProcFs) -> Result<BTreeMap<u32, u64>, HostError> {
    Ok(Zoneinfo::read(proc)?.present)
}

/// The nodes with memory (the kernel's `N_MEMORY`), from `proc`'s
/// `zoneinfo`.
pub fn nodes_with_memory(proc: &ProcFs) -> Result<NodeSet, HostError> {
    Ok(node_present_pages(proc)?
        .into_iter()
        .filter(|(_, pages)| *pages > 0)
        .map(|(node, _)| node)
        .collect())
}

/// Checks that `nodes` is not empty and that each of its nodes has
/// memory here; the error names the nodes that have.
pub fn check_nodes(nodes: &NodeSet, proc: &ProcFs) -> Result<(), NumaError> {
    if nodes.is_empty() {
        return Err(NumaError::NoNodes);
    }
    let with_memory = nodes_with_memory(proc)?;
    match nodes.iter().find(|n| !with_memory.contains(*n)) {
        Some(node) => Err(NumaError::UnknownNode {
            node,
            known: with_memory,
        }),
        None => Ok(()),
    }
}

/// What `/proc/zoneinfo` says per node: the pages each node's zones hold,
/// and the free pages parked on per-CPU lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Zoneinfo {
    /// `node_present_pages()` of every node: the sum of its zones'
    /// `present` pages.
    pub present: BTreeMap<u32, u64>,
    /// Free pages on the per-CPU lists of every node's zones (the
    /// `count` of each CPU's `pagesets` entry).
    ///
    /// The kernel counts these as allocated: they are missing from
    /// `MemFree` and `MemAvailable` although any allocation on that CPU
    /// takes them first. Since Linux 6.x the lists' `high` mark is tuned
    /// up to a fraction of the zone, so after a big process exits a lot
    /// of what it freed can sit there for seconds: measured here (issue
    /// 9) ~816 MiB of ~1000 MiB freed by a kill, with `MemAvailable`
    /// up by only 250-320 MiB for over 5 s.
    pub pcp_free: BTreeMap<u32, u64>,
}

impl Zoneinfo {
    /// Reads and parses `zoneinfo` under `proc`.
    pub fn read(proc: &ProcFs) -> Result<Self, HostError> {
        let (path, text) = proc.read("zoneinfo")?;
        Self::parse(&text, &path)
    }

    /// Free pages on per-CPU lists, all nodes together.
    pub fn pcp_free_pages(&self) -> u64 {
        self.pcp_free.values().sum()
    }

    fn parse(text: &str, path: &Path) -> Result<Self, HostError> {
        let mut zi = Zoneinfo::default();
        let mut node = None;
        for (i, line) in text.lines().enumerate() {
            let malformed = |reason| HostError::Malformed {
                path: path.to_path_buf(),
                line: i + 1,
                text: line.to_string(),
                reason,
            };
            // "Node 0, zone   Normal" opens a zone of node 0.
            if let Some(rest) = line.strip_prefix("Node ") {
                let id = rest
                    .split(',')
                    .next()
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| malformed("expected `Node <id>, zone <name>`"))?;
                zi.present.entry(id).or_insert(0u64);
                zi.pcp_free.entry(id).or_insert(0u64);
                node = Some(id);
                continue;
            }
            let mut words = line.split_whitespace();
            let (field, what) = match words.next() {
                Some("present") => (&mut zi.present, "expected `present <pages>`"),
                Some("count:") => (&mut zi.pcp_free, "expected `count: <pages>`"),
                _ => continue,
            };
            let pages: u64 = words
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| malformed(what))?;
            let id = node.ok_or_else(|| malformed("a zone field before any `Node` line"))?;
            *field.get_mut(&id).expect("inserted at its Node line") += pages;
        }
        if zi.present.is_empty() {
            return Err(HostError::MissingField {
                path: path.to_path_buf(),
                field: "Node",
                since: "Linux 2.6.13",
            });
        }
        Ok(zi)
    }
}

/// A set of NUMA node ids, written like the kernel's node lists: `0-3,5`.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeSet(BTreeSet<u32>);

/// The kernel's `MAX_NUMNODES` at its largest (`NODES_SHIFT` 10).
const MAX_NUMNODES: u32 = 1024;

impl NodeSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, node: u32) -> bool {
        self.0.contains(&node)
    }

    /// Whether the two sets share a node.
    pub fn intersects(&self, other: &NodeSet) -> bool {
        self.0.intersection(&other.0).next().is_some()
    }

    /// Whether every node of `self` is in `other`.
    pub fn is_subset(&self, other: &NodeSet) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
}

impl FromIterator<u32> for NodeSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        NodeSet(iter.into_iter().collect())
    }
}

impl FromStr for NodeSet {
    type Err = NumaError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| NumaError::BadNodeList {
            text: s.to_string(),
            reason,
        };
        let mut set = BTreeSet::new();
        for part in s.trim().split(',') {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let num = |n: &str| {
                n.trim()
                    .parse::<u32>()
                    .map_err(|_| bad("expected node ids like 0-3,5"))
            };
            let (lo, hi) = (num(lo)?, num(hi)?);
            if lo > hi {
                return Err(bad("a range runs backwards"));
            }
            if hi >= MAX_NUMNODES {
                return Err(bad("node ids stop at 1023"));
            }
            set.extend(lo..=hi);
        }
        Ok(NodeSet(set))
    }
}

impl fmt::Display for NodeSet {
    /// The kernel's list format, ranges collapsed: `0-3,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids = self.0.iter().copied().peekable();
        let mut first = true;
        while let Some(lo) = ids.next() {
            let mut hi = lo;
            while ids.peek() == Some(&(hi + 1)) {
                hi = ids.next().expect("peeked");
            }
            let sep = if first { "" } else { "," };
            first = false;
            if lo == hi {
                write!(f, "{sep}{lo}")?;
            } else {
                write!(f, "{sep}{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/oom");

    fn proc(host: &str) -> ProcFs {
        ProcFs::at(format!("{FIXTURES}/{host}/proc"))
    }

    fn nodes(s: &str) -> NodeSet {
        s.parse().unwrap()
    }

    #[test]
    fn node_lists_parse_and_print_like_the_kernels() {
        assert_eq!(nodes("0-3,5").to_string(), "0-3,5");
        assert_eq!(nodes("5,0,1,2").to_string(), "0-2,5");
        assert_eq!(nodes(" 7 ").to_string(), "7");
        assert!(nodes("0-1").intersects(&nodes("1,3")));
        assert!(!nodes("0-1").intersects(&nodes("2-3")));
        for (text, why) in [
            ("", "expected node ids"),
            ("a", "expected node ids"),
            ("0-", "expected node ids"),
            ("3-1", "backwards"),
            ("1024", "stop at 1023"),
        ] {
            let e = text.parse::<NodeSet>().unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn zoneinfo_gives_present_pages_per_node() {
        // This development machine, verbatim: one node, 6291358 present
        // pages — more than MemTotal's 6170604 managed ones.
        let one = node_present_pages(&proc("one-node")).unwrap();
        assert_eq!(
            one.into_iter().collect::<Vec<_>>(),
            vec![(0, 3998 + 782_336 + 5_505_024)]
        );
        let two = node_present_pages(&proc("two-node")).unwrap();
        assert_eq!(
            two.into_iter().collect::<Vec<_>>(),
            vec![(0, 8_388_478), (1, 8_388_608)]
        );
        let four = node_present_pages(&proc("four-node")).unwrap();
        assert_eq!(
            four.into_iter().collect::<Vec<_>>(),
            vec![(0, 4_194_174), (1, 4_194_304), (2, 4_194_304), (3, 0)]
        );
    }

    #[test]
    fn zoneinfo_garbage_is_refused() {
        let p = Path::new("/proc/zoneinfo");
        let e = Zoneinfo::parse("Node x, zone DMA\n", p)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "/proc/zoneinfo: line 1: expected `Node <id>, zone <name>`: \"Node x, zone DMA\""
        );
        let e = Zoneinfo::parse("  present 10\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a zone field before any `Node` line"), "{e}");
        let e = Zoneinfo::parse("Node 0, zone DMA\n  present ten\n", p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: expected `present <pages>`"), "{e}");
        let e = Zoneinfo::parse("", p).unwrap_err().to_string();
        assert!(e.contains("no `Node` line"), "{e}");
        let e = node_present_pages(&proc("garbage"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("garbage/proc/zoneinfo: line 3"), "{e}");
    }

    #[test]
    fn nodes_without_memory_are_refused_with_those_that_have_it() {
        let here = ProcFs::host();
        check_nodes(&nodes("0"), &here).expect("node 0 always has memory");
        let e = check_nodes(&nodes("0,7"), &here).unwrap_err().to_string();
        assert!(e.starts_with("NUMA node 7 does not exist here"), "{e}");
        assert!(matches!(
            check_nodes(&NodeSet::default(), &here),
            Err(NumaError::NoNodes)
        ));
        let four = nodes_with_memory(&proc("four-node")).unwrap();
        assert_eq!(four.to_string(), "0-2", "node 3 has no memory");
    }

    #[test]
    fn per_cpu_free_pages_are_counted_per_node() {
        // This development machine, verbatim: 87471 free pages (341 MiB)
        // sat on per-CPU lists, missing from MemFree.
        let one = Zoneinfo::read(&proc("one-node")).unwrap();
        assert_eq!(one.pcp_free_pages(), 96 + 29 + 58_763 + 28_583);
        assert_eq!(one.pcp_free.keys().copied().collect::<Vec<_>>(), vec![0]);
        let e = Zoneinfo::parse(
            "Node 0, zone DMA\n  pagesets\n    cpu: 0\n      count: many\n",
            Path::new("/z"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 4: expected `count: <pages>`"), "{e}");
    }
}
