//! `vmm`: run one microVM in this process.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use vmm::guest_image::TINY_GUEST;
use vmm::seccomp::{Process, ThreadKind};
use vmm::size::ByteSize;
use vmm::vm::boot::{BootError, KernelImage};
use vmm::vm::cpuid::CpuidPolicy;

use vmm::api::{ApiServer, VmBackend};
use vmm::control::{Boot, LiveVm, StartConfig, VmControl};
use vmm::vm::exit::{status, VmExit};
use vmm::vm::memory;
use vmm::vm::virtio::Announce;
use vmm::vm::{Vm, VmConfig, VmError};

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
    Run(Box<RunArgs>),
    /// Write the embedded tiny test guest (a PVH ELF) to a file, e.g. to boot
    /// it under QEMU: `qemu-system-x86_64 -M microvm -kernel FILE ...`.
    TinyGuest {
        /// Output file; - for stdout.
        out: PathBuf,
    },
    /// Talk to the host OOM manager (`vmm daemon`) through its API socket.
    Ctl(vmm::ctl::CtlArgs),
    /// Run the host OOM manager: start VMs as child `vmm run` processes,
    /// watch their memory, and choose which VM gives way when memory runs
    /// out. Controlled over an HTTP/JSON Unix socket (see `vmm ctl`).
    Daemon(DaemonArgs),
}

#[derive(Args)]
struct DaemonArgs {
    /// The control API socket (mode 0600).
    #[arg(long)]
    socket: PathBuf,
    /// Where VMs' sockets, consoles and logs and the event log live.
    #[arg(long)]
    state_dir: PathBuf,
    /// A JSON file: `{"policy": {...the fields of PATCH /oom...},
    /// "budgets": {"<pool>": <bytes>}, "reap": "sigkill_mrelease" (default) |
    /// "sigkill" | "vmm_release"}`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run without seccomp filters, for debugging only. By default every
    /// daemon thread runs under an allowlist for its kind (supervisor,
    /// control API, guest agents, VMM askers) but the one that starts the
    /// VMMs, and a syscall outside it kills the daemon with SIGSYS (its
    /// VMs run on; a restarted daemon takes them back). The VMMs it starts
    /// have their own filters either way.
    #[arg(long)]
    no_seccomp: bool,
    /// Test hook: once its filter is installed, a daemon thread of this
    /// kind makes a syscall that no filter allows (the daemon must die of
    /// SIGSYS).
    #[arg(
        long,
        hide = true,
        value_name = "THREAD_KIND",
        value_parser = vmm::seccomp::kind_parser(Process::Daemon)
    )]
    seccomp_selftest: Option<ThreadKind>,
}

/// Options a configuration file replaces.
const CONFIG_FILE_CONFLICTS: [&str; 9] = [
    "kernel", "initrd", "cmdline", "mem", "vcpus", "balloon", "vsock", "drives", "nets",
];

