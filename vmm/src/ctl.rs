//! `vmm ctl`: the command-line client of the daemon's API
//! ([`crate::daemon_api`]). It prints aligned tables with sizes in MiB, or
//! the API's JSON with `--json`; an error prints the daemon's
//! `fault_message` and exits non-zero.
//!
//! ```text
//! vmm ctl create --mem 128M --id web-1 --oom-score-adj -500
//! vmm ctl list
//! vmm ctl set web-1 --balloon-target-mib 32
//! vmm ctl oom set --action kill --dump-vms true
//! vmm ctl oom trigger --dry-run
//! vmm ctl events --follow
//! ```
//!
//! The formatting functions are pure (a view in, text out) so they are
//! tested on their own; [`execute`] runs a command against a socket and
//! writes to any `Write`.

use std::fmt::Write as _;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::BalloonConfig;
use crate::daemon_api::events::{
    DomainFigures, DomainName, DomainUsage, KillOutcome, OomDecision, OomKill,
};
use crate::daemon_api::{
    Event, EventRecord, OomAction, OomPatch, OomTrigger, OomView, RunState, VmPatch, VmSpec, VmView,
};
use crate::http::{Client, ClientError};
use crate::size::ByteSize;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vmm/daemon.sock";
/// The environment variable that overrides [`DEFAULT_SOCKET`].
pub const SOCKET_ENV: &str = "VMM_DAEMON_SOCKET";

/// `vmm ctl [--socket PATH] [--json] <command>`.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The daemon's API socket [default: $VMM_DAEMON_SOCKET, else
    /// /run/vmm/daemon.sock].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the API's JSON instead of tables (events: one JSON object a
    /// line).
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The commands of `vmm ctl`.
#[derive(Subcommand, Debug)]
pub enum CtlCommand {
    /// List the VMs: ID PID STATE POOL MEM RSS SWAP ADJ BADNESS SCORE BALLOON.
    List,
    /// Show one VM.
    Get {
        /// The VM's id.
        id: String,
    },
    /// Create and boot a VM.
    Create(CreateArgs),
    /// Change a VM's oom_score_adj or balloon target.
    Set(SetArgs),
    /// Stop a VM and forget it.
    Delete {
        /// The VM's id.
        id: String,
    },
    /// Show the OOM policy and memory pressure; `oom set`, `oom trigger`.
    Oom(OomArgs),
    /// Show the event log, or follow it.
    Events(EventsArgs),
    /// Print the daemon's Prometheus metrics.
    Metrics,
}

/// `vmm ctl create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Guest RAM, e.g. 128M or 1G (a whole number of MiB, at least 8M).
    #[arg(long)]
    pub mem: ByteSize,
    /// Number of vCPUs [default: 1].
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Kernel (PVH ELF or bzImage) [default: the embedded tiny guest].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Add a virtio-balloon device: `amount_mib=N,deflate_on_oom=BOOL,
    /// stats_polling_interval_s=N,free_page_reporting=BOOL` (all optional).
    #[arg(long, value_parser = parse_balloon)]
    pub balloon: Option<BalloonConfig>,
    /// oom_score_adj, -1000 (never chosen) to 1000 [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub oom_score_adj: Option<i16>,
    /// The pool the VM belongs to.
    #[arg(long)]
    pub pool: Option<String>,
    /// Bind guest RAM to these NUMA nodes (e.g. 0 or 0-1,3).
    #[arg(long)]
    pub numa_nodes: Option<String>,
    /// The guest runs the guest agent: give the VM a vsock device and
    /// listen for the agent's reports (in-guest OOM kills, memory, PSI).
    #[arg(long)]
    pub agent: bool,
    /// A virtio-blk drive, as `vmm run --drive`: `id=NAME,path=FILE,ro=BOOL,
    /// root=BOOL` (repeatable; the path is made absolute).
    #[arg(long, value_parser = parse_drive, value_name = "id=NAME,path=FILE,...")]
    pub drive: Vec<crate::api::DriveConfig>,
    /// A virtio-net interface over a TAP in the daemon's network
    /// namespace, as `vmm run --net`: `id=NAME,tap=TAP[,mac=MAC]`
    /// (repeatable).
    #[arg(long, value_parser = parse_net, value_name = "id=NAME,tap=TAP,...")]
    pub net: Vec<crate::api::NetworkInterfaceConfig>,
    /// The VM's id [default: one the daemon makes up].
    #[arg(long)]
    pub id: Option<String>,
}

/// `vmm ctl set`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("change").required(true).multiple(true)))]
pub struct SetArgs {
    /// The VM's id.
    pub id: String,
    /// New oom_score_adj, -1000 to 1000.
    #[arg(long, allow_negative_numbers = true, group = "change")]
    pub oom_score_adj: Option<i16>,
    /// New balloon target in MiB.
    #[arg(long, group = "change")]
    pub balloon_target_mib: Option<u32>,
    /// Pause (SIGSTOP) or resume the VM.
    #[arg(long, value_enum, group = "change")]
    pub state: Option<RunStateArg>,
}

/// A VM's state, for `set --state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RunStateArg {
    Running,
    Paused,
}

/// `vmm ctl oom [set|trigger]`.
#[derive(Args, Debug)]
pub struct OomArgs {
    /// Without a command: show the policy and the pressure.
    #[command(subcommand)]
    pub command: Option<OomCommand>,
}

/// The commands of `vmm ctl oom`.
#[derive(Subcommand, Debug)]
pub enum OomCommand {
    /// Show the policy and the pressure (the default).
    Show,
    /// Change policy knobs.
    Set(OomSetArgs),
    /// Make an OOM decision now, like sysrq-f, and print it.
    Trigger {
        /// Decide and record, but do not act.
        #[arg(long)]
        dry_run: bool,
        /// Decide within this pool only.
        #[arg(long, conflicts_with = "nodes")]
        pool: Option<String>,
        /// Decide among the VMs bound to these NUMA nodes (e.g. 0-1).
        #[arg(long)]
        nodes: Option<String>,
    },
}

/// The on-OOM action, for `oom set --action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ActionArg {
    /// Kill the chosen VM and reap its memory.
    Kill,
    /// Stop its vCPUs.
    Pause,
    /// Only record the decision.
    Notify,
}

/// `vmm ctl oom set`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("knob").required(true).multiple(true)))]
pub struct OomSetArgs {
    /// What to do with the chosen VM.
    #[arg(long, value_enum, group = "knob")]
    pub action: Option<ActionArg>,
    /// Choose the fastest-growing VM (vm.oom_kill_allocating_task).
    #[arg(long, value_name = "BOOL", group = "knob")]
    pub kill_fastest_grower: Option<bool>,
    /// Put the VM table into each decision (vm.oom_dump_tasks).
    #[arg(long, value_name = "BOOL", group = "knob")]
    pub dump_vms: Option<bool>,
    /// Inflate balloons before killing.
    #[arg(long, value_name = "BOOL", group = "knob")]
    pub reclaim_first: Option<bool>,
    /// How long reclaim must make no progress before a kill, in ms.
    #[arg(long, value_name = "MS", group = "knob")]
    pub no_progress_ms: Option<u64>,
    /// Least time between two kills, in ms.
    #[arg(long, value_name = "MS", group = "knob")]
    pub min_kill_interval_ms: Option<u64>,
    /// PSI "some" stall within the window that wakes the daemon, in µs.
    #[arg(long, value_name = "US", group = "knob")]
    pub psi_some_threshold_us: Option<u64>,
    /// PSI trigger window, in µs (500000 to 10000000).
    #[arg(long, value_name = "US", group = "knob")]
    pub psi_window_us: Option<u64>,
    /// Host-wide action below this much MemAvailable, in thousandths of
    /// MemTotal (0 turns it off).
    #[arg(long, value_name = "PERMILLE", group = "knob")]
    pub host_min_available_permille: Option<u16>,
}

/// `vmm ctl events`.
#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only events after this sequence number.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Keep printing new events as they happen (until interrupted).
    #[arg(long)]
    pub follow: bool,
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No answer from the daemon.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The daemon answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// The HTTP status.
        status: u16,
        /// Its `fault_message`.
        message: String,
    },
    /// The daemon's answer is not what this client expects.
    #[error("unexpected answer from the daemon: {0}")]
    Decode(String),
    /// A bad argument that clap cannot check.
    #[error("{0}")]
    Usage(String),
    /// Writing the output failed.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

