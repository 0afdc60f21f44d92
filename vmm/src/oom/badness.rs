//! Select: how bad is a VM? The kernel's `oom_badness()` and the
//! `/proc/<pid>/oom_score` it shows users, applied to a VM's VMM process.
//!
//! The score is deliberately dull: the pages the VM would give back if it
//! died (resident + swapped out + page tables), shifted by the operator's
//! `oom_score_adj` in thousandths of the constrained domain. No age, no
//! CPU time, no root bonus — a predictable rule an operator can steer.

use std::fmt;
use std::fs;
use std::io;
use std::str::FromStr;

use crate::host::memstat::MmCounters;

/// `/proc/<pid>/oom_score_adj`: -1000 (never chosen) ..= 1000 (chosen
/// first), 0 by default. A VM's value is the operator's; the daemon also
/// writes it to the VMM process so the kernel's own OOM killer agrees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OomScoreAdj(i16);

impl OomScoreAdj {
    /// `OOM_SCORE_ADJ_MIN`: never chosen.
    pub const MIN: OomScoreAdj = OomScoreAdj(-1000);
    /// `OOM_SCORE_ADJ_MAX`.
    pub const MAX: OomScoreAdj = OomScoreAdj(1000);

    /// The value, in -1000..=1000.
    pub fn get(self) -> i16 {
        self.0
    }

    /// Whether this value exempts a VM from every OOM decision.
    pub fn is_never_chosen(self) -> bool {
        self == Self::MIN
    }

    /// Reads `/proc/<pid>/oom_score_adj`.
    pub fn of_process(pid: u32) -> Result<Self, BadnessError> {
        let path = format!("/proc/{pid}/oom_score_adj");
        let text = fs::read_to_string(&path).map_err(|source| BadnessError::Io {
            path: path.clone(),
            source,
        })?;
        text.parse()
            .map_err(|e| BadnessError::Adj { path, source: e })
    }

    /// Writes `/proc/<pid>/oom_score_adj`. Lowering it below the
    /// process's floor (`oom_score_adj_min`, normally 0) needs
    /// `CAP_SYS_RESOURCE`: the kernel answers EACCES otherwise.
    pub fn apply_to_process(self, pid: u32) -> Result<(), BadnessError> {
        let path = format!("/proc/{pid}/oom_score_adj");
        fs::write(&path, self.0.to_string()).map_err(|source| BadnessError::Io { path, source })
    }
}

impl TryFrom<i64> for OomScoreAdj {
    type Error = AdjError;

    fn try_from(v: i64) -> Result<Self, AdjError> {
        if (-1000..=1000).contains(&v) {
            Ok(OomScoreAdj(v as i16))
        } else {
            Err(AdjError::OutOfRange(v))
        }
    }
}

impl FromStr for OomScoreAdj {
    type Err = AdjError;

    fn from_str(s: &str) -> Result<Self, AdjError> {
        let v: i64 = s
            .trim()
            .parse()
            .map_err(|_| AdjError::NotANumber(s.trim().to_string()))?;
        v.try_into()
    }
}

impl fmt::Display for OomScoreAdj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A bad `oom_score_adj`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdjError {
    #[error("oom_score_adj {0} is outside -1000..=1000")]
    OutOfRange(i64),
    #[error("oom_score_adj {0:?} is not a whole number")]
    NotANumber(String),
}

/// Reading a process's figures failed.
#[derive(Debug, thiserror::Error)]
pub enum BadnessError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {source}")]
    Adj {
        path: String,
        #[source]
        source: AdjError,
    },
}

/// What `oom_badness()` looks at, for one VM: its VMM process's memory
/// counters in pages, and the operator's knobs.
///
/// Invariant: the counts are the kernel's `MM_*` counters (what
/// `/proc/<pid>/status` prints), not a page-table walk such as
/// `smaps_rollup`; see [`MmCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmUsage {
    pub rss_anon_pages: u64,
    pub rss_file_pages: u64,
    pub rss_shmem_pages: u64,
    /// Swap entries (`MM_SWAPENTS`).
    pub swap_pages: u64,
    /// `mm_pgtables_bytes / PAGE_SIZE`, rounded down as the kernel does.
    pub pgtables_pages: u64,
    pub oom_score_adj: OomScoreAdj,
    /// The VM was already chosen and its memory is being torn down (the
    /// kernel's `MMF_OOM_SKIP`): choosing it again frees nothing.
    pub being_reaped: bool,
}

