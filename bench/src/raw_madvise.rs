//! The physical limit of reclaim: `madvise(MADV_DONTNEED)` on touched
//! private anonymous memory in this very process, timed around the calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::smaps;

/// How the memory is backed and released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawCase {
    /// Bytes per `madvise` call (the whole range for one call).
    pub chunk: usize,
    /// Transparent huge pages: `MADV_HUGEPAGE` before touching, else
    /// `MADV_NOHUGEPAGE` (4 KiB pages whatever the system setting).
    pub thp: bool,
    /// A second thread of this process spins on another CPU meanwhile, as
    /// a busy vCPU thread does in a VMM: every TLB flush of the release
    /// then needs an IPI to that CPU.
    pub spinner: bool,
    /// Threads releasing at once, each over its own contiguous part of the
    /// region (in `chunk` calls); the time includes starting them.
    pub threads: usize,
}

impl RawCase {
    pub fn describe(&self, len: usize) -> String {
        let pages = if self.thp {
            "THP (2 MiB pages)"
        } else {
            "4 KiB pages"
        };
        let calls = if self.chunk >= len {
            "one call".to_string()
        } else {
            format!("{} calls of {}", len / self.chunk, human(self.chunk))
        };
        let spin = if self.spinner {
            ", a 2nd thread spinning"
        } else {
            ""
        };
        let threads = if self.threads > 1 {
            format!(", {} threads over disjoint ranges", self.threads)
        } else {
            String::new()
        };
        format!(
            "raw `madvise(MADV_DONTNEED)` of {}: {pages}, {calls}{spin}{threads}",
            human(len)
        )
    }
}

fn human(bytes: usize) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// One measured release.
#[derive(Clone, Debug)]
pub struct RawResult {
    /// Time spent in the `madvise` calls (the loop around them included).
    pub elapsed: Duration,
    /// Bytes released according to the mapping's Rss before and after.
    pub released_bytes: u64,
    /// The mapping's AnonHugePages before the release, KiB.
    pub huge_before_kb: u64,
    /// TLB-shootdown interrupts on all CPUs during the release (the `TLB`
    /// line of `/proc/interrupts`; other processes' count too).
    pub tlb_shootdowns: u64,
}

/// The sum of the `TLB:` line of `/proc/interrupts` over all CPUs.
pub fn tlb_shootdowns() -> u64 {
    std::fs::read_to_string("/proc/interrupts")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.trim_start().starts_with("TLB:"))?;
            Some(
                line.split_whitespace()
                    .skip(1)
                    .map_while(|f| f.parse::<u64>().ok())
                    .sum(),
            )
        })
        .unwrap_or(0)
}

impl RawResult {
    pub fn mib_per_s(&self) -> f64 {
        self.released_bytes as f64 / (1 << 20) as f64 / self.elapsed.as_secs_f64()
    }
}

const HUGE: usize = 2 << 20;

/// A 2 MiB-aligned window of `len` bytes in an anonymous private mapping
/// (2 MiB larger, so that huge pages fit); unmapped on drop.
struct Region {
    map: *mut libc::c_void,
    map_len: usize,
    addr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the pointers are only ever passed to madvise/munmap and written
// through raw volatile stores; threads that advise it do so over disjoint
// ranges, and the kernel serialises what needs serialising.
unsafe impl Sync for Region {}

impl Region {
    fn new(len: usize) -> anyhow::Result<Region> {
        let map_len = len + HUGE;
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap");
        }
        let skip = (map as usize).next_multiple_of(HUGE) - map as usize;
        // SAFETY: `skip` < 2 MiB, so the window lies inside the mapping.
        let addr = unsafe { map.cast::<u8>().add(skip).cast() };
        Ok(Region {
            map,
            map_len,
            addr,
            len,
        })
    }

