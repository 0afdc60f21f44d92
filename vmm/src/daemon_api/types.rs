//! Request and response bodies of the daemon's API.
//!
//! Request bodies reject unknown fields and are checked by their
//! `validate` (the router calls it before the backend sees the request);
//! every message starts with the field it is about, like serde's
//! (`mem_mib: 4 is below the minimum of 8`). Response bodies also
//! deserialize, for `vmm ctl` and other Rust clients.

use serde::{Deserialize, Serialize};

use crate::api::{BalloonConfig, DriveConfig, NetworkInterfaceConfig};
use crate::http::ApiError;

/// Smallest guest RAM a VM may have, in MiB.
pub const MIN_MEM_MIB: u32 = 8;
/// Most vCPUs a VM may have (one LAPIC id is the broadcast id 255).
pub const MAX_VCPUS: u8 = 254;
/// Longest kernel command line, in bytes, without its NUL (the boot
/// protocol's `COMMAND_LINE_SIZE` is 2048 with it).
pub const MAX_CMDLINE_BYTES: usize = 2047;
/// Longest VM id or pool name.
pub const MAX_NAME_LEN: usize = 64;
/// Largest `oom_score_adj` magnitude.
pub const OOM_SCORE_ADJ_MAX: i16 = 1000;
/// Longest `no_progress_ms` and `min_kill_interval_ms`: one hour.
pub const MAX_POLICY_MS: u64 = 3_600_000;
/// PSI trigger windows the kernel accepts, in µs (500 ms to 10 s).
pub const PSI_WINDOW_US: std::ops::RangeInclusive<u64> = 500_000..=10_000_000;

fn bad(msg: String) -> ApiError {
    ApiError::BadRequest(msg)
}

/// Checks a VM id or pool name: 1 to 64 characters of `[A-Za-z0-9_.-]`,
/// starting with a letter or digit (so it is a safe file name and never
/// looks like a command-line flag).
pub fn validate_name(field: &str, name: &str) -> Result<(), ApiError> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{field}: {name:?} is not a valid name: use 1 to {MAX_NAME_LEN} characters of \
             [A-Za-z0-9_.-], starting with a letter or digit"
        )))
    }
}

fn validate_adj(field: &str, adj: i16) -> Result<(), ApiError> {
    if (-OOM_SCORE_ADJ_MAX..=OOM_SCORE_ADJ_MAX).contains(&adj) {
        Ok(())
    } else {
        Err(bad(format!(
            "{field}: {adj} is out of range: -1000 (never chosen) to 1000 (always chosen first)"
        )))
    }
}

fn validate_path(field: &str, path: &str) -> Result<(), ApiError> {
    if path.contains('\0') {
        Err(bad(format!("{field}: the path holds a NUL character")))
    } else if !path.starts_with('/') {
        Err(bad(format!(
            "{field}: {path:?} is not an absolute path (the daemon does not share your working directory)"
        )))
    } else {
        Ok(())
    }
}

fn one() -> u8 {
    1
}

/// Body of `POST /vms`: a VM to create and boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSpec {
    /// The VM's id; the daemon makes one up when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Absolute path of the kernel (PVH ELF or bzImage); absent: the
    /// embedded tiny guest.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Absolute path of an initrd.
    #[serde(default)]
    pub initrd: Option<String>,
    /// Kernel command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Guest RAM in MiB (at least [`MIN_MEM_MIB`]).
    pub mem_mib: u32,
    /// Number of vCPUs, 1 to [`MAX_VCPUS`].
    #[serde(default = "one")]
    pub vcpus: u8,
    /// A virtio-balloon device, as in the per-VM `PUT /balloon`.
    #[serde(default)]
    pub balloon: Option<BalloonConfig>,
    /// The VM's `oom_score_adj`, -1000 to 1000: added to its badness in
    /// thousandths of the OOM domain; -1000 is never chosen.
    #[serde(default)]
    pub oom_score_adj: i16,
    /// The pool the VM belongs to (pools have budgets and cgroups).
    #[serde(default)]
    pub pool: Option<String>,
    /// NUMA nodes guest RAM is bound to (`MPOL_BIND`), a node list like
    /// `0` or `0-1,3`; absent: unbound. Bound VMs are the candidates of a
    /// decision under those nodes (`CONSTRAINT_MEMORY_POLICY`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numa_nodes: Option<String>,
    /// The guest runs our guest agent: the VM gets a virtio-vsock device
    /// (guest CID 3) and the daemon listens for the agent on vsock port
    /// 1025, so in-guest OOM kills join the daemon's timeline.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent: bool,
    /// virtio-blk drives, as the per-VM `PUT /drives/{drive_id}` takes
    /// them (`vmm run --drive`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<DriveConfig>,
    /// virtio-net interfaces over TAPs in the daemon's network namespace,
    /// as `vmm run --net` takes them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
}