impl VmUsage {
    /// From the byte counters of `/proc/<pid>/status`.
    pub fn from_counters(c: &MmCounters, page_size: u64, oom_score_adj: OomScoreAdj) -> Self {
        VmUsage {
            rss_anon_pages: c.rss_anon / page_size,
            rss_file_pages: c.rss_file / page_size,
            rss_shmem_pages: c.rss_shmem / page_size,
            swap_pages: c.swap / page_size,
            pgtables_pages: c.page_tables / page_size,
            oom_score_adj,
            being_reaped: false,
        }
    }

    /// A live process as the kernel would score it: its counters and its
    /// own `oom_score_adj`. `Ok(None)` when it has no memory any more.
    pub fn of_process(pid: u32, page_size: u64) -> Result<Option<Self>, BadnessError> {
        let path = format!("/proc/{pid}/status");
        let counters =
            MmCounters::read(Some(pid)).map_err(|source| BadnessError::Io { path, source })?;
        let Some(counters) = counters else {
            return Ok(None);
        };
        let adj = OomScoreAdj::of_process(pid)?;
        Ok(Some(Self::from_counters(&counters, page_size, adj)))
    }

    /// `get_mm_rss()`: anon + file + shmem resident pages.
    pub fn rss_pages(&self) -> u64 {
        self.rss_anon_pages + self.rss_file_pages + self.rss_shmem_pages
    }
}

/// `oom_badness()`: how many pages choosing this VM is worth, in a domain
/// of `totalpages` (from [`super::constraint::constrained_alloc`]).
///
/// `None` (the kernel's `LONG_MIN`) means "never choose": `oom_score_adj`
/// is -1000, or the VM is already being reaped. Otherwise
/// `rss + swap + pgtables + adj * (totalpages / 1000)`, which may be
/// negative; the highest value is the victim.
///
/// Note the kernel's integer arithmetic: `adj *= totalpages / 1000`
/// divides first, so one adj point is worth `totalpages / 1000` pages,
/// rounded down — not `adj * totalpages / 1000`. With this machine's
/// 6170604 pages, adj 500 is 3085000 pages, not 3085302. (In a domain under
/// 1000 pages, adj weighs nothing at all.)
pub fn oom_badness(vm: &VmUsage, totalpages: u64) -> Option<i64> {
    if vm.oom_score_adj.is_never_chosen() || vm.being_reaped {
        return None;
    }
    let pages = vm.rss_pages() + vm.swap_pages + vm.pgtables_pages;
    let points = i64::try_from(pages).unwrap_or(i64::MAX);
    let per_adj_point = i64::try_from(totalpages / 1000).unwrap_or(i64::MAX);
    Some(points.saturating_add(i64::from(vm.oom_score_adj.get()).saturating_mul(per_adj_point)))
}

