//! `reclaim`: how fast a balloon gives a 1 GiB guest's free memory back to
//! the host. Our VMM and QEMU's microvm `virtio-balloon-device` run the very
//! same tiny guest, which has touched and freed 1000 MiB; then the balloon
//! target is raised and the VMM process's RSS is polled until it has fallen
//! by 95 % of the balloon. The physical limit, `madvise(MADV_DONTNEED)` of
//! touched anonymous memory in this process, is measured in the same run.
//! Runs are interleaved (vmm, QEMU, QEMU without THP, raw cases, vmm, ...).

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::child::Guest;
use crate::common::{
    describe_binary, display_path, fmt_summary, met, shell_quote, Cmd, PinnedBinary, Scratch,
};
use crate::control::{balloon_actual_pages, qmp_balloon_actual, HttpCall, Qmp};
use crate::machine::Machine;
use crate::raw_madvise::{self, RawCase, RawResult};
use crate::smaps::{self, Mapping};
use crate::stats::{median_index, Summary};

/// Guest RAM of every VM in this benchmark.
const MEM: &str = "1G";
const MEM_BYTES: u64 = 1 << 30;
/// The guest touches 1000 MiB, frees it back to its pool (still resident
/// on the host), then runs its balloon driver with reporting off, printing
/// only when the balloon has settled (a line per round would cost ~100
/// port exits each, ~2.5 ms here: the serial port, not the balloon).
const ORDERS: &str =
    "tiny.alloc=1000M tiny.free=1000M tiny.balloon=on tiny.report-every=0 tiny.balloon-log=settled";
/// Freed inside the guest: the balloon must stay below this so that every
/// ballooned page is one that is resident on the host.
const FREED_MIB: u32 = 1000;
const DEVICE_LIVE: &str = "tiny-guest: virtio-balloon features";
const SETTLED: &str = "tiny-guest: balloon settled";
/// Booting and touching 1000 MiB takes a few seconds here.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const RECLAIM_TIMEOUT: Duration = Duration::from_secs(60);
/// Quiet time between the device going live and the target change.
const SETTLE_BEFORE: Duration = Duration::from_millis(200);
/// The RSS drop that ends a measurement, as a fraction of the balloon.
const DROP_FRACTION: f64 = 0.95;
/// A drop this large counts as the first sign of release.
const FIRST_DROP_BYTES: u64 = 1 << 20;
/// The raw cases release this much (1 GiB, as the guest's RAM).
const RAW_BYTES: usize = 1 << 30;

/// Targets: our median rate at least this multiple of QEMU's, and at
/// least this fraction of one raw `madvise` call's.
const QEMU_RATIO_TARGET: f64 = 2.0;
const RAW_FRACTION_TARGET: f64 = 0.70;

pub struct Options {
    pub runs: usize,
    pub vmm: PathBuf,
    pub qemu: String,
    pub amount_mib: u32,
    pub poll: Duration,
    /// What to measure (default: all of it).
    pub only: Vec<Part>,
}

/// The parts of the benchmark, for `--only`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Part {
    Vmm,
    Qemu,
    QemuNoThp,
    Raw,
}

/// The VMs measured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Vm {
    Vmm,
    /// QEMU as it starts by default: guest RAM advised `MADV_HUGEPAGE`.
    Qemu,
    /// QEMU started with `prctl(PR_SET_THP_DISABLE)`: 4 KiB pages.
    QemuNoThp,
}

impl Vm {
    const ALL: [Vm; 3] = [Vm::Vmm, Vm::Qemu, Vm::QemuNoThp];

    fn name(self) -> &'static str {
        match self {
            Vm::Vmm => "vmm",
            Vm::Qemu => "QEMU",
            Vm::QemuNoThp => "QEMU, THP off",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Vm::Vmm => "**vmm** (`virtio-balloon`, `PATCH /balloon`)",
            Vm::Qemu => "QEMU microvm `virtio-balloon-device` (QMP `balloon`), THP as QEMU sets it (default)",
            Vm::QemuNoThp => "QEMU microvm, same, started with `prctl(PR_SET_THP_DISABLE)` (4 KiB pages)",
        }
    }
}

/// The raw cases, in report order: what our balloon could do at best (one
/// call; 1 MiB calls, what it makes per 256-PFN buffer), smaller calls
/// (4 KiB: what QEMU makes, one per page), with THP (as QEMU's guest RAM),
/// and with a second thread spinning, as a busy vCPU does.
const RAW_CASES: [RawCase; 9] = [
    raw(RAW_BYTES, false, false),
    raw(1 << 20, false, false),
    raw(256 << 10, false, false),
    raw(4 << 10, false, false),
    raw(RAW_BYTES, true, false),
    raw(4 << 10, true, false),
    raw(RAW_BYTES, false, true),
    raw(1 << 20, false, true),
    raw(4 << 10, false, true),
];