/// Runs `vmm ctl`: exit status 0 on success, 1 with the error on stderr.
pub fn run(args: CtlArgs) -> ExitCode {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    match execute(&args, &mut out).and_then(|()| Ok(out.flush()?)) {
        Ok(()) => ExitCode::SUCCESS,
        // `vmm ctl events --follow | head`: the reader left; not an error.
        Err(CtlError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// The socket: `--socket`, else `$VMM_DAEMON_SOCKET`, else
/// [`DEFAULT_SOCKET`].
pub fn socket_path(arg: Option<&Path>) -> PathBuf {
    match arg {
        Some(path) => path.to_path_buf(),
        None => std::env::var_os(SOCKET_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from),
    }
}

/// Runs one command against the daemon and writes what it prints to `out`.
pub fn execute(args: &CtlArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let api = Api {
        client: Client::new(socket_path(args.socket.as_deref())),
    };
    let json = args.json;
    match &args.command {
        CtlCommand::List => {
            let (raw, vms): (Value, Vec<VmView>) = api.call("GET", "/vms", None)?;
            if json {
                print_json(out, &raw)
            } else {
                Ok(out.write_all(vm_table(&vms).as_bytes())?)
            }
        }
        CtlCommand::Get { id } => {
            let (raw, vm): (Value, VmView) = api.call("GET", &vm_path(id), None)?;
            print_vm(out, json, &raw, &vm)
        }
        CtlCommand::Create(create) => {
            let body = to_json(&create_spec(create)?)?;
            let (raw, vm): (Value, VmView) = api.call("POST", "/vms", Some(&body))?;
            print_vm(out, json, &raw, &vm)
        }
        CtlCommand::Set(set) => {
            let patch = VmPatch {
                oom_score_adj: set.oom_score_adj,
                balloon_target_mib: set.balloon_target_mib,
                state: set.state.map(|s| match s {
                    RunStateArg::Running => RunState::Running,
                    RunStateArg::Paused => RunState::Paused,
                }),
            };
            let (raw, vm): (Value, VmView) =
                api.call("PATCH", &vm_path(&set.id), Some(&to_json(&patch)?))?;
            print_vm(out, json, &raw, &vm)
        }
        CtlCommand::Delete { id } => {
            api.send("DELETE", &vm_path(id), None)?;
            if !json {
                writeln!(out, "deleted {id}")?;
            }
            Ok(())
        }
        CtlCommand::Oom(OomArgs { command }) => match command {
            None | Some(OomCommand::Show) => {
                let (raw, oom): (Value, OomView) = api.call("GET", "/oom", None)?;
                print_oom(out, json, &raw, &oom)
            }
            Some(OomCommand::Set(set)) => {
                let body = to_json(&oom_patch(set))?;
                let (raw, oom): (Value, OomView) = api.call("PATCH", "/oom", Some(&body))?;
                print_oom(out, json, &raw, &oom)
            }
            Some(OomCommand::Trigger {
                dry_run,
                pool,
                nodes,
            }) => {
                let trigger = OomTrigger {
                    dry_run: *dry_run,
                    pool: pool.clone(),
                    nodes: nodes.clone(),
                };
                let (raw, _): (Value, Value) =
                    api.call("POST", "/oom/trigger", Some(&to_json(&trigger)?))?;
                let record = EventRecord::from_value(raw.clone()).ok();
                match record.as_ref().and_then(|r| Some((r, r.decision()?))) {
                    Some((record, decision)) if !json => {
                        Ok(out.write_all(decision_text(record, decision).as_bytes())?)
                    }
                    // --json, or a decision this build cannot read.
                    _ => print_json(out, &raw),
                }
            }
        },
        CtlCommand::Events(events) => api.events(events, json, out),
        CtlCommand::Metrics => {
            let body = api.send("GET", "/metrics", None)?;
            Ok(out.write_all(&body)?)
        }
    }
}

fn vm_path(id: &str) -> String {
    format!("/vms/{id}")
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, CtlError> {
    serde_json::to_string(value).map_err(|e| CtlError::Decode(e.to_string()))
}

fn print_json(out: &mut dyn Write, value: &Value) -> Result<(), CtlError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CtlError::Decode(e.to_string()))?;
    Ok(writeln!(out, "{text}")?)
}

fn print_vm(out: &mut dyn Write, json: bool, raw: &Value, vm: &VmView) -> Result<(), CtlError> {
    if json {
        print_json(out, raw)
    } else {
        Ok(out.write_all(vm_text(vm).as_bytes())?)
    }
}

fn print_oom(out: &mut dyn Write, json: bool, raw: &Value, oom: &OomView) -> Result<(), CtlError> {
    if json {
        print_json(out, raw)
    } else {
        Ok(out.write_all(oom_text(oom).as_bytes())?)
    }
}

/// The request body of `create`.
fn create_spec(args: &CreateArgs) -> Result<VmSpec, CtlError> {
    const MIB: u64 = 1 << 20;
    let mem = args.mem.0;
    if mem % MIB != 0 || u32::try_from(mem / MIB).is_err() {
        return Err(CtlError::Usage(format!(
            "--mem {}: give a whole number of MiB (e.g. 128M)",
            args.mem
        )));
    }
    // The daemon does not share our working directory.
    let absolute = |path: &Option<PathBuf>| -> Result<Option<String>, CtlError> {
        path.as_ref()
            .map(|p| {
                std::path::absolute(p)
                    .map(|p| p.to_string_lossy().into_owned())
                    .map_err(|e| CtlError::Usage(format!("{}: {e}", p.display())))
            })
            .transpose()
    };
    Ok(VmSpec {
        id: args.id.clone(),
        kernel: absolute(&args.kernel)?,
        initrd: absolute(&args.initrd)?,
        cmdline: args.cmdline.clone(),
        mem_mib: (mem / MIB) as u32,
        vcpus: args.vcpus.unwrap_or(1),
        balloon: args.balloon,
        oom_score_adj: args.oom_score_adj.unwrap_or(0),
        pool: args.pool.clone(),
        numa_nodes: args.numa_nodes.clone(),
        agent: args.agent,
        drives: args
            .drive
            .iter()
            .map(|d| {
                let path = absolute(&Some(PathBuf::from(&d.path_on_host)))?.unwrap_or_default();
                Ok(crate::api::DriveConfig {
                    path_on_host: path,
                    ..d.clone()
                })
            })
            .collect::<Result<_, CtlError>>()?,
        network_interfaces: args.net.clone(),
    })
}

fn oom_patch(args: &OomSetArgs) -> OomPatch {
    OomPatch {
        action: args.action.map(|a| match a {
            ActionArg::Kill => OomAction::Kill,
            ActionArg::Pause => OomAction::Pause,
            ActionArg::Notify => OomAction::Notify,
        }),
        kill_fastest_grower: args.kill_fastest_grower,
        dump_vms: args.dump_vms,
        reclaim_first: args.reclaim_first,
        no_progress_ms: args.no_progress_ms,
        min_kill_interval_ms: args.min_kill_interval_ms,
        psi_some_threshold_us: args.psi_some_threshold_us,
        psi_window_us: args.psi_window_us,
        host_min_available_permille: args.host_min_available_permille,
    }
}

/// Parses `--balloon key=value,...` (the keys of the per-VM
/// `PUT /balloon`, all optional).
pub fn parse_balloon(spec: &str) -> Result<BalloonConfig, String> {
    let mut cfg = BalloonConfig {
        amount_mib: 0,
        deflate_on_oom: false,
        stats_polling_interval_s: 0,
        free_page_reporting: false,
    };
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not key=value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{key}: '{value}': {e}");
        match key {
            "amount_mib" => cfg.amount_mib = value.parse().map_err(|e| bad(&e))?,
            "deflate_on_oom" => cfg.deflate_on_oom = value.parse().map_err(|e| bad(&e))?,
            "stats_polling_interval_s" => {
                cfg.stats_polling_interval_s = value.parse().map_err(|e| bad(&e))?
            }
            "free_page_reporting" => {
                cfg.free_page_reporting = value.parse().map_err(|e| bad(&e))?
            }
            _ => {
                return Err(format!(
                    "unknown balloon option '{key}' (amount_mib, deflate_on_oom, \
                     stats_polling_interval_s, free_page_reporting)"
                ))
            }
        }
    }
    Ok(cfg)
}

/// Parses `--vsock cid=N,uds=PATH` (also `guest_cid=` and `uds_path=`,
/// the keys of the per-VM `PUT /vsock`); both are required, and the path
/// cannot hold a comma.
pub fn parse_vsock(spec: &str) -> Result<crate::api::VsockConfig, String> {
    let (mut cid, mut uds) = (None, None);
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not key=value"))?;
        match key {
            "cid" | "guest_cid" => {
                cid = Some(
                    value
                        .parse::<u64>()
                        .map_err(|e| format!("{key}: '{value}': {e}"))?,
                )
            }
            "uds" | "uds_path" => uds = Some(value.to_string()),
            _ => return Err(format!("unknown vsock option '{key}' (cid, uds)")),
        }
    }
    let config = crate::api::VsockConfig {
        guest_cid: cid.ok_or("vsock needs cid=<guest CID>")?,
        uds_path: uds.ok_or("vsock needs uds=<Unix socket path>")?,
        vsock_id: None,
    };
    vsock::VsockConfig::try_from(config.clone()).map_err(|e| e.to_string())?;
    Ok(config)
}

