//! Binding guest RAM to NUMA nodes (`vmm run --numa-nodes 0-1`).
//!
//! Each guest RAM region gets an `MPOL_BIND` memory policy over the node
//! set before the guest (or the loader) touches a page, so every page the
//! guest ever faults in comes from those nodes and nowhere else. That is
//! what makes the OOM manager's `nodes` constraint true of a VM: the
//! kernel charges such a VM's shortage to its nodes
//! (`CONSTRAINT_MEMORY_POLICY`), and the daemon scores it against their
//! present pages, not the host's.
//!
//! A node that does not exist or has no memory is refused up front with
//! the list of those that do: `mbind(2)` would only say `EINVAL`.

use std::io;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::GuestRam;
use crate::host::numa::{check_nodes, NodeSet};
use crate::host::procfs::ProcFs;

/// `MPOL_BIND` of `<linux/mempolicy.h>`.
const MPOL_BIND: libc::c_int = 2;

#[derive(Debug, thiserror::Error)]
pub enum NumaError {
    #[error("--numa-nodes")]
    Nodes(#[from] crate::host::numa::NumaError),
    #[error("cannot bind guest RAM at {addr:#x} ({len} bytes) to NUMA nodes {nodes}")]
    Mbind {
        addr: usize,
        len: usize,
        nodes: NodeSet,
        #[source]
        source: io::Error,
    },
}

/// The `nodemask` and `maxnode` arguments of `mbind(2)` for `nodes`.
///
/// The kernel reads `maxnode - 1` bits (a historical off-by-one every
/// caller, numactl included, pays with one extra), so `maxnode` is the
/// mask's bit count plus one.
fn nodemask(nodes: &NodeSet) -> (Vec<libc::c_ulong>, libc::c_ulong) {
    const BITS: u32 = libc::c_ulong::BITS;
    let top = nodes.iter().max().unwrap_or(0);
    let mut mask = vec![0 as libc::c_ulong; (top / BITS + 1) as usize];
    for n in nodes.iter() {
        mask[(n / BITS) as usize] |= 1 << (n % BITS);
    }
    let maxnode = (mask.len() as libc::c_ulong) * libc::c_ulong::from(BITS) + 1;
    (mask, maxnode)
}

/// Binds every region of `ram` to `nodes` (`MPOL_BIND`), after checking
/// the nodes exist here. Must run before guest RAM is touched: pages
/// already faulted in stay where they are.
pub fn bind_guest_ram(ram: &GuestRam, nodes: &NodeSet) -> Result<(), NumaError> {
    check_nodes(nodes, &ProcFs::host())?;
    let (mask, maxnode) = nodemask(nodes);
    for region in ram.iter() {
        let (addr, len) = (region.as_ptr() as usize, region.len() as usize);
        // SAFETY: the range is exactly one live mapping owned by `ram`;
        // `mask` outlives the call and holds `maxnode - 1` bits. A memory
        // policy changes where future pages come from, never contents.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_mbind,
                addr,
                len,
                MPOL_BIND,
                mask.as_ptr(),
                maxnode,
                0 as libc::c_uint,
            )
        };
        if ret != 0 {
            return Err(NumaError::Mbind {
                addr,
                len,
                nodes: nodes.clone(),
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> NodeSet {
        s.parse().unwrap()
    }

    #[test]
    fn nodemask_has_one_bit_per_node_and_one_extra_maxnode() {
        assert_eq!(nodemask(&set("0")), (vec![1], 65));
        assert_eq!(nodemask(&set("0,2-3")), (vec![0b1101], 65));
        let (mask, maxnode) = nodemask(&set("1,64,130"));
        assert_eq!(mask, vec![0b10, 1, 0b100]);
        assert_eq!(maxnode, 193);
    }

    #[test]
    fn bound_guest_ram_shows_the_policy_in_numa_maps() {
        let ram = super::super::memory::create_guest_ram(32 << 20).unwrap();
        bind_guest_ram(&ram, &set("0")).unwrap();
        let region = ram.iter().next().unwrap();
        let start = format!("{:x} ", region.as_ptr() as usize);
        let maps = std::fs::read_to_string("/proc/self/numa_maps").unwrap();
        let line = maps
            .lines()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("no numa_maps line for {start}: {maps}"));
        assert!(line.contains(" bind:0"), "{line}");
    }
}
