//! `reap`: how fast a killed VM's memory comes back to the host. A 1 GiB
//! tiny guest touches all of its RAM and holds it; then the VM is ended
//! one of three ways and the clock runs until its memory is freed:
//!
//! - **SIGKILL** alone (`pidfd_send_signal`): the dying process frees its
//!   address space in its own exit path;
//! - **SIGKILL + `process_mrelease`**: the killer reaps the address space
//!   itself right after the signal (the daemon's `sigkill_mrelease`);
//! - **the VMM's `ReleaseMemory` action**: the VMM stops its vCPUs,
//!   `madvise(MADV_DONTNEED)`s all guest RAM, answers, and exits.
//!
//! "Freed" means the same for all three: every VM runs alone in a fresh
//! child memory cgroup of ours, and its memory is freed when the cgroup's
//! charge (`memory.usage_in_bytes`, v1; `memory.current`, v2) has fallen
//! by 95 % of the guest's 1 GiB. A page is uncharged when it is freed, so
//! this is memory back in the host's free pool, whoever freed it, and it
//! does not depend on the process still being there (its `/proc` counters
//! read zero as soon as the exit path drops the mm, long before the pages
//! are freed). Raw `madvise` of 1 GiB in this process is the reference.
//! Runs are interleaved (one of each method, then the next round).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vmm::api::MemoryReleased;
use vmm::daemon::process::Pidfd;

use crate::child::Guest;
use crate::common::{
    describe_binary, display_path, fmt_summary, shell_quote, Cmd, PinnedBinary, Scratch,
};
use crate::control::HttpCall;
use crate::machine::Machine;
use crate::raw_madvise::{self, RawCase, RawResult};
use crate::stats::Summary;

/// Guest RAM: 1 GiB for the guest to touch, plus room for its image.
const MEM: &str = "1040M";
const TOUCH: &str = "tiny.touch=1G tiny.hold=forever";
const TOUCHED: u64 = 1 << 30;
const HOLD: &str = "tiny-guest: hold forever";
/// Touching 1 GiB takes ~1 s here.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Quiet time between the guest's hold line and the kill.
const SETTLE: Duration = Duration::from_millis(300);
/// The share of the touched memory whose uncharge means "freed".
const FREED_FRACTION: f64 = 0.95;
const END_TIMEOUT: Duration = Duration::from_secs(30);
/// Chunk of the raw reference and of the VMM's release.
const CHUNK: usize = 2 << 20;

pub struct Options {
    pub runs: usize,
    pub vmm: PathBuf,
    /// Thread counts to run the VMM's release with, one variant each.
    pub release_threads: Vec<u8>,
    /// Memory-cgroup polling interval.
    pub poll: Duration,
    pub only: Vec<Part>,
}

/// The parts of the benchmark, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    Sigkill,
    Mrelease,
    Release,
    Raw,
}

/// How a VM is ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Sigkill,
    SigkillMrelease,
    /// The VMM's own release with this many threads.
    Release(u8),
}

impl Method {
    fn describe(self) -> String {
        match self {
            Method::Sigkill => "SIGKILL (`pidfd_send_signal`) alone".into(),
            Method::SigkillMrelease => "SIGKILL + `process_mrelease` right after".into(),
            Method::Release(n) => format!(
                "the VMM's `PUT /actions {{\"action_type\":\"ReleaseMemory\"}}`, `--release-threads {n}`, then it exits"
            ),
        }
    }

    fn short(self) -> String {
        match self {
            Method::Sigkill => "SIGKILL".into(),
            Method::SigkillMrelease => "SIGKILL+mrelease".into(),
            Method::Release(n) => format!("release x{n}"),
        }
    }
}