#[derive(Args)]
struct RunArgs {
    /// Kernel: a PVH ELF (vmlinux) or a bzImage. Default: the embedded tiny
    /// guest. With --api-sock, a --kernel VM boots at once.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Configure the VM from a JSON file in Firecracker's layout
    /// (`boot-source`, `machine-config`, `balloon`, `vsock`, `drives`,
    /// `network-interfaces`, `logger`, `metrics`) and boot it
    /// at once. Without `boot-source` (or without its `kernel_image_path`)
    /// the VM boots the embedded tiny guest.
    #[arg(long, value_name = "FILE", conflicts_with_all = CONFIG_FILE_CONFLICTS)]
    config_file: Option<PathBuf>,
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
    /// Add a virtio-balloon device, configured with the fields of the API's
    /// `PUT /balloon`: `amount_mib=N,deflate_on_oom=BOOL,
    /// stats_polling_interval_s=N,free_page_reporting=BOOL` (all optional;
    /// `--balloon ""` takes the defaults: 0 MiB, no stats, no reporting).
    #[arg(long, value_parser = vmm::ctl::parse_balloon)]
    balloon: Option<vmm::api::BalloonConfig>,
    /// Add a virtio-vsock device: `cid=N,uds=PATH` (the fields of the API's
    /// `PUT /vsock`, `guest_cid` and `uds_path`). Host processes connect to
    /// the Unix socket PATH and send `CONNECT <port>\n`; guest connections
    /// to host port P go to the Unix socket `PATH_P`.
    #[arg(long, value_parser = vmm::ctl::parse_vsock, value_name = "cid=N,uds=PATH")]
    vsock: Option<vmm::api::VsockConfig>,
    /// Add a virtio-blk device over a raw image file (repeatable):
    /// `id=NAME,path=FILE[,ro=BOOL][,root=BOOL]` (the fields of
    /// Firecracker's `PUT /drives/{drive_id}`). `ro=true` opens the file
    /// read-only and shows the guest a read-only disk; `root=true` (one
    /// drive at most) makes it the first drive and appends `root=/dev/vda
    /// ro|rw` to the kernel command line.
    #[arg(long = "drive", value_parser = vmm::ctl::parse_drive, value_name = "id=NAME,path=FILE,ro=BOOL,root=BOOL")]
    drives: Vec<vmm::api::DriveConfig>,
    /// Add a virtio-net device over an existing TAP device (repeatable):
    /// `id=NAME,tap=TAPNAME[,mac=02:..]` (the fields of Firecracker's
    /// `PUT /network-interfaces/{iface_id}`). The TAP must exist in the
    /// VMM's network namespace (`ip tuntap add TAPNAME mode tap`); no
    /// offloads are offered.
    #[arg(long = "net", value_parser = vmm::ctl::parse_net, value_name = "id=NAME,tap=TAPNAME,mac=MAC")]
    nets: Vec<vmm::api::NetworkInterfaceConfig>,
    /// How virtio-mmio devices are announced: `acpi` (DSDT devices, what
    /// stock kernels need) or `cmdline` (`virtio_mmio.device=`, what the
    /// tiny guest reads). Default: cmdline for the embedded tiny guest,
    /// acpi with --kernel.
    #[arg(long, value_enum)]
    virtio_announce: Option<AnnounceArg>,
    /// Give the guest the in-kernel i8254 PIT (`on`/`off`). Default: off
    /// for the embedded tiny guest, which never uses it (creating it costs
    /// milliseconds of start-up), on with a kernel, which may calibrate
    /// its clocks against it.
    #[arg(long, value_enum, value_name = "on|off")]
    pit: Option<Switch>,
    /// Write the VM's ACPI tables into this directory as `<SIG>.dat` (for
    /// `iasl -d`), then boot as usual.
    #[arg(long)]
    dump_acpi: Option<PathBuf>,
    /// Serve the per-VM HTTP/JSON API on this Unix socket (mode 0600).
    /// Without --kernel, --config-file or --boot-now the VM waits to be
    /// configured (`PUT /boot-source`, `/machine-config`, ...) and boots on
    /// `PUT /actions {"action_type":"InstanceStart"}`, as Firecracker does;
    /// the options given here are its starting configuration, and with no
    /// `PUT /boot-source` it boots the embedded tiny guest.
    #[arg(long)]
    api_sock: Option<PathBuf>,
    /// Wait for `InstanceStart` even with --kernel or --config-file. Needs
    /// --api-sock.
    #[arg(long, requires = "api_sock", conflicts_with = "boot_now")]
    wait_for_start: bool,
    /// Boot at once although --api-sock is given without --kernel (the
    /// embedded tiny guest, with --cmdline).
    #[arg(long)]
    boot_now: bool,
    /// The instance id `GET /` reports (Firecracker's `--id`).
    #[arg(long, default_value = vmm::api::instance::DEFAULT_INSTANCE_ID)]
    id: String,
    /// Write the VMM's messages (its standard error) to this file or named
    /// pipe instead (Firecracker's `--log-path`; also `PUT /logger`).
    #[arg(long, value_name = "PATH")]
    log_path: Option<PathBuf>,
    /// Bind guest RAM to these NUMA nodes (a node list like `0` or `0-1,3`;
    /// `MPOL_BIND`): every guest page comes from them.
    #[arg(long, value_name = "NODES")]
    numa_nodes: Option<vmm::host::numa::NodeSet>,
    /// Threads that release guest RAM at once for the API's
    /// `ReleaseMemory` action: the API's own and up to one per vCPU (the
    /// stopped vCPU threads do the work; none is created for it).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..))]
    release_threads: u8,
    /// Run without seccomp filters, for debugging only. By default every
    /// thread runs under an allowlist for its kind (vCPU, API, event loop,
    /// balloon release worker), and a syscall outside it kills the VMM
    /// with SIGSYS (the kernel log names the syscall: `dmesg | grep
    /// audit`; `--no-seccomp` tells whether the filter is the cause).
    #[arg(long)]
    no_seccomp: bool,
    /// Test hook: once its filter is installed, a thread of this kind
    /// makes a syscall that no filter allows (the VMM must die of SIGSYS).
    #[arg(
        long,
        hide = true,
        value_name = "THREAD_KIND",
        value_parser = vmm::seccomp::kind_parser(Process::Vmm)
    )]
    seccomp_selftest: Option<ThreadKind>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AnnounceArg {
    Acpi,
    Cmdline,
}

