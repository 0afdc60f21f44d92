//! `startup-footprint`: start-up time and memory overhead of our VMM and of
//! QEMU, booting the very same tiny PVH guest, measured side by side in one
//! run with the runs interleaved (vmm, QEMU, vmm, QEMU, ...).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::child::Guest;
use crate::common::{
    describe_binary, display_path, fmt_summary, median_ratio, met, shell_quote, Cmd, PinnedBinary,
    Scratch,
};
use crate::machine::Machine;
use crate::smaps::{self, Category, Footprint};
use crate::stats::{median_index, Summary};

/// Guest RAM of every VM in this benchmark.
const MEM: &str = "128M";
const MEM_BYTES: u64 = 128 << 20;
/// Orders for the footprint runs: touch half the RAM, then stay up.
const FOOTPRINT_ORDERS: &str = "tiny.touch=64M tiny.hold=forever";
const READY: &str = "tiny-guest: ready";
const HOLD: &str = "tiny-guest: hold forever";
/// Generous: a run normally takes well under a second.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Start-up target: our median at most this fraction of QEMU's.
const START_RATIO_TARGET: f64 = 1.0 / 3.0;
/// Memory overhead target for our VMM (Firecracker promises 5 MiB).
const OVERHEAD_TARGET_MIB: f64 = 3.0;

pub struct Options {
    pub runs: usize,
    pub vmm: PathBuf,
    pub qemu: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Vmm,
    Qemu,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Vmm => "vmm",
            Which::Qemu => "QEMU",
        }
    }
}

struct Commands {
    write_guest: Cmd,
    vmm_start: Cmd,
    qemu_start: Cmd,
    vmm_footprint: Cmd,
    qemu_footprint: Cmd,
}

impl Commands {
    fn new(vmm: &str, qemu: &str, elf: &str) -> Commands {
        let vmm_run = |orders: Option<&str>| {
            let mut args = vec!["run".to_string(), "--mem".into(), MEM.into()];
            if let Some(o) = orders {
                args.extend(["--cmdline".to_string(), o.to_string()]);
            }
            Cmd {
                program: vmm.to_string(),
                args,
            }
        };
        let qemu_run = |orders: &str| Cmd {
            program: qemu.to_string(),
            args: [
                "-M",
                "microvm",
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
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-kernel",
                elf,
                "-append",
                orders,
            ]
            .map(String::from)
            .to_vec(),
        };
        Commands {
            write_guest: Cmd {
                program: vmm.to_string(),
                args: vec!["tiny-guest".into(), elf.to_string()],
            },
            vmm_start: vmm_run(None),
            qemu_start: qemu_run(""),
            vmm_footprint: vmm_run(Some(FOOTPRINT_ORDERS)),
            qemu_footprint: qemu_run(FOOTPRINT_ORDERS),
        }
    }

    fn start(&self, which: Which) -> &Cmd {
        match which {
            Which::Vmm => &self.vmm_start,
            Which::Qemu => &self.qemu_start,
        }
    }

    fn footprint(&self, which: Which) -> &Cmd {
        match which {
            Which::Vmm => &self.vmm_footprint,
            Which::Qemu => &self.qemu_footprint,
        }
    }
}

/// Exit status a clean guest exit (code 0) gives: our VMM passes the code
/// on; QEMU's isa-debug-exit turns code v into (v << 1) | 1.
fn clean_exit_code(which: Which) -> i32 {
    match which {
        Which::Vmm => 0,
        Which::Qemu => 1,
    }
}

#[derive(Default)]
struct StartSeries {
    ready_ms: Vec<f64>,
    exit_ms: Vec<f64>,
}

#[derive(Default)]
struct FootprintSeries {
    runs: Vec<Footprint>,
}

impl FootprintSeries {
    fn values(&self, f: impl Fn(&Footprint) -> u64) -> Vec<f64> {
        self.runs.iter().map(|r| kib_to_mib(f(r))).collect()
    }
}

