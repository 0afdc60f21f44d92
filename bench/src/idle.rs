//! `idle`: what an idle tiny guest costs the host, and how fast it still
//! answers (issue 11's "idle tiny guest" row).
//!
//! - **CPU per idle VM**: N VMs idle, either holding (`tiny.hold=forever`)
//!   or waiting in their balloon loop for a target; once each says so, the
//!   CPU time of all their threads (`/proc/<pid>/task/*/schedstat`, ns) is
//!   read, and again after the window. Reported as the share of one core
//!   per VM.
//! - **Wake latency**: one idle balloon guest; each round waits a moment
//!   (so the guest is asleep), sends `PATCH /balloon` with 1 MiB more or
//!   less, and times until the guest's `balloon settled` line arrives on
//!   the host. That includes the guest's own work (one round of 256
//!   pages) and the line's ~60 port exits, so it bounds the wake-up from
//!   above.
//!
//! With `--baseline PATH` (e.g. a build from before the idle port) every
//! part runs for that binary too, right after ours. The wake part passes
//! `--api-sock ... --boot-now`, so the baseline must know `--boot-now`
//! (commit d4fc552 and later; the first run in BENCHMARKS.md predates it).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::child::Guest;
use crate::common::{describe_binary, display_path, fmt_summary, PinnedBinary, Scratch};
use crate::control::HttpCall;
use crate::machine::Machine;
use crate::stats::Summary;

const BOOT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(10);
/// Before each balloon change: long enough for the guest to be asleep.
const PAUSE: Duration = Duration::from_millis(200);

pub struct Options {
    pub vmm: PathBuf,
    pub baseline: Option<PathBuf>,
    pub vms: usize,
    pub window: Duration,
    pub rounds: usize,
}

/// How the idle guests wait.
#[derive(Clone, Copy)]
enum Mode {
    Hold,
    Balloon,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Hold => "`tiny.hold=forever`",
            Mode::Balloon => "balloon loop, no target",
        }
    }

    fn args(self) -> (&'static [&'static str], &'static str) {
        match self {
            Mode::Hold => (
                &["--mem", "32M", "--cmdline", "tiny.hold=forever"],
                "tiny-guest: hold forever",
            ),
            Mode::Balloon => (
                &[
                    "--mem",
                    "32M",
                    "--balloon",
                    "amount_mib=0",
                    "--cmdline",
                    "tiny.balloon=on tiny.report-every=0",
                ],
                "tiny-guest: virtio-balloon features",
            ),
        }
    }
}

/// CPU time of every thread of `pid` so far.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let mut ns = 0u64;
    let dir = format!("/proc/{pid}/task");
    for task in std::fs::read_dir(&dir).with_context(|| format!("cannot read {dir}"))? {
        let path = task?.path().join("schedstat");
        // A thread that just ended has no file any more.
        if let Ok(text) = std::fs::read_to_string(&path) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .with_context(|| format!("unexpected {}: {text:?}", path.display()))?;
        }
    }
    Ok(Duration::from_nanos(ns))
}