impl VmSpec {
    /// A spec with `mem_mib` and every default.
    pub fn with_mem(mem_mib: u32) -> Self {
        VmSpec {
            id: None,
            kernel: None,
            initrd: None,
            cmdline: None,
            mem_mib,
            vcpus: 1,
            balloon: None,
            oom_score_adj: 0,
            pool: None,
            numa_nodes: None,
            agent: false,
            drives: Vec::new(),
            network_interfaces: Vec::new(),
        }
    }

    /// Checks every field; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(id) = &self.id {
            validate_name("id", id)?;
        }
        if let Some(pool) = &self.pool {
            validate_name("pool", pool)?;
        }
        if let Some(nodes) = &self.numa_nodes {
            validate_nodes("numa_nodes", nodes)?;
        }
        if let Some(kernel) = &self.kernel {
            validate_path("kernel", kernel)?;
        }
        if let Some(initrd) = &self.initrd {
            validate_path("initrd", initrd)?;
        }
        if let Some(cmdline) = &self.cmdline {
            if cmdline.contains('\0') {
                return Err(bad("cmdline: holds a NUL character".into()));
            }
            if cmdline.len() > MAX_CMDLINE_BYTES {
                return Err(bad(format!(
                    "cmdline: {} bytes is longer than the limit of {MAX_CMDLINE_BYTES}",
                    cmdline.len()
                )));
            }
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(bad(format!(
                "mem_mib: {} is below the minimum of {MIN_MEM_MIB}",
                self.mem_mib
            )));
        }
        if !(1..=MAX_VCPUS).contains(&self.vcpus) {
            return Err(bad(format!(
                "vcpus: {} is out of range: 1 to {MAX_VCPUS}",
                self.vcpus
            )));
        }
        if let Some(balloon) = &self.balloon {
            if balloon.amount_mib > self.mem_mib {
                return Err(bad(format!(
                    "balloon.amount_mib: {} is larger than mem_mib ({})",
                    balloon.amount_mib, self.mem_mib
                )));
            }
        }
        for (i, d) in self.drives.iter().enumerate() {
            validate_drive(&format!("drives[{i}]"), d)?;
        }
        if self.drives.iter().filter(|d| d.is_root_device).count() > 1 {
            return Err(bad("drives: more than one is the root device".into()));
        }
        for (i, n) in self.network_interfaces.iter().enumerate() {
            let field = format!("network_interfaces[{i}]");
            if [&n.iface_id, &n.host_dev_name]
                .iter()
                .any(|v| v.contains(','))
            {
                return Err(bad(format!("{field}: names cannot hold ','")));
            }
            n.check_supported()
                .map_err(|e| bad(format!("{field}: {e}")))?;
            net::NetConfig::try_from(n.clone())
                .and_then(|c| c.validate())
                .map_err(|e| bad(format!("{field}: {e}")))?;
        }
        validate_adj("oom_score_adj", self.oom_score_adj)
    }
}

/// A drive the VMM will take: Firecracker's fields it supports, a valid
/// id, and an absolute path without `,` (it travels in `--drive`).
fn validate_drive(field: &str, d: &DriveConfig) -> Result<(), ApiError> {
    d.check_supported()
        .map_err(|e| bad(format!("{field}: {e}")))?;
    validate_path(&format!("{field}.path_on_host"), &d.path_on_host)?;
    if d.path_on_host.contains(',') || d.drive_id.contains(',') {
        return Err(bad(format!(
            "{field}: drive_id and path_on_host cannot hold ','"
        )));
    }
    block::BlockConfig::from(d.clone())
        .validate()
        .map_err(|e| bad(format!("{field}: {e}")))
}