const fn raw(chunk: usize, thp: bool, spinner: bool) -> RawCase {
    RawCase {
        chunk,
        thp,
        spinner,
        threads: 1,
    }
}

/// Commands of one benchmark, for a given guest image and sockets.
struct Commands {
    write_guest: Cmd,
    vmm: Cmd,
    qemu: Cmd,
}

impl Commands {
    fn new(vmm: &str, qemu: &str, elf: &str, api_sock: &str, qmp_sock: &str) -> Commands {
        let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        Commands {
            write_guest: Cmd {
                program: vmm.to_string(),
                args: s(&["tiny-guest", elf]),
            },
            vmm: Cmd {
                program: vmm.to_string(),
                args: s(&[
                    "run",
                    "--mem",
                    MEM,
                    "--api-sock",
                    api_sock,
                    "--boot-now",
                    "--balloon",
                    "free_page_reporting=false",
                    "--cmdline",
                    ORDERS,
                ]),
            },
            qemu: Cmd {
                program: qemu.to_string(),
                args: s(&[
                    "-M",
                    "microvm,acpi=off",
                    "-enable-kvm",
                    "-cpu",
                    "kvm64",
                    "-m",
                    MEM,
                    "-nodefaults",
                    "-no-user-config",
                    "-nographic",
                    "-no-reboot",
                    "-serial",
                    "stdio",
                    "-global",
                    "virtio-mmio.force-legacy=false",
                    "-device",
                    "virtio-balloon-device",
                    "-qmp",
                    &format!("unix:{qmp_sock},server=on,wait=off"),
                    "-kernel",
                    elf,
                    "-append",
                    ORDERS,
                ]),
            },
        }
    }

    fn of(&self, vm: Vm) -> &Cmd {
        match vm {
            Vm::Vmm => &self.vmm,
            Vm::Qemu | Vm::QemuNoThp => &self.qemu,
        }
    }
}

/// `/proc/<pid>/statm`, kept open: its second field is the process's
/// resident pages from the mm counters (the VmRSS of `status`), read in
/// ~30 µs. (`smaps_rollup` walks the page tables: ~10-15 ms per read of a
/// 1 GiB guest here, too slow to poll and a CPU's worth of load.)
struct Statm {
    file: File,
    page: u64,
}

impl Statm {
    fn open(pid: u32) -> anyhow::Result<Statm> {
        let path = format!("/proc/{pid}/statm");
        let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
        // SAFETY: sysconf only reads a system constant.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        Ok(Statm { file, page })
    }

    /// Resident bytes.
    fn rss(&self) -> anyhow::Result<u64> {
        let mut buf = [0u8; 256];
        let n = self.file.read_at(&mut buf, 0).context("reading statm")?;
        let text = std::str::from_utf8(&buf[..n]).context("statm is not text")?;
        let pages: u64 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad statm {text:?}"))?;
        Ok(pages * self.page)
    }
}

/// One VM run.
#[derive(Clone, Debug)]
struct VmRun {
    /// Process RSS (statm) right before the target change, bytes.
    baseline: u64,
    /// The guest-RAM mapping before and after (smaps).
    guest_before: Mapping,
    guest_after: Mapping,
    /// Process RSS after `settled`, bytes.
    final_rss: u64,
    /// (time since the target change, RSS bytes), up to the 95 % drop.
    samples: Vec<(Duration, u64)>,
    /// Arrival of the `settled` line, and what it says.
    settled_at: Duration,
    settled: Settled,
    /// Balloon pages the VMM itself reports afterwards.
    device_actual: u64,
    /// Growth of `thp_split_pmd` in /proc/vmstat (system-wide) from the
    /// target change to `settled`: huge pages split to release 4 KiB.
    thp_split_pmd: u64,
}

impl VmRun {
    fn cross(&self) -> (Duration, u64) {
        let (t, rss) = *self.samples.last().expect("at least one sample");
        (t, self.baseline.saturating_sub(rss))
    }

    fn time_to_cross_ms(&self) -> f64 {
        ms(self.cross().0)
    }

    /// RSS drop at the crossing sample over the time to it.
    fn mib_per_s(&self) -> f64 {
        let (t, dropped) = self.cross();
        mib(dropped) / t.as_secs_f64()
    }