/// Parses `vmm run --drive`: `id=NAME,path=FILE[,ro=BOOL][,root=BOOL]`
/// (or the API's field names `drive_id`, `path_on_host`, `is_read_only`,
/// `is_root_device`), checked as the device will check it.
pub fn parse_drive(spec: &str) -> Result<crate::api::DriveConfig, String> {
    let (mut id, mut path, mut ro, mut root) = (None, None, false, false);
    let parse_bool = |key: &str, value: &str| -> Result<bool, String> {
        value
            .parse::<bool>()
            .map_err(|_| format!("{key}: '{value}' is not true or false"))
    };
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not key=value"))?;
        match key {
            "id" | "drive_id" => id = Some(value.to_string()),
            "path" | "path_on_host" => path = Some(value.to_string()),
            "ro" | "is_read_only" => ro = parse_bool(key, value)?,
            "root" | "is_root_device" => root = parse_bool(key, value)?,
            _ => return Err(format!("unknown drive option '{key}' (id, path, ro, root)")),
        }
    }
    let config = crate::api::DriveConfig {
        drive_id: id.ok_or("a drive needs id=<drive id>")?,
        path_on_host: path.ok_or("a drive needs path=<image file>")?,
        is_root_device: root,
        is_read_only: ro,
        ..Default::default()
    };
    block::BlockConfig::from(config.clone())
        .validate()
        .map_err(|e| e.to_string())?;
    Ok(config)
}

/// Parses `vmm run --net`: `id=NAME,tap=TAPNAME[,mac=aa:bb:cc:dd:ee:ff]`
/// (or the API's field names `iface_id`, `host_dev_name`, `guest_mac`),
/// checked as the device will check it.
pub fn parse_net(spec: &str) -> Result<crate::api::NetworkInterfaceConfig, String> {
    let (mut id, mut tap, mut mac) = (None, None, None);
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not key=value"))?;
        match key {
            "id" | "iface_id" => id = Some(value.to_string()),
            "tap" | "host_dev_name" => tap = Some(value.to_string()),
            "mac" | "guest_mac" => mac = Some(value.to_string()),
            _ => return Err(format!("unknown net option '{key}' (id, tap, mac)")),
        }
    }
    let config = crate::api::NetworkInterfaceConfig {
        iface_id: id.ok_or("a network interface needs id=<iface id>")?,
        host_dev_name: tap.ok_or("a network interface needs tap=<TAP device>")?,
        guest_mac: mac,
        ..Default::default()
    };
    net::NetConfig::try_from(config.clone())
        .and_then(|c| c.validate())
        .map_err(|e| e.to_string())?;
    Ok(config)
}

/// The daemon's API, as this client uses it.
struct Api {
    client: Client,
}

impl Api {
    /// One request; the body of a 2xx answer, or the daemon's error.
    fn send(&self, method: &str, target: &str, body: Option<&str>) -> Result<Vec<u8>, CtlError> {
        let res = self.client.request(method, target, body)?;
        if (200..300).contains(&res.status) {
            Ok(res.body)
        } else {
            Err(CtlError::Api {
                status: res.status,
                message: res.fault_message(),
            })
        }
    }

    /// One request whose answer is JSON: as sent, and as `T`.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        target: &str,
        body: Option<&str>,
    ) -> Result<(Value, T), CtlError> {
        let bytes = self.send(method, target, body)?;
        let raw: Value = serde_json::from_slice(&bytes)
            .map_err(|e| CtlError::Decode(format!("{method} {target}: {e}")))?;
        let typed = serde_json::from_value(raw.clone())
            .map_err(|e| CtlError::Decode(format!("{method} {target}: {e}")))?;
        Ok((raw, typed))
    }

    /// `events`: the history, or the stream with `--follow`. An event of
    /// a kind this build does not know (a newer daemon) is shown with its
    /// fields as they come.
    fn events(&self, args: &EventsArgs, json: bool, out: &mut dyn Write) -> Result<(), CtlError> {
        let line = |out: &mut dyn Write, event: Value| -> Result<(), CtlError> {
            if json {
                writeln!(out, "{event}")?;
            } else {
                let text = match EventRecord::from_value(event) {
                    Ok(record) => event_line(&record),
                    Err(raw) => raw_event_line(&raw),
                };
                writeln!(out, "{text}")?;
            }
            Ok(out.flush()?)
        };
        if !args.follow {
            let (_, events): (Value, Vec<Value>) =
                self.call("GET", &format!("/events?since={}", args.since), None)?;
            return events.into_iter().try_for_each(|e| line(out, e));
        }
        let target = format!("/events?since={}&follow=true", args.since);
        let io_err = |source| ClientError::Io {
            path: self.client.path().to_path_buf(),
            source,
        };
        let mut res = self.client.stream("GET", &target, None)?;
        if res.status != 200 {
            let mut body = Vec::new();
            res.body.read_to_end(&mut body).map_err(io_err)?;
            let res = crate::http::ClientResponse {
                status: res.status,
                headers: res.headers,
                body,
            };
            return Err(CtlError::Api {
                status: res.status,
                message: res.fault_message(),
            });
        }
        let mut text = String::new();
        loop {
            text.clear();
            let n = res.body.read_line(&mut text).map_err(io_err)?;
            if n == 0 {
                return Ok(()); // the daemon ended the stream
            }
            let event: Value = serde_json::from_str(&text)
                .map_err(|e| CtlError::Decode(format!("event {text:?}: {e}")))?;
            line(out, event)?;
        }
    }
}

// ---- formatting ----

const MIB: f64 = (1u64 << 20) as f64;

/// Bytes as MiB: whole above 100 MiB or when exact, else one decimal;
/// `<0.1MiB` for a sliver, `0MiB` for nothing.
pub fn mib(bytes: u64) -> String {
    let m = bytes as f64 / MIB;
    if bytes == 0 {
        "0MiB".into()
    } else if m < 0.05 {
        "<0.1MiB".into()
    } else if m >= 100.0 || bytes % (1 << 20) == 0 {
        format!("{m:.0}MiB")
    } else {
        format!("{m:.1}MiB")
    }
}

/// Unix milliseconds as an ISO 8601 UTC time, e.g.
/// `2023-11-14T22:13:20.000Z`.
pub fn utc_time(ms: u64) -> String {
    crate::utc::UtcTime::from_unix_ms(ms).to_string()
}

fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// An aligned table: two spaces between columns, `right` columns
/// right-aligned, no trailing spaces.
pub fn table(headers: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(cols) {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if right.get(i).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Label-value lines with the values aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

/// The table of `vmm ctl list`.
pub fn vm_table(vms: &[VmView]) -> String {
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            vec![
                vm.id.clone(),
                or_dash(vm.pid),
                vm.state.as_str().to_string(),
                or_dash(vm.pool.as_deref()),
                mib(u64::from(vm.mem_mib) << 20),
                mib(vm.rss_bytes),
                mib(vm.swap_bytes),
                vm.oom_score_adj.to_string(),
                or_dash(vm.badness),
                or_dash(vm.oom_score),
                vm.balloon.map_or_else(
                    || "-".to_string(),
                    |b| format!("{}/{}MiB", b.actual_mib, b.target_mib),
                ),
            ]
        })
        .collect();
    table(
        &[
            "ID", "PID", "STATE", "POOL", "MEM", "RSS", "SWAP", "ADJ", "BADNESS", "SCORE",
            "BALLOON",
        ],
        &[
            false, true, false, false, true, true, true, true, true, true, true,
        ],
        &rows,
    )
}