/// `/proc/<pid>/oom_score`: the badness scaled to 0..=2000, with 0 for
/// "never chosen". `proc_oom_score()` computes
/// `(1000 + badness * 1000 / totalpages) * 2 / 3` in signed longs, so the
/// division truncates toward zero, as Rust's does. A result can exceed
/// 2000 only when a VM holds more than the whole domain.
///
/// The kernel always uses the host's `totalpages` here (RAM + swap); pass
/// a constraint's to show a score relative to that domain.
pub fn oom_score(badness: Option<i64>, totalpages: u64) -> u32 {
    let Some(badness) = badness else {
        return 0;
    };
    // i128 holds every intermediate the kernel's longs can, without
    // overflow, and divides the same way.
    let points = (1000 + i128::from(badness) * 1000 / i128::from(totalpages.max(1))) * 2 / 3;
    // Never negative for a real VM: adj >= -999 here, so badness > -totalpages.
    u32::try_from(points.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::procfs::{page_size, ProcFs};
    use crate::host::testing::{Helper, Role};

    fn usage(pages: u64, adj: i64) -> VmUsage {
        VmUsage {
            rss_anon_pages: pages,
            oom_score_adj: adj.try_into().unwrap(),
            ..VmUsage::default()
        }
    }

    #[test]
    fn adj_parses_and_refuses() {
        assert_eq!(" -1000\n".parse(), Ok(OomScoreAdj::MIN));
        assert_eq!("1000".parse(), Ok(OomScoreAdj::MAX));
        assert_eq!(
            "1001".parse::<OomScoreAdj>(),
            Err(AdjError::OutOfRange(1001))
        );
        assert_eq!(
            "-1e3".parse::<OomScoreAdj>().unwrap_err().to_string(),
            "oom_score_adj \"-1e3\" is not a whole number"
        );
        assert_eq!(
            OomScoreAdj::try_from(-1001).unwrap_err().to_string(),
            "oom_score_adj -1001 is outside -1000..=1000"
        );
    }

    #[test]
    fn badness_is_the_kernels_formula() {
        // This machine's host totalpages: 24682416 kB of RAM, no swap.
        let total = 6_170_604;
        let vm = VmUsage {
            rss_anon_pages: 16_384,
            rss_file_pages: 300,
            rss_shmem_pages: 12,
            swap_pages: 7,
            pgtables_pages: 45,
            ..VmUsage::default()
        };
        assert_eq!(oom_badness(&vm, total), Some(16_748));
        // adj points are worth totalpages / 1000 = 6170 pages each.
        let with = |adj: i64| VmUsage {
            oom_score_adj: adj.try_into().unwrap(),
            ..vm
        };
        assert_eq!(oom_badness(&with(500), total), Some(16_748 + 3_085_000));
        assert_ne!(
            oom_badness(&with(500), total),
            Some(16_748 + 500 * total as i64 / 1000)
        );
        assert_eq!(oom_badness(&with(-500), total), Some(16_748 - 3_085_000));
        assert_eq!(oom_badness(&with(-999), total), Some(16_748 - 6_163_830));
        assert_eq!(oom_badness(&with(-1000), total), None);
        let reaped = VmUsage {
            being_reaped: true,
            ..vm
        };
        assert_eq!(oom_badness(&reaped, total), None);
        // Below 1000 pages an adj weighs nothing (totalpages / 1000 == 0).
        assert_eq!(oom_badness(&with(1000), 999), Some(16_748));
    }

    #[test]
    fn oom_score_is_proc_oom_score() {
        let total = 6_170_604;
        assert_eq!(oom_score(None, total), 0);
        assert_eq!(oom_score(Some(0), total), 666);
        assert_eq!(oom_score(Some(16_748), total), 668); // (1000 + 2) * 2 / 3
        assert_eq!(oom_score(Some(16_748 + 3_085_000), total), 1001); // (1000 + 502) * 2 / 3
                                                                      // -3068252 * 1000 / 6170604 = -497.2, truncated toward zero: -497.
        assert_eq!(oom_score(Some(16_748 - 3_085_000), total), 335);
        // adj -999: (1000 - 996) * 2 / 3 = 2, the lowest a killable VM gets.
        assert_eq!(oom_score(Some(16_748 - 6_163_830), total), 2);
        assert_eq!(oom_score(Some(total as i64 * 2), total), 2000);
        // No division by zero, no overflow, whatever comes in.
        assert_eq!(oom_score(Some(5), 0), oom_score(Some(5), 1));
        assert_eq!(oom_score(Some(i64::MAX), 1), u32::MAX);
        assert_eq!(oom_score(Some(i64::MIN), 1), 0);
    }

    #[test]
    fn a_bigger_vm_scores_higher_and_adj_can_invert_it() {
        let total = 1_000_000;
        let big = oom_badness(&usage(200_000, 0), total);
        let small = oom_badness(&usage(50_000, 0), total);
        assert!(big > small);
        // +200 is worth 200000 pages: the small VM now outranks the big one.
        assert!(oom_badness(&usage(50_000, 200), total) > big);
        assert!(oom_badness(&usage(200_000, -1000), total) < small);
    }

    /// The most counter lag between `/proc/<pid>/status` and what
    /// `oom_badness` reads, in pages. Since Linux 6.16 `status` sums the
    /// per-CPU parts of the rss counters exactly, while `oom_badness` reads
    /// `percpu_counter_read_positive()`, which may miss up to `batch - 1`
    /// pages per online CPU per counter (`batch` = max(32, 2 * CPUs)); a
    /// later kernel patch makes the OOM killer sum exactly too. Three rss
    /// counters plus swap.
    fn counter_lag_bound() -> i64 {
        // SAFETY: sysconf has no memory-safety preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
        let batch = (2 * cpus).max(32);
        4 * (batch - 1) * cpus
    }

    /// Our score of a live process and the kernel's, read back to back and
    /// retried until the process's counters and the host's size held still
    /// across the kernel's read. Returns (ours, kernel's, badness, totalpages).
    fn score_against_kernel(pid: u32) -> Option<(u32, u32, Option<i64>, u64)> {
        let page = page_size();
        for _ in 0..20 {
            let total = ProcFs::host().meminfo().ok()?.totalpages(page);
            let before = VmUsage::of_process(pid, page).ok()??;
            let kernel: u32 = fs::read_to_string(format!("/proc/{pid}/oom_score"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let after = VmUsage::of_process(pid, page).ok()??;
            let total_after = ProcFs::host().meminfo().ok()?.totalpages(page);
            if before == after && total == total_after {
                let badness = oom_badness(&before, total);
                return Some((oom_score(badness, total), kernel, badness, total));
            }
        }
        None
    }

    /// Asserts our score is the kernel's: exactly, unless the counter lag
    /// band around our badness straddles a score boundary, in which case
    /// the kernel's must be one of the scores inside the band.
    fn assert_matches_kernel(what: &str, ours: u32, kernel: u32, badness: Option<i64>, total: u64) {
        let lag = counter_lag_bound();
        let band = badness.map_or((0, 0), |b| {
            (
                oom_score(Some(b - lag), total),
                oom_score(Some(b + lag), total),
            )
        });
        if band.0 == band.1 {
            assert_eq!(ours, kernel, "{what}: badness {badness:?} of {total} pages");
        } else {
            assert!(
                (band.0..=band.1).contains(&kernel),
                "{what}: kernel {kernel}, ours {ours}, lag band {band:?} (badness {badness:?} ± {lag} of {total})"
            );
        }
    }

    /// The key check: a real process that holds 64 MiB, scored by our code
    /// from /proc and by the kernel in `/proc/<pid>/oom_score`, at several
    /// `oom_score_adj` values.
    #[test]
    fn badness_of_a_real_process_is_the_kernels_oom_score() {
        let hog = Helper::spawn(Role::Hog { mib: 64 });
        let pid = hog.pid();
        let page = page_size();
        let usage = VmUsage::of_process(pid, page).unwrap().unwrap();
        assert!(usage.rss_anon_pages >= (64 << 20) / page, "{usage:?}");

        let may_lower = OomScoreAdj::try_from(-1).unwrap().apply_to_process(pid);
        let mut checked = Vec::new();
        for adj in [0, 500, 1000, -500, -999, -1000, 0] {
            let adj = OomScoreAdj::try_from(adj).unwrap();
            if adj.get() < 0 && may_lower.is_err() {
                // Without CAP_SYS_RESOURCE the kernel refuses EACCES to
                // lower a process's adj below 0; these are then covered
                // only by the arithmetic tests above.
                continue;
            }
            adj.apply_to_process(pid).unwrap();
            assert_eq!(OomScoreAdj::of_process(pid).unwrap(), adj);
            let (ours, kernel, badness, total) =
                score_against_kernel(pid).expect("the hog held still");
            eprintln!("adj {adj:>5}: badness {badness:?} of {total} pages -> ours {ours}, kernel {kernel}");
            assert_matches_kernel(&format!("adj {adj}"), ours, kernel, badness, total);
            checked.push(adj.get());
        }
        if let Err(e) = may_lower {
            eprintln!("negative adj not checked against the kernel here: {e}");
        }
        assert!(checked.len() >= 4, "checked only {checked:?}");
    }

    /// The smallest badness above `badness` (>= 0) at which `oom_score`
    /// goes up: `badness * 1000 / totalpages` steps at multiples of
    /// `totalpages / 1000`, and two of every three steps show after `* 2 / 3`.
    fn next_score_step(badness: i64, totalpages: u64) -> i64 {
        assert!(badness >= 0);
        let t = totalpages as i64;
        let score = oom_score(Some(badness), totalpages);
        let mut q = badness * 1000 / t;
        loop {
            q += 1;
            let step = (q * t + 999) / 1000; // ceil: q, t > 0
            if oom_score(Some(step), totalpages) > score {
                return step;
            }
        }
    }

    /// Grows the hog one page at a time across the next `oom_score` step
    /// and returns (predicted step, badness at which our score stepped,
    /// badness at which the kernel's stepped, readings that agreed, readings).
    /// A 64 MiB process sits in the middle of a 9256-page score bin, where
    /// a formula off by thousands of pages still "matches"; at the edge of a
    /// bin, one page decides.
    fn walk_across_a_score_step(hog: &mut Helper, margin: i64) -> (i64, i64, i64, usize, usize) {
        let pid = hog.pid();
        'attempt: for _ in 0..3 {
            let (_, _, badness, total) = score_against_kernel(pid).expect("the hog held still");
            let start = badness.expect("killable");
            let step = next_score_step(start, total);
            let jump = step - margin - start;
            if jump > 0 {
                hog.command(&format!("touch {jump}"));
            }
            let mut readings = Vec::new();
            loop {
                let (ours, kernel, badness, now_total) = score_against_kernel(pid).expect("still");
                if now_total != total {
                    continue 'attempt; // the host's RAM changed under us
                }
                let badness = badness.expect("killable");
                readings.push((badness, ours, kernel));
                if badness >= step + margin {
                    break;
                }
                hog.command("touch 1");
            }
            let first = |higher: &dyn Fn(&(i64, u32, u32)) -> bool| {
                readings
                    .iter()
                    .find(|r| higher(r))
                    .map_or(i64::MAX, |r| r.0)
            };
            let (base_ours, base_kernel) = (readings[0].1, readings[0].2);
            let ours_at = first(&|r| r.1 > base_ours);
            let kernel_at = first(&|r| r.2 > base_kernel);
            let agreed = readings.iter().filter(|r| r.1 == r.2).count();
            return (step, ours_at, kernel_at, agreed, readings.len());
        }
        panic!("the host's totalpages kept changing");
    }

    /// Page-exact: at adj 0 and adj 500, walk the hog across an
    /// `oom_score` step one page at a time; the kernel's score must step
    /// where our formula says. At adj 500 this also tells the kernel's
    /// `adj * (totalpages / 1000)` from `adj * totalpages / 1000`, which
    /// would step 302 pages earlier on this machine.
    #[test]
    fn the_kernels_oom_score_steps_on_the_page_our_formula_predicts() {
        let mut hog = Helper::spawn(Role::Hog { mib: 64 });
        let lag = counter_lag_bound();
        for adj in [0, 500] {
            OomScoreAdj::try_from(adj)
                .unwrap()
                .apply_to_process(hog.pid())
                .unwrap();
            let margin = lag + 160;
            let (step, ours_at, kernel_at, agreed, n) = walk_across_a_score_step(&mut hog, margin);
            eprintln!(
                "adj {adj}: predicted step at badness {step}; our score stepped at {ours_at}, \
                 the kernel's at {kernel_at}; {agreed} of {n} readings equal"
            );
            assert_eq!(ours_at, step, "our own score must step where predicted");
            assert!(
                (kernel_at - ours_at).abs() <= lag,
                "adj {adj}: the kernel stepped at {kernel_at}, {} pages from our {ours_at} \
                 (counter lag allows {lag})",
                kernel_at - ours_at
            );
        }
    }

    /// The same comparison for every process on this host that holds
    /// still long enough to be read twice.
    #[test]
    fn every_process_on_this_host_scores_as_the_kernel_says() {
        let mut compared = 0;
        let mut exact = 0;
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            // init is never chosen (oom_unkillable_task), whatever it holds.
            if pid == 1 {
                continue;
            }
            // Gone, a kernel thread (no mm), or never still: skip.
            let Some((ours, kernel, badness, total)) = score_against_kernel(pid) else {
                continue;
            };
            assert_matches_kernel(&format!("pid {pid}"), ours, kernel, badness, total);
            compared += 1;
            exact += usize::from(ours == kernel);
        }
        eprintln!("{compared} processes compared, {exact} exactly equal");
        assert!(compared >= 3, "only {compared} processes could be compared");
    }
}