    fn first_drop_ms(&self) -> f64 {
        self.samples
            .iter()
            .find(|(_, r)| self.baseline.saturating_sub(*r) >= FIRST_DROP_BYTES)
            .map_or(f64::NAN, |(t, _)| ms(*t))
    }

    /// Time from the first sample with a drop to the 95 % crossing; the
    /// rate over it is the steady-state rate.
    fn steady_mib_per_s(&self) -> f64 {
        let first = self
            .samples
            .iter()
            .find(|(_, r)| self.baseline.saturating_sub(*r) >= FIRST_DROP_BYTES);
        let Some(&(t1, r1)) = first else {
            return f64::NAN;
        };
        let (t2, _) = self.cross();
        let r2 = self.samples.last().expect("sample").1;
        if t2 <= t1 {
            return f64::NAN;
        }
        mib(r1.saturating_sub(r2)) / (t2 - t1).as_secs_f64()
    }

    /// Sum of the poll intervals in which RSS fell (by ≥ 64 KiB), up to the
    /// crossing: roughly the time the host spent releasing.
    fn falling_ms(&self) -> f64 {
        self.samples
            .windows(2)
            .filter(|w| w[0].1 >= w[1].1 + (64 << 10))
            .map(|w| ms(w[1].0 - w[0].0))
            .sum()
    }

    fn mean_poll_ms(&self) -> f64 {
        let n = self.samples.len();
        if n < 2 {
            return f64::NAN;
        }
        ms(self.samples[n - 1].0 - self.samples[0].0) / (n - 1) as f64
    }

    /// Mean time per round of the guest (up to 32 MiB each), by its own
    /// clock.
    fn round_ms(&self) -> f64 {
        self.settled.guest_ms / f64::from(self.settled.rounds.max(1))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

/// How to change the target of one VM, prepared before the clock starts.
enum Control {
    Api(HttpCall),
    Qmp(Qmp),
}

struct Run<'a> {
    opts: &'a Options,
    cmds: &'a Commands,
    stderr: &'a Path,
    api_sock: &'a Path,
    qmp_sock: &'a Path,
}

impl Run<'_> {
    fn vm(&self, vm: Vm) -> anyhow::Result<VmRun> {
        let _ = std::fs::remove_file(self.api_sock);
        let _ = std::fs::remove_file(self.qmp_sock);
        let result = self.vm_inner(vm);
        // The process is gone (Guest's drop kills and reaps it); its
        // sockets stay behind.
        let _ = std::fs::remove_file(self.api_sock);
        let _ = std::fs::remove_file(self.qmp_sock);
        result
    }