/// One VM, for `get`, `create` and `set`.
pub fn vm_text(vm: &VmView) -> String {
    let vcpus = if vm.vcpus == 1 { "vCPU" } else { "vCPUs" };
    fields(&[
        ("id", vm.id.clone()),
        ("state", vm.state.as_str().to_string()),
        ("pid", or_dash(vm.pid)),
        ("pool", or_dash(vm.pool.as_deref())),
        (
            "memory",
            format!("{}, {} {vcpus}", mib(u64::from(vm.mem_mib) << 20), vm.vcpus),
        ),
        (
            "rss",
            format!(
                "{} (guest RAM resident {})",
                mib(vm.rss_bytes),
                mib(vm.guest_ram_resident_bytes)
            ),
        ),
        ("swap", mib(vm.swap_bytes)),
        ("page tables", mib(vm.page_tables_bytes)),
        (
            "balloon",
            vm.balloon.map_or_else(
                || "none".to_string(),
                |b| format!("{} MiB of {} MiB target", b.actual_mib, b.target_mib),
            ),
        ),
        ("oom_score_adj", vm.oom_score_adj.to_string()),
        ("badness", or_dash(vm.badness)),
        ("oom_score", or_dash(vm.oom_score)),
        ("created", utc_time(vm.created_at_ms)),
        ("exit", or_dash(vm.exit.as_deref())),
    ])
}

/// The policy and the pressure, for `oom` and `oom set`.
pub fn oom_text(oom: &OomView) -> String {
    let p = &oom.policy;
    let q = &oom.pressure;
    let mut out = fields(&[
        ("action", p.action.as_str().to_string()),
        ("kill_fastest_grower", p.kill_fastest_grower.to_string()),
        ("dump_vms", p.dump_vms.to_string()),
        ("reclaim_first", p.reclaim_first.to_string()),
        ("no_progress_ms", p.no_progress_ms.to_string()),
        ("min_kill_interval_ms", p.min_kill_interval_ms.to_string()),
        ("psi_some_threshold_us", p.psi_some_threshold_us.to_string()),
        ("psi_window_us", p.psi_window_us.to_string()),
        (
            "host_min_available",
            format!("{}‰", p.host_min_available_permille),
        ),
        (
            "memory",
            format!(
                "{} available of {}, swap free {}",
                mib(q.mem_available_bytes),
                mib(q.mem_total_bytes),
                mib(q.swap_free_bytes)
            ),
        ),
        (
            "psi avg10",
            format!(
                "some {:.2}%, full {:.2}%",
                q.psi_some_avg10, q.psi_full_avg10
            ),
        ),
        ("event log", event_log_text(&oom.event_log)),
    ]);
    if !q.pools.is_empty() {
        let rows: Vec<Vec<String>> = q
            .pools
            .iter()
            .map(|pool| {
                vec![
                    pool.name.clone(),
                    pool.constraint.as_str().to_string(),
                    pool.limit_bytes.map_or_else(|| "-".to_string(), mib),
                    mib(pool.usage_bytes),
                    pool.vms.to_string(),
                ]
            })
            .collect();
        out.push('\n');
        out.push_str(&table(
            &["POOL", "CONSTRAINT", "LIMIT", "USAGE", "VMS"],
            &[false, false, true, true, true],
            &rows,
        ));
    }
    out
}

/// Whether `events.ndjson` holds every event.
fn event_log_text(log: &crate::daemon_api::EventLogView) -> String {
    let mut text = if log.write_failures == 0 {
        "every event written".to_string()
    } else {
        format!(
            "{} writes failed, {} events unwritten, {} lost",
            log.write_failures, log.unwritten, log.lost
        )
    };
    if let Some(error) = &log.last_error {
        let _ = write!(text, " (failing now: {error})");
    }
    text
}

/// A JSON value as a short text: strings bare, the rest as JSON.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// An OOM decision event, for `oom trigger`: the domain, the candidate
/// table with scores (the victim marked `*`), the reason and the victim.
pub fn decision_text(record: &EventRecord, d: &OomDecision) -> String {
    let mut out = format!("OOM decision #{}", record.seq);
    if d.dry_run {
        out.push_str(" (dry run)");
    }
    let _ = writeln!(
        out,
        ", trigger {}, at {}",
        d.trigger.as_str(),
        utc_time(record.time_ms)
    );
    out.push_str(&fields(&[
        (
            "constraint",
            format!("{}: {}, {} pages", d.constraint, d.basis, d.totalpages),
        ),
        ("action", d.action.as_str().to_string()),
    ]));
    match &d.table {
        Some(rows) if !rows.is_empty() => {
            let page = crate::host::procfs::page_size();
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|row| {
                    let mark = if d.victim.as_deref() == Some(row.id.as_str()) {
                        "*"
                    } else {
                        ""
                    };
                    vec![
                        mark.to_string(),
                        row.id.clone(),
                        mib(row.rss_pages * page),
                        mib(row.swap_pages * page),
                        mib(row.pgtables_pages * page),
                        row.oom_score_adj.to_string(),
                        or_dash(row.badness),
                        row.oom_score.to_string(),
                        format!("{}KiB/s", row.growth_bytes_per_s / 1024),
                    ]
                })
                .collect();
            out.push('\n');
            out.push_str(&table(
                &[
                    "", "ID", "RSS", "SWAP", "PGTABLES", "ADJ", "BADNESS", "SCORE", "GROWTH",
                ],
                &[false, false, true, true, true, true, true, true, true],
                &cells,
            ));
            out.push('\n');
        }
        Some(_) => out.push_str("\n(no candidates)\n\n"),
        None => {}
    }
    out.push_str(&fields(&[
        ("reason", d.reason.clone()),
        ("victim", d.victim.clone().unwrap_or_else(|| "none".into())),
    ]));
    out
}

/// `key=value` pairs of one event line; a value with spaces, quotes or
/// nothing in it is quoted.
#[derive(Default)]
struct Pairs(String);

impl Pairs {
    fn add(&mut self, key: &str, value: impl ToString) -> &mut Self {
        let text = value.to_string();
        if text.is_empty() || text.contains(char::is_whitespace) || text.contains('"') {
            let _ = write!(self.0, " {key}={text:?}");
        } else {
            let _ = write!(self.0, " {key}={text}");
        }
        self
    }

    fn opt(&mut self, key: &str, value: Option<impl ToString>) -> &mut Self {
        self.add(key, or_dash(value))
    }

    fn bytes(&mut self, key: &str, bytes: u64) -> &mut Self {
        self.add(key, mib(bytes))
    }

    /// The domain: `pool=` or `nodes=`; the host shows neither.
    fn domain(&mut self, d: &DomainName) -> &mut Self {
        if let Some(pool) = &d.pool {
            self.add("pool", pool);
        }
        if let Some(nodes) = &d.nodes {
            self.add("nodes", nodes);
        }
        self
    }

    fn usage(&mut self, u: &DomainUsage) -> &mut Self {
        self.domain(&u.domain)
            .add("constraint", u.figures.kind().as_str())
            .bytes("usage", u.usage_bytes)
            .bytes("limit", u.limit_bytes);
        match &u.figures {
            DomainFigures::Budget { .. } | DomainFigures::Nodes(_) => self,
            DomainFigures::Memcg(m) => self
                .add("failcnt", m.failcnt)
                .add("under_oom", m.under_oom)
                .add("reserve_lent", m.reserve_lent),
            DomainFigures::Host(h) => self
                .opt("psi_some_avg10", h.psi_some_avg10)
                .opt("psi_full_avg10", h.psi_full_avg10),
        }
    }
}

/// A signal number as its name, for the two that stop the daemon.
fn signal_name(signal: u8) -> String {
    match i32::from(signal) {
        libc::SIGTERM => "SIGTERM".into(),
        libc::SIGINT => "SIGINT".into(),
        n => n.to_string(),
    }
}