    fn advise(&self, offset: usize, len: usize, advice: libc::c_int) -> std::io::Result<()> {
        debug_assert!(offset + len <= self.len);
        // SAFETY: the range lies inside our own mapping, which nothing else
        // references (it is only ever written through raw pointers below).
        let r = unsafe { libc::madvise(self.addr.cast::<u8>().add(offset).cast(), len, advice) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Writes one word into every 4 KiB page: each becomes a private
    /// anonymous page of its own (or part of a huge page).
    fn touch(&self) {
        let base = self.addr.cast::<u8>();
        for off in (0..self.len).step_by(4096) {
            // SAFETY: inside the mapping, aligned, no references exist.
            unsafe { std::ptr::write_volatile(base.add(off).cast::<u64>(), off as u64 | 1) };
        }
    }

    /// Rss and AnonHugePages (KiB) of the window, from `/proc/self/smaps`:
    /// the sums over the mappings inside it (the advice may split the VMA).
    fn resident_kb(&self) -> anyhow::Result<(u64, u64)> {
        let text =
            std::fs::read_to_string("/proc/self/smaps").context("reading /proc/self/smaps")?;
        let (lo, hi) = (self.map as u64, (self.map as u64) + self.map_len as u64);
        let inside: Vec<_> = smaps::parse(&text)?
            .into_iter()
            .filter(|m| m.start >= lo && m.end <= hi)
            .collect();
        if inside.is_empty() {
            bail!("the test mapping is not in /proc/self/smaps");
        }
        Ok((
            inside.iter().map(|m| m.rss_kb).sum(),
            inside.iter().map(|m| m.anon_huge_kb).sum(),
        ))
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// A thread that spins until dropped.
struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    fn start() -> Spinner {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        // Let it get going on the other CPU.
        std::thread::sleep(Duration::from_millis(20));
        Spinner {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Maps `len` bytes, touches every page, then times `madvise(MADV_DONTNEED)`
/// over all of it in `case.chunk` pieces.
pub fn measure(len: usize, case: RawCase) -> anyhow::Result<RawResult> {
    if case.chunk == 0 || len % case.chunk != 0 || case.chunk % 4096 != 0 {
        bail!("chunk {} does not divide {len} in whole pages", case.chunk);
    }
    let region = Region::new(len)?;
    let advice = if case.thp {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    region
        .advise(0, len, advice)
        .context("madvise (huge page advice)")?;
    region.touch();
    let spinner = case.spinner.then(Spinner::start);
    let (rss_before_kb, huge_before_kb) = region.resident_kb()?;
    if rss_before_kb * 1024 < len as u64 {
        bail!("only {rss_before_kb} KiB of {len} bytes are resident after touching them");
    }
    let threads = case.threads.max(1);
    let per_thread = (len / threads).next_multiple_of(case.chunk);
    let release = |from: usize| -> std::io::Result<()> {
        let to = (from + per_thread).min(len);
        let mut off = from;
        while off < to {
            region.advise(off, case.chunk.min(to - off), libc::MADV_DONTNEED)?;
            off += case.chunk;
        }
        Ok(())
    };
    let tlb_before = tlb_shootdowns();
    let t0 = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let helpers: Vec<_> = (1..threads)
            .map(|i| scope.spawn(move || release(i * per_thread)))
            .collect();
        release(0).context("madvise(MADV_DONTNEED)")?;
        for h in helpers {
            h.join()
                .map_err(|_| anyhow::anyhow!("a release thread panicked"))?
                .context("madvise(MADV_DONTNEED)")?;
        }
        Ok(())
    })?;
    let elapsed = t0.elapsed();
    let tlb_shootdowns = tlb_shootdowns().saturating_sub(tlb_before);
    drop(spinner);
    let (rss_after_kb, _) = region.resident_kb()?;
    Ok(RawResult {
        elapsed,
        released_bytes: rss_before_kb.saturating_sub(rss_after_kb) * 1024,
        huge_before_kb,
        tlb_shootdowns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_what_it_touched() {
        let r = measure(
            8 << 20,
            RawCase {
                chunk: 1 << 20,
                thp: false,
                spinner: true,
                threads: 2,
            },
        )
        .unwrap();
        assert_eq!(r.released_bytes, 8 << 20);
        assert!(r.mib_per_s() > 0.0);
    }

    #[test]
    fn describes_cases() {
        let one = RawCase {
            chunk: 1 << 30,
            thp: false,
            spinner: false,
            threads: 1,
        };
        assert_eq!(
            one.describe(1 << 30),
            "raw `madvise(MADV_DONTNEED)` of 1 GiB: 4 KiB pages, one call"
        );
        let small = RawCase {
            chunk: 4096,
            thp: true,
            spinner: true,
            threads: 1,
        };
        assert_eq!(
            small.describe(1 << 30),
            "raw `madvise(MADV_DONTNEED)` of 1 GiB: THP (2 MiB pages), 262144 calls of 4 KiB, a 2nd thread spinning"
        );
    }
}
