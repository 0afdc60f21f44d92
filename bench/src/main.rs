//! `vmm-bench`: benchmarks that run our VMM side by side with QEMU and print
//! markdown for `BENCHMARKS.md`. Benchmarks, not tests: they assert nothing,
//! they measure and report (progress on stderr, the report on stdout).

mod child;
mod machine;
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