/// The command line, with `run` put in when the binary is invoked as
/// `firecracker` (a symlink or copy of that name): launchers written for
/// Firecracker (its SDKs, `firecracker-python`, Kata) exec
/// `firecracker --api-sock PATH --id ID --log-path FILE`, and those are
/// `vmm run`'s own options.
fn command_line() -> Vec<std::ffi::OsString> {
    let mut args: Vec<_> = std::env::args_os().collect();
    let invoked_as = args
        .first()
        .map(std::path::Path::new)
        .and_then(std::path::Path::file_name);
    if invoked_as == Some("firecracker".as_ref()) {
        args.insert(1, "run".into());
    }
    args
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(command_line()) {
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
    vmm::logger::init(match cli.command {
        Command::Daemon(_) => "vmm daemon",
        Command::Ctl(_) => "vmm ctl",
        _ => "vmm",
    });
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Ctl(args) => vmm::ctl::run(args),
        Command::Daemon(args) => match daemon(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::TinyGuest { out } => match write_tiny_guest(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("{e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(args: RunArgs) -> ExitCode {
    if let Err(e) = vmm::vm::stop_signals::block_stop_signals() {
        log::error!("cannot block SIGTERM/SIGINT: {e}");
        return ExitCode::from(status::START_FAILED);
    }
    // Before the first thread of the VM starts: each installs its filter.
    if !args.no_seccomp {
        if let Err(e) = vmm::seccomp::enable(Process::Vmm) {
            eprintln!("vmm: {e}");
            return ExitCode::from(status::START_FAILED);
        }
    }
    if let Some(kind) = args.seccomp_selftest {
        vmm::seccomp::set_selftest(kind);
    }
    if let Some(path) = &args.log_path {
        if let Err(e) = vmm::logger::redirect_stderr(path) {
            log::error!("--log-path: {e}");
            return ExitCode::from(status::START_FAILED);
        }
    }
    let file = match args
        .config_file
        .as_deref()
        .map(vmm::config_file::read)
        .transpose()
    {
        Ok(file) => file,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(status::START_FAILED);
        }
    };
    let config = match &file {
        Some(full) => match StartConfig::from_file(full) {
            Ok(config) => config,
            Err(e) => {
                log::error!("{}: {e}", args.config_file.unwrap_or_default().display());
                return ExitCode::from(status::START_FAILED);
            }
        },
        None => StartConfig {
            kernel: args.kernel.clone(),
            initrd: args.initrd.clone(),
            cmdline: args.cmdline.clone(),
            vcpus: args.vcpus,
            mem_size: args.mem.0,
            balloon: args.balloon.map(Into::into),
            // Checked by the argument parser.
            vsock: args.vsock.clone().and_then(|v| v.try_into().ok()),
            drives: args.drives.iter().cloned().map(Into::into).collect(),
            // Checked by the argument parser.
            nets: args
                .nets
                .iter()
                .cloned()
                .filter_map(|n| n.try_into().ok())
                .collect(),
        },
    };
    let control = VmControl::new(args.id.clone(), config, boot_mode(&args));
    if let Some(full) = &file {
        let logger = full.logger.clone().map(|l| control.put_logger(l));
        let metrics = full.metrics.clone().map(|m| control.put_metrics(m));
        if let Some(Err(e)) = logger.into_iter().chain(metrics).find(Result::is_err) {
            log::error!("{}: {e}", args.config_file.unwrap_or_default().display());
            return ExitCode::from(status::START_FAILED);
        }
    }
    let api = match &args.api_sock {
        Some(path) => match ApiServer::start(path, control.clone()) {
            Ok(server) => Some(server),
            Err(e) => {
                log::error!("cannot serve the API on {}: {e:#}", path.display());
                return ExitCode::from(status::START_FAILED);
            }
        },
        None => None,
    };
    let quit = |api: Option<ApiServer>, code: u8| -> ! {
        // An InstanceStart request gets its answer before the VMM goes.
        control.settle(std::time::Duration::from_secs(1));
        // Unlink the socket; then exit without dropping the VM: vCPU
        // threads still sit in KVM_RUN, and the kernel frees guest RAM in
        // exit_mm() before it closes the VM fd, whose teardown (in-kernel
        // PIT, SRCU) takes ~15 ms. Dropping the VM would free RAM after it.
        drop(api);
        std::process::exit(i32::from(code))
    };
    let release_threads = usize::from(args.release_threads);
    let config = match control.wait_for_start(vmm::vm::stop_signals::take_pending) {
        Ok(config) => config,
        Err(signal) => {
            control.set_exited();
            quit(api, VmExit::Signal(signal).exit_status());
        }
    };
    let mut vm = match start_vm(args, config) {
        Ok(vm) => vm,
        Err(e) => {
            control.set_failed(format!("{e:#}"));
            // A stop signal taken while loading ends the VMM as the signal
            // would have once the VM ran.
            if let Some(VmError::Boot(BootError::Stopped(signal))) = e.downcast_ref() {
                log::error!("stopped by signal {signal} while loading the guest");
                quit(api, VmExit::Signal(*signal).exit_status());
            }
            log::error!("cannot start the VM: {e:#}");
            quit(api, status::START_FAILED);
        }
    };
    // The vCPU threads run (each under its own filter, which they would
    // not inherit from here); from now on this thread is the device event
    // loop, and is filtered before it handles a single guest event.
    if let Err(e) = vmm::seccomp::apply(ThreadKind::EventLoop) {
        eprintln!("vmm: {e}");
        control.set_exited();
        quit(api, status::VMM_ERROR);
    }
    let starts = memory::host_ranges(vm.guest_ram())
        .iter()
        .map(|r| r.0)
        .collect();
    control.set_running(LiveVm {
        balloon: vm.balloon().cloned(),
        vsock: vm.vsock().cloned(),
        drives: vm.drives().to_vec(),
        nets: vm.nets().to_vec(),
        guest_ram_starts: starts,
        releaser: vm.releaser(release_threads),
        vcpus: vm.vcpu_threads(),
        exit: vm.exit_signal(),
    });
    let end = vm.wait();
    control.set_exited();
    vm.remove_host_sockets();
    // A failed write to stderr must not change how the VMM ends.
    let mut err = std::io::stderr();
    let _ = match &end {
        VmExit::Reset | VmExit::DebugExit(_) => Ok(()),
        VmExit::GuestCrash(why) => writeln!(err, "vmm: guest crashed: {why}"),
        VmExit::VmmError(why) => writeln!(err, "vmm: VMM error: {why}"),
        VmExit::Signal(n) => writeln!(err, "vmm: stopped by signal {n}"),
        VmExit::Released => writeln!(err, "vmm: guest RAM released on request; exiting"),
    };
    quit(api, end.exit_status())
}

/// Whether the VM boots at once or on `InstanceStart`: with an API
/// socket and nothing that says what to boot (no --kernel, no
/// --config-file, no --boot-now), it waits, as `firecracker --api-sock`
/// does; --wait-for-start waits in any case.
fn boot_mode(args: &RunArgs) -> Boot {
    let what_to_boot = args.kernel.is_some() || args.config_file.is_some() || args.boot_now;
    if args.wait_for_start || (args.api_sock.is_some() && !what_to_boot) {
        Boot::OnInstanceStart
    } else {
        Boot::Now
    }
}

fn daemon(args: DaemonArgs) -> anyhow::Result<()> {
    // Compiled before any thread starts; each daemon thread installs its
    // own (see vmm::daemon::run).
    if !args.no_seccomp {
        vmm::seccomp::enable(Process::Daemon).context("seccomp")?;
    }
    if let Some(kind) = args.seccomp_selftest {
        vmm::seccomp::set_selftest(kind);
    }
    let mut cfg = vmm::daemon::DaemonConfig {
        socket: args.socket,
        state_dir: args.state_dir,
        vmm_bin: std::env::current_exe().context("cannot find the vmm binary")?,
        policy: vmm::daemon_api::OomPolicy::default(),
        // The fastest reliable method measured here (BENCHMARKS.md, "Reap"):
        // it needs nothing from the VMM; "vmm_release" is the option.
        reap: vmm::daemon::process::ReapMethod::SigkillMrelease,
        budgets: Default::default(),
        memcg_pools: Default::default(),
    };
    if let Some(path) = args.config {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        vmm::daemon::config::apply(&mut cfg, &text)
            .with_context(|| format!("invalid config {}", path.display()))?;
    }
    vmm::daemon::run::run(cfg)
}

fn write_tiny_guest(out: &std::path::Path) -> anyhow::Result<()> {
    if out.as_os_str() == "-" {
        std::io::stdout().write_all(TINY_GUEST)?;
        return Ok(());
    }
    std::fs::write(out, TINY_GUEST).with_context(|| format!("cannot write {}", out.display()))
}

fn start_vm(args: RunArgs, config: StartConfig) -> anyhow::Result<Vm> {
    let serial_out: Box<dyn Write + Send> = if args.serial_out == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            File::create(&args.serial_out)
                .with_context(|| format!("cannot create serial output {}", args.serial_out))?,
        )
    };
    let (kernel, default_announce, default_pit) = match config.kernel {
        Some(path) => (KernelImage::File(path), Announce::Acpi, Switch::On),
        None => (
            KernelImage::Embedded(TINY_GUEST),
            Announce::Cmdline,
            Switch::Off,
        ),
    };
    let announce = match args.virtio_announce {
        Some(AnnounceArg::Acpi) => Announce::Acpi,
        Some(AnnounceArg::Cmdline) => Announce::Cmdline,
        None => default_announce,
    };
    let cfg = VmConfig {
        kernel,
        initrd: config.initrd,
        cmdline: config.cmdline,
        mem_size: config.mem_size,
        vcpus: config.vcpus,
        cpuid: CpuidPolicy::new(&args.cpuid_keep, &args.cpuid_hide)?,
        serial_out,
        balloon: config.balloon,
        vsock: config.vsock,
        drives: config.drives,
        nets: config.nets,
        announce,
        dump_acpi: args.dump_acpi,
        numa_nodes: args.numa_nodes,
        pit: args.pit.unwrap_or(default_pit) == Switch::On,
    };
    Ok(Vm::boot(cfg)?)
}