/// Where a VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// Its VMM process started; its API is not up yet.
    Starting,
    /// Running.
    Running,
    /// Stopped (SIGSTOP) by the OOM action `pause` or an operator: its
    /// memory stays, nothing in it runs or grows. Not a candidate again
    /// until resumed.
    Paused,
    /// Chosen by the OOM killer; its memory is being released.
    Reaping,
    /// Killed by the OOM killer and reaped.
    Killed,
    /// Ended on its own (the guest shut down or crashed) and reaped.
    Exited,
}

impl VmState {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::Reaping => "reaping",
            VmState::Killed => "killed",
            VmState::Exited => "exited",
        }
    }
}

/// A VM's balloon, in MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonView {
    /// What the balloon should hold.
    pub target_mib: u32,
    /// What the guest has given it.
    pub actual_mib: u32,
}

/// A VM as `GET /vms` and `GET /vms/{id}` show it: what it is, what it
/// costs the host, and how the OOM killer sees it. Fields that do not
/// apply are `null` (never left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmView {
    /// Its id.
    pub id: String,
    /// Its VMM process, while there is one.
    pub pid: Option<u32>,
    /// Where it is in its life.
    pub state: VmState,
    /// Its pool.
    pub pool: Option<String>,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// Its `oom_score_adj`, as the daemon's decisions use it.
    pub oom_score_adj: i16,
    /// What the host kernel's own OOM killer uses for the VMM process
    /// (`/proc/<pid>/oom_score_adj`), when it differs from
    /// `oom_score_adj`: lowering it below 0 needs `CAP_SYS_RESOURCE`,
    /// which a daemon without it does not have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_oom_score_adj: Option<i16>,
    /// Resident bytes of the VMM process (guest RAM included).
    pub rss_bytes: u64,
    /// Swapped-out bytes of the VMM process.
    pub swap_bytes: u64,
    /// Page-table bytes of the VMM process.
    pub page_tables_bytes: u64,
    /// Bytes of guest RAM resident in host memory.
    pub guest_ram_resident_bytes: u64,
    /// The balloon, if the VM has one.
    pub balloon: Option<BalloonView>,
    /// `oom_badness` in pages against the host (or its pool's) domain;
    /// `null` when it can never be chosen (-1000, being reaped, gone).
    pub badness: Option<i64>,
    /// Badness as the 0..=2000 figure of `/proc/<pid>/oom_score`.
    pub oom_score: Option<u32>,
    /// How it ended, once it has (e.g. "exit status 0", "killed by the
    /// OOM killer").
    pub exit: Option<String>,
    /// When it was created, in Unix milliseconds.
    pub created_at_ms: u64,
    /// Its guest agent, for a VM created with `"agent": true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentView>,
}

/// A VM's guest agent as the daemon hears it (`GET /vms/{id}`), for a VM
/// created with `"agent": true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// An agent connection is open now.
    pub connected: bool,
    /// The agent's version, the guest kernel and its boot, from the
    /// agent's last hello.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// When the last summary (the heartbeat) and the last message of any
    /// kind arrived, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message_ms: Option<u64>,
    /// The guest's memory at the last heartbeat, KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_total_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_available_kb: Option<u64>,
    /// The guest's memory PSI avg10, hundredths of a percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_some_avg10: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_full_avg10: Option<u32>,
    /// In-guest OOM kills reported (logged ones, plus those the kernel
    /// counted but whose log lines were lost).
    pub oom_kills: u64,
    /// Of those, the kills for want of memory (not a memory cgroup's
    /// limit inside the guest): the ones a balloon may have caused.
    #[serde(default)]
    pub starved_oom_kills: u64,
    /// Kernel log records the agent lost, and messages its queue dropped.
    pub kmsg_lost: u64,
    pub dropped: u64,
    /// Resent messages already held, lines refused, other messages.
    pub duplicates: u64,
    pub protocol_errors: u64,
    pub other_messages: u64,
}

/// Body of `PATCH /vms/{id}`: at least one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmPatch {
    /// A new `oom_score_adj`, -1000 to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i16>,
    /// A new balloon target in MiB (the VM needs a balloon).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon_target_mib: Option<u32>,
    /// `paused` stops the VM, `running` resumes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
}

/// What `PATCH /vms/{id}` may set a VM's state to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    Running,
    Paused,
}