/// One measured end of a VM; times from the kill (or the request).
#[derive(Clone, Debug)]
struct EndRun {
    /// The cgroup's charge right before, bytes.
    charged_before: u64,
    /// The charge once the process was reaped.
    charged_after: u64,
    /// Charge fallen by half of the touched memory.
    half: Duration,
    /// Charge fallen by 95 % of it: the memory is freed.
    freed: Duration,
    /// The process was reaped (its pidfd polled readable, then waitid).
    reaped: Duration,
    /// SIGKILL + mrelease: when `process_mrelease` returned.
    mrelease_returned: Option<Duration>,
    /// The VMM's release: when its answer arrived, and what it said.
    answer: Option<(Duration, MemoryReleased)>,
    /// Exit status as `waitpid` reported it.
    status: String,
    /// TLB-shootdown interrupts (all CPUs, whole host) from the kill to
    /// the reap.
    tlb_shootdowns: u64,
    samples: usize,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// A memory cgroup of our own below the one this process is in; removed
/// on drop (charges left behind move to the parent).
struct Memcg {
    dir: PathBuf,
    /// `memory.usage_in_bytes` (v1) or `memory.current` (v2).
    usage: PathBuf,
    /// `cgroup.procs`, NUL-terminated, for the child's `pre_exec`.
    procs: std::ffi::CString,
}

impl Memcg {
    /// The memory cgroup this process is in, and where it is mounted.
    fn own() -> anyhow::Result<(PathBuf, &'static str)> {
        let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
            let (Some(controllers), Some(path)) = (controllers, path) else {
                continue;
            };
            if controllers.split(',').any(|c| c == "memory") {
                let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
                return Ok((dir, "memory.usage_in_bytes"));
            }
        }
        for line in text.lines() {
            if let Some(path) = line.strip_prefix("0::") {
                for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
                    let dir = Path::new(root).join(path.trim_start_matches('/'));
                    let controllers = fs::read_to_string(dir.join("cgroup.controllers"));
                    if controllers.is_ok_and(|c| c.split_whitespace().any(|c| c == "memory")) {
                        return Ok((dir, "memory.current"));
                    }
                }
            }
        }
        bail!("this process is in no memory cgroup (v1 `memory` controller or v2 with `memory`): the benchmark measures freed memory as a cgroup's charge")
    }

    fn create(name: &str) -> anyhow::Result<Memcg> {
        let (parent, usage) = Self::own()?;
        let dir = parent.join(name);
        fs::create_dir(&dir)
            .with_context(|| format!("cannot create the memory cgroup {}", dir.display()))?;
        let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
            .context("cgroup path with a NUL byte")?;
        Ok(Memcg {
            usage: dir.join(usage),
            dir,
            procs,
        })
    }

    fn usage(&self) -> anyhow::Result<u64> {
        let text = fs::read_to_string(&self.usage)
            .with_context(|| format!("reading {}", self.usage.display()))?;
        text.trim()
            .parse()
            .with_context(|| format!("bad {}: {text:?}", self.usage.display()))
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Polls a cgroup's charge until told to stop: `(instant, bytes)`.
struct Poller {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<(Instant, u64)>>>,
}

impl Poller {
    fn start(usage: PathBuf, every: Duration) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::with_capacity(1 << 16);
            let mut buf = String::with_capacity(32);
            while !flag.load(Ordering::Relaxed) {
                buf.clear();
                if let Ok(mut f) = fs::File::open(&usage) {
                    use std::io::Read;
                    if f.read_to_string(&mut buf).is_ok() {
                        if let Ok(v) = buf.trim().parse() {
                            samples.push((Instant::now(), v));
                        }
                    }
                }
                std::thread::sleep(every);
            }
            samples
        });
        Poller {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(Instant, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Bench<'a> {
    opts: &'a Options,
    vmm: String,
    scratch: &'a Path,
}

impl Bench<'_> {
    fn command(&self, threads: u8, sock: &Path) -> Cmd {
        vmm_command(&self.vmm, threads, &sock.to_string_lossy())
    }

    fn end_run(&self, method: Method, round: usize) -> anyhow::Result<EndRun> {
        let sock = self.scratch.join("api.sock");
        let _ = fs::remove_file(&sock);
        let cg = Memcg::create(&format!(
            "vmm-bench-reap-{}-{round}-{}",
            std::process::id(),
            method.short().replace(['+', ' '], "-")
        ))?;
        let threads = match method {
            Method::Release(n) => n,
            _ => 2,
        };
        let mut command = self.command(threads, &sock).command();
        let procs = cg.procs.clone();
        // SAFETY: only async-signal-safe calls (prctl, open, write, close)
        // between fork and exec; the path was prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Into the fresh cgroup before the VMM allocates anything.
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if !ok {
                    return Err(err);
                }
                Ok(())
            });
        }
        let stderr = self.scratch.join("stderr.txt");
        let (_, mut guest) = Guest::spawn("vmm", &mut command, &stderr)?;
        guest.wait_line(HOLD, BOOT_TIMEOUT)?;
        std::thread::sleep(SETTLE);
        let pidfd = Pidfd::open(guest.pid()).context("pidfd_open")?;
        let mut call = match method {
            Method::Release(_) => Some(HttpCall::prepare(
                &sock,
                "PUT",
                "/actions",
                r#"{"action_type":"ReleaseMemory"}"#,
            )?),
            _ => None,
        };
        let charged_before = cg.usage()?;
        if charged_before < TOUCHED {
            bail!(
                "the VM's cgroup holds only {:.1} MiB after the guest touched 1 GiB",
                mib(charged_before)
            );
        }
        let poller = Poller::start(cg.usage.clone(), self.opts.poll);
        // Let the poller take its first samples.
        std::thread::sleep(Duration::from_millis(5));

        let tlb_before = raw_madvise::tlb_shootdowns();
        let t0 = Instant::now();
        let mut mrelease_returned = None;
        let mut answer = None;
        match method {
            Method::Sigkill => pidfd.send_signal(libc::SIGKILL).context("SIGKILL")?,
            Method::SigkillMrelease => {
                pidfd.send_signal(libc::SIGKILL).context("SIGKILL")?;
                match pidfd.mrelease() {
                    Ok(()) => {}
                    // The exit path was first: nothing left to reap.
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                    Err(e) => return Err(e).context("process_mrelease"),
                }
                mrelease_returned = Some(t0.elapsed());
            }
            Method::Release(_) => {
                let mut c = call.take().expect("prepared");
                c.send()?;
                let (status, body) = c.finish()?;
                let at = t0.elapsed();
                if status != 200 {
                    bail!("ReleaseMemory answered {status}: {body}");
                }
                let released: MemoryReleased = serde_json::from_str(&body)
                    .with_context(|| format!("ReleaseMemory answered {body:?}"))?;
                answer = Some((at, released));
            }
        }
        let (reaped_at, status) = guest.wait_exit(END_TIMEOUT)?;
        let reaped = reaped_at.saturating_duration_since(t0);
        let tlb_shootdowns = raw_madvise::tlb_shootdowns().saturating_sub(tlb_before);
        // The last frees may land after the reap: give them a moment.
        let threshold = charged_before.saturating_sub((TOUCHED as f64 * FREED_FRACTION) as u64);
        let deadline = Instant::now() + Duration::from_secs(5);
        while cg.usage()? > threshold && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let samples = poller.finish();
        let charged_after = cg.usage()?;
        let since = |fraction: f64| -> anyhow::Result<Duration> {
            let need = charged_before.saturating_sub((TOUCHED as f64 * fraction) as u64);
            samples
                .iter()
                .find(|(at, v)| *at >= t0 && *v <= need)
                .map(|(at, _)| at.saturating_duration_since(t0))
                .with_context(|| {
                    format!(
                        "{}: the cgroup's charge never fell by {:.0} % of 1 GiB (from {:.1} to {:.1} MiB)",
                        method.short(),
                        fraction * 100.0,
                        mib(charged_before),
                        mib(charged_after)
                    )
                })
        };
        let run = EndRun {
            charged_before,
            charged_after,
            half: since(0.5)?,
            freed: since(FREED_FRACTION)?,
            reaped,
            mrelease_returned,
            answer,
            status: status.to_string(),
            tlb_shootdowns,
            samples: samples.iter().filter(|(at, _)| *at >= t0).count(),
        };
        let _ = fs::remove_file(&sock);
        Ok(run)
    }
}

