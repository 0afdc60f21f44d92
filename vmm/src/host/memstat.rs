//! Memory use of a process as `/proc` reports it: what the per-VM API
//! shows for its own VMM, and what the OOM manager reads for every VM.

use std::fs;
use std::io;

/// Byte counts of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Resident bytes, from `smaps_rollup` (exact: it walks page tables,
    /// unlike `VmRSS`, which sums per-CPU counters that may lag).
    pub rss: u64,
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    /// Swapped-out bytes.
    pub swap: u64,
    /// Page-table bytes (`VmPTE`).
    pub page_tables: u64,
}

impl ProcessMemory {
    /// Reads `/proc/<pid>/{smaps_rollup,status}`; `None` is this process.
    pub fn read(pid: Option<u32>) -> io::Result<Self> {
        let dir = pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"));
        let rollup = fs::read_to_string(format!("{dir}/smaps_rollup"))?;
        let status = fs::read_to_string(format!("{dir}/status"))?;
        Ok(ProcessMemory {
            rss: kib_field(&rollup, "Rss:"),
            rss_anon: kib_field(&rollup, "Anonymous:"),
            rss_file: kib_field(&status, "RssFile:"),
            rss_shmem: kib_field(&status, "RssShmem:"),
            swap: kib_field(&rollup, "Swap:"),
            page_tables: kib_field(&status, "VmPTE:"),
        })
    }
}

/// The kernel's own per-process memory counters, exactly as
/// `/proc/<pid>/status` prints them: the `MM_*` counters that
/// `oom_badness()` adds up, plus the page-table bytes. Byte counts.
///
/// Unlike [`ProcessMemory`], nothing here comes from `smaps_rollup`: the
/// OOM killer never walks page tables, it reads these counters, so a score
/// that must agree with the kernel's has to start from the same numbers.
/// Since Linux 6.16 `status` sums the per-CPU parts of the counters
/// exactly (`get_mm_counter_sum`); older kernels print the same
/// approximation that `oom_badness` reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmCounters {
    /// `RssAnon` (`MM_ANONPAGES`).
    pub rss_anon: u64,
    /// `RssFile` (`MM_FILEPAGES`).
    pub rss_file: u64,
    /// `RssShmem` (`MM_SHMEMPAGES`).
    pub rss_shmem: u64,
    /// `VmSwap` (`MM_SWAPENTS`).
    pub swap: u64,
    /// `VmPTE` (`mm_pgtables_bytes`, all levels).
    pub page_tables: u64,
}

impl MmCounters {
    /// Reads `/proc/<pid>/status`; `None` is this process. `Ok(None)` when
    /// the process has no address space any more (a zombie, or a kernel
    /// thread): the kernel's `find_lock_task_mm` finds nothing then either.
    pub fn read(pid: Option<u32>) -> io::Result<Option<Self>> {
        let dir = pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"));
        Ok(Self::parse(&fs::read_to_string(format!("{dir}/status"))?))
    }

    /// Parses the text of a `status` file; `None` without an `RssAnon:` line.
    pub fn parse(status: &str) -> Option<Self> {
        status
            .lines()
            .any(|l| l.starts_with("RssAnon:"))
            .then(|| MmCounters {
                rss_anon: kib_field(status, "RssAnon:"),
                rss_file: kib_field(status, "RssFile:"),
                rss_shmem: kib_field(status, "RssShmem:"),
                swap: kib_field(status, "VmSwap:"),
                page_tables: kib_field(status, "VmPTE:"),
            })
    }
}

/// `/proc/<pid>/statm` and `/proc/<pid>/status` of one process, kept open
/// and read with `pread` into a buffer of their own: what the daemon reads
/// for every VM on every tick, without a path walk, an open, a close or an
/// allocation. `statm` costs the kernel a few counters (~2 µs here);
/// `status` formats some fifty lines (~15-25 µs).
///
/// Invariant: the files are bound to the process that had `pid` when they
/// were opened (procfs pins the `struct pid`); once it is gone, reads fail
/// with `ESRCH` or return nothing, so a reused pid is never read through
/// them. Open them while a pidfd shows the process alive.
pub struct CounterFiles {
    statm: fs::File,
    status: fs::File,
    buf: Box<[u8; 4096]>,
}

impl CounterFiles {
    /// Opens the two files of process `pid`.
    pub fn open(pid: u32) -> io::Result<Self> {
        Ok(CounterFiles {
            statm: fs::File::open(format!("/proc/{pid}/statm"))?,
            status: fs::File::open(format!("/proc/{pid}/status"))?,
            buf: Box::new([0; 4096]),
        })
    }