/// Per VM, the share of one core (%) over `window` of `n` idle guests.
fn cpu_per_vm(
    vmm: &Path,
    mode: Mode,
    n: usize,
    window: Duration,
    stderr: &Path,
) -> anyhow::Result<Vec<f64>> {
    let (args, ready) = mode.args();
    let mut guests = Vec::with_capacity(n);
    for _ in 0..n {
        let mut cmd = Command::new(vmm);
        cmd.arg("run").args(args);
        let (_, g) = Guest::spawn("vmm", &mut cmd, stderr)?;
        guests.push(g);
    }
    for g in &mut guests {
        g.wait_line(ready, BOOT)?;
    }
    let t0 = Instant::now();
    let before = guests
        .iter()
        .map(|g| cpu_time(g.pid()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::thread::sleep(window);
    let mut shares = Vec::with_capacity(n);
    for (g, c0) in guests.iter().zip(before) {
        let used = cpu_time(g.pid())?.saturating_sub(c0);
        shares.push(100.0 * used.as_secs_f64() / t0.elapsed().as_secs_f64());
    }
    for g in &mut guests {
        g.kill();
    }
    Ok(shares)
}

/// `PATCH /balloon` → the guest's `balloon settled` line, in ms, `rounds`
/// times.
fn wake_latency(
    vmm: &Path,
    rounds: usize,
    scratch: &Path,
    stderr: &Path,
) -> anyhow::Result<Vec<f64>> {
    let sock = scratch.join("api.sock");
    let _ = std::fs::remove_file(&sock);
    let mut cmd = Command::new(vmm);
    cmd.arg("run")
        .args(["--mem", "64M", "--balloon", "amount_mib=0", "--api-sock"])
        .arg(&sock)
        .arg("--boot-now")
        .args([
            "--cmdline",
            "tiny.alloc=8M tiny.balloon=on tiny.report-every=0 tiny.balloon-log=settled",
        ]);
    let (_, mut g) = Guest::spawn("vmm", &mut cmd, stderr)?;
    g.wait_line("tiny-guest: virtio-balloon features", BOOT)?;
    let mut ms = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let mib = (round % 2 == 0) as u32;
        std::thread::sleep(PAUSE);
        let t0 = Instant::now();
        let (status, body) = HttpCall::call(
            &sock,
            "PATCH",
            "/balloon",
            &format!("{{\"amount_mib\": {mib}}}"),
        )?;
        if status != 204 {
            bail!("PATCH /balloon answered {status}: {body}");
        }
        let prefix = format!("tiny-guest: balloon settled actual={} ", mib * 256);
        let at = g.wait_line(&prefix, SETTLE)?;
        ms.push(at.saturating_duration_since(t0).as_secs_f64() * 1000.0);
    }
    g.kill();
    Ok(ms)
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.vms == 0 || opts.rounds == 0 || opts.window.is_zero() {
        bail!("--vms, --rounds and --window-s must be at least 1");
    }
    for bin in std::iter::once(&opts.vmm).chain(&opts.baseline) {
        if !bin.is_file() {
            bail!(
                "no vmm binary at {}: build it first with `cargo build --release`, or pass --vmm",
                bin.display()
            );
        }
    }
    let scratch = Scratch::new()?;
    let ours = PinnedBinary::new(&opts.vmm, &scratch.0)?;
    let repo_dir = opts
        .vmm
        .canonicalize()
        .ok()
        .and_then(|p| p.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let machine = Machine::probe("qemu-system-x86_64", &repo_dir);
    let stderr = scratch.0.join("stderr.txt");
    let mut bins: Vec<(&str, PathBuf)> = vec![("vmm", ours.path.clone())];
    if let Some(b) = &opts.baseline {
        bins.push(("baseline", b.clone()));
    }

    let mut cpu = Vec::new();
    for mode in [Mode::Hold, Mode::Balloon] {
        for (label, bin) in &bins {
            eprintln!("idle: CPU, {} VMs, {}, {label}", opts.vms, mode.label());
            let v = cpu_per_vm(bin, mode, opts.vms, opts.window, &stderr)?;
            cpu.push((mode, *label, v));
        }
    }
    let mut wake = Vec::new();
    for (label, bin) in &bins {
        eprintln!("idle: wake latency, {} rounds, {label}", opts.rounds);
        wake.push((*label, wake_latency(bin, opts.rounds, &scratch.0, &stderr)?));
    }

    let mut out = String::new();
    writeln!(out, "### Result ({})\n", machine.date_utc)?;
    writeln!(out, "- machine: {}", machine.describe())?;
    writeln!(
        out,
        "- vmm: {}, commit {}",
        describe_binary(&opts.vmm),
        machine.vmm_commit
    )?;
    if let Some(b) = &opts.baseline {
        writeln!(out, "- baseline: {}", describe_binary(b))?;
    }
    write!(
        out,
        "- command: `vmm-bench idle --vms {} --window-s {} --rounds {} --vmm {}",
        opts.vms,
        opts.window.as_secs(),
        opts.rounds,
        display_path(&opts.vmm)
    )?;
    if let Some(b) = &opts.baseline {
        write!(out, " --baseline {}", display_path(b))?;
    }
    writeln!(out, "`\n")?;
    writeln!(
        out,
        "| idle VMs ({} at once, {} s) | binary | % of one core per VM, min / **median** / max |",
        opts.vms,
        opts.window.as_secs()
    )?;
    writeln!(out, "|---|---|---|")?;
    for (mode, label, v) in &cpu {
        if let Some(s) = Summary::of(v) {
            writeln!(
                out,
                "| {} | {label} | {} |",
                mode.label(),
                fmt_summary(&s, 3)
            )?;
        }
    }
    writeln!(out)?;
    writeln!(
        out,
        "| `PATCH /balloon` (±1 MiB) → guest's `settled` line | binary | ms, min / **median** / max | rounds |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for (label, v) in &wake {
        if let Some(s) = Summary::of(v) {
            writeln!(
                out,
                "| one idle balloon guest | {label} | {} | {} |",
                fmt_summary(&s, 2),
                s.n
            )?;
        }
    }
    print!("{out}");
    Ok(())
}
