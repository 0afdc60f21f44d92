//! `vmm-bench`: benchmarks that run our VMM side by side with QEMU and print
//! markdown for `BENCHMARKS.md`. Benchmarks, not tests: they assert nothing,
//! they measure and report (progress on stderr, the report on stdout).

mod child;
mod common;
mod control;
mod machine;
mod raw_madvise;
mod reap;
mod reclaim;
mod smaps;
mod startup_footprint;
mod stats;

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