    fn vm_inner(&self, vm: Vm) -> anyhow::Result<VmRun> {
        let amount = u64::from(self.opts.amount_mib) << 20;
        let threshold = (amount as f64 * DROP_FRACTION) as u64;
        let mut command = self.cmds.of(vm).command();
        let no_thp = vm == Vm::QemuNoThp;
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            command.pre_exec(move || {
                // The guest never exits by itself: make sure it dies with us.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Inherited across execve: QEMU's MADV_HUGEPAGE then has no
                // effect and guest RAM is in 4 KiB pages.
                if no_thp && libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (_, mut guest) = Guest::spawn(vm.name(), &mut command, self.stderr)?;
        let pid = guest.pid();
        let mut qmp = match vm {
            Vm::Vmm => None,
            Vm::Qemu | Vm::QemuNoThp => Some(Qmp::connect(self.qmp_sock)?),
        };
        guest.wait_line(DEVICE_LIVE, BOOT_TIMEOUT)?;
        std::thread::sleep(SETTLE_BEFORE);
        let guest_before = guest_ram(pid)?;
        let statm = Statm::open(pid)?;
        let mut control = match qmp.take() {
            None => Control::Api(HttpCall::prepare(
                self.api_sock,
                "PATCH",
                "/balloon",
                &format!("{{\"amount_mib\": {}}}", self.opts.amount_mib),
            )?),
            Some(q) => Control::Qmp(q),
        };
        let qmp_balloon = format!(
            "{{\"execute\":\"balloon\",\"arguments\":{{\"value\":{}}}}}",
            MEM_BYTES - amount
        );

        let splits_before = vmstat("thp_split_pmd");
        let baseline = statm.rss()?;
        let t0 = Instant::now();
        match &mut control {
            Control::Api(call) => call.send()?,
            Control::Qmp(q) => q.send(&qmp_balloon)?,
        }
        let mut samples = Vec::with_capacity(4096);
        loop {
            let rss = statm.rss()?;
            let t = t0.elapsed();
            samples.push((t, rss));
            if baseline.saturating_sub(rss) >= threshold {
                break;
            }
            if t > RECLAIM_TIMEOUT {
                bail!(
                    "{}: RSS fell by only {:.1} MiB of {:.1} MiB within {RECLAIM_TIMEOUT:?}",
                    vm.name(),
                    mib(baseline.saturating_sub(rss)),
                    mib(threshold)
                );
            }
            std::thread::sleep(self.opts.poll);
        }
        let (settled_inst, settled) = guest.wait_line_text(SETTLED, RECLAIM_TIMEOUT)?;
        let thp_split_pmd = vmstat("thp_split_pmd").saturating_sub(splits_before);
        let device_actual = match control {
            Control::Api(call) => {
                let (status, body) = call.finish()?;
                if status != 204 && status != 200 {
                    bail!("PATCH /balloon answered {status}: {body}");
                }
                let (status, body) = HttpCall::call(self.api_sock, "GET", "/balloon", "")?;
                if status != 200 {
                    bail!("GET /balloon answered {status}: {body}");
                }
                u64::from(balloon_actual_pages(&body)?)
            }
            Control::Qmp(mut q) => {
                q.reply().context("QMP balloon")?;
                let r = q.execute(r#"{"execute":"query-balloon"}"#)?;
                let kept = qmp_balloon_actual(&r)?;
                MEM_BYTES.saturating_sub(kept) >> 12
            }
        };
        let final_rss = statm.rss()?;
        let guest_after = guest_ram(pid)?;
        let settled =
            parse_settled(&settled).with_context(|| format!("cannot parse {settled:?}"))?;
        guest.kill();
        Ok(VmRun {
            baseline,
            guest_before,
            guest_after,
            final_rss,
            samples,
            settled_at: settled_inst.saturating_duration_since(t0),
            settled,
            device_actual,
            thp_split_pmd,
        })
    }
}

/// A counter of `/proc/vmstat`; 0 if it cannot be read.
fn vmstat(key: &str) -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

/// The guest-RAM mapping of `pid`, from one read of its smaps.
fn guest_ram(pid: u32) -> anyhow::Result<Mapping> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("cannot read /proc/{pid}/smaps"))?;
    let maps = smaps::parse(&text)?;
    Ok(smaps::find_guest_ram(&maps, MEM_BYTES)?.clone())
}

/// What the guest's `settled` line says.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Settled {
    /// Pages in the balloon.
    actual: u64,
    /// Time from the guest's first round to settling, by its own clock.
    guest_ms: f64,
    /// Rounds it took (up to 32 MiB each).
    rounds: u32,
}

