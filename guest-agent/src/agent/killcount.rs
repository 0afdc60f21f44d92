//! The cross-check of logged kills against the kernel's counter.
//!
//! `/proc/vmstat` `oom_kill` counts every OOM kill since boot
//! (`count_vm_event(OOM_KILL)` in `__oom_kill_process`, just before the
//! `Killed process` line is printed). The agent reads the kernel log from
//! the oldest record still in the ring, so after it has drained the log,
//! `counter - logged` kills happened whose lines are gone: overwritten
//! before the agent read them (EPIPE), or before it started.
//!
//! The counter is raised a moment before the line is printed, so a gap is
//! only reported once it was seen on two checks in a row, and each missing
//! kill is reported once.

use crate::protocol::KillsUnlogged;

#[derive(Debug, Default)]
pub struct KillCount {
    /// Missing kills already reported.
    pub unlogged: u64,
    /// The gap seen at the previous check, not yet reported.
    suspect: u64,
}

impl KillCount {
    pub fn new() -> Self {
        Self::default()
    }

    /// Call after draining the kernel log, with the counter and the number
    /// of `Killed process` lines read since boot.
    pub fn check(&mut self, counter: u64, logged: u64) -> Option<KillsUnlogged> {
        let gap = counter.saturating_sub(logged.saturating_add(self.unlogged));
        let confirmed = gap.min(self.suspect);
        self.suspect = gap - confirmed;
        if confirmed == 0 {
            return None;
        }
        self.unlogged += confirmed;
        Some(KillsUnlogged {
            count: confirmed,
            vmstat_oom_kill: counter,
            logged,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_gap_no_report() {
        let mut k = KillCount::new();
        assert_eq!(k.check(0, 0), None);
        assert_eq!(k.check(3, 3), None);
        assert_eq!(k.check(3, 3), None);
    }

    #[test]
    fn a_transient_gap_is_not_reported() {
        let mut k = KillCount::new();
        // Counter raised, line not yet printed.
        assert_eq!(k.check(1, 0), None);
        // Next check: the line arrived.
        assert_eq!(k.check(1, 1), None);
        assert_eq!(k.unlogged, 0);
    }

    #[test]
    fn a_lasting_gap_is_reported_once() {
        let mut k = KillCount::new();
        assert_eq!(k.check(5, 2), None);
        let r = k.check(5, 2).unwrap();
        assert_eq!((r.count, r.vmstat_oom_kill, r.logged), (3, 5, 2));
        assert_eq!(k.check(5, 2), None);
        assert_eq!(k.check(5, 2), None);
        // One more kill lost later.
        assert_eq!(k.check(6, 2), None);
        assert_eq!(k.check(6, 2).unwrap().count, 1);
        assert_eq!(k.unlogged, 4);
    }

    #[test]
    fn only_the_part_seen_twice_is_reported() {
        let mut k = KillCount::new();
        assert_eq!(k.check(2, 0), None);
        // Two more kills counted meanwhile, one of them lost.
        let r = k.check(4, 1).unwrap();
        assert_eq!(r.count, 2);
        assert_eq!(k.check(4, 1).unwrap().count, 1);
        assert_eq!(k.unlogged, 3);
    }

    #[test]
    fn more_lines_than_counted_is_no_gap() {
        let mut k = KillCount::new();
        assert_eq!(k.check(1, 2), None);
        assert_eq!(k.check(1, 2), None);
    }
}