/// One event as one line: time, `#seq`, kind, then what happened as
/// `key=value` (the VM or pool first; sizes in MiB; an OOM decision shows
/// its victim, domain, action and reason, and the number of candidates
/// instead of its table).
pub fn event_line(record: &EventRecord) -> String {
    let mut p = Pairs::default();
    // Every kind says what it shows: a new kind cannot be forgotten here.
    match &record.event {
        Event::DaemonStarted {
            socket,
            state_dir,
            policy,
        } => p
            .add("socket", socket.display())
            .add("state_dir", state_dir.display())
            .add("action", policy.action.as_str()),
        Event::DaemonStopping { signal } => p.add("signal", signal_name(*signal)),
        Event::OomPolicy { policy: q } => p
            .add("action", q.action.as_str())
            .add("kill_fastest_grower", q.kill_fastest_grower)
            .add("dump_vms", q.dump_vms)
            .add("reclaim_first", q.reclaim_first)
            .add("no_progress_ms", q.no_progress_ms)
            .add("min_kill_interval_ms", q.min_kill_interval_ms)
            .add("psi_some_threshold_us", q.psi_some_threshold_us)
            .add("psi_window_us", q.psi_window_us)
            .add("host_min_available_permille", q.host_min_available_permille),
        Event::PsiTrigger {
            pool,
            file,
            trigger,
        } => p
            .opt("pool", pool.as_deref())
            .add("file", file.display())
            .add("trigger", trigger),
        Event::PsiUnavailable { pool, file, error } => p
            .opt("pool", pool.as_deref())
            .add("file", file.display())
            .add("error", error),
        Event::PsiPressure {
            pool,
            some_avg10,
            full_avg10,
            trigger,
        } => p
            .opt("pool", pool.as_deref())
            .opt("some_avg10", *some_avg10)
            .opt("full_avg10", *full_avg10)
            .add("trigger", trigger),
        Event::EventLogWriteFailed { file, error } => {
            p.add("file", file.display()).add("error", error)
        }
        Event::EventLogRecovered {
            file,
            written_late,
            lost,
        } => p
            .add("file", file.display())
            .add("written_late", written_late)
            .add("lost", lost),
        Event::VmCreated {
            vm,
            pid,
            mem_mib,
            oom_score_adj,
            pool,
            numa_nodes,
        } => p
            .add("vm", vm)
            .opt("pid", *pid)
            .bytes("mem", u64::from(*mem_mib) << 20)
            .add("oom_score_adj", oom_score_adj)
            .opt("pool", pool.as_deref())
            .opt("numa_nodes", numa_nodes.as_deref()),
        Event::VmRunning { vm } | Event::VmDeleted { vm } => p.add("vm", vm),
        Event::VmExited { vm, how } => p.add("vm", vm).add("how", how),
        Event::VmStartFailed { vm, how, log } => p.add("vm", vm).add("how", how).add("log", log),
        Event::VmAdopted {
            vm,
            pid,
            state,
            pool,
        } => p
            .add("vm", vm)
            .opt("pid", *pid)
            .add("state", state.as_str())
            .opt("pool", pool.as_deref()),
        Event::VmRecordWriteFailed { vm, error } => p.add("vm", vm).add("error", error),
        Event::VmRecordUnreadable { dir, error } => p.add("dir", dir.display()).add("error", error),
        Event::OomScoreAdjNotMirrored {
            vm,
            oom_score_adj,
            kernel_oom_score_adj,
            why,
        } => p
            .add("vm", vm)
            .add("oom_score_adj", oom_score_adj)
            .add("kernel_oom_score_adj", kernel_oom_score_adj)
            .add("why", why),
        Event::GuestAgentConnected {
            vm,
            agent,
            kernel,
            boot_id,
            resumed_at,
        } => p
            .add("vm", vm)
            .add("agent", agent)
            .add("kernel", kernel)
            .add("boot_id", boot_id)
            .opt("resumed_at", *resumed_at),
        Event::GuestAgentDisconnected { vm, why } => p.add("vm", vm).add("why", why),
        Event::GuestAgentProtocolError { vm, error } => p.add("vm", vm).add("error", error),
        Event::GuestOomKill {
            vm,
            agent_seq,
            kill,
        } => p
            .add("vm", vm)
            .add("agent_seq", agent_seq)
            .add("pid", kill.pid)
            .add("comm", &kill.comm)
            .opt("constraint", kill.constraint.as_deref())
            .opt("memcg", kill.oom_memcg.as_deref())
            .opt("anon_rss_kb", kill.anon_rss_kb)
            .add("reason", &kill.reason),
        Event::GuestOomReaped {
            vm,
            agent_seq,
            reaped,
        } => p
            .add("vm", vm)
            .add("agent_seq", agent_seq)
            .add("pid", reaped.pid)
            .add("comm", &reaped.comm)
            .add("reaped", reaped.reaped),
        Event::GuestKillsUnlogged {
            vm,
            agent_seq,
            unlogged,
        } => p
            .add("vm", vm)
            .add("agent_seq", agent_seq)
            .add("count", unlogged.count)
            .add("vmstat_oom_kill", unlogged.vmstat_oom_kill),
        Event::BalloonGivenBack {
            vm,
            from_mib,
            to_mib,
            guest_kills,
        } => p
            .add("vm", vm)
            .bytes("from", u64::from(*from_mib) << 20)
            .bytes("to", u64::from(*to_mib) << 20)
            .add("guest_kills", guest_kills),
        Event::GuestPressure {
            vm,
            agent_seq,
            pressure,
        } => p
            .add("vm", vm)
            .add("agent_seq", agent_seq)
            .add("some_avg10", pressure.some.avg10)
            .opt("full_avg10", pressure.full.map(|f| f.avg10)),
        Event::VmOomScoreAdj { vm, oom_score_adj } => {
            p.add("vm", vm).add("oom_score_adj", oom_score_adj)
        }
        Event::VmPaused { vm, by } | Event::VmResumed { vm, by } => {
            p.add("vm", vm).add("by", by.as_str())
        }
        Event::BalloonTarget { vm, target_mib, by } => p
            .add("vm", vm)
            .bytes("target", u64::from(*target_mib) << 20)
            .add("by", by.as_str()),
        Event::Reclaim(r) => {
            let asked: Vec<String> = r
                .balloons
                .iter()
                .map(|b| format!("{}:{}MiB", b.vm, b.target_mib))
                .collect();
            p.domain(&r.domain)
                .add("constraint", r.constraint.as_str())
                .bytes("excess", r.excess_bytes)
                .add("balloons", asked.join(","))
        }
        Event::BalloonStalled(b) => p
            .add("vm", &b.vm)
            .domain(&b.domain)
            .opt("target_mib", b.target_mib)
            .add("actual_mib", b.actual_mib)
            .add("rate_mib_s", b.rate_mib_s)
            .add("backoff_s", b.backoff_s),
        Event::BalloonSkipped(b) => p
            .add("vm", &b.balloon.vm)
            .domain(&b.domain)
            .add("reason", b.balloon.reason.as_str())
            .opt("detail", b.balloon.detail.as_deref()),
        Event::ReclaimReleased(r) => {
            let released: Vec<String> = r
                .balloons
                .iter()
                .map(|b| format!("{}:{}MiB", b.vm, b.target_mib))
                .collect();
            p.usage(&r.usage).add("balloons", released.join(","))
        }
        Event::OomPressure(o) => {
            p.usage(&o.usage)
                .add("pressure_to_decision_ms", o.pressure_to_decision_ms);
            if !o.skipped_balloons.is_empty() {
                let skipped: Vec<String> = o
                    .skipped_balloons
                    .iter()
                    .map(|s| format!("{}:{}", s.vm, s.reason.as_str()))
                    .collect();
                p.add("skipped_balloons", skipped.join(","));
            }
            p.add("why", &o.why)
        }
        Event::OomDecisionsRepeated(r) => p
            .domain(&r.domain)
            .add("decisions", r.decisions)
            .add("stuck_ms", r.stuck_ms)
            .add("ongoing", r.ongoing)
            .add("reason", &r.reason),
        Event::OomDecision(d) => p
            .add("victim", d.victim.as_deref().unwrap_or("none"))
            .add("action", d.action.as_str())
            .add("trigger", d.trigger.as_str())
            .add("constraint", &d.constraint)
            .add("totalpages", d.totalpages)
            .opt("candidates", d.table.as_ref().map(Vec::len))
            .add("decision_us", d.decision_us)
            .add("reason", &d.reason),
        Event::OomPauseFailed { vm, error } => p.add("vm", vm).add("error", error),
        Event::OomKill(OomKill { vm, pid, outcome }) => {
            p.add("vm", vm).opt("pid", *pid);
            match outcome {
                KillOutcome::Reaped {
                    report: r,
                    decision_to_freed_us,
                } => {
                    p.add("method", r.method.as_str());
                    if let Some(from) = r.fallback_from {
                        p.add("fallback_from", from.as_str())
                            .opt("fallback_reason", r.fallback_reason.as_deref());
                    }
                    p.bytes("freed", r.bytes_freed)
                        .add("freed_by", r.freed_by.as_str())
                        .add("kill_to_freed_us", r.freed_us)
                        .add("decision_to_freed_us", decision_to_freed_us)
                        .add("kill_to_exit_us", r.exited_us)
                }
                KillOutcome::Failed { method, error } => {
                    p.add("method", method.as_str()).add("error", error)
                }
            }
        }
        Event::MemcgPoolCreated {
            pool,
            cgroup,
            version,
            limit_bytes,
            kernel_oom_killer,
        } => p
            .add("pool", pool)
            .bytes("limit", *limit_bytes)
            .add("cgroup", cgroup.display())
            .add("version", version.as_str())
            .add("kernel_oom_killer", kernel_oom_killer.as_str()),
        Event::MemcgPoolUnreadable { pool, error }
        | Event::MemcgPoolUnwatched { pool, error }
        | Event::MemcgReserveFailed { pool, error }
        | Event::MemcgPoolRemoveFailed { pool, error } => p.add("pool", pool).add("error", error),
        Event::MemcgReserveLent {
            pool,
            reserve_bytes,
            usage_bytes,
            under_oom,
        } => p
            .add("pool", pool)
            .bytes("reserve", *reserve_bytes)
            .bytes("usage", *usage_bytes)
            .add("under_oom", under_oom),
        Event::MemcgReserveReturned {
            pool,
            usage_bytes,
            lent_ms,
        } => p
            .add("pool", pool)
            .bytes("usage", *usage_bytes)
            .add("lent_ms", lent_ms),
        Event::MemcgPoolRemoved { pool } => p.add("pool", pool),
    };
    format!(
        "{}  #{}  {}{}",
        utc_time(record.time_ms),
        record.seq,
        record.kind(),
        p.0
    )
}