fn kib_to_mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
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
    let scratch = Scratch::new()?;
    let elf = scratch.0.join("tiny-guest.elf");
    let stderr_path = scratch.0.join("stderr.txt");
    // Run a private link to (or copy of) the binary: others may rebuild
    // target/release/vmm meanwhile.
    let pinned = PinnedBinary::new(&opts.vmm, &scratch.0)?;
    let vmm_copy = pinned.path.clone();
    let vmm_binary = describe_binary(&opts.vmm);
    let shown = Commands::new(&display_path(&opts.vmm), &opts.qemu, &elf.to_string_lossy());
    let cmds = Commands::new(
        &vmm_copy.to_string_lossy(),
        &opts.qemu,
        &elf.to_string_lossy(),
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

    if opts.runs < 10 {
        eprintln!(
            "note: {} runs each; use at least 10 for numbers worth quoting",
            opts.runs
        );
    }

    // Warm-up (not counted): page cache for both binaries and the image.
    for which in [Which::Vmm, Which::Qemu] {
        start_run(which, cmds.start(which), &stderr_path).context("warm-up run")?;
    }

    let mut start: BTreeMap<&str, StartSeries> = BTreeMap::new();
    for i in 0..opts.runs {
        let mut line = format!("start-up run {}/{}:", i + 1, opts.runs);
        for which in [Which::Vmm, Which::Qemu] {
            let (ready, exit) = start_run(which, cmds.start(which), &stderr_path)
                .with_context(|| format!("start-up run {} of {}", i + 1, which.name()))?;
            let s = start.entry(which.name()).or_default();
            s.ready_ms.push(ms(ready));
            s.exit_ms.push(ms(exit));
            let _ = write!(
                line,
                " {} ready {:.1} ms exit {:.1} ms;",
                which.name(),
                ms(ready),
                ms(exit)
            );
        }
        eprintln!("{line}");
    }

    let mut foot: BTreeMap<&str, FootprintSeries> = BTreeMap::new();
    for i in 0..opts.runs {
        let mut line = format!("footprint run {}/{}:", i + 1, opts.runs);
        for which in [Which::Vmm, Which::Qemu] {
            let f = footprint_run(which, cmds.footprint(which), &stderr_path)
                .with_context(|| format!("footprint run {} of {}", i + 1, which.name()))?;
            let _ = write!(
                line,
                " {} overhead {:.2} MiB (guest {:.2} MiB);",
                which.name(),
                kib_to_mib(f.overhead_rss_kb()),
                kib_to_mib(f.guest.rss_kb)
            );
            foot.entry(which.name()).or_default().runs.push(f);
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
        report(
            &Setup {
                runs: opts.runs,
                machine: &machine,
                vmm_binary: &vmm_binary,
                pinned_how: pinned.how,
                cmds: &shown,
                invocation: &invocation,
            },
            &start,
            &foot
        )
    );
    Ok(())
}

/// One start-up run: spawn → first serial line `ready`, and spawn → exit of
/// the process (the guest exits at once).
fn start_run(which: Which, cmd: &Cmd, stderr: &Path) -> anyhow::Result<(Duration, Duration)> {
    let (t0, mut guest) = Guest::spawn(which.name(), &mut cmd.command(), stderr)?;
    let ready = guest.wait_line(READY, TIMEOUT)?;
    let (exited, status) = guest.wait_exit(TIMEOUT)?;
    if status.code() != Some(clean_exit_code(which)) {
        bail!(
            "{} exited with {status}, expected code {}",
            which.name(),
            clean_exit_code(which)
        );
    }
    Ok((ready - t0, exited - t0))
}

/// One footprint run: boot with [`FOOTPRINT_ORDERS`], read smaps once the
/// guest holds, kill.
fn footprint_run(which: Which, cmd: &Cmd, stderr: &Path) -> anyhow::Result<Footprint> {
    let mut command = cmd.command();
    // This guest never exits by itself: make sure it dies with us even if
    // we are killed before our own cleanup runs.
    // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (_, mut guest) = Guest::spawn(which.name(), &mut command, stderr)?;
    guest.wait_line(HOLD, TIMEOUT)?;
    let pid = guest.pid();
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("cannot read /proc/{pid}/smaps"))?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    guest.kill();
    let maps = smaps::parse(&text)?;
    Footprint::new(&maps, MEM_BYTES, &exe)
}