impl VmPatch {
    /// Checks every field, and that there is one.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.oom_score_adj.is_none() && self.balloon_target_mib.is_none() && self.state.is_none()
        {
            return Err(bad(
                "nothing to change: give oom_score_adj, balloon_target_mib and/or state".into(),
            ));
        }
        if let Some(adj) = self.oom_score_adj {
            validate_adj("oom_score_adj", adj)?;
        }
        Ok(())
    }
}

/// What the daemon does with the VM it chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OomAction {
    /// Kill it and reap its memory.
    Kill,
    /// Stop its vCPUs: nothing is freed, but nothing grows.
    Pause,
    /// Only record the decision.
    Notify,
}

impl OomAction {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            OomAction::Kill => "kill",
            OomAction::Pause => "pause",
            OomAction::Notify => "notify",
        }
    }
}

/// The OOM policy's knobs (mirrors of the kernel's `vm.*` sysctls where
/// there is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomPolicy {
    /// The on-OOM action.
    pub action: OomAction,
    /// Choose the VM whose memory grows fastest instead of the one with
    /// the highest badness (`vm.oom_kill_allocating_task`).
    pub kill_fastest_grower: bool,
    /// Put the table of VMs and their scores into each decision event
    /// (`vm.oom_dump_tasks`).
    pub dump_vms: bool,
    /// Inflate balloons of VMs with free memory before killing.
    pub reclaim_first: bool,
    /// How long reclaim must make no progress before a kill, in ms.
    pub no_progress_ms: u64,
    /// Least time between two kills, in ms.
    pub min_kill_interval_ms: u64,
    /// PSI trigger: stall time ("some") within the window that wakes the
    /// daemon, in µs.
    pub psi_some_threshold_us: u64,
    /// PSI trigger window, in µs (500 ms to 10 s).
    pub psi_window_us: u64,
    /// Host-wide pressure, in thousandths of the host's memory: the host
    /// is short when `MemAvailable` is below this share of `MemTotal` and,
    /// if it has swap, `SwapFree` below this share of `SwapTotal`
    /// (earlyoom's rule). Then balloons are inflated across all VMs and,
    /// without progress, the decision runs under `CONSTRAINT_NONE`. 0
    /// turns host-wide action off (the kernel's OOM killer is then the
    /// host's only defence).
    pub host_min_available_permille: u16,
}

impl Default for OomPolicy {
    /// The policy the daemon starts with: kill, with the VM table in
    /// every decision, balloons first; PSI wakes it at 150 ms of stall
    /// per second (lmkd's "some" threshold).
    fn default() -> Self {
        OomPolicy {
            action: OomAction::Kill,
            kill_fastest_grower: false,
            dump_vms: true,
            reclaim_first: true,
            no_progress_ms: 2000,
            min_kill_interval_ms: 1000,
            psi_some_threshold_us: 150_000,
            psi_window_us: 1_000_000,
            // earlyoom's SIGKILL line.
            host_min_available_permille: 50,
        }
    }
}

impl OomPolicy {
    /// This policy with `patch` applied, if the result is consistent (the
    /// PSI threshold at most the window). `patch` should have passed
    /// [`OomPatch::validate`].
    pub fn apply(&self, patch: &OomPatch) -> Result<OomPolicy, ApiError> {
        patch.validate()?;
        let next = OomPolicy {
            action: patch.action.unwrap_or(self.action),
            kill_fastest_grower: patch
                .kill_fastest_grower
                .unwrap_or(self.kill_fastest_grower),
            dump_vms: patch.dump_vms.unwrap_or(self.dump_vms),
            reclaim_first: patch.reclaim_first.unwrap_or(self.reclaim_first),
            no_progress_ms: patch.no_progress_ms.unwrap_or(self.no_progress_ms),
            min_kill_interval_ms: patch
                .min_kill_interval_ms
                .unwrap_or(self.min_kill_interval_ms),
            psi_some_threshold_us: patch
                .psi_some_threshold_us
                .unwrap_or(self.psi_some_threshold_us),
            psi_window_us: patch.psi_window_us.unwrap_or(self.psi_window_us),
            host_min_available_permille: patch
                .host_min_available_permille
                .unwrap_or(self.host_min_available_permille),
        };
        if next.psi_some_threshold_us > next.psi_window_us {
            return Err(bad(format!(
                "psi_some_threshold_us: {} µs is longer than the window of {} µs",
                next.psi_some_threshold_us, next.psi_window_us
            )));
        }
        Ok(next)
    }
}

