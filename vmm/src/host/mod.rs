//! Facts about the host, read from `/proc`, `/sys` and the cgroup file
//! systems: memory (`meminfo`, `vmstat`, a process's counters), pressure
//! (PSI lines and triggers), NUMA nodes and memory cgroups. No policy lives here:
//! the VM, the OOM core and the daemon read what they need through it.

pub mod cgroup;
pub mod memcg_events;
pub mod memstat;
pub mod numa;
pub mod poll;
pub mod procfs;
pub mod psi;

#[cfg(test)]
pub(crate) mod testing;

pub use procfs::{page_size, Meminfo, ProcFs};
pub use psi::{Pressure, PsiTrigger, Stall, TriggerSpec};