/// An event this build cannot read (a kind from a newer daemon): time,
/// `#seq`, kind, then its fields as `key=value` in key order, the VM
/// first.
pub fn raw_event_line(event: &Value) -> String {
    let time = event
        .get("time_ms")
        .and_then(Value::as_u64)
        .map_or_else(|| "-".to_string(), utc_time);
    let seq = event.get("seq").map(scalar).unwrap_or_else(|| "?".into());
    let kind = event.get("kind").map(scalar).unwrap_or_else(|| "?".into());
    let mut p = Pairs(format!("{time}  #{seq}  {kind}"));
    let Some(fields) = event.as_object() else {
        return p.0;
    };
    let mut keys: Vec<&String> = fields.keys().collect();
    keys.sort_by_key(|k| (!matches!(k.as_str(), "vm" | "id"), k.as_str()));
    for key in keys {
        if !matches!(key.as_str(), "seq" | "time_ms" | "kind") {
            p.add(key, scalar(&fields[key]));
        }
    }
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon_api::events::{DecisionAction, DecisionTrigger};
    use crate::daemon_api::{
        BalloonView, ConstraintKind, EventLogView, PoolView, PressureView, VmState,
    };
    use crate::oom::select::CandidateRow;
    use serde_json::json;

    fn vm(id: &str) -> VmView {
        VmView {
            id: id.into(),
            pid: Some(4242),
            state: VmState::Running,
            pool: None,
            mem_mib: 128,
            vcpus: 1,
            oom_score_adj: 0,
            kernel_oom_score_adj: None,
            rss_bytes: 70 << 20,
            swap_bytes: 0,
            page_tables_bytes: 300 << 10,
            guest_ram_resident_bytes: 64 << 20,
            balloon: None,
            badness: Some(17_995),
            oom_score: Some(2),
            exit: None,
            created_at_ms: 1_700_000_000_000,
            agent: None,
        }
    }

    #[test]
    fn sizes_and_times() {
        assert_eq!(mib(0), "0MiB");
        assert_eq!(mib(1), "<0.1MiB");
        assert_eq!(mib(300 << 10), "0.3MiB");
        assert_eq!(mib(1 << 20), "1MiB");
        assert_eq!(mib((3 << 20) + (1 << 19)), "3.5MiB");
        assert_eq!(mib((150 << 20) + 12345), "150MiB");
        assert_eq!(mib(24 << 30), "24576MiB");
    }

    #[test]
    fn list_table_is_aligned() {
        let mut b = vm("web-1");
        b.id = "batch-worker-2".into();
        b.pid = None;
        b.state = VmState::Killed;
        b.pool = Some("batch".into());
        b.mem_mib = 1024;
        b.rss_bytes = 0;
        b.oom_score_adj = -1000;
        b.badness = None;
        b.oom_score = None;
        b.balloon = Some(BalloonView {
            target_mib: 256,
            actual_mib: 200,
        });
        b.exit = Some("killed by the OOM killer".into());
        let text = vm_table(&[vm("web-1"), b]);
        assert_eq!(
            text,
            "\
ID               PID  STATE    POOL       MEM    RSS  SWAP    ADJ  BADNESS  SCORE     BALLOON
web-1           4242  running  -       128MiB  70MiB  0MiB      0    17995      2           -
batch-worker-2     -  killed   batch  1024MiB   0MiB  0MiB  -1000        -      -  200/256MiB
"
        );
        assert_eq!(
            vm_table(&[]),
            "ID  PID  STATE  POOL  MEM  RSS  SWAP  ADJ  BADNESS  SCORE  BALLOON\n"
        );
    }

    #[test]
    fn one_vm() {
        let text = vm_text(&vm("web-1"));
        assert_eq!(
            text,
            "\
id             web-1
state          running
pid            4242
pool           -
memory         128MiB, 1 vCPU
rss            70MiB (guest RAM resident 64MiB)
swap           0MiB
page tables    0.3MiB
balloon        none
oom_score_adj  0
badness        17995
oom_score      2
created        2023-11-14T22:13:20.000Z
exit           -
"
        );
    }

    #[test]
    fn oom_view() {
        let oom = OomView {
            policy: crate::daemon_api::OomPolicy::default(),
            pressure: PressureView {
                mem_available_bytes: 20 << 30,
                mem_total_bytes: 24 << 30,
                swap_free_bytes: 0,
                psi_some_avg10: 1.25,
                psi_full_avg10: 0.5,
                pools: vec![
                    PoolView {
                        name: "batch".into(),
                        constraint: ConstraintKind::Budget,
                        limit_bytes: Some(512 << 20),
                        usage_bytes: 300 << 20,
                        vms: 2,
                    },
                    PoolView {
                        name: "web".into(),
                        constraint: ConstraintKind::Memcg,
                        limit_bytes: None,
                        usage_bytes: 5 << 20,
                        vms: 1,
                    },
                ],
            },
            event_log: EventLogView::default(),
            stuck: Vec::new(),
        };
        assert_eq!(
            oom_text(&oom),
            "\
action                 kill
kill_fastest_grower    false
dump_vms               true
reclaim_first          true
no_progress_ms         2000
min_kill_interval_ms   1000
psi_some_threshold_us  150000
psi_window_us          1000000
host_min_available     50‰
memory                 20480MiB available of 24576MiB, swap free 0MiB
psi avg10              some 1.25%, full 0.50%
event log              every event written

POOL   CONSTRAINT   LIMIT   USAGE  VMS
batch  budget      512MiB  300MiB    2
web    memcg            -    5MiB    1
"
        );
    }

    fn decision() -> EventRecord {
        let page = crate::host::procfs::page_size();
        let row = |id: &str, rss: u64, swap: u64, pgtables: u64| CandidateRow {
            id: id.into(),
            rss_pages: rss / page,
            swap_pages: swap / page,
            pgtables_pages: pgtables / page,
            oom_score_adj: 0,
            badness: Some(20_000),
            oom_score: 6,
            growth_bytes_per_s: 2048,
        };
        EventRecord {
            seq: 7,
            time_ms: 1_700_000_000_000,
            event: Event::OomDecision(OomDecision {
                trigger: DecisionTrigger::Manual,
                dry_run: true,
                constraint: "CONSTRAINT_NONE (host)".into(),
                basis: "host RAM + swap".into(),
                totalpages: 6_291_456,
                victim: Some("b".into()),
                reason: "highest badness: 20000 pages (oom_score 6)".into(),
                action: DecisionAction::DryRun,
                decision_us: 80,
                table: Some(vec![
                    CandidateRow {
                        oom_score_adj: -1000,
                        badness: None,
                        oom_score: 0,
                        growth_bytes_per_s: 0,
                        ..row("a", 8 << 20, 0, 92 << 10)
                    },
                    row("b", 78 << 20, 1 << 20, 300 << 10),
                ]),
            }),
        }
    }

    #[test]
    fn decisions_show_domain_table_reason_and_victim() {
        let record = decision();
        assert_eq!(
            decision_text(&record, record.decision().unwrap()),
            "\
OOM decision #7 (dry run), trigger manual, at 2023-11-14T22:13:20.000Z
constraint  CONSTRAINT_NONE (host): host RAM + swap, 6291456 pages
action      none (dry run)

   ID    RSS  SWAP  PGTABLES    ADJ  BADNESS  SCORE  GROWTH
   a    8MiB  0MiB    0.1MiB  -1000        -      0  0KiB/s
*  b   78MiB  1MiB    0.3MiB      0    20000      6  2KiB/s

reason  highest badness: 20000 pages (oom_score 6)
victim  b
"
        );
        // No candidates, no victim.
        let mut none = decision();
        if let Event::OomDecision(d) = &mut none.event {
            d.victim = None;
            d.table = Some(Vec::new());
            d.reason = "no eligible VM".into();
        }
        let text = decision_text(&none, none.decision().unwrap());
        assert!(text.contains("(no candidates)"), "{text}");
        assert!(
            text.ends_with("reason  no eligible VM\nvictim  none\n"),
            "{text}"
        );
    }

    #[test]
    fn event_lines() {
        assert_eq!(
            event_line(&decision()),
            "2023-11-14T22:13:20.000Z  #7  oom_decision victim=b action=\"none (dry run)\" \
             trigger=manual constraint=\"CONSTRAINT_NONE (host)\" totalpages=6291456 \
             candidates=2 decision_us=80 reason=\"highest badness: 20000 pages (oom_score 6)\""
        );
        let at = |seq, event| EventRecord {
            seq,
            time_ms: 0,
            event,
        };
        assert_eq!(
            event_line(&at(
                1,
                Event::VmCreated {
                    vm: "a".into(),
                    pid: Some(42),
                    mem_mib: 128,
                    oom_score_adj: -500,
                    pool: None,
                    numa_nodes: Some("0".into()),
                }
            )),
            "1970-01-01T00:00:00.000Z  #1  vm_created vm=a pid=42 mem=128MiB oom_score_adj=-500 \
             pool=- numa_nodes=0"
        );
        // Every kind has a line of its own, none empty or with a torn
        // quote.
        for (i, event) in crate::daemon_api::events::tests::one_of_each()
            .into_iter()
            .enumerate()
        {
            let record = at(i as u64, event);
            let line = event_line(&record);
            let head = format!("1970-01-01T00:00:00.000Z  #{i}  {} ", record.kind());
            assert!(line.starts_with(&head), "{line}");
            assert_eq!(line.matches('"').count() % 2, 0, "{line}");
        }
        let kill = crate::daemon_api::events::tests::one_of_each()
            .into_iter()
            .find(|e| e.kind() == "oom_kill")
            .unwrap();
        assert_eq!(
            event_line(&at(9, kill)),
            "1970-01-01T00:00:00.000Z  #9  oom_kill vm=web-1 pid=4242 method=sigkill_mrelease \
             fallback_from=vmm_release fallback_reason=\"the VMM did not answer\" freed=78MiB \
             freed_by=mrelease_returned kill_to_freed_us=251000 decision_to_freed_us=251300 \
             kill_to_exit_us=252000"
        );
        // A kind from a newer daemon: its fields as they come.
        assert_eq!(
            raw_event_line(
                &json!({"seq": 1, "time_ms": 0, "kind": "vm_migrated", "vm": "a",
                                   "to": null, "nested": {"x": 1}})
            ),
            "1970-01-01T00:00:00.000Z  #1  vm_migrated vm=a nested=\"{\\\"x\\\":1}\" to=-"
        );
        assert_eq!(raw_event_line(&json!({"odd": true})), "-  #?  ? odd=true");
    }

    #[test]
    fn vsock_option() {
        let c = parse_vsock("cid=3,uds=/tmp/v.sock").unwrap();
        assert_eq!((c.guest_cid, c.uds_path.as_str()), (3, "/tmp/v.sock"));
        let c = parse_vsock("guest_cid=7, uds_path=v").unwrap();
        assert_eq!((c.guest_cid, c.uds_path.as_str()), (7, "v"));
        assert!(parse_vsock("cid=3").unwrap_err().contains("uds="));
        assert!(parse_vsock("uds=v").unwrap_err().contains("cid="));
        assert!(parse_vsock("cid=2,uds=v").unwrap_err().contains("reserved"));
        assert!(parse_vsock("cid=x,uds=v")
            .unwrap_err()
            .starts_with("cid: 'x'"));
        assert!(parse_vsock("port=1")
            .unwrap_err()
            .starts_with("unknown vsock option"));
        let long = format!("cid=3,uds={}", "a".repeat(100));
        assert!(parse_vsock(&long).unwrap_err().contains("too long"));
    }

    #[test]
    fn drive_option() {
        let d = parse_drive("id=rootfs,path=/img/root.ext4,ro=true,root=true").unwrap();
        assert_eq!(
            d,
            crate::api::DriveConfig {
                drive_id: "rootfs".into(),
                path_on_host: "/img/root.ext4".into(),
                is_root_device: true,
                is_read_only: true,
                ..Default::default()
            }
        );
        let d = parse_drive("drive_id=d1, path_on_host=x").unwrap();
        assert!(!d.is_read_only && !d.is_root_device);
        assert!(parse_drive("path=x").unwrap_err().contains("id="));
        assert!(parse_drive("id=a").unwrap_err().contains("path="));
        assert!(parse_drive("id=a b,path=x")
            .unwrap_err()
            .contains("drive_id"));
        assert!(parse_drive("id=a,path=x,ro=yes")
            .unwrap_err()
            .starts_with("ro: 'yes'"));
        assert!(parse_drive("id=a,path=x,cache=none")
            .unwrap_err()
            .starts_with("unknown drive option"));
    }

    #[test]
    fn net_option() {
        let n = parse_net("id=eth0,tap=nettest0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(
            n,
            crate::api::NetworkInterfaceConfig {
                iface_id: "eth0".into(),
                host_dev_name: "nettest0".into(),
                guest_mac: Some("02:00:00:00:00:01".into()),
                ..Default::default()
            }
        );
        let n = parse_net("iface_id=e, host_dev_name=t").unwrap();
        assert_eq!(n.guest_mac, None);
        assert!(parse_net("tap=t").unwrap_err().contains("id="));
        assert!(parse_net("id=e").unwrap_err().contains("tap="));
        assert!(parse_net("id=e,tap=t,mac=02:00")
            .unwrap_err()
            .contains("guest_mac"));
        assert!(parse_net("id=e,tap=t,mac=01:00:00:00:00:01")
            .unwrap_err()
            .contains("multicast"));
        assert!(parse_net("id=e,tap=a/b")
            .unwrap_err()
            .contains("host_dev_name"));
        assert!(parse_net("id=e,tap=t,mtu=9000")
            .unwrap_err()
            .starts_with("unknown net option"));
    }

    #[test]
    fn balloon_option() {
        assert_eq!(
            parse_balloon("amount_mib=64, deflate_on_oom=true").unwrap(),
            BalloonConfig {
                amount_mib: 64,
                deflate_on_oom: true,
                stats_polling_interval_s: 0,
                free_page_reporting: false,
            }
        );
        assert!(parse_balloon("").is_ok());
        assert!(parse_balloon("size=1")
            .unwrap_err()
            .starts_with("unknown balloon option 'size'"));
        assert!(parse_balloon("amount_mib")
            .unwrap_err()
            .contains("not key=value"));
        assert!(parse_balloon("amount_mib=x")
            .unwrap_err()
            .starts_with("amount_mib: 'x'"));
    }

    /// The client end to end: real argument parsing, a real socket, the
    /// fake daemon behind the real server.
    mod end_to_end {
        use std::sync::{Arc, Mutex};
        use std::thread;
        use std::time::{Duration, Instant};

        use clap::Parser;

        use super::*;
        use crate::daemon_api::fake::{FakeDaemon, TempDir};
        use crate::daemon_api::DaemonApiServer;

        #[derive(Parser)]
        enum Top {
            Ctl(CtlArgs),
        }

        struct Daemon {
            fake: Arc<FakeDaemon>,
            server: DaemonApiServer,
            _dir: TempDir,
        }

        fn daemon() -> Daemon {
            let dir = TempDir::new("ctl");
            let fake = Arc::new(FakeDaemon::default());
            let server = DaemonApiServer::start(dir.sock(), fake.clone()).unwrap();
            Daemon {
                fake,
                server,
                _dir: dir,
            }
        }

        fn parse(d: &Daemon, args: &str) -> CtlArgs {
            let sock = d.server.path().display().to_string();
            let argv = ["vmm", "ctl", "--socket", &sock]
                .into_iter()
                .map(String::from)
                .chain(args.split_whitespace().map(String::from));
            match Top::try_parse_from(argv) {
                Ok(Top::Ctl(args)) => args,
                Err(e) => panic!("{args}: {e}"),
            }
        }

        fn ctl(d: &Daemon, args: &str) -> Result<String, CtlError> {
            let mut out = Vec::new();
            execute(&parse(d, args), &mut out)?;
            Ok(String::from_utf8(out).unwrap())
        }

        #[test]
        fn commands_print_tables_and_json() {
            let d = daemon();
            let out = ctl(
                &d,
                "create --mem 128M --id web-1 --oom-score-adj -500 --balloon amount_mib=16,deflate_on_oom=true --pool batch",
            )
            .unwrap();
            assert!(
                out.starts_with("id             web-1\nstate          running\n"),
                "{out}"
            );
            assert!(out.contains("\noom_score_adj  -500\n"), "{out}");
            assert!(
                out.contains("balloon        16 MiB of 16 MiB target"),
                "{out}"
            );
            ctl(
                &d,
                "create --mem 64M --vcpus 2 --kernel vmlinux --cmdline console=ttyS0",
            )
            .unwrap();
            // A relative kernel path went out absolute.
            let created = d.fake.calls()[1].clone();
            let cwd = std::env::current_dir().unwrap();
            assert!(
                created.contains(&format!("kernel: Some(\"{}/vmlinux\")", cwd.display())),
                "{created}"
            );

            let list = ctl(&d, "list").unwrap();
            let lines: Vec<&str> = list.lines().collect();
            assert_eq!(lines.len(), 3, "{list}");
            assert!(lines[0].starts_with("ID      PID  STATE    POOL"), "{list}");
            assert!(
                lines[2].starts_with("web-1  4001  running  batch  128MiB"),
                "{list}"
            );

            let json: Value = serde_json::from_str(&ctl(&d, "--json get web-1").unwrap()).unwrap();
            assert_eq!(
                (json["id"].as_str(), json["pool"].as_str()),
                (Some("web-1"), Some("batch"))
            );
            // --json also after the command.
            let json: Value = serde_json::from_str(&ctl(&d, "list --json").unwrap()).unwrap();
            assert_eq!(json.as_array().unwrap().len(), 2);

            let out = ctl(&d, "set web-1 --oom-score-adj -1000 --balloon-target-mib 8").unwrap();
            assert!(out.contains("\nbadness        -\n"), "{out}");
            assert!(out.contains("16 MiB of 8 MiB target"), "{out}");

            let out = ctl(&d, "oom").unwrap();
            assert!(out.starts_with("action                 kill\n"), "{out}");
            let out = ctl(
                &d,
                "oom set --action notify --dump-vms false --psi-window-us 2000000",
            )
            .unwrap();
            assert!(out.contains("action                 notify\n"), "{out}");
            assert!(out.contains("dump_vms               false\n"), "{out}");
            assert!(out.contains("psi_window_us          2000000\n"), "{out}");

            let out = ctl(&d, "oom trigger --dry-run").unwrap();
            assert!(
                out.starts_with("OOM decision #3 (dry run), trigger manual"),
                "{out}"
            );
            assert!(out.contains("*  vm2"), "{out}");
            assert!(out.ends_with("victim  vm2\n"), "{out}");
            let json: Value =
                serde_json::from_str(&ctl(&d, "oom trigger --json --pool batch").unwrap()).unwrap();
            assert_eq!(
                json["constraint"],
                "CONSTRAINT_BUDGET (pool batch, 512 MiB)"
            );

            let out = ctl(&d, "events --since 1").unwrap();
            let kinds: Vec<&str> = out
                .lines()
                .map(|l| l.split_whitespace().nth(2).unwrap())
                .collect();
            assert_eq!(
                kinds,
                ["vm_created", "oom_decision", "oom_decision"],
                "{out}"
            );
            let out = ctl(&d, "events --json").unwrap();
            assert_eq!(out.lines().count(), 4);
            assert!(out
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok()));

            assert!(ctl(&d, "metrics")
                .unwrap()
                .contains("vmm_vms{state=\"running\"} 2"));
            assert_eq!(ctl(&d, "delete vm2").unwrap(), "deleted vm2\n");
            assert_eq!(ctl(&d, "--json delete web-1").unwrap(), "");
        }

        #[test]
        fn errors_carry_the_fault_message() {
            let d = daemon();
            let err = ctl(&d, "get nope").unwrap_err();
            assert_eq!(err.to_string(), "no VM 'nope' (HTTP 404)");
            let err = ctl(&d, "create --mem 4M").unwrap_err();
            assert_eq!(
                err.to_string(),
                "mem_mib: 4 is below the minimum of 8 (HTTP 400)"
            );
            let err = ctl(&d, "create --mem 1500K").unwrap_err();
            assert!(err.to_string().contains("whole number of MiB"), "{err}");
            let err = ctl(&d, "oom set --psi-some-threshold-us 5000000").unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("psi_some_threshold_us: 5000000 µs is longer"),
                "{err}"
            );
            // Nothing to set is a usage error before any request.
            let sock = d.server.path().display().to_string();
            assert!(Top::try_parse_from(["vmm", "ctl", "--socket", &sock, "set", "a"]).is_err());
            assert!(Top::try_parse_from(["vmm", "ctl", "oom", "set"]).is_err());
            assert!(
                Top::try_parse_from(["vmm", "ctl", "oom", "set", "--action", "explode"]).is_err()
            );

            let gone = CtlArgs {
                socket: Some(d.server.path().with_extension("missing")),
                json: false,
                command: CtlCommand::List,
            };
            let err = execute(&gone, &mut Vec::new()).unwrap_err();
            assert!(err.to_string().starts_with("cannot connect to "), "{err}");
        }

        /// Collects what `events --follow` prints, from another thread.
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);

        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }

        impl Shared {
            fn lines(&self) -> Vec<String> {
                String::from_utf8(self.0.lock().unwrap().clone())
                    .unwrap()
                    .lines()
                    .map(String::from)
                    .collect()
            }

            fn wait_for(&self, n: usize) -> Vec<String> {
                let deadline = Instant::now() + Duration::from_secs(5);
                loop {
                    let lines = self.lines();
                    if lines.len() >= n {
                        return lines;
                    }
                    assert!(Instant::now() < deadline, "got only {lines:?}");
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }

        #[test]
        fn events_follow_prints_each_event_as_it_happens() {
            let d = daemon();
            d.fake.push_event(Event::VmRunning { vm: "a".into() });
            let out = Shared::default();
            let args = parse(&d, "events --follow");
            let mut writer = out.clone();
            let follower = thread::spawn(move || execute(&args, &mut writer));

            assert!(out.wait_for(1)[0].ends_with("#1  vm_running vm=a"));
            d.fake.push_event(Event::VmExited {
                vm: "a".into(),
                how: "exit status 0".into(),
            });
            assert!(out.wait_for(2)[1].ends_with("#2  vm_exited vm=a how=\"exit status 0\""));
            // The daemon ends the stream: the command ends, successfully.
            d.fake.end_streams();
            follower.join().unwrap().unwrap();

            let out = Shared::default();
            let args = parse(&d, "events --follow --since 1 --json");
            let mut writer = out.clone();
            let follower = thread::spawn(move || execute(&args, &mut writer));
            let line: Value = serde_json::from_str(&out.wait_for(1)[0]).unwrap();
            assert_eq!(line["seq"], 2);
            d.fake.end_streams();
            follower.join().unwrap().unwrap();
        }
    }
}