/// `tiny-guest: balloon settled actual=<pages> after <ms> ms in <n> rounds`.
fn parse_settled(line: &str) -> Option<Settled> {
    let rest = line.strip_prefix(SETTLED)?.trim();
    let rest = rest.strip_prefix("actual=")?;
    let (pages, rest) = rest.split_once(' ')?;
    let (ms, rest) = rest.strip_prefix("after ")?.split_once(" ms in ")?;
    let rounds = rest.strip_suffix(" rounds")?;
    Some(Settled {
        actual: pages.parse().ok()?,
        guest_ms: ms.trim().parse().ok()?,
        rounds: rounds.parse().ok()?,
    })
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if opts.amount_mib == 0 || opts.amount_mib > FREED_MIB {
        bail!(
            "--amount-mib must be 1..={FREED_MIB}: the guest frees {FREED_MIB} MiB, and only \
             those pages are resident on the host"
        );
    }
    if !opts.vmm.is_file() {
        bail!(
            "no vmm binary at {}: build it first with `cargo build --release`, or pass --vmm",
            opts.vmm.display()
        );
    }
    let scratch = Scratch::new()?;
    let elf = scratch.0.join("tiny-guest.elf");
    let stderr_path = scratch.0.join("stderr.txt");
    let api_sock = scratch.0.join("api.sock");
    let qmp_sock = scratch.0.join("qmp.sock");
    let pinned = PinnedBinary::new(&opts.vmm, &scratch.0)?;
    let vmm_binary = describe_binary(&opts.vmm);
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    let cmds = Commands::new(
        &lossy(&pinned.path),
        &opts.qemu,
        &lossy(&elf),
        &lossy(&api_sock),
        &lossy(&qmp_sock),
    );
    let shown = Commands::new(
        &display_path(&opts.vmm),
        &opts.qemu,
        "tiny-guest.elf",
        "api.sock",
        "qmp.sock",
    );
    let out = cmds
        .write_guest
        .command()
        .output()
        .with_context(|| format!("cannot run {}", cmds.write_guest.shell()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            cmds.write_guest.shell(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let repo_dir = opts
        .vmm
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let machine = Machine::probe(&opts.qemu, &repo_dir);
    if opts.runs < 5 {
        eprintln!(
            "note: {} runs each; use at least 5 for numbers worth quoting",
            opts.runs
        );
    }

    let load_before = loadavg();
    let runner = Run {
        opts: &opts,
        cmds: &cmds,
        stderr: &stderr_path,
        api_sock: &api_sock,
        qmp_sock: &qmp_sock,
    };
    let wanted = |p: Part| opts.only.is_empty() || opts.only.contains(&p);
    let mut vms: Vec<(Vm, Vec<VmRun>)> = Vm::ALL
        .iter()
        .filter(|v| {
            wanted(match v {
                Vm::Vmm => Part::Vmm,
                Vm::Qemu => Part::Qemu,
                Vm::QemuNoThp => Part::QemuNoThp,
            })
        })
        .map(|v| (*v, Vec::new()))
        .collect();
    let mut raws: Vec<(RawCase, Vec<RawResult>)> = if wanted(Part::Raw) {
        RAW_CASES.iter().map(|c| (*c, Vec::new())).collect()
    } else {
        Vec::new()
    };
    for i in 0..opts.runs {
        let mut line = format!("run {}/{}:", i + 1, opts.runs);
        for (vm, series) in &mut vms {
            let r = runner
                .vm(*vm)
                .with_context(|| format!("run {} of {}", i + 1, vm.name()))?;
            let _ = write!(
                line,
                " {} {:.1} ms {:.0} MiB/s (settled {:.1} ms);",
                vm.name(),
                r.time_to_cross_ms(),
                r.mib_per_s(),
                ms(r.settled_at)
            );
            series.push(r);
        }
        for (case, series) in &mut raws {
            let r = raw_madvise::measure(RAW_BYTES, *case)
                .with_context(|| format!("run {}: {}", i + 1, case.describe(RAW_BYTES)))?;
            let _ = write!(
                line,
                " raw {}{}{} {:.1} ms;",
                human_chunk(case.chunk),
                if case.thp { " THP" } else { "" },
                if case.spinner { " spin" } else { "" },
                ms(r.elapsed)
            );
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
            cmds: &shown,
            invocation: &invocation,
            vms: &vms,
            raws: &raws,
            load: (load_before, loadavg()),
        })
    );
    Ok(())
}

fn human_chunk(chunk: usize) -> String {
    if chunk >= RAW_BYTES {
        "1 call".to_string()
    } else if chunk >= 1 << 20 {
        format!("{} MiB", chunk >> 20)
    } else {
        format!("{} KiB", chunk >> 10)
    }
}

struct Report<'a> {
    opts: &'a Options,
    machine: &'a Machine,
    vmm_binary: &'a str,
    cmds: &'a Commands,
    invocation: &'a str,
    vms: &'a [(Vm, Vec<VmRun>)],
    raws: &'a [(RawCase, Vec<RawResult>)],
    /// `/proc/loadavg` before the first and after the last run.
    load: (String, String),
}

/// The three load averages of `/proc/loadavg`.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

fn median(v: &[f64]) -> f64 {
    Summary::of(v).map_or(f64::NAN, |s| s.median)
}

fn report(r: &Report<'_>) -> String {
    let m = r.machine;
    let amount = r.opts.amount_mib;
    let threshold_mib = f64::from(amount) * DROP_FRACTION;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "### Reclaim: a {amount} MiB balloon in a 1 GiB guest, vmm vs QEMU vs raw madvise ({} runs each, interleaved)\n",
        r.opts.runs
    );
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| date | {} |", m.date_utc);
    let _ = writeln!(o, "| machine | {} |", m.describe());
    let _ = writeln!(o, "| transparent huge pages | `{}` |", m.thp);
    let _ = writeln!(o, "| QEMU | {} |", m.qemu_version);
    let _ = writeln!(o, "| vmm commit | {} |", m.vmm_commit);
    let _ = writeln!(o, "| vmm binary | {} |", r.vmm_binary);
    let _ = writeln!(o, "| produced by | `{}` |", r.invocation);
    let _ = writeln!(
        o,
        "| host load average (1, 5, 15 min) | {} before the first run, {} after the last (the VMs' vCPU is busy while it inflates) |",
        r.load.0, r.load.1
    );
    let _ = writeln!(
        o,
        "| measured | target change (clock read right before the PATCH / QMP write) → process RSS (`/proc/<pid>/statm`, polled every {:.1} ms) fallen by ≥ {threshold_mib:.0} MiB (95 % of {amount} MiB); rate = RSS drop at that sample / time |\n",
        ms(r.opts.poll)
    );

    let vm_rate = |vm: Vm| {
        r.vms
            .iter()
            .find(|(v, _)| *v == vm)
            .map_or(f64::NAN, |(_, s)| {
                median(&s.iter().map(VmRun::mib_per_s).collect::<Vec<_>>())
            })
    };
    let ours = vm_rate(Vm::Vmm);
    let raw_one = r
        .raws
        .iter()
        .find(|(c, _)| c.chunk >= RAW_BYTES && !c.thp && !c.spinner)
        .map_or(f64::NAN, |(_, s)| {
            median(&s.iter().map(RawResult::mib_per_s).collect::<Vec<_>>())
        });

    let _ = writeln!(
        o,
        "| what | time (ms; VMs: to RSS −95 %, raw: 1 GiB) min / **median** / max | MiB/s min / **median** / max | vmm ÷ this (median MiB/s) |"
    );
    let _ = writeln!(o, "|---|---|---|---|");
    for (vm, series) in r.vms {
        let t: Vec<f64> = series.iter().map(VmRun::time_to_cross_ms).collect();
        let rate: Vec<f64> = series.iter().map(VmRun::mib_per_s).collect();
        let (Some(ts), Some(rs)) = (Summary::of(&t), Summary::of(&rate)) else {
            continue;
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.2} |",
            vm.describe(),
            fmt_summary(&ts, 1),
            fmt_summary(&rs, 0),
            ours / rs.median
        );
    }
    for (case, series) in r.raws {
        let t: Vec<f64> = series.iter().map(|x| ms(x.elapsed)).collect();
        let rate: Vec<f64> = series.iter().map(RawResult::mib_per_s).collect();
        let (Some(ts), Some(rs)) = (Summary::of(&t), Summary::of(&rate)) else {
            continue;
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {:.2} |",
            case.describe(RAW_BYTES),
            fmt_summary(&ts, 1),
            fmt_summary(&rs, 0),
            ours / rs.median
        );
    }
    let qemu = vm_rate(Vm::Qemu);
    let qemu_no_thp = vm_rate(Vm::QemuNoThp);
    let raw_spin = r
        .raws
        .iter()
        .find(|(c, _)| c.chunk >= RAW_BYTES && !c.thp && c.spinner)
        .map_or(f64::NAN, |(_, s)| {
            median(&s.iter().map(RawResult::mib_per_s).collect::<Vec<_>>())
        });
    let _ = writeln!(o);
    if [ours, qemu, qemu_no_thp, raw_one]
        .iter()
        .any(|x| x.is_nan())
    {
        let _ = writeln!(
            o,
            "Targets: not judged, this run did not measure every part.\n"
        );
    } else {
        let _ = writeln!(
            o,
            "Targets: vmm ≥ {QEMU_RATIO_TARGET}× QEMU: {:.2}× QEMU as it starts (THP), {:.2}× QEMU with THP off: **{}**; vmm ≥ {:.0} % of one raw `madvise` call (4 KiB pages): {:.0} %: **{}** ({:.0} % of one raw call with a second thread spinning, as a busy vCPU does).\n",
            ours / qemu,
            ours / qemu_no_thp,
            met(ours / qemu >= QEMU_RATIO_TARGET && ours / qemu_no_thp >= QEMU_RATIO_TARGET),
            RAW_FRACTION_TARGET * 100.0,
            100.0 * ours / raw_one,
            met(ours / raw_one >= RAW_FRACTION_TARGET),
            100.0 * ours / raw_spin
        );
    }
    if r.vms.is_empty() {
        return o;
    }

    // Where the time goes.
    let _ = writeln!(
        o,
        "Where the time goes (medians over the runs; times from the target change):\n"
    );
    let _ = write!(o, "| |");
    for (vm, _) in r.vms {
        let _ = write!(o, " {} |", vm.name());
    }
    let _ = writeln!(o);
    let _ = write!(o, "|---|");
    for _ in r.vms {
        let _ = write!(o, "---|");
    }
    let _ = writeln!(o);
    let mut row = |name: &str, f: &dyn Fn(&VmRun) -> f64, decimals: usize| {
        let _ = write!(o, "| {name} |");
        for (_, series) in r.vms {
            let v: Vec<f64> = series.iter().map(f).filter(|x| !x.is_nan()).collect();
            let _ = write!(o, " {:.d$} |", median(&v), d = decimals);
        }
        let _ = writeln!(o);
    };
    row("first RSS drop of ≥ 1 MiB (ms)", &VmRun::first_drop_ms, 1);
    row(
        &format!("RSS fallen by ≥ {threshold_mib:.0} MiB (ms)"),
        &VmRun::time_to_cross_ms,
        1,
    );
    row(
        "`balloon settled` line arrives (ms)",
        &|x| ms(x.settled_at),
        1,
    );
    row(
        "guest's own `settled ... after N ms` (from its first round)",
        &|x| x.settled.guest_ms,
        0,
    );
    row(
        "rounds of ≤ 32 MiB (guest's `in N rounds`)",
        &|x| f64::from(x.settled.rounds),
        0,
    );
    row(
        "mean time per round, guest's clock (ms)",
        &VmRun::round_ms,
        2,
    );
    row(
        "poll intervals in which RSS fell, summed (ms)",
        &VmRun::falling_ms,
        1,
    );
    row(
        "steady rate, first drop → 95 % (MiB/s)",
        &VmRun::steady_mib_per_s,
        0,
    );
    row("RSS samples taken", &|x| x.samples.len() as f64, 0);
    row("mean poll interval (ms)", &VmRun::mean_poll_ms, 2);
    row("process RSS before (MiB)", &|x| mib(x.baseline), 1);
    row(
        "process RSS after `settled` (MiB)",
        &|x| mib(x.final_rss),
        1,
    );
    row(
        "guest-RAM mapping Rss before (MiB, smaps)",
        &|x| x.guest_before.rss_kb as f64 / 1024.0,
        1,
    );
    row(
        "… of it AnonHugePages (MiB)",
        &|x| x.guest_before.anon_huge_kb as f64 / 1024.0,
        1,
    );
    row(
        "guest-RAM mapping Rss after (MiB)",
        &|x| x.guest_after.rss_kb as f64 / 1024.0,
        1,
    );
    row(
        "… of it AnonHugePages (MiB)",
        &|x| x.guest_after.anon_huge_kb as f64 / 1024.0,
        1,
    );
    row(
        "huge pages split meanwhile (`thp_split_pmd`, system-wide)",
        &|x| x.thp_split_pmd as f64,
        0,
    );
    row(
        "balloon pages: guest's `settled actual=`",
        &|x| x.settled.actual as f64,
        0,
    );
    row(
        "balloon pages: the VMM's own count (`GET /balloon` / `query-balloon`)",
        &|x| x.device_actual as f64,
        0,
    );

    // RSS curve of the median run of each VM.
    let _ = writeln!(
        o,
        "\nRSS drop over time in the median run of each (ms from the target change until the drop reached the share of {amount} MiB):\n"
    );
    let marks = [0.10, 0.25, 0.50, 0.75, 0.90, DROP_FRACTION];
    let _ = write!(o, "| |");
    for f in marks {
        let _ = write!(o, " {:.0} % |", f * 100.0);
    }
    let _ = writeln!(o, "\n|---|{}", "---|".repeat(marks.len()));
    for (vm, series) in r.vms {
        let rates: Vec<f64> = series.iter().map(VmRun::mib_per_s).collect();
        let Some(i) = median_index(&rates) else {
            continue;
        };
        let run = &series[i];
        let _ = write!(o, "| {} |", vm.name());
        for f in marks {
            let need = (f64::from(amount) * f * (1u64 << 20) as f64) as u64;
            let t = run
                .samples
                .iter()
                .find(|(_, rss)| run.baseline.saturating_sub(*rss) >= need)
                .map_or(f64::NAN, |(t, _)| ms(*t));
            let _ = write!(o, " {t:.1} |");
        }
        let _ = writeln!(o);
    }

    let raw_huge: Vec<String> = r
        .raws
        .iter()
        .filter(|(c, _)| c.thp)
        .filter_map(|(c, s)| {
            let v: Vec<f64> = s.iter().map(|x| x.huge_before_kb as f64 / 1024.0).collect();
            Some(format!(
                "{}: {:.0} MiB",
                human_chunk(c.chunk),
                Summary::of(&v)?.median
            ))
        })
        .collect();
    let _ = writeln!(
        o,
        "\nRaw cases: 1 GiB mapped `MAP_PRIVATE|MAP_ANONYMOUS`, 2 MiB aligned, `MADV_NOHUGEPAGE` (or `MADV_HUGEPAGE` for THP), one word written per 4 KiB page, then only the `madvise(MADV_DONTNEED)` loop is timed, in this process with nothing else running in it; the rate counts the mapping's Rss drop (smaps). AnonHugePages before release with THP (median): {}.",
        raw_huge.join(", ")
    );

    let _ = writeln!(
        o,
        "\nCommands (interleaved: vmm, QEMU, QEMU with THP off, then the raw cases; each VM spawned with stdout on a pipe; the vmm through a private hard link or copy of the binary; `api.sock`, `qmp.sock`, `tiny-guest.elf` lie in a scratch directory):\n"
    );
    let c = r.cmds;
    let _ = writeln!(o, "```sh");
    let _ = writeln!(o, "{}   # once", c.write_guest.shell());
    let _ = writeln!(
        o,
        "# vmm; when the guest prints '{DEVICE_LIVE}', wait {} ms, then:",
        SETTLE_BEFORE.as_millis()
    );
    let _ = writeln!(o, "{}", c.vmm.shell());
    let _ = writeln!(
        o,
        "curl --unix-socket api.sock -X PATCH http://localhost/balloon -H 'Content-Type: application/json' -d '{{\"amount_mib\": {amount}}}'"
    );
    let _ = writeln!(
        o,
        "# QEMU, likewise (THP off: the same command started with prctl(PR_SET_THP_DISABLE, 1)):"
    );
    let _ = writeln!(o, "{}", c.qemu.shell());
    let _ = writeln!(
        o,
        "# QMP on qmp.sock: {{\"execute\":\"qmp_capabilities\"}} beforehand, then {{\"execute\":\"balloon\",\"arguments\":{{\"value\":{}}}}}",
        MEM_BYTES - (u64::from(amount) << 20)
    );
    let _ = writeln!(o, "```");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settled_lines() {
        assert_eq!(
            parse_settled("tiny-guest: balloon settled actual=245760 after 169 ms in 30 rounds"),
            Some(Settled {
                actual: 245_760,
                guest_ms: 169.0,
                rounds: 30
            })
        );
        assert_eq!(
            parse_settled("tiny-guest: balloon settled actual=245760 after 169 ms"),
            None
        );
        assert_eq!(parse_settled("tiny-guest: balloon target=1 actual=1"), None);
    }

    fn run_with(samples: &[(u64, u64)], baseline: u64) -> VmRun {
        let m = Mapping::default();
        VmRun {
            baseline,
            guest_before: m.clone(),
            guest_after: m,
            final_rss: 0,
            samples: samples
                .iter()
                .map(|&(t, r)| (Duration::from_millis(t), r))
                .collect(),
            settled_at: Duration::from_millis(12),
            settled: Settled {
                actual: 1,
                guest_ms: 8.0,
                rounds: 2,
            },
            device_actual: 1,
            thp_split_pmd: 0,
        }
    }

    #[test]
    fn derived_times_and_rates() {
        const M: u64 = 1 << 20;
        let r = run_with(
            &[
                (1, 1000 * M),
                (2, 1000 * M),
                (3, 900 * M),
                (4, 900 * M),
                (5, 40 * M),
            ],
            1000 * M,
        );
        assert_eq!(r.time_to_cross_ms(), 5.0);
        assert_eq!(r.mib_per_s(), 960.0 / 0.005);
        assert_eq!(r.first_drop_ms(), 3.0);
        assert_eq!(r.falling_ms(), 2.0);
        assert_eq!(r.steady_mib_per_s(), 860.0 / 0.002);
        assert_eq!(r.round_ms(), 4.0);
        assert_eq!(r.mean_poll_ms(), 1.0);
    }

    #[test]
    fn commands_match_the_documented_ones() {
        let c = Commands::new("vmm", "qemu-system-x86_64", "g.elf", "a.sock", "q.sock");
        assert_eq!(
            c.vmm.shell(),
            "vmm run --mem 1G --api-sock a.sock --boot-now --balloon free_page_reporting=false --cmdline \
             'tiny.alloc=1000M tiny.free=1000M tiny.balloon=on tiny.report-every=0 \
             tiny.balloon-log=settled'"
        );
        assert_eq!(
            c.qemu.shell(),
            "qemu-system-x86_64 -M microvm,acpi=off -enable-kvm -cpu kvm64 -m 1G -nodefaults \
             -no-user-config -nographic -no-reboot -serial stdio \
             -global virtio-mmio.force-legacy=false -device virtio-balloon-device \
             -qmp unix:q.sock,server=on,wait=off -kernel g.elf \
             -append 'tiny.alloc=1000M tiny.free=1000M tiny.balloon=on tiny.report-every=0 \
             tiny.balloon-log=settled'"
        );
    }
}