/// What the report says about how the numbers were taken.
struct Setup<'a> {
    runs: usize,
    machine: &'a Machine,
    vmm_binary: &'a str,
    pinned_how: &'a str,
    /// The commands as the user would type them.
    cmds: &'a Commands,
    invocation: &'a str,
}

fn report(
    setup: &Setup<'_>,
    start: &BTreeMap<&str, StartSeries>,
    foot: &BTreeMap<&str, FootprintSeries>,
) -> String {
    let Setup {
        runs,
        machine: m,
        vmm_binary,
        pinned_how,
        cmds,
        invocation,
    } = *setup;
    let (sv, sq) = (&start["vmm"], &start["QEMU"]);
    let (fv, fq) = (&foot["vmm"], &foot["QEMU"]);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "### vmm vs QEMU: start-up and memory footprint ({} runs each, interleaved)\n",
        runs
    );
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| date | {} |", m.date_utc);
    let _ = writeln!(o, "| machine | {} |", m.describe());
    let _ = writeln!(o, "| transparent huge pages | `{}` |", m.thp);
    let _ = writeln!(o, "| QEMU | {} |", m.qemu_version);
    let _ = writeln!(o, "| vmm commit | {} |", m.vmm_commit);
    let _ = writeln!(o, "| vmm binary | {vmm_binary} |");
    let _ = writeln!(o, "| produced by | `{invocation}` |\n");

    let _ = writeln!(
        o,
        "| metric | vmm min / **median** / max | QEMU min / **median** / max | vmm/QEMU (medians) | target |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|");
    let mut row = |name: &str, v: &[f64], q: &[f64], decimals: usize, target: String| {
        let (Some(v), Some(q)) = (Summary::of(v), Summary::of(q)) else {
            return;
        };
        let ratio = if q.median > 0.0 {
            format!("{:.2}", v.median / q.median)
        } else {
            "-".to_string()
        };
        let _ = writeln!(
            o,
            "| {name} | {} | {} | {ratio} | {target} |",
            fmt_summary(&v, decimals),
            fmt_summary(&q, decimals)
        );
    };
    let ready_ratio = median_ratio(&sv.ready_ms, &sq.ready_ms);
    row(
        "spawn → first serial line `ready` (ms)",
        &sv.ready_ms,
        &sq.ready_ms,
        1,
        format!(
            "ratio ≤ 0.33: **{}**",
            met(ready_ratio <= START_RATIO_TARGET)
        ),
    );
    row(
        "spawn → process exit, guest exits at once (ms)",
        &sv.exit_ms,
        &sq.exit_ms,
        1,
        String::new(),
    );
    let ov = fv.values(Footprint::overhead_rss_kb);
    let ov_median = Summary::of(&ov).map_or(f64::INFINITY, |s| s.median);
    row(
        "**overhead** = total Rss − guest-RAM Rss (MiB)",
        &ov,
        &fq.values(Footprint::overhead_rss_kb),
        2,
        format!(
            "vmm ≤ {OVERHEAD_TARGET_MIB} MiB: **{}**",
            met(ov_median <= OVERHEAD_TARGET_MIB)
        ),
    );
    row(
        "overhead by Pss (MiB)",
        &fv.values(Footprint::overhead_pss_kb),
        &fq.values(Footprint::overhead_pss_kb),
        2,
        String::new(),
    );
    row(
        "overhead by Private_Dirty (MiB)",
        &fv.values(Footprint::overhead_private_dirty_kb),
        &fq.values(Footprint::overhead_private_dirty_kb),
        2,
        String::new(),
    );
    row(
        "guest-RAM Rss (MiB)",
        &fv.values(|f| f.guest.rss_kb),
        &fq.values(|f| f.guest.rss_kb),
        2,
        "≈ 64 + image".to_string(),
    );
    row(
        "total Rss (MiB)",
        &fv.values(|f| f.total_rss_kb),
        &fq.values(|f| f.total_rss_kb),
        2,
        String::new(),
    );
    let swap: u64 = fv
        .runs
        .iter()
        .chain(&fq.runs)
        .map(|f| f.total_swap_kb)
        .sum();
    if swap > 0 {
        let _ = writeln!(
            o,
            "\nWarning: {swap} KiB were in swap during the footprint runs; Rss understates."
        );
    }

    let vi = median_index(&ov).unwrap_or(0);
    let qi = median_index(&fq.values(Footprint::overhead_rss_kb)).unwrap_or(0);
    let _ = writeln!(
        o,
        "\nGuest-RAM mapping found in `/proc/<pid>/smaps` (run with the median overhead):\n"
    );
    let _ = writeln!(o, "- vmm: `{}`", fv.runs[vi].guest);
    let _ = writeln!(o, "- QEMU: `{}`", fq.runs[qi].guest);

    let _ = writeln!(
        o,
        "\nOverhead by kind of mapping (Rss in MiB, median over the runs):\n"
    );
    let _ = writeln!(o, "| mapping kind | vmm | QEMU |\n|---|---|---|");
    for cat in Category::ALL {
        let per = |s: &FootprintSeries| {
            let v: Vec<f64> = s
                .runs
                .iter()
                .map(|f| kib_to_mib(f.by_category.get(&cat).copied().unwrap_or(0)))
                .collect();
            Summary::of(&v).map_or(0.0, |s| s.median)
        };
        let (a, b) = (per(fv), per(fq));
        if a > 0.0 || b > 0.0 {
            let _ = writeln!(o, "| {} | {a:.2} | {b:.2} |", cat.describe());
        }
    }

    let _ = writeln!(
        o,
        "\nLargest vmm mappings outside guest RAM (run with the median overhead):\n"
    );
    let _ = writeln!(
        o,
        "| mapping | Rss KiB | Private_Dirty KiB |\n|---|---|---|"
    );
    for m in fv.runs[vi].others.iter().take(12) {
        let what = if m.path.is_empty() {
            "(anonymous)"
        } else {
            m.path.as_str()
        };
        let _ = writeln!(
            o,
            "| `{:x}-{:x} {}` {what} ({} KiB) | {} | {} |",
            m.start, m.end, m.perms, m.size_kb, m.rss_kb, m.private_dirty_kb
        );
    }

    let _ = writeln!(
        o,
        "\nCommands (each spawned directly with stdout on a pipe; the vmm ran through \
         {}, so a rebuild meanwhile could not change it):\n",
        pinned_how
    );
    let _ = writeln!(o, "```sh");
    let _ = writeln!(o, "{}   # once", cmds.write_guest.shell());
    let _ = writeln!(
        o,
        "# start-up (interleaved; plus one untimed warm-up each):"
    );
    let _ = writeln!(o, "{}", cmds.vmm_start.shell());
    let _ = writeln!(o, "{}", cmds.qemu_start.shell());
    let _ = writeln!(
        o,
        "# footprint (interleaved; smaps read at '{HOLD}', then SIGKILL):"
    );
    let _ = writeln!(o, "{}", cmds.vmm_footprint.shell());
    let _ = writeln!(o, "{}", cmds.qemu_footprint.shell());
    let _ = writeln!(o, "```");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_match_the_documented_ones() {
        let c = Commands::new("target/release/vmm", "qemu-system-x86_64", "/tmp/g.elf");
        assert_eq!(c.vmm_start.shell(), "target/release/vmm run --mem 128M");
        assert_eq!(
            c.vmm_footprint.shell(),
            "target/release/vmm run --mem 128M --cmdline 'tiny.touch=64M tiny.hold=forever'"
        );
        assert_eq!(
            c.qemu_start.shell(),
            "qemu-system-x86_64 -M microvm -enable-kvm -cpu kvm64 -m 128M -nodefaults \
             -no-user-config -nographic -no-reboot -serial stdio \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel /tmp/g.elf -append ''"
        );
    }
}