/// A pool of VMs and the memory it may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    /// Its name.
    pub name: String,
    /// What bounds it: `memcg` (a cgroup limit), `budget` (a byte budget
    /// the daemon enforces), `nodes` (NUMA nodes), `host` (nothing but the
    /// host).
    pub constraint: ConstraintKind,
    /// Its limit or budget in bytes, if it has one.
    pub limit_bytes: Option<u64>,
    /// What its VMs use now, in bytes.
    pub usage_bytes: u64,
    /// Its live VMs.
    pub vms: u32,
}

/// The kinds of OOM domain (the kernel's `enum oom_constraint`, plus
/// budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConstraintKind {
    /// The whole host (`CONSTRAINT_NONE`).
    Host,
    /// A memory cgroup (`CONSTRAINT_MEMCG`).
    Memcg,
    /// A NUMA node set (`CONSTRAINT_MEMORY_POLICY`).
    Nodes,
    /// A pool's byte budget.
    Budget,
}

impl ConstraintKind {
    /// The name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ConstraintKind::Host => "host",
            ConstraintKind::Memcg => "memcg",
            ConstraintKind::Nodes => "nodes",
            ConstraintKind::Budget => "budget",
        }
    }
}

/// Memory pressure now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PressureView {
    /// `MemAvailable` of `/proc/meminfo`, in bytes.
    pub mem_available_bytes: u64,
    /// `MemTotal`, in bytes.
    pub mem_total_bytes: u64,
    /// `SwapFree`, in bytes.
    pub swap_free_bytes: u64,
    /// `/proc/pressure/memory` "some" avg10, in percent.
    pub psi_some_avg10: f64,
    /// `/proc/pressure/memory` "full" avg10, in percent.
    pub psi_full_avg10: f64,
    /// The pools.
    pub pools: Vec<PoolView>,
}

/// Body of `GET /oom` and `PATCH /oom`: the knobs and the pressure now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OomView {
    /// The knobs, at the top level of the object.
    #[serde(flatten)]
    pub policy: OomPolicy,
    /// Memory pressure now.
    pub pressure: PressureView,
    /// Whether every event reached `events.ndjson` (absent from daemons
    /// before it was reported).
    #[serde(default)]
    pub event_log: super::events::EventLogView,
    /// Domains under pressure whose decisions find no victim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stuck: Vec<StuckDomain>,
}

/// A domain under pressure whose decisions keep finding no victim (every
/// VM `-1000`, or being reaped): the kernel would loop on such an OOM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckDomain {
    #[serde(flatten)]
    pub domain: super::events::DomainName,
    /// The selection's reason.
    pub reason: String,
    /// Since the first decision that found no victim.
    pub stuck_ms: u64,
    /// Decisions made since then, the first included.
    pub decisions: u64,
}

/// Body of `PATCH /oom`: any knobs to change, at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OomPatch {
    /// See [`OomPolicy::action`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<OomAction>,
    /// See [`OomPolicy::kill_fastest_grower`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_fastest_grower: Option<bool>,
    /// See [`OomPolicy::dump_vms`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_vms: Option<bool>,
    /// See [`OomPolicy::reclaim_first`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim_first: Option<bool>,
    /// See [`OomPolicy::no_progress_ms`]; at most one hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_progress_ms: Option<u64>,
    /// See [`OomPolicy::min_kill_interval_ms`]; at most one hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kill_interval_ms: Option<u64>,
    /// See [`OomPolicy::psi_some_threshold_us`]; above 0, at most the
    /// window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_some_threshold_us: Option<u64>,
    /// See [`OomPolicy::psi_window_us`]; 500 000 to 10 000 000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_window_us: Option<u64>,
    /// See [`OomPolicy::host_min_available_permille`]; 0 to 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_min_available_permille: Option<u16>,
}

