//! `vmm`: run one microVM in this process.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use vmm::guest_image::TINY_GUEST;
use vmm::size::ByteSize;
use vmm::vm::boot::KernelImage;
use vmm::vm::cpuid::CpuidPolicy;
use vmm::vm::exit::{status, VmExit};
use vmm::vm::{Vm, VmConfig};

#[derive(Parser)]
#[command(
    name = "vmm",
    version,
    about = "A KVM microVM monitor for memory-overcommitted hosts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot one microVM in this process and run it until it ends.
    ///
    /// Exit status: the guest's debug-exit code (0 for a clean reset or
    /// poweroff); 250 the VM could not start; 251 the guest crashed;
    /// 252 the VMM failed while the VM ran.
    Run(RunArgs),
    /// Write the embedded tiny test guest (a PVH ELF) to a file, e.g. to boot
    /// it under QEMU: `qemu-system-x86_64 -M microvm -kernel FILE ...`.
    TinyGuest {
        /// Output file; - for stdout.
        out: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Kernel: a PVH ELF (vmlinux) or a bzImage. Default: the embedded tiny guest.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk, loaded at the top of RAM below 4 GiB.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Guest RAM, e.g. 128M or 1G.
    #[arg(long, default_value = "128M")]
    mem: ByteSize,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Where the guest's serial console goes: a file path, or - for stdout.
    #[arg(long, default_value = "-")]
    serial_out: String,
    /// CPU features to show although hidden by default (e.g. xsave,avx,cx16
    /// on hosts with hardware virtualisation).
    #[arg(long, value_delimiter = ',')]
    cpuid_keep: Vec<String>,
    /// More CPU features to hide from the guest.
    #[arg(long, value_delimiter = ',')]
    cpuid_hide: Vec<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(status::START_FAILED)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run(args) => run(args),
        Command::TinyGuest { out } => match write_tiny_guest(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("vmm: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(args: RunArgs) -> ExitCode {
    let vm = match start_vm(args) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("vmm: cannot start the VM: {e:#}");
            return ExitCode::from(status::START_FAILED);
        }
    };
    let end = vm.wait();
    match &end {
        VmExit::Reset | VmExit::DebugExit(_) => {}
        VmExit::GuestCrash(why) => eprintln!("vmm: guest crashed: {why}"),
        VmExit::VmmError(why) => eprintln!("vmm: VMM error: {why}"),
    }
    // vCPU threads still sit in KVM_RUN; leaving the process ends them.
    ExitCode::from(end.exit_status())
}

fn write_tiny_guest(out: &std::path::Path) -> anyhow::Result<()> {
    if out.as_os_str() == "-" {
        std::io::stdout().write_all(TINY_GUEST)?;
        return Ok(());
    }
    std::fs::write(out, TINY_GUEST).with_context(|| format!("cannot write {}", out.display()))
}

fn start_vm(args: RunArgs) -> anyhow::Result<Vm> {
    let serial_out: Box<dyn Write + Send> = if args.serial_out == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            File::create(&args.serial_out)
                .with_context(|| format!("cannot create serial output {}", args.serial_out))?,
        )
    };
    let kernel = match args.kernel {
        Some(path) => KernelImage::File(path),
        None => KernelImage::Embedded(TINY_GUEST),
    };
    let cfg = VmConfig {
        kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_size: args.mem.0,
        vcpus: args.vcpus,
        cpuid: CpuidPolicy::new(&args.cpuid_keep, &args.cpuid_hide)?,
        serial_out,
    };
    Ok(Vm::boot(cfg)?)
}
