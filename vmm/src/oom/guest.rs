//! What a guest's own reports change in the host's policy: the two things
//! the kernel's OOM killer cannot know about a VM, because only the guest
//! agent sees inside it.
//!
//! - A guest whose kernel had to OOM-kill **for want of memory** (not a
//!   memory cgroup's limit inside it) while its balloon held pages was
//!   squeezed too hard: the balloon gives part of them back, unless the
//!   host is itself short, and the guest is not asked again for a while.
//! - A guest **under memory pressure** (its own PSI) is asked last: its
//!   free memory is about to be used. It is asked only when the calm
//!   guests together cannot cover the shortage.
//!
//! Pure functions over numbers; the daemon gathers them and acts.

use std::time::Duration;

/// A guest whose memory PSI `some` avg10 is at least this (hundredths of
/// a percent: 10 %) is under pressure.
pub const PRESSURED_SOME_AVG10: u32 = 1000;

/// How long a guest that OOM-killed is not asked to inflate again.
pub const AFTER_GUEST_OOM_HOLD: Duration = Duration::from_secs(30);

/// What the agent reported of one guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// OOM kills the guest kernel made for want of memory (constraint
    /// other than `CONSTRAINT_MEMCG`), since the agent connected.
    pub starved_kills: u64,
    /// Memory PSI `some` avg10, hundredths of a percent.
    pub psi_some_avg10: Option<u32>,
}

impl GuestReport {
    /// Whether the guest is under memory pressure now.
    pub fn pressured(&self) -> bool {
        self.psi_some_avg10
            .is_some_and(|a| a >= PRESSURED_SOME_AVG10)
    }
}

/// The balloon target to set after the guest starved while its balloon
/// held `actual_mib`: half of it back, or `None` when there is nothing
/// to give back or the host is short itself (its own pressure comes
/// first; the guest's kill already freed memory inside it).
///
/// `new_starved_kills` are the starved kills since this was last asked.
pub fn deflate_after_guest_oom(
    actual_mib: u32,
    new_starved_kills: u64,
    host_short: bool,
) -> Option<u32> {
    (new_starved_kills > 0 && actual_mib > 0 && !host_short).then_some(actual_mib / 2)
}

/// Which givers to ask, by index, for `excess` bytes: `givers` holds what
/// each can give and whether its guest is under pressure. The calm ones
/// first; the pressured ones only when the calm cannot cover `excess`.
pub fn reclaim_order(givers: &[(u64, bool)], excess: u64) -> Vec<usize> {
    let calm: Vec<usize> = (0..givers.len()).filter(|&i| !givers[i].1).collect();
    let calm_total: u64 = calm.iter().map(|&i| givers[i].0).sum();
    if calm_total >= excess {
        calm
    } else {
        (0..givers.len()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_starved_guest_gets_half_its_balloon_back_unless_the_host_is_short() {
        assert_eq!(deflate_after_guest_oom(64, 1, false), Some(32));
        assert_eq!(deflate_after_guest_oom(1, 3, false), Some(0));
        assert_eq!(deflate_after_guest_oom(64, 0, false), None, "no new kill");
        assert_eq!(deflate_after_guest_oom(0, 1, false), None, "no balloon");
        assert_eq!(deflate_after_guest_oom(64, 1, true), None, "the host first");
    }

    #[test]
    fn pressured_guests_are_asked_only_when_the_calm_cannot_cover() {
        let givers = [(40 * MIB, false), (100 * MIB, true), (30 * MIB, false)];
        assert_eq!(reclaim_order(&givers, 64 * MIB), [0, 2]);
        assert_eq!(reclaim_order(&givers, 70 * MIB), [0, 2]);
        assert_eq!(reclaim_order(&givers, 71 * MIB), [0, 1, 2]);
        assert_eq!(reclaim_order(&[(8 * MIB, true)], MIB), [0]);
        assert!(reclaim_order(&[], MIB).is_empty());
    }

    #[test]
    fn pressure_is_ten_percent_some_avg10() {
        let at = |a| GuestReport {
            starved_kills: 0,
            psi_some_avg10: Some(a),
        };
        assert!(!at(999).pressured());
        assert!(at(1000).pressured());
        assert!(!GuestReport::default().pressured(), "no PSI, no pressure");
    }
}