    /// Resident pages (`statm`'s second field: anonymous + file + shmem,
    /// the kernel's counters). An error once the process is gone.
    pub fn resident_pages(&mut self) -> io::Result<u64> {
        let text = Self::pread(&self.statm, &mut self.buf[..])?;
        text.split_ascii_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "statm without resident"))
    }

    /// The counters of `status` (see [`MmCounters::read`]). Fields past the
    /// buffer's 4 KiB are not read; ours come in the first kilobyte.
    pub fn counters(&mut self) -> io::Result<Option<MmCounters>> {
        let text = Self::pread(&self.status, &mut self.buf[..])?;
        Ok(MmCounters::parse(text))
    }

    /// Reads `file` from offset 0 into `buf` (procfs regenerates it);
    /// the text read, up to the last whole line.
    fn pread<'a>(file: &fs::File, buf: &'a mut [u8]) -> io::Result<&'a str> {
        use std::os::unix::fs::FileExt;
        let n = file.read_at(buf, 0)?;
        if n == 0 {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        let text = &buf[..n];
        let whole = match text.iter().rposition(|&b| b == b'\n') {
            Some(end) => &text[..=end],
            None => text,
        };
        std::str::from_utf8(whole).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

/// Resident bytes of the mappings of process `pid` (`None`: this process)
/// that start at one of `starts` — the host addresses of guest RAM regions.
pub fn resident_in_mappings(pid: Option<u32>, starts: &[u64]) -> io::Result<u64> {
    let dir = pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"));
    let smaps = fs::read_to_string(format!("{dir}/smaps"))?;
    Ok(sum_rss_of_mappings(&smaps, starts))
}

/// Sums the `Rss:` lines of the smaps entries whose start is in `starts`.
fn sum_rss_of_mappings(smaps: &str, starts: &[u64]) -> u64 {
    let mut total = 0;
    let mut counting = false;
    for line in smaps.lines() {
        if let Some(range) = line
            .split_whitespace()
            .next()
            .filter(|w| w.contains('-') && !w.ends_with(':'))
        {
            let start = range
                .split('-')
                .next()
                .and_then(|s| u64::from_str_radix(s, 16).ok());
            counting = start.is_some_and(|s| starts.contains(&s));
        } else if counting {
            if let Some(v) = line.strip_prefix("Rss:") {
                total += parse_kib(v);
            }
        }
    }
    total
}

/// Resident bytes of the first mapping in `smaps` text whose size is
/// exactly `size` bytes (how another process's guest RAM is found: it is
/// its own VMA of the guest's size).
pub fn rss_of_mapping_sized(smaps: &str, size: u64) -> u64 {
    let mut in_mapping = false;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            in_mapping = parse_kib(v) == size;
        } else if let (true, Some(v)) = (in_mapping, line.strip_prefix("Rss:")) {
            return parse_kib(v);
        }
    }
    0
}

fn kib_field(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .map_or(0, parse_kib)
}

fn parse_kib(v: &str) -> u64 {
    v.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap_or(0)
        * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_only_the_named_mappings() {
        let smaps = "\
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:               65536 kB
Swap:                  0 kB
7f0010000000-7f0010001000 r--p 00000000 08:01 42   /usr/lib/libc.so
Size:                  4 kB
Rss:                   4 kB
";
        assert_eq!(sum_rss_of_mappings(smaps, &[0x7f00_0000_0000]), 64 << 20);
        assert_eq!(sum_rss_of_mappings(smaps, &[0x1234]), 0);
    }

    #[test]
    fn mm_counters_come_from_status_and_vanish_with_the_mm() {
        let status = "Name:\tvmm\nVmRSS:\t  70000 kB\nRssAnon:\t   65536 kB\n\
RssFile:\t    4096 kB\nRssShmem:\t     368 kB\nVmPTE:\t     180 kB\nVmSwap:\t      12 kB\n";
        let c = MmCounters::parse(status).unwrap();
        assert_eq!(
            (c.rss_anon, c.rss_file, c.rss_shmem, c.swap, c.page_tables),
            (64 << 20, 4 << 20, 368 << 10, 12 << 10, 180 << 10)
        );
        // A zombie's status has no Vm*/Rss* lines at all.
        assert_eq!(MmCounters::parse("Name:\tvmm\nState:\tZ (zombie)\n"), None);
        assert!(MmCounters::read(None).unwrap().unwrap().rss_anon > 0);
    }

    #[test]
    fn counter_files_follow_a_process_and_fail_once_it_is_gone() {
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let mut files = CounterFiles::open(child.id()).unwrap();
        let first = files.resident_pages().unwrap();
        assert!(first > 0);
        // Read again from the same descriptors: procfs regenerates them.
        assert!(files.resident_pages().unwrap() > 0);
        let c = files.counters().unwrap().unwrap();
        assert!(c.rss_anon + c.rss_file > 0);
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: its pid may be anyone's now, never through these files.
        assert!(files.resident_pages().is_err());
        assert!(files.counters().map_or(true, |c| c.is_none()));
    }

    #[test]
    fn reads_this_process() {
        let m = ProcessMemory::read(None).unwrap();
        assert!(m.rss > 0 && m.rss >= m.rss_anon);
        assert!(m.page_tables > 0);
    }

    #[test]
    fn counts_exactly_the_touched_pages_of_a_mapping() {
        const LEN: usize = 8 << 20;
        // SAFETY: a fresh private anonymous mapping, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // Its own VMA, as guest RAM is (see vm::memory).
        // SAFETY: advice on the mapping just created.
        unsafe { libc::madvise(p, LEN, libc::MADV_NOHUGEPAGE) };
        for off in (0..3 << 20).step_by(4096) {
            // SAFETY: writes inside the mapping: the first 3 MiB, one byte a page.
            unsafe { *(p as *mut u8).add(off) = 1 };
        }
        let resident = resident_in_mappings(None, &[p as u64]).unwrap();
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(p, LEN) };
        assert_eq!(resident, 3 << 20);
    }
}