impl OomPatch {
    /// Checks each field on its own, and that there is one;
    /// [`OomPolicy::apply`] checks them together.
    pub fn validate(&self) -> Result<(), ApiError> {
        if *self == OomPatch::default() {
            return Err(bad("nothing to change: give at least one knob (action, kill_fastest_grower, dump_vms, reclaim_first, no_progress_ms, min_kill_interval_ms, psi_some_threshold_us, psi_window_us, host_min_available_permille)".into()));
        }
        for (field, value) in [
            ("no_progress_ms", self.no_progress_ms),
            ("min_kill_interval_ms", self.min_kill_interval_ms),
        ] {
            if let Some(ms) = value.filter(|ms| *ms > MAX_POLICY_MS) {
                return Err(bad(format!(
                    "{field}: {ms} is longer than the limit of {MAX_POLICY_MS} (one hour)"
                )));
            }
        }
        if let Some(permille) = self.host_min_available_permille.filter(|p| *p > 1000) {
            return Err(bad(format!(
                "host_min_available_permille: {permille} is out of range: 0 (off) to 1000"
            )));
        }
        if let Some(window) = self.psi_window_us {
            if !PSI_WINDOW_US.contains(&window) {
                return Err(bad(format!(
                    "psi_window_us: {window} is out of range: the kernel takes windows of \
                     500000 to 10000000 µs"
                )));
            }
        }
        if let Some(threshold) = self.psi_some_threshold_us {
            if threshold == 0 || threshold > *PSI_WINDOW_US.end() {
                return Err(bad(format!(
                    "psi_some_threshold_us: {threshold} is out of range: above 0 and at most \
                     the window"
                )));
            }
        }
        Ok(())
    }
}

/// Body of `POST /oom/trigger` (optional: no body is `{}`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OomTrigger {
    /// Decide and record, but do not act.
    #[serde(default)]
    pub dry_run: bool,
    /// Decide within this pool only (its constraint); absent: the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Decide among the VMs bound to these NUMA nodes (or unbound), sized
    /// by the nodes' present pages (`CONSTRAINT_MEMORY_POLICY`); not with
    /// `pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
}

impl OomTrigger {
    /// Checks the pool name and the node list, and that not both are given.
    pub fn validate(&self) -> Result<(), ApiError> {
        if let Some(pool) = &self.pool {
            validate_name("pool", pool)?;
        }
        if let Some(nodes) = &self.nodes {
            validate_nodes("nodes", nodes)?;
        }
        if self.pool.is_some() && self.nodes.is_some() {
            return Err(bad(
                "give pool or nodes, not both: a decision has one OOM domain".into(),
            ));
        }
        Ok(())
    }
}