fn vmm_command(vmm: &str, threads: u8, sock: &str) -> Cmd {
    Cmd {
        program: vmm.to_string(),
        args: [
            "run",
            "--mem",
            MEM,
            "--api-sock",
            sock,
            "--boot-now",
            "--release-threads",
            &threads.to_string(),
            "--cmdline",
            TOUCH,
        ]
        .map(String::from)
        .to_vec(),
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !opts.vmm.is_file() {
        bail!(
            "no vmm binary at {}: build it first with `cargo build --release`, or pass --vmm",
            opts.vmm.display()
        );
    }
    let wanted = |p: Part| opts.only.is_empty() || opts.only.contains(&p);
    let mut methods = Vec::new();
    if wanted(Part::Sigkill) {
        methods.push(Method::Sigkill);
    }
    if wanted(Part::Mrelease) {
        methods.push(Method::SigkillMrelease);
    }
    if wanted(Part::Release) {
        methods.extend(opts.release_threads.iter().map(|&n| Method::Release(n)));
    }
    let raw_cases: Vec<RawCase> = if wanted(Part::Raw) {
        [1, 2]
            .map(|threads| RawCase {
                chunk: CHUNK,
                thp: false,
                spinner: false,
                threads,
            })
            .to_vec()
    } else {
        Vec::new()
    };
    // Fail early, before any VM boots, if there is no cgroup to use.
    if !methods.is_empty() {
        drop(Memcg::create(&format!(
            "vmm-bench-reap-{}-check",
            std::process::id()
        ))?);
    }

    let scratch = Scratch::new()?;
    let pinned = PinnedBinary::new(&opts.vmm, &scratch.0)?;
    let vmm_binary = describe_binary(&opts.vmm);
    let repo_dir = opts
        .vmm
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let machine = Machine::probe("qemu-system-x86_64", &repo_dir);
    if opts.runs < 5 {
        eprintln!(
            "note: {} runs each; use at least 5 for numbers worth quoting",
            opts.runs
        );
    }
    let bench = Bench {
        opts: &opts,
        vmm: pinned.path.to_string_lossy().into_owned(),
        scratch: &scratch.0,
    };
    let load_before = loadavg();
    let mut ends: Vec<(Method, Vec<EndRun>)> = methods.iter().map(|&m| (m, Vec::new())).collect();
    let mut raws: Vec<(RawCase, Vec<RawResult>)> =
        raw_cases.iter().map(|&c| (c, Vec::new())).collect();
    for round in 0..opts.runs {
        let mut line = format!("run {}/{}:", round + 1, opts.runs);
        for (method, series) in &mut ends {
            let r = bench
                .end_run(*method, round)
                .with_context(|| format!("{} (run {})", method.short(), round + 1))?;
            let _ = write!(
                line,
                " {} freed {:.1} ms reaped {:.1} ms;",
                method.short(),
                ms(r.freed),
                ms(r.reaped)
            );
            series.push(r);
        }
        for (case, series) in &mut raws {
            let r = raw_madvise::measure(TOUCHED as usize, *case)?;
            let _ = write!(line, " raw x{} {:.1} ms;", case.threads, ms(r.elapsed));
            series.push(r);
        }
        eprintln!("{line}");
    }
    let invocation = std::iter::once("vmm-bench".to_string())
        .chain(std::env::args().skip(1))
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    print!(
        "{}",
        report(&Report {
            opts: &opts,
            machine: &machine,
            vmm_binary: &vmm_binary,
            vmm_shown: &display_path(&opts.vmm),
            invocation: &invocation,
            ends: &ends,
            raws: &raws,
            load: (load_before, loadavg()),
        })
    );
    Ok(())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

struct Report<'a> {
    opts: &'a Options,
    machine: &'a Machine,
    vmm_binary: &'a str,
    vmm_shown: &'a str,
    invocation: &'a str,
    ends: &'a [(Method, Vec<EndRun>)],
    raws: &'a [(RawCase, Vec<RawResult>)],
    load: (String, String),
}

fn median(v: &[f64]) -> f64 {
    Summary::of(v).map_or(f64::NAN, |s| s.median)
}

fn report(r: &Report<'_>) -> String {
    let m = r.machine;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "### Reap: kill → memory freed for a 1 GiB guest ({} runs each, interleaved)\n",
        r.opts.runs
    );
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| date | {} |", m.date_utc);
    let _ = writeln!(o, "| machine | {} |", m.describe());
    let _ = writeln!(o, "| vmm commit | {} |", m.vmm_commit);
    let _ = writeln!(o, "| vmm binary | {} |", r.vmm_binary);
    let _ = writeln!(o, "| produced by | `{}` |", r.invocation);
    let _ = writeln!(
        o,
        "| host load average (1, 5, 15 min) | {} before the first run, {} after the last (the VM's vCPU is busy while it touches its RAM) |",
        r.load.0, r.load.1
    );
    let _ = writeln!(
        o,
        "| memory freed | the VM's own memory cgroup's charge has fallen by ≥ {:.0} % of the 1 GiB the guest touched (polled every {:.1} ms); the same criterion for every method |\n",
        FREED_FRACTION * 100.0,
        ms(r.opts.poll)
    );

    let base = r
        .ends
        .iter()
        .find(|(m, _)| *m == Method::Sigkill)
        .map_or(f64::NAN, |(_, s)| {
            median(&s.iter().map(|x| ms(x.freed)).collect::<Vec<_>>())
        });
    let _ = writeln!(
        o,
        "| how the VM ends | kill → memory freed (ms) min / **median** / max | ÷ SIGKILL (medians) | kill → 50 % freed (ms, median) | kill → process reaped (ms, median) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    for (method, series) in r.ends {
        let freed: Vec<f64> = series.iter().map(|x| ms(x.freed)).collect();
        let Some(fs) = Summary::of(&freed) else {
            continue;
        };
        let half = median(&series.iter().map(|x| ms(x.half)).collect::<Vec<_>>());
        let reaped = median(&series.iter().map(|x| ms(x.reaped)).collect::<Vec<_>>());
        let _ = writeln!(
            o,
            "| {} | {} | {:.2} | {:.1} | {:.1} |",
            method.describe(),
            fmt_summary(&fs, 1),
            fs.median / base,
            half,
            reaped
        );
    }
    for (case, series) in r.raws {
        let t: Vec<f64> = series.iter().map(|x| ms(x.elapsed)).collect();
        let Some(ts) = Summary::of(&t) else {
            continue;
        };
        let tlb = median(
            &series
                .iter()
                .map(|x| x.tlb_shootdowns as f64)
                .collect::<Vec<_>>(),
        );
        let _ = writeln!(
            o,
            "| reference: {} (TLB shootdowns: {tlb:.0}) | {} | {:.2} | | |",
            case.describe(TOUCHED as usize),
            fmt_summary(&ts, 1),
            ts.median / base
        );
    }

    let _ = writeln!(o, "\nDetails (medians over the runs):\n");
    let _ = write!(o, "| |");
    for (method, _) in r.ends {
        let _ = write!(o, " {} |", method.short());
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "|---|{}", "---|".repeat(r.ends.len()));
    let mut row = |name: &str, f: &dyn Fn(&EndRun) -> Option<f64>, decimals: usize| {
        let _ = write!(o, "| {name} |");
        for (_, series) in r.ends {
            let v: Vec<f64> = series.iter().filter_map(f).collect();
            if v.is_empty() {
                let _ = write!(o, " – |");
            } else {
                let _ = write!(o, " {:.d$} |", median(&v), d = decimals);
            }
        }
        let _ = writeln!(o);
    };
    row(
        "cgroup charge before (MiB)",
        &|x| Some(mib(x.charged_before)),
        1,
    );
    row(
        "cgroup charge after the reap (MiB)",
        &|x| Some(mib(x.charged_after)),
        1,
    );
    row(
        "`process_mrelease` returned (ms)",
        &|x| x.mrelease_returned.map(ms),
        1,
    );
    row(
        "the VMM's answer arrived (ms)",
        &|x| x.answer.map(|(t, _)| ms(t)),
        1,
    );
    row(
        "… its `stop_vcpus_us` (ms)",
        &|x| x.answer.map(|(_, a)| a.stop_vcpus_us as f64 / 1e3),
        2,
    );
    row(
        "… its `madvise_us` (ms)",
        &|x| x.answer.map(|(_, a)| a.madvise_us as f64 / 1e3),
        1,
    );
    row(
        "… its `released_bytes` (MiB)",
        &|x| x.answer.map(|(_, a)| mib(a.released_bytes)),
        1,
    );
    row(
        "… its `threads`",
        &|x| x.answer.map(|(_, a)| f64::from(a.threads)),
        0,
    );
    row(
        "TLB shootdowns, kill → reaped (all CPUs)",
        &|x| Some(x.tlb_shootdowns as f64),
        0,
    );
    row(
        "charge samples after the kill",
        &|x| Some(x.samples as f64),
        0,
    );
    let statuses: Vec<String> = r
        .ends
        .iter()
        .map(|(m, s)| {
            let mut st: Vec<&str> = s.iter().map(|x| x.status.as_str()).collect();
            st.sort();
            st.dedup();
            format!("{}: {}", m.short(), st.join(", "))
        })
        .collect();
    let _ = writeln!(o, "\nExit statuses: {}.", statuses.join("; "));

    let _ = writeln!(
        o,
        "\nCommands (each VM spawned with stdout on a pipe, through a private hard link or copy of the binary, into a fresh child memory cgroup of the benchmark's own; `api.sock` in a scratch directory):\n"
    );
    let _ = writeln!(o, "```sh");
    let _ = writeln!(
        o,
        "{}   # --release-threads 2 for the kills",
        vmm_command(r.vmm_shown, 2, "api.sock").shell()
    );
    let _ = writeln!(
        o,
        "# when the guest prints '{HOLD}', wait {} ms, then one of:",
        SETTLE.as_millis()
    );
    let _ = writeln!(o, "#   pidfd_send_signal(pidfd, SIGKILL)");
    let _ = writeln!(
        o,
        "#   pidfd_send_signal(pidfd, SIGKILL); process_mrelease(pidfd, 0)"
    );
    let _ = writeln!(
        o,
        "curl --unix-socket api.sock -X PUT http://localhost/actions -H 'Content-Type: application/json' -d '{{\"action_type\":\"ReleaseMemory\"}}'"
    );
    let _ = writeln!(o, "```");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_command() {
        assert_eq!(
            vmm_command("vmm", 2, "a.sock").shell(),
            "vmm run --mem 1040M --api-sock a.sock --boot-now --release-threads 2 --cmdline 'tiny.touch=1G tiny.hold=forever'"
        );
    }

    #[test]
    fn own_memory_cgroup_is_found() {
        let (dir, usage) = Memcg::own().unwrap();
        assert!(dir.join(usage).exists(), "{}", dir.display());
    }
}
