//! `vmm-bench`: benchmarks that run our VMM side by side with QEMU and print
//! markdown for `BENCHMARKS.md`. Benchmarks, not tests: they assert nothing,
//! they measure and report (progress on stderr, the report on stdout).

mod child;
mod common;
mod control;
mod idle;
mod machine;
mod memcg;
mod oom_scenario;
mod raw_madvise;
mod reap;
mod reclaim;
mod smaps;
mod startup_footprint;
mod stats;
mod vsock;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vmm-bench",
    about = "Benchmarks of the vmm against QEMU, printed as markdown"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Start-up time (spawn to the guest's first serial line, and to exit)
    /// and memory overhead (Rss outside guest RAM) of `vmm run` and of QEMU
    /// booting the same tiny guest with 128 MiB, interleaved runs.
    StartupFootprint(StartupFootprintArgs),
    /// Reclaim speed: a balloon of 960 MiB in a 1 GiB tiny guest that has
    /// touched and freed 1000 MiB, target change → VMM process RSS fallen by
    /// 95 % of it, for `vmm run` and QEMU microvm's virtio-balloon (with and
    /// without THP), next to raw `madvise(MADV_DONTNEED)` of 1 GiB in this
    /// process; interleaved runs.
    Reclaim(ReclaimArgs),
    /// Reap speed: a 1 GiB tiny guest that touched all of its RAM is ended
    /// by SIGKILL, by SIGKILL + process_mrelease, or by the VMM's own
    /// ReleaseMemory action; kill → memory freed, measured the same way for
    /// all three (the VM's own memory cgroup's charge falls by 95 % of
    /// 1 GiB), next to raw madvise of 1 GiB in this process; interleaved.
    Reap(ReapArgs),
    /// The overcommit scenario in a cgroup v1 memory cgroup: idle VMs that
    /// freed memory, growers past the limit; the kernel's memcg OOM killer
    /// alone vs `vmm daemon` kill-only vs balloon-first, interleaved runs.
    /// Reports kills (idle or grower), guest work lost, time under
    /// pressure, kernel OOM kills and the daemon's latencies.
    OomScenario(OomScenarioArgs),
    /// vsock throughput with the tiny guest, host → guest and guest →
    /// host, next to a Unix socket pair in this process; and the VMM's
    /// memory with no connection, many idle ones, and many with full
    /// buffers. Interleaved runs.
    Vsock(VsockArgs),
    /// Idle tiny guests: CPU per VM while they hold or wait in their
    /// balloon loop, and PATCH /balloon → the guest following, optionally
    /// next to a baseline binary (e.g. one from before the idle port).
    Idle(IdleArgs),
}

#[derive(Args)]
struct IdleArgs {
    /// Idle VMs at once for the CPU part.
    #[arg(long, default_value_t = 5)]
    vms: usize,
    /// Seconds of CPU counted.
    #[arg(long, default_value_t = 10)]
    window_s: u64,
    /// Balloon changes timed.
    #[arg(long, default_value_t = 20)]
    rounds: usize,
    /// The vmm binary. Default: `vmm` next to this binary.
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Another vmm binary measured the same way, right after ours.
    #[arg(long)]
    baseline: Option<PathBuf>,
}

#[derive(Args)]
struct VsockArgs {
    /// Runs of each transfer.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// MiB per transfer.
    #[arg(long, default_value_t = 64)]
    mib: u64,
    /// Connections for the memory part (the device's bound is 64).
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// The vmm binary. Default: `vmm` next to this binary.
    #[arg(long)]
    vmm: Option<PathBuf>,
}