/// Checks a NUMA node list (`0-3,5`); whether the nodes exist is for the
/// host to say.
fn validate_nodes(field: &str, nodes: &str) -> Result<(), ApiError> {
    match nodes.parse::<crate::host::numa::NodeSet>() {
        Ok(set) if set.is_empty() => Err(bad(format!("{field}: no node given"))),
        Ok(_) => Ok(()),
        Err(e) => Err(bad(format!("{field}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: Result<(), ApiError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn spec_defaults_and_limits() {
        let spec: VmSpec = serde_json::from_str(r#"{"mem_mib": 64}"#).unwrap();
        assert_eq!(spec, VmSpec::with_mem(64));
        assert!(spec.validate().is_ok());

        let with = |f: &dyn Fn(&mut VmSpec)| {
            let mut s = VmSpec::with_mem(64);
            f(&mut s);
            s.validate()
        };
        assert_eq!(
            msg(with(&|s| s.mem_mib = 4)),
            "mem_mib: 4 is below the minimum of 8"
        );
        assert_eq!(
            msg(with(&|s| s.vcpus = 0)),
            "vcpus: 0 is out of range: 1 to 254"
        );
        assert!(with(&|s| s.vcpus = 254).is_ok());
        assert!(msg(with(&|s| s.vcpus = 255)).starts_with("vcpus: 255"));
        assert!(msg(with(&|s| s.oom_score_adj = -1001)).starts_with("oom_score_adj: -1001"));
        assert!(with(&|s| s.oom_score_adj = -1000).is_ok());
        assert!(msg(with(&|s| s.id = Some("..".into()))).starts_with("id: \"..\" is not"));
        assert!(msg(with(&|s| s.id = Some("-rf".into()))).starts_with("id: "));
        assert!(msg(with(&|s| s.id = Some("a/b".into()))).starts_with("id: "));
        assert!(msg(with(&|s| s.id = Some("x".repeat(65)))).starts_with("id: "));
        assert!(with(&|s| s.id = Some(format!("A9_.-{}", "x".repeat(59)))).is_ok());
        assert!(msg(with(&|s| s.pool = Some(String::new()))).starts_with("pool: "));
        assert!(msg(with(&|s| s.kernel = Some("vmlinux".into()))).contains("absolute path"));
        assert!(msg(with(&|s| s.initrd = Some("/a\0b".into()))).contains("NUL"));
        assert!(msg(with(&|s| s.cmdline = Some("x".repeat(2048)))).starts_with("cmdline: 2048"));
        assert!(msg(with(&|s| {
            s.balloon = Some(BalloonConfig {
                amount_mib: 65,
                deflate_on_oom: false,
                stats_polling_interval_s: 0,
                free_page_reporting: false,
            })
        }))
        .starts_with("balloon.amount_mib: 65 is larger than mem_mib (64)"));
    }

    #[test]
    fn patches_need_a_field_and_ranges() {
        assert!(msg(VmPatch::default().validate()).starts_with("nothing to change"));
        let p = VmPatch {
            oom_score_adj: Some(1001),
            ..VmPatch::default()
        };
        assert!(msg(p.validate()).starts_with("oom_score_adj: 1001"));
        assert!(msg(OomPatch::default().validate()).starts_with("nothing to change"));
        let p = OomPatch {
            psi_window_us: Some(100),
            ..OomPatch::default()
        };
        assert!(msg(p.validate()).starts_with("psi_window_us: 100 is out of range"));
        let p = OomPatch {
            no_progress_ms: Some(MAX_POLICY_MS + 1),
            ..OomPatch::default()
        };
        assert!(msg(p.validate()).starts_with("no_progress_ms: "));
        let p = OomPatch {
            psi_some_threshold_us: Some(0),
            ..OomPatch::default()
        };
        assert!(msg(p.validate()).starts_with("psi_some_threshold_us: 0"));
        let p = OomPatch {
            host_min_available_permille: Some(1001),
            ..OomPatch::default()
        };
        assert!(msg(p.validate()).starts_with("host_min_available_permille: 1001 is out of range"));
    }

    #[test]
    fn policy_apply_checks_threshold_against_window() {
        let policy = OomPolicy::default();
        let next = policy
            .apply(&OomPatch {
                action: Some(OomAction::Notify),
                psi_window_us: Some(2_000_000),
                ..OomPatch::default()
            })
            .unwrap();
        assert_eq!(next.action, OomAction::Notify);
        assert_eq!(next.psi_window_us, 2_000_000);
        assert_eq!(next.psi_some_threshold_us, 150_000);
        let err = policy
            .apply(&OomPatch {
                psi_some_threshold_us: Some(1_500_000),
                ..OomPatch::default()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "psi_some_threshold_us: 1500000 µs is longer than the window of 1000000 µs"
        );
    }

    #[test]
    fn views_round_trip_with_nulls_and_flattened_knobs() {
        let view = OomView {
            policy: OomPolicy {
                action: OomAction::Pause,
                kill_fastest_grower: true,
                dump_vms: false,
                reclaim_first: true,
                no_progress_ms: 1,
                min_kill_interval_ms: 2,
                psi_some_threshold_us: 3,
                psi_window_us: 500_000,
                host_min_available_permille: 4,
            },
            pressure: PressureView {
                mem_available_bytes: 1,
                mem_total_bytes: 2,
                swap_free_bytes: 0,
                psi_some_avg10: 1.5,
                psi_full_avg10: 0.0,
                pools: vec![PoolView {
                    name: "p".into(),
                    constraint: ConstraintKind::Budget,
                    limit_bytes: None,
                    usage_bytes: 5,
                    vms: 1,
                }],
            },
            event_log: super::super::events::EventLogView {
                write_failures: 3,
                unwritten: 2,
                lost: 0,
                last_error: Some("No space left on device (os error 28)".into()),
            },
            stuck: vec![StuckDomain {
                domain: super::super::events::DomainName {
                    pool: Some("p".into()),
                    nodes: None,
                },
                reason: "every eligible VM has oom_score_adj -1000".into(),
                stuck_ms: 61_000,
                decisions: 30,
            }],
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["stuck"][0]["pool"], "p");
        assert_eq!(json["stuck"][0]["decisions"], 30);
        assert_eq!(json["action"], "pause");
        assert_eq!(json["pressure"]["pools"][0]["constraint"], "budget");
        assert!(json["pressure"]["pools"][0]["limit_bytes"].is_null());
        assert_eq!(json["event_log"]["unwritten"], 2);
        assert_eq!(serde_json::from_value::<OomView>(json).unwrap(), view);
    }
}