#[derive(Args)]
struct ReapArgs {
    /// Runs of each method.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Thread counts for the VMM's release (`vmm run --release-threads`),
    /// one variant each.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    release_threads: Vec<u8>,
    /// Polling interval of the cgroup's charge, in microseconds.
    #[arg(long, default_value_t = 100)]
    poll_us: u64,
    /// The vmm binary. Default: `vmm` next to this binary.
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Measure only these parts (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<reap::Part>,
}

#[derive(Args)]
struct OomScenarioArgs {
    /// Runs of each regime.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Idle VMs.
    #[arg(long, default_value_t = 3)]
    idle: usize,
    /// Guest RAM of each idle VM, MiB.
    #[arg(long, default_value_t = 160)]
    idle_mem_mib: u32,
    /// What each idle guest allocates (touches), MiB.
    #[arg(long, default_value_t = 128)]
    idle_alloc_mib: u32,
    /// What each idle guest frees of it again (still resident on the
    /// host until reported or ballooned), MiB.
    #[arg(long, default_value_t = 112)]
    idle_free_mib: u32,
    /// The idle guests' free page reporting period (`tiny.report-every`:
    /// `2s`, `500ms`). Default `0`: the device offers free page reporting
    /// but the guests never report, so their freed memory stays resident
    /// until a balloon takes it (see BENCHMARKS.md for why).
    #[arg(long, default_value = "0")]
    report_every: String,
    /// The balloon's statistics polling interval, seconds.
    #[arg(long, default_value_t = 1)]
    stats_s: u32,
    /// Growers.
    #[arg(long, default_value_t = 2)]
    growers: usize,
    /// Guest RAM of each grower, MiB.
    #[arg(long, default_value_t = 192)]
    grower_mem_mib: u32,
    /// What each grower touches, MiB.
    #[arg(long, default_value_t = 128)]
    grower_touch_mib: u32,
    /// The memory cgroup's limit, MiB.
    #[arg(long, default_value_t = 448)]
    limit_mib: u64,
    /// Observation window from the growers' start, seconds.
    #[arg(long, default_value_t = 20)]
    window_s: u64,
    /// Wait between the idle guests being live and the growers' start, ms.
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Polling interval of the cgroup, the consoles and the VMMs, ms.
    #[arg(long, default_value_t = 10)]
    poll_ms: u64,
    /// The vmm binary. Default: `vmm` next to this binary.
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// Run only these regimes (comma-separated; default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<oom_scenario::Regime>,
    /// Keep each run's consoles, VMM logs and the daemon's events.ndjson
    /// below this directory (for a closer look).
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Args)]
struct ReclaimArgs {
    /// Runs of each VM and each raw case.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Balloon size in MiB (at most 1000, what the guest frees).
    #[arg(long, default_value_t = 960)]
    amount_mib: u32,
    /// RSS polling interval in microseconds.
    #[arg(long, default_value_t = 1000)]
    poll_us: u64,
    /// The vmm binary. Default: `vmm` next to this binary.
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Measure only these parts (comma-separated; default: all). For
    /// experiments: the targets need them all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<reclaim::Part>,
}

#[derive(Args)]
struct StartupFootprintArgs {
    /// Runs of each VMM for each measurement.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The vmm binary. Default: `vmm` next to this binary (target/release/vmm
    /// under `cargo run --release`; build it with `cargo build --release`).
    #[arg(long)]
    vmm: Option<PathBuf>,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Bench::StartupFootprint(args) => default_vmm(args.vmm).and_then(|vmm| {
            startup_footprint::run(startup_footprint::Options {
                runs: args.runs,
                vmm,
                qemu: args.qemu,
            })
        }),
        Bench::Reclaim(args) => default_vmm(args.vmm).and_then(|vmm| {
            reclaim::run(reclaim::Options {
                runs: args.runs,
                vmm,
                qemu: args.qemu,
                amount_mib: args.amount_mib,
                poll: std::time::Duration::from_micros(args.poll_us),
                only: args.only,
            })
        }),
        Bench::Reap(args) => default_vmm(args.vmm).and_then(|vmm| {
            reap::run(reap::Options {
                runs: args.runs,
                vmm,
                release_threads: args.release_threads,
                poll: std::time::Duration::from_micros(args.poll_us),
                only: args.only,
            })
        }),
        Bench::OomScenario(args) => default_vmm(args.vmm).and_then(|vmm| {
            oom_scenario::run(oom_scenario::Options {
                runs: args.runs,
                vmm,
                scenario: oom_scenario::Scenario {
                    idle: args.idle,
                    idle_mem_mib: args.idle_mem_mib,
                    idle_alloc_mib: args.idle_alloc_mib,
                    idle_free_mib: args.idle_free_mib,
                    report_every: args.report_every,
                    stats_s: args.stats_s,
                    growers: args.growers,
                    grower_mem_mib: args.grower_mem_mib,
                    grower_touch_mib: args.grower_touch_mib,
                    limit_mib: args.limit_mib,
                },
                window: std::time::Duration::from_secs(args.window_s),
                settle: std::time::Duration::from_millis(args.settle_ms),
                poll: std::time::Duration::from_millis(args.poll_ms),
                only: args.only,
                keep: args.keep,
            })
        }),
        Bench::Idle(args) => default_vmm(args.vmm).and_then(|vmm| {
            idle::run(idle::Options {
                vmm,
                baseline: args.baseline,
                vms: args.vms,
                window: std::time::Duration::from_secs(args.window_s),
                rounds: args.rounds,
            })
        }),
        Bench::Vsock(args) => default_vmm(args.vmm).and_then(|vmm| {
            vsock::run(vsock::Options {
                runs: args.runs,
                vmm,
                mib: args.mib,
                conns: args.conns,
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmm-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn default_vmm(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    Ok(me.with_file_name("vmm"))
}
