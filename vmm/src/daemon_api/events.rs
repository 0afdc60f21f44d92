//! The daemon's events, typed: what `GET /events` answers, what
//! `events.ndjson` holds one a line, what `vmm ctl events` prints.
//!
//! An event on the wire is one JSON object: the [`EventRecord`]'s `seq`
//! (monotonically increasing, also across daemon restarts on the same
//! state directory) and `time_ms` (Unix milliseconds), and the fields of
//! its [`Event`], whose `kind` names the variant in snake case:
//!
//! ```json
//! {"seq": 3, "time_ms": 1700000000000, "kind": "vm_running", "vm": "web-1"}
//! ```
//!
//! Readers should expect kinds they do not know (a newer daemon): parse
//! with [`EventRecord::from_value`], which hands back the JSON of an event
//! it cannot read instead of failing the whole stream. Fields a newer
//! daemon adds to a known kind are ignored.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::types::{ConstraintKind, OomPolicy, VmState};
use crate::oom::select::CandidateRow;

/// One event as recorded: its number, its time, what happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Monotonically increasing, from 1; a restarted daemon goes on after
    /// the highest `seq` in its `events.ndjson`.
    pub seq: u64,
    /// When, in Unix milliseconds.
    pub time_ms: u64,
    /// What happened: `kind` and its fields, at the top level.
    #[serde(flatten)]
    pub event: Event,
}

impl EventRecord {
    /// Reads one event leniently: the typed record, or the JSON back when
    /// it is not an event of a kind (or shape) this build knows.
    pub fn from_value(value: Value) -> Result<EventRecord, Value> {
        // A clone only for the unusual case would need the error to give
        // the value back; serde cannot, so keep one.
        match EventRecord::deserialize(&value) {
            Ok(record) => Ok(record),
            Err(_) => Err(value),
        }
    }

    /// The decision, if this is an `oom_decision` event.
    pub fn decision(&self) -> Option<&OomDecision> {
        match &self.event {
            Event::OomDecision(d) => Some(d),
            _ => None,
        }
    }

    /// The `kind` of the event.
    pub fn kind(&self) -> &'static str {
        self.event.kind()
    }
}

/// What happened. `kind` on the wire is the variant's name in snake case.
///
/// Adding a variant is a compatible change (readers keep unknown kinds as
/// raw JSON); renaming or removing a field of a variant is not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    // ---- the daemon ----
    /// The daemon serves its API.
    DaemonStarted {
        socket: PathBuf,
        state_dir: PathBuf,
        /// The policy it starts with.
        policy: OomPolicy,
    },
    /// A stop signal arrived: the daemon stops its VMs and ends.
    DaemonStopping {
        /// The signal number (15: SIGTERM, 2: SIGINT).
        signal: u8,
    },
    /// The policy changed (`PATCH /oom`): all of it, as it is now.
    OomPolicy { policy: OomPolicy },
    /// A PSI trigger is armed on a `memory.pressure` file.
    PsiTrigger {
        /// The cgroup v2 pool whose file it is; `null`: the host's.
        pool: Option<String>,
        file: PathBuf,
        /// The trigger as written, e.g. `some 150000 1000000`.
        trigger: String,
    },
    /// No PSI trigger on this file: the 100 ms tick alone wakes the
    /// daemon.
    PsiUnavailable {
        pool: Option<String>,
        file: PathBuf,
        error: String,
    },
    /// A PSI trigger fired: memory stalls (at most one a second).
    PsiPressure {
        pool: Option<String>,
        /// `some` avg10 of the file, percent; `null` if unreadable.
        some_avg10: Option<f64>,
        /// `full` avg10, percent; `null` if unreadable or absent.
        full_avg10: Option<f64>,
        trigger: String,
    },
    /// Writing `events.ndjson` failed (a failure streak begins): events
    /// are kept in memory and written, in order, once writing works again.
    EventLogWriteFailed { file: PathBuf, error: String },
    /// Writing `events.ndjson` works again; the streak's events are in it.
    EventLogRecovered {
        file: PathBuf,
        /// Events written late, in order, now.
        written_late: u64,
        /// Events of the streak dropped because the memory kept for
        /// unwritten events was full (oldest first): missing from the file.
        lost: u64,
    },

    // ---- VMs ----
    /// A VM's VMM process was started.
    VmCreated {
        vm: String,
        pid: Option<u32>,
        mem_mib: u32,
        oom_score_adj: i16,
        pool: Option<String>,
        numa_nodes: Option<String>,
    },
    /// Its VMM's API is up.
    VmRunning { vm: String },
    /// It ended on its own (not an OOM kill).
    VmExited {
        vm: String,
        /// e.g. `exited with status 0`, `killed by signal 9`.
        how: String,
    },
    /// Its VMM ended, or never said its VM ran, before `POST /vms` could
    /// answer: the create was refused and the VM is not listed.
    VmStartFailed {
        vm: String,
        /// What the VMM did, e.g. `exited with status 250`.
        how: String,
        /// The VMM's own `vmm:` lines from its log, joined.
        log: String,
    },
    /// A restarted daemon took back a VM its predecessor on the same state
    /// directory started (the same VMM process: pid, start time, exe).
    VmAdopted {
        vm: String,
        pid: Option<u32>,
        state: VmState,
        pool: Option<String>,
    },
    /// The VM's record (`vms/<id>/vm.json`) could not be written: it runs
    /// on, but a restarted daemon could not take it back.
    VmRecordWriteFailed { vm: String, error: String },
    /// A VM record found at start could not be read; the VM (if any) is
    /// not adopted.
    VmRecordUnreadable { dir: PathBuf, error: String },
    /// The host kernel holds another `oom_score_adj` for the VM's VMM than
    /// the operator gave (lowering it needs `CAP_SYS_RESOURCE`): in a host
    /// OOM the kernel ranks it by that one.
    OomScoreAdjNotMirrored {
        vm: String,
        oom_score_adj: i16,
        kernel_oom_score_adj: i16,
        why: String,
    },
    /// Stopped and forgotten (`DELETE /vms/{id}`, or the daemon stopping).
    VmDeleted { vm: String },

    // ---- the guest's side, from its agent ----
    /// The VM's guest agent connected (its hello). `resumed_at`: the
    /// highest message of this agent stream the daemon already held (a
    /// reconnect); absent for a new stream (a new boot or agent).
    GuestAgentConnected {
        vm: String,
        agent: String,
        kernel: String,
        boot_id: String,
        resumed_at: Option<u64>,
    },
    /// The agent's connection ended (the guest, its VMM or the daemon
    /// went away); the agent reconnects and resends what was not
    /// acknowledged.
    GuestAgentDisconnected { vm: String, why: String },
    /// The agent sent what the protocol refuses (once per connection).
    GuestAgentProtocolError { vm: String, error: String },
    /// The guest kernel's OOM killer killed a process inside the VM: the
    /// agent's report, merged from the kernel's lines about the kill.
    GuestOomKill {
        vm: String,
        /// The agent's sequence number of the report.
        agent_seq: u64,
        #[serde(flatten)]
        kill: Box<guest_agent::protocol::OomKill>,
    },
    /// The guest's OOM reaper reported on a victim.
    GuestOomReaped {
        vm: String,
        agent_seq: u64,
        #[serde(flatten)]
        reaped: guest_agent::protocol::OomReaped,
    },
    /// The guest kernel counted OOM kills whose log lines were lost.
    GuestKillsUnlogged {
        vm: String,
        agent_seq: u64,
        #[serde(flatten)]
        unlogged: guest_agent::protocol::KillsUnlogged,
    },
    /// The guest's kernel OOM-killed for want of memory while its balloon
    /// held pages: the balloon gave part of them back, and the guest is
    /// not asked to inflate again for a while.
    BalloonGivenBack {
        vm: String,
        from_mib: u32,
        to_mib: u32,
        /// Starved kills reported since the last look.
        guest_kills: u64,
    },
    /// The guest's memory PSI trigger fired.
    GuestPressure {
        vm: String,
        agent_seq: u64,
        #[serde(flatten)]
        pressure: guest_agent::protocol::Pressure,
    },
    /// Its `oom_score_adj` changed.
    VmOomScoreAdj { vm: String, oom_score_adj: i16 },
    /// Stopped with SIGSTOP.
    VmPaused { vm: String, by: Actor },
    /// Continued with SIGCONT.
    VmResumed { vm: String, by: Actor },
    /// An operator set its balloon target.
    BalloonTarget {
        vm: String,
        target_mib: u32,
        by: Actor,
    },

    // ---- the policy ----
    /// Balloons asked to inflate, for a domain under pressure.
    Reclaim(Reclaim),
    /// A balloon asked to inflate does not follow: no asks for a while.
    BalloonStalled(BalloonStalled),
    /// A balloon reclaim could not count on, and why (once per VM and
    /// reason in an episode of pressure).
    BalloonSkipped(BalloonSkipped),
    /// A domain calm for long enough: its balloons let go, half at a time.
    ReclaimReleased(ReclaimReleased),
    /// Why a decision runs now: the domain's figures and how long the
    /// pressure lasted.
    OomPressure(OomPressure),
    /// An OOM decision: the domain, the scored VMs, the victim.
    OomDecision(OomDecision),
    /// A domain's decisions keep finding no victim: the repeats since the
    /// first one (reported in full) or the last count.
    OomDecisionsRepeated(OomDecisionsRepeated),
    /// The victim of a decision under the `pause` action could not be
    /// paused.
    OomPauseFailed { vm: String, error: String },
    /// The victim killed and its memory reaped, with the latencies.
    OomKill(OomKill),

    // ---- memory-cgroup pools ----
    /// A pool's cgroup was made with its limit.
    MemcgPoolCreated {
        pool: String,
        cgroup: PathBuf,
        version: CgroupVersionName,
        limit_bytes: u64,
        /// `off` (v1: `oom_kill_disable`, the daemon decides) or
        /// `backstop` (v2: the kernel's memcg OOM killer stays).
        kernel_oom_killer: KernelOomKiller,
    },
    /// A pool's cgroup files cannot be read (once until they can again).
    MemcgPoolUnreadable { pool: String, error: String },
    /// The daemon cannot be woken when a pool fills (no eventfd or
    /// inotify watch on its cgroup): it notices at its next tick.
    MemcgPoolUnwatched { pool: String, error: String },
    /// A full pool whose tasks wait was lent room above its limit for the
    /// VMMs' own threads.
    MemcgReserveLent {
        pool: String,
        reserve_bytes: u64,
        usage_bytes: u64,
        under_oom: bool,
    },
    /// Lending the reserve failed.
    MemcgReserveFailed { pool: String, error: String },
    /// Usage is back under the mark: the reserve is taken back.
    MemcgReserveReturned {
        pool: String,
        usage_bytes: u64,
        lent_ms: u64,
    },
    /// A pool's cgroup was removed (daemon stop).
    MemcgPoolRemoved { pool: String },
    /// A pool's cgroup could not be removed.
    MemcgPoolRemoveFailed { pool: String, error: String },
}

impl Event {
    /// The `kind` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::DaemonStarted { .. } => "daemon_started",
            Event::DaemonStopping { .. } => "daemon_stopping",
            Event::OomPolicy { .. } => "oom_policy",
            Event::PsiTrigger { .. } => "psi_trigger",
            Event::PsiUnavailable { .. } => "psi_unavailable",
            Event::PsiPressure { .. } => "psi_pressure",
            Event::EventLogWriteFailed { .. } => "event_log_write_failed",
            Event::EventLogRecovered { .. } => "event_log_recovered",
            Event::VmCreated { .. } => "vm_created",
            Event::VmRunning { .. } => "vm_running",
            Event::VmExited { .. } => "vm_exited",
            Event::VmStartFailed { .. } => "vm_start_failed",
            Event::VmAdopted { .. } => "vm_adopted",
            Event::VmRecordWriteFailed { .. } => "vm_record_write_failed",
            Event::VmRecordUnreadable { .. } => "vm_record_unreadable",
            Event::OomScoreAdjNotMirrored { .. } => "oom_score_adj_not_mirrored",
            Event::VmDeleted { .. } => "vm_deleted",
            Event::GuestAgentConnected { .. } => "guest_agent_connected",
            Event::GuestAgentDisconnected { .. } => "guest_agent_disconnected",
            Event::GuestAgentProtocolError { .. } => "guest_agent_protocol_error",
            Event::GuestOomKill { .. } => "guest_oom_kill",
            Event::GuestOomReaped { .. } => "guest_oom_reaped",
            Event::GuestKillsUnlogged { .. } => "guest_kills_unlogged",
            Event::GuestPressure { .. } => "guest_pressure",
            Event::BalloonGivenBack { .. } => "balloon_given_back",
            Event::VmOomScoreAdj { .. } => "vm_oom_score_adj",
            Event::VmPaused { .. } => "vm_paused",
            Event::VmResumed { .. } => "vm_resumed",
            Event::BalloonTarget { .. } => "balloon_target",
            Event::Reclaim(_) => "reclaim",
            Event::BalloonStalled(_) => "balloon_stalled",
            Event::BalloonSkipped(_) => "balloon_skipped",
            Event::ReclaimReleased(_) => "reclaim_released",
            Event::OomPressure(_) => "oom_pressure",
            Event::OomDecisionsRepeated(_) => "oom_decisions_repeated",
            Event::OomDecision(_) => "oom_decision",
            Event::OomPauseFailed { .. } => "oom_pause_failed",
            Event::OomKill(_) => "oom_kill",
            Event::MemcgPoolCreated { .. } => "memcg_pool_created",
            Event::MemcgPoolUnreadable { .. } => "memcg_pool_unreadable",
            Event::MemcgPoolUnwatched { .. } => "memcg_pool_unwatched",
            Event::MemcgReserveLent { .. } => "memcg_reserve_lent",
            Event::MemcgReserveFailed { .. } => "memcg_reserve_failed",
            Event::MemcgReserveReturned { .. } => "memcg_reserve_returned",
            Event::MemcgPoolRemoved { .. } => "memcg_pool_removed",
            Event::MemcgPoolRemoveFailed { .. } => "memcg_pool_remove_failed",
        }
    }
}

/// Who asked for a change to a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    /// Through the API (`PATCH /vms/{id}`).
    Operator,
    /// The OOM policy (the `pause` action).
    Oom,
}

impl Actor {
    pub fn as_str(self) -> &'static str {
        match self {
            Actor::Operator => "operator",
            Actor::Oom => "oom",
        }
    }
}

/// A pool cgroup's hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersionName {
    V1,
    V2,
}

impl CgroupVersionName {
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupVersionName::V1 => "v1",
            CgroupVersionName::V2 => "v2",
        }
    }
}

/// What the kernel's OOM killer does in a pool's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelOomKiller {
    /// Turned off (cgroup v1 `oom_kill_disable`): the daemon decides.
    Off,
    /// Still there behind the daemon (cgroup v2 has no switch).
    Backstop,
}

impl KernelOomKiller {
    pub fn as_str(self) -> &'static str {
        match self {
            KernelOomKiller::Off => "off",
            KernelOomKiller::Backstop => "backstop",
        }
    }
}

/// The OOM domain an event is about: a pool, a NUMA node set, or (neither
/// given) the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainName {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// A node list like `0-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
}

/// A domain's limit and usage as the policy read them, with the figures
/// behind them; `constraint` says which kind of domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainUsage {
    #[serde(flatten)]
    pub domain: DomainName,
    #[serde(flatten)]
    pub figures: DomainFigures,
    /// Bytes the domain uses.
    pub usage_bytes: u64,
    /// The budget, the cgroup's limit, the host's or the nodes' RAM.
    pub limit_bytes: u64,
}

/// The figures behind a domain's usage, by the kind of its limit (the
/// `constraint` field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "constraint", rename_all = "lowercase")]
pub enum DomainFigures {
    /// A pool's byte budget the daemon enforces.
    Budget { budget_bytes: u64 },
    /// A pool's memory cgroup.
    Memcg(MemcgFigures),
    /// The whole host.
    Host(HostFigures),
    /// A NUMA node set.
    Nodes(NodeFigures),
}

impl DomainFigures {
    pub fn kind(&self) -> ConstraintKind {
        match self {
            DomainFigures::Budget { .. } => ConstraintKind::Budget,
            DomainFigures::Memcg(_) => ConstraintKind::Memcg,
            DomainFigures::Host(_) => ConstraintKind::Host,
            DomainFigures::Nodes(_) => ConstraintKind::Nodes,
        }
    }
}

/// A memcg pool's cgroup counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemcgFigures {
    pub cgroup: PathBuf,
    /// Charges refused at the limit (v1 `memory.failcnt`, v2 `max`).
    pub failcnt: u64,
    /// Tasks wait for memory (v1 `under_oom`).
    pub under_oom: bool,
    /// The daemon has lent the pool room above its limit.
    pub reserve_lent: bool,
    /// Processes the kernel's OOM killer killed in the cgroup.
    pub kernel_oom_kills: u64,
}

/// The host's memory (`/proc/meminfo`) against its minimum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFigures {
    pub mem_available_bytes: u64,
    pub mem_total_bytes: u64,
    pub swap_free_bytes: u64,
    pub swap_total_bytes: u64,
    /// `host_min_available_permille` of `MemTotal`.
    pub min_available_bytes: u64,
    /// Free pages on per-CPU lists, counted as available although
    /// `MemAvailable` misses them; read under pressure only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcp_free_bytes: Option<u64>,
    /// `/proc/pressure/memory` avg10s, read under pressure only (absent
    /// otherwise, or when unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_some_avg10: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_full_avg10: Option<f64>,
}

/// A NUMA node set's memory, from the nodes' own meminfo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFigures {
    /// What could be allocated there (free + half of file and slab).
    pub available_bytes: u64,
    pub min_available_bytes: u64,
    pub mem_free_bytes: u64,
}

/// `reclaim`: balloons asked to inflate by their share of the excess.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {
    #[serde(flatten)]
    pub domain: DomainName,
    pub constraint: ConstraintKind,
    /// What was asked for in all, bytes (grows while pressure lasts).
    pub excess_bytes: u64,
    pub balloons: Vec<BalloonAsk>,
}

/// One balloon asked to inflate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonAsk {
    pub vm: String,
    pub target_mib: u32,
    /// What the guest could give, by its own report and what the host
    /// holds of it.
    pub can_give_mib: u64,
}

/// `balloon_stalled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BalloonStalled {
    #[serde(flatten)]
    pub domain: DomainName,
    pub vm: String,
    /// The target the policy asked for; `null` if it no longer holds one.
    pub target_mib: Option<u32>,
    pub actual_mib: u32,
    /// Growth seen over the last second, MiB/s (one decimal).
    pub rate_mib_s: f64,
    /// No asks to this balloon for this long.
    pub backoff_s: u64,
}

/// Why reclaim left a balloon out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// Its VMM's API did not answer in time (connections saturated, the
    /// VMM stopped or stuck).
    Unreachable,
    /// Its VMM answered without guest statistics (none enabled yet, or
    /// the guest has not reported).
    NoStatistics,
    /// Its VMM refused or did not take the new target.
    AskFailed,
    /// It did not follow an earlier ask (see `balloon_stalled`) and is
    /// backing off.
    Stalled,
    /// Its guest OOM-killed for want of memory lately: given memory back,
    /// not asked again for a while.
    AfterGuestOom,
    /// Its guest has no free memory beyond its floor that the host holds.
    NothingToGive,
}

impl SkipReason {
    /// The name in events and `ctl`.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Unreachable => "unreachable",
            SkipReason::NoStatistics => "no_statistics",
            SkipReason::AskFailed => "ask_failed",
            SkipReason::Stalled => "stalled",
            SkipReason::AfterGuestOom => "after_guest_oom",
            SkipReason::NothingToGive => "nothing_to_give",
        }
    }
}

/// A balloon reclaim left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedBalloon {
    pub vm: String,
    pub reason: SkipReason,
    /// The error, for `unreachable` and `ask_failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `balloon_skipped`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonSkipped {
    #[serde(flatten)]
    pub domain: DomainName,
    #[serde(flatten)]
    pub balloon: SkippedBalloon,
}

/// `oom_decisions_repeated`: decisions alike to the one reported, which
/// found no victim either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomDecisionsRepeated {
    #[serde(flatten)]
    pub domain: DomainName,
    /// The selection's reason, the same for all of them.
    pub reason: String,
    /// Decisions since the last report.
    pub decisions: u64,
    /// Since the first decision that found no victim.
    pub stuck_ms: u64,
    /// Still stuck (a periodic count) or not any more (the last one).
    pub ongoing: bool,
}

/// `reclaim_released`: a calm domain lets its balloons go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReclaimReleased {
    #[serde(flatten)]
    pub usage: DomainUsage,
    /// The new, halved targets (0: let go entirely).
    pub balloons: Vec<BalloonRelease>,
}

/// One balloon let go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonRelease {
    pub vm: String,
    pub target_mib: u32,
}

/// `oom_pressure`: a domain under pressure without progress; a decision
/// follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OomPressure {
    #[serde(flatten)]
    pub usage: DomainUsage,
    /// In words, with the figures.
    pub why: String,
    /// From the first sight of this pressure to this decision.
    pub pressure_to_decision_ms: u64,
    /// Balloons found stalled, left out of reclaim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stalled_balloons: Vec<String>,
    /// Every balloon reclaim could not count on this tick, and why
    /// (the stalled ones among them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_balloons: Vec<SkippedBalloon>,
}

/// What asked for a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionTrigger {
    /// `POST /oom/trigger`.
    Manual,
    /// The policy, for a pool over its budget.
    Budget,
    /// The policy, for a full memcg pool.
    Memcg,
    /// The policy, for the host.
    Host,
    /// The policy, for a NUMA node set.
    Nodes,
}

impl From<ConstraintKind> for DecisionTrigger {
    fn from(kind: ConstraintKind) -> Self {
        match kind {
            ConstraintKind::Budget => DecisionTrigger::Budget,
            ConstraintKind::Memcg => DecisionTrigger::Memcg,
            ConstraintKind::Host => DecisionTrigger::Host,
            ConstraintKind::Nodes => DecisionTrigger::Nodes,
        }
    }
}

impl DecisionTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionTrigger::Manual => "manual",
            DecisionTrigger::Budget => "budget",
            DecisionTrigger::Memcg => "memcg",
            DecisionTrigger::Host => "host",
            DecisionTrigger::Nodes => "nodes",
        }
    }
}

/// What a decision did with its victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DecisionAction {
    #[serde(rename = "kill")]
    Kill,
    #[serde(rename = "pause")]
    Pause,
    #[serde(rename = "notify")]
    Notify,
    /// A dry run: nothing.
    #[serde(rename = "none (dry run)")]
    DryRun,
}

impl DecisionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionAction::Kill => "kill",
            DecisionAction::Pause => "pause",
            DecisionAction::Notify => "notify",
            DecisionAction::DryRun => "none (dry run)",
        }
    }
}

impl From<super::types::OomAction> for DecisionAction {
    fn from(action: super::types::OomAction) -> Self {
        use super::types::OomAction;
        match action {
            OomAction::Kill => DecisionAction::Kill,
            OomAction::Pause => DecisionAction::Pause,
            OomAction::Notify => DecisionAction::Notify,
        }
    }
}

/// `oom_decision`, also the answer of `POST /oom/trigger`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomDecision {
    pub trigger: DecisionTrigger,
    pub dry_run: bool,
    /// The domain, named like the kernel's constraints, e.g.
    /// `CONSTRAINT_NONE (host)`.
    pub constraint: String,
    /// How `totalpages` was computed.
    pub basis: String,
    /// Pages in the domain, the yardstick of `oom_score_adj`.
    pub totalpages: u64,
    /// The chosen VM; `null` when none is eligible.
    pub victim: Option<String>,
    /// Why this VM, or why none.
    pub reason: String,
    pub action: DecisionAction,
    /// Time to decide.
    pub decision_us: u64,
    /// The scored candidates (with `dump_vms`, and always on a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<Vec<CandidateRow>>,
}

/// `oom_kill`: the victim, and what its kill and reap observed, or why
/// the kill failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomKill {
    pub vm: String,
    /// Its VMM process (absent when the kill failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(flatten)]
    pub outcome: KillOutcome,
}

/// How a kill went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KillOutcome {
    /// Killed and reaped.
    Reaped {
        #[serde(flatten)]
        report: KillReport,
        /// From the start of the decision to the memory known back.
        decision_to_freed_us: u64,
    },
    /// The kill failed (e.g. the signal could not be sent).
    Failed {
        /// The method that was tried.
        method: ReapMethod,
        error: String,
    },
}

/// How the memory of a killed VM is reclaimed (the config's `reap`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReapMethod {
    /// SIGKILL only: the dying process frees its own memory.
    Sigkill,
    /// SIGKILL, then `process_mrelease` from the daemon.
    SigkillMrelease,
    /// Ask the VMM to release guest RAM itself (the per-VM API's
    /// `ReleaseMemory`: vCPUs stopped, `madvise(MADV_DONTNEED)` on several
    /// threads), after which it exits; SIGKILL + `process_mrelease` when it
    /// does not answer in time or fails.
    VmmRelease,
}

impl ReapMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ReapMethod::Sigkill => "sigkill",
            ReapMethod::SigkillMrelease => "sigkill_mrelease",
            ReapMethod::VmmRelease => "vmm_release",
        }
    }
}

/// How the daemon knew the memory was back (see [`KillReport::freed_us`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FreedBy {
    /// The VMM answered `ReleaseMemory`: it had released guest RAM.
    VmmAnswer,
    /// `process_mrelease` returned: the address space was reaped.
    MreleaseReturned,
    /// The process exited (its pidfd polled readable): the kernel frees
    /// the address space in `exit_mm`, before the exit is signalled.
    ProcessExited,
    /// None of those within the timeout.
    NotSeen,
}

impl FreedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            FreedBy::VmmAnswer => "vmm_answer",
            FreedBy::MreleaseReturned => "mrelease_returned",
            FreedBy::ProcessExited => "process_exited",
            FreedBy::NotSeen => "not_seen",
        }
    }
}

/// What a kill observed. Times are from the start of the kill (the first
/// request to the VMM, or the SIGKILL), in µs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillReport {
    /// The method that freed the memory (the fallback, if there was one).
    pub method: ReapMethod,
    /// The method tried first, when it gave way to `method`.
    pub fallback_from: Option<ReapMethod>,
    /// Why the first method gave way.
    pub fallback_reason: Option<String>,
    /// Resident bytes of the process just before the kill
    /// (`RssAnon + RssFile + RssShmem`).
    pub rss_before: u64,
    /// Bytes freed: what the VMM reported released for `vmm_release`;
    /// otherwise the anonymous and shmem resident bytes before the kill
    /// (what the exit frees; the binary's file pages stay cached).
    pub bytes_freed: u64,
    /// → the VMM's answer to `ReleaseMemory` (zero if none came).
    pub vmm_answer_us: u64,
    /// The VMM's own time for its `madvise` calls (zero if none).
    pub vmm_madvise_us: u64,
    /// → SIGKILL sent (zero when the VMM released and exited by itself).
    pub sigkill_us: u64,
    /// → `process_mrelease` returned (zero if not called).
    pub mrelease_us: u64,
    /// Whether `process_mrelease` found the address space already gone.
    pub mrelease_raced: bool,
    /// → the memory was known to be back, by `freed_by`: the first of the
    /// VMM's answer, `process_mrelease` returning, the process's exit.
    #[serde(rename = "kill_to_freed_us")]
    pub freed_us: u64,
    pub freed_by: FreedBy,
    /// → the process exited (zero if it did not within the timeout).
    #[serde(rename = "kill_to_exit_us")]
    pub exited_us: u64,
}

/// The event log's health, in `GET /oom` (`event_log`) and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventLogView {
    /// Events whose append to `events.ndjson` failed when they happened
    /// (full disk, I/O error); each counted once, however often retried.
    pub write_failures: u64,
    /// Events kept in memory, not yet in the file; written first, in
    /// order, when writing works again.
    pub unwritten: u64,
    /// Unwritten events dropped because the memory kept for them was full:
    /// they are missing from the file (never from `GET /events` while
    /// kept there).
    pub lost: u64,
    /// The last write error, while writes fail; `null` once they work.
    pub last_error: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::daemon_api::types::OomAction;

    fn policy() -> OomPolicy {
        OomPolicy {
            action: OomAction::Kill,
            kill_fastest_grower: false,
            dump_vms: true,
            reclaim_first: true,
            no_progress_ms: 2000,
            min_kill_interval_ms: 1000,
            psi_some_threshold_us: 150_000,
            psi_window_us: 1_000_000,
            host_min_available_permille: 50,
        }
    }

    fn report() -> KillReport {
        KillReport {
            method: ReapMethod::SigkillMrelease,
            fallback_from: Some(ReapMethod::VmmRelease),
            fallback_reason: Some("the VMM did not answer".into()),
            rss_before: 80 << 20,
            bytes_freed: 78 << 20,
            vmm_answer_us: 0,
            vmm_madvise_us: 0,
            sigkill_us: 250_100,
            mrelease_us: 251_000,
            mrelease_raced: false,
            freed_us: 251_000,
            freed_by: FreedBy::MreleaseReturned,
            exited_us: 252_000,
        }
    }

    fn host_usage(psi: bool) -> DomainUsage {
        DomainUsage {
            domain: DomainName::default(),
            figures: DomainFigures::Host(HostFigures {
                mem_available_bytes: 1 << 30,
                mem_total_bytes: 24 << 30,
                swap_free_bytes: 0,
                swap_total_bytes: 0,
                min_available_bytes: 1200 << 20,
                pcp_free_bytes: psi.then_some(96 << 20),
                psi_some_avg10: psi.then_some(12.5),
                psi_full_avg10: psi.then_some(0.25),
            }),
            usage_bytes: 23 << 30,
            limit_bytes: 24 << 30,
        }
    }

    /// One event of every kind (every variant of [`Event`], and of its
    /// sub-enums where they change the shape).
    pub(crate) fn one_of_each() -> Vec<Event> {
        let vm = || "web-1".to_string();
        let pool = || Some("batch".to_string());
        let row = CandidateRow {
            id: vm(),
            rss_pages: 20_000,
            swap_pages: 0,
            pgtables_pages: 75,
            oom_score_adj: 0,
            badness: Some(20_075),
            oom_score: 6,
            growth_bytes_per_s: -2048,
        };
        vec![
            Event::DaemonStarted {
                socket: "/run/vmm/daemon.sock".into(),
                state_dir: "/var/lib/vmm".into(),
                policy: policy(),
            },
            Event::DaemonStopping { signal: 15 },
            Event::OomPolicy { policy: policy() },
            Event::PsiTrigger {
                pool: None,
                file: "/proc/pressure/memory".into(),
                trigger: "some 150000 1000000".into(),
            },
            Event::PsiUnavailable {
                pool: pool(),
                file: "/sys/fs/cgroup/vmm-batch/memory.pressure".into(),
                error: "Permission denied (os error 13)".into(),
            },
            Event::PsiPressure {
                pool: None,
                some_avg10: Some(20.5),
                full_avg10: None,
                trigger: "some 150000 1000000".into(),
            },
            Event::EventLogWriteFailed {
                file: "/var/lib/vmm/events.ndjson".into(),
                error: "No space left on device (os error 28)".into(),
            },
            Event::EventLogRecovered {
                file: "/var/lib/vmm/events.ndjson".into(),
                written_late: 26,
                lost: 0,
            },
            Event::VmCreated {
                vm: vm(),
                pid: Some(4242),
                mem_mib: 128,
                oom_score_adj: -500,
                pool: pool(),
                numa_nodes: None,
            },
            Event::VmRunning { vm: vm() },
            Event::VmExited {
                vm: vm(),
                how: "exited with status 0".into(),
            },
            Event::VmStartFailed {
                vm: vm(),
                how: "exited with status 250".into(),
                log: "cannot start the VM: kernel /k is neither an ELF (vmlinux) nor a bzImage kernel".into(),
            },
            Event::VmAdopted {
                vm: vm(),
                pid: Some(4242),
                state: VmState::Running,
                pool: pool(),
            },
            Event::VmRecordWriteFailed {
                vm: vm(),
                error: "No space left on device (os error 28)".into(),
            },
            Event::VmRecordUnreadable {
                dir: "/var/lib/vmm/vms/a".into(),
                error: "expected value at line 1 column 1".into(),
            },
            Event::OomScoreAdjNotMirrored {
                vm: vm(),
                oom_score_adj: -500,
                kernel_oom_score_adj: 0,
                why: "no CAP_SYS_RESOURCE".into(),
            },
            Event::VmDeleted { vm: vm() },
            Event::GuestAgentConnected {
                vm: vm(),
                agent: "0.1.0".into(),
                kernel: "6.12.117".into(),
                boot_id: "8e3f2a4c-0d7e-4a8b-9c1d-2b3e4f5a6b7c".into(),
                resumed_at: Some(7),
            },
            Event::GuestAgentDisconnected {
                vm: vm(),
                why: "the connection closed".into(),
            },
            Event::GuestAgentProtocolError {
                vm: vm(),
                error: "line longer than 16384 bytes".into(),
            },
            Event::GuestOomKill {
                vm: vm(),
                agent_seq: 8,
                kill: Box::new(guest_agent::protocol::OomKill {
                    kmsg_seq: 812,
                    ts_us: 48_211_733,
                    reason: "Memory cgroup out of memory".into(),
                    pid: 95,
                    comm: "hog".into(),
                    uid: Some(0),
                    total_vm_kb: Some(18_000),
                    anon_rss_kb: Some(2036),
                    file_rss_kb: Some(0),
                    shmem_rss_kb: Some(0),
                    pgtables_kb: Some(48),
                    oom_score_adj: Some(0),
                    constraint: Some("CONSTRAINT_MEMCG".into()),
                    nodemask: Some("(null)".into()),
                    cpuset: None,
                    mems_allowed: Some("0".into()),
                    global_oom: false,
                    oom_memcg: Some("/hog".into()),
                    task_memcg: Some("/hog".into()),
                    memcg_usage_kb: Some(2048),
                    memcg_limit_kb: Some(2048),
                    memcg_failcnt: Some(31),
                    oom_group: Some("/hog".into()),
                    invoker: Some(guest_agent::protocol::Invoker {
                        comm: "hog".into(),
                        pid: Some(95),
                        gfp_mask: "0xcc0".into(),
                        gfp_flags: "GFP_KERNEL".into(),
                        order: 0,
                        oom_score_adj: 0,
                    }),
                }),
            },
            Event::GuestOomReaped {
                vm: vm(),
                agent_seq: 9,
                reaped: guest_agent::protocol::OomReaped {
                    kmsg_seq: 815,
                    ts_us: 48_300_000,
                    pid: 95,
                    comm: "hog".into(),
                    reaped: true,
                    kill_seq: Some(8),
                    anon_rss_kb: Some(0),
                    file_rss_kb: Some(0),
                    shmem_rss_kb: Some(0),
                },
            },
            Event::GuestKillsUnlogged {
                vm: vm(),
                agent_seq: 10,
                unlogged: guest_agent::protocol::KillsUnlogged {
                    count: 1,
                    vmstat_oom_kill: 3,
                    logged: 2,
                },
            },
            Event::BalloonGivenBack {
                vm: vm(),
                from_mib: 64,
                to_mib: 32,
                guest_kills: 1,
            },
            Event::GuestPressure {
                vm: vm(),
                agent_seq: 11,
                pressure: guest_agent::protocol::Pressure {
                    some: guest_agent::protocol::PsiLine {
                        avg10: 1234,
                        avg60: 300,
                        avg300: 70,
                        total_us: 5_000_000,
                    },
                    full: Some(guest_agent::protocol::PsiLine {
                        avg10: 800,
                        avg60: 200,
                        avg300: 50,
                        total_us: 3_000_000,
                    }),
                },
            },
            Event::VmOomScoreAdj {
                vm: vm(),
                oom_score_adj: 1000,
            },
            Event::VmPaused {
                vm: vm(),
                by: Actor::Oom,
            },
            Event::VmResumed {
                vm: vm(),
                by: Actor::Operator,
            },
            Event::BalloonTarget {
                vm: vm(),
                target_mib: 32,
                by: Actor::Operator,
            },
            Event::Reclaim(Reclaim {
                domain: DomainName {
                    pool: pool(),
                    nodes: None,
                },
                constraint: ConstraintKind::Budget,
                excess_bytes: 12 << 20,
                balloons: vec![BalloonAsk {
                    vm: vm(),
                    target_mib: 40,
                    can_give_mib: 100,
                }],
            }),
            Event::BalloonStalled(BalloonStalled {
                domain: DomainName {
                    pool: None,
                    nodes: Some("0-1".into()),
                },
                vm: vm(),
                target_mib: Some(64),
                actual_mib: 3,
                rate_mib_s: 1.5,
                backoff_s: 30,
            }),
            Event::BalloonSkipped(BalloonSkipped {
                domain: DomainName::default(),
                balloon: SkippedBalloon {
                    vm: vm(),
                    reason: SkipReason::Unreachable,
                    detail: Some("timed out after 250 ms".into()),
                },
            }),
            Event::ReclaimReleased(ReclaimReleased {
                usage: DomainUsage {
                    domain: DomainName {
                        pool: pool(),
                        nodes: None,
                    },
                    figures: DomainFigures::Budget {
                        budget_bytes: 360 << 20,
                    },
                    usage_bytes: 200 << 20,
                    limit_bytes: 360 << 20,
                },
                balloons: vec![BalloonRelease {
                    vm: vm(),
                    target_mib: 20,
                }],
            }),
            Event::ReclaimReleased(ReclaimReleased {
                usage: host_usage(false),
                balloons: vec![],
            }),
            Event::OomPressure(OomPressure {
                usage: host_usage(true),
                why: "the host is short of memory".into(),
                pressure_to_decision_ms: 2100,
                stalled_balloons: vec![vm()],
                skipped_balloons: vec![
                    SkippedBalloon {
                        vm: vm(),
                        reason: SkipReason::Stalled,
                        detail: None,
                    },
                    SkippedBalloon {
                        vm: "db-1".into(),
                        reason: SkipReason::NothingToGive,
                        detail: None,
                    },
                ],
            }),
            Event::OomPressure(OomPressure {
                usage: DomainUsage {
                    domain: DomainName {
                        pool: pool(),
                        nodes: None,
                    },
                    figures: DomainFigures::Memcg(MemcgFigures {
                        cgroup: "/sys/fs/cgroup/memory/vmm-batch".into(),
                        failcnt: 17,
                        under_oom: true,
                        reserve_lent: true,
                        kernel_oom_kills: 0,
                    }),
                    usage_bytes: 256 << 20,
                    limit_bytes: 256 << 20,
                },
                why: "pool batch is at 256 MiB of its memory cgroup limit".into(),
                pressure_to_decision_ms: 2000,
                stalled_balloons: vec![],
                skipped_balloons: vec![],
            }),
            Event::OomPressure(OomPressure {
                usage: DomainUsage {
                    domain: DomainName {
                        pool: None,
                        nodes: Some("1".into()),
                    },
                    figures: DomainFigures::Nodes(NodeFigures {
                        available_bytes: 500 << 20,
                        min_available_bytes: 1600 << 20,
                        mem_free_bytes: 300 << 20,
                    }),
                    usage_bytes: 31 << 30,
                    limit_bytes: 32 << 30,
                },
                why: "NUMA nodes 1 are short of memory".into(),
                pressure_to_decision_ms: 0,
                stalled_balloons: vec![],
                skipped_balloons: vec![],
            }),
            Event::OomDecisionsRepeated(OomDecisionsRepeated {
                domain: DomainName {
                    pool: pool(),
                    nodes: None,
                },
                reason: "every VM has oom_score_adj -1000".into(),
                decisions: 28,
                stuck_ms: 60_200,
                ongoing: true,
            }),
            Event::OomDecision(OomDecision {
                trigger: DecisionTrigger::Manual,
                dry_run: true,
                constraint: "CONSTRAINT_NONE (host)".into(),
                basis: "host RAM + swap".into(),
                totalpages: 6_291_456,
                victim: Some(vm()),
                reason: "highest badness: 20075 pages (oom_score 6)".into(),
                action: DecisionAction::DryRun,
                decision_us: 80,
                table: Some(vec![row]),
            }),
            Event::OomDecision(OomDecision {
                trigger: DecisionTrigger::Memcg,
                dry_run: false,
                constraint: "CONSTRAINT_MEMCG (/sys/fs/cgroup/memory/vmm-batch)".into(),
                basis: "the memory cgroup's limit".into(),
                totalpages: 65_536,
                victim: None,
                reason: "no eligible VM".into(),
                action: DecisionAction::Pause,
                decision_us: 80,
                table: None,
            }),
            Event::OomPauseFailed {
                vm: vm(),
                error: "VM 'web-1' is not running".into(),
            },
            Event::OomKill(OomKill {
                vm: vm(),
                pid: Some(4242),
                outcome: KillOutcome::Reaped {
                    report: report(),
                    decision_to_freed_us: 251_300,
                },
            }),
            Event::OomKill(OomKill {
                vm: vm(),
                pid: None,
                outcome: KillOutcome::Failed {
                    method: ReapMethod::Sigkill,
                    error: "No such process (os error 3)".into(),
                },
            }),
            Event::MemcgPoolCreated {
                pool: "batch".into(),
                cgroup: "/sys/fs/cgroup/memory/vmm-batch".into(),
                version: CgroupVersionName::V1,
                limit_bytes: 256 << 20,
                kernel_oom_killer: KernelOomKiller::Off,
            },
            Event::MemcgPoolUnreadable {
                pool: "batch".into(),
                error: "gone".into(),
            },
            Event::MemcgPoolUnwatched {
                pool: "batch".into(),
                error: "cannot register with /sys/fs/cgroup/memory/vmm-batch/memory.oom_control: \
                        Permission denied (os error 13)"
                    .into(),
            },
            Event::MemcgReserveLent {
                pool: "batch".into(),
                reserve_bytes: 16 << 20,
                usage_bytes: 256 << 20,
                under_oom: true,
            },
            Event::MemcgReserveFailed {
                pool: "batch".into(),
                error: "Device or resource busy (os error 16)".into(),
            },
            Event::MemcgReserveReturned {
                pool: "batch".into(),
                usage_bytes: 200 << 20,
                lent_ms: 1500,
            },
            Event::MemcgPoolRemoved {
                pool: "batch".into(),
            },
            Event::MemcgPoolRemoveFailed {
                pool: "batch".into(),
                error: "Device or resource busy (os error 16)".into(),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_through_json() {
        let events = one_of_each();
        let mut kinds: Vec<&str> = events.iter().map(Event::kind).collect();
        kinds.dedup();
        assert_eq!(kinds.len(), 46, "one example of every kind: {kinds:?}");
        for (i, event) in events.into_iter().enumerate() {
            let record = EventRecord {
                seq: i as u64 + 1,
                time_ms: 1_700_000_000_000 + i as u64,
                event,
            };
            let line = serde_json::to_string(&record).unwrap();
            let value: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(value["kind"], record.kind(), "{line}");
            assert_eq!(value["seq"], record.seq, "{line}");
            let back: EventRecord =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            assert_eq!(back, record, "{line}");
            assert_eq!(EventRecord::from_value(value), Ok(record));
        }
    }

    /// Lines as the daemon wrote them before events were typed (its
    /// `json!` objects, keys in alphabetical order) parse.
    #[test]
    fn lines_in_the_untyped_format_parse() {
        let lines = [
            r#"{"kind":"daemon_started","policy":{"action":"kill","dump_vms":true,"host_min_available_permille":50,"kill_fastest_grower":false,"min_kill_interval_ms":1000,"no_progress_ms":2000,"psi_some_threshold_us":150000,"psi_window_us":1000000,"reclaim_first":true},"seq":1,"socket":"/tmp/vmmd.sock","state_dir":"/tmp/vmmd","time_ms":1764000000000}"#,
            r#"{"file":"/proc/pressure/memory","kind":"psi_trigger","pool":null,"seq":2,"time_ms":1764000000001,"trigger":"some 150000 1000000"}"#,
            r#"{"kind":"vm_created","mem_mib":128,"numa_nodes":null,"oom_score_adj":0,"pid":1234,"pool":null,"seq":3,"time_ms":1764000000002,"vm":"a"}"#,
            r#"{"kind":"vm_running","seq":4,"time_ms":1764000000003,"vm":"a"}"#,
            r#"{"by":"operator","kind":"vm_paused","seq":5,"time_ms":1764000000004,"vm":"a"}"#,
            r#"{"by":"operator","kind":"balloon_target","seq":6,"target_mib":32,"time_ms":1764000000005,"vm":"a"}"#,
            r#"{"balloons":[{"can_give_mib":100,"target_mib":40,"vm":"a"}],"constraint":"memcg","excess_bytes":1048576,"kind":"reclaim","pool":"p","seq":7,"time_ms":1764000000006}"#,
            r#"{"actual_mib":3,"backoff_s":30,"kind":"balloon_stalled","rate_mib_s":0.5,"seq":8,"target_mib":null,"time_ms":1764000000007,"vm":"a"}"#,
            r#"{"cgroup":"/sys/fs/cgroup/memory/x/vmm-p","constraint":"memcg","failcnt":3,"kernel_oom_kills":0,"kind":"oom_pressure","limit_bytes":268435456,"pool":"p","pressure_to_decision_ms":2000,"reserve_lent":true,"seq":9,"stalled_balloons":["b"],"time_ms":1764000000008,"under_oom":false,"usage_bytes":268435456,"why":"pool p is at 256 MiB of its memory cgroup limit of 256 MiB with no progress for 2000 ms"}"#,
            r#"{"constraint":"host","kind":"oom_pressure","limit_bytes":100,"mem_available_bytes":1,"mem_total_bytes":100,"min_available_bytes":5,"pressure_to_decision_ms":0,"psi_full_avg10":null,"psi_some_avg10":1.5,"seq":10,"swap_free_bytes":0,"swap_total_bytes":0,"time_ms":1764000000009,"usage_bytes":99,"why":"w"}"#,
            r#"{"action":"kill","basis":"host RAM + swap","constraint":"CONSTRAINT_NONE (host)","decision_us":80,"dry_run":false,"kind":"oom_decision","reason":"r","seq":11,"table":[{"badness":null,"growth_bytes_per_s":0,"id":"c","oom_score":0,"oom_score_adj":-1000,"pgtables_pages":20,"rss_pages":100,"swap_pages":0}],"time_ms":1764000000010,"totalpages":6291456,"trigger":"budget","victim":"b"}"#,
            r#"{"action":"none (dry run)","basis":"b","constraint":"c","decision_us":1,"dry_run":true,"kind":"oom_decision","reason":"r","seq":12,"time_ms":1,"totalpages":1,"trigger":"manual","victim":null}"#,
            r#"{"bytes_freed":81788928,"decision_to_freed_us":49000,"fallback_from":null,"fallback_reason":null,"freed_by":"mrelease_returned","kill_to_exit_us":52000,"kill_to_freed_us":40000,"kind":"oom_kill","method":"sigkill_mrelease","mrelease_raced":false,"mrelease_us":40000,"pid":1234,"rss_before":83886080,"seq":13,"sigkill_us":20,"time_ms":1764000000011,"vm":"b","vmm_answer_us":0,"vmm_madvise_us":0}"#,
            r#"{"error":"No such process (os error 3)","kind":"oom_kill","method":"vmm_release","seq":14,"time_ms":1764000000012,"vm":"b"}"#,
            r#"{"balloons":[{"target_mib":10,"vm":"a"}],"budget_bytes":377487360,"constraint":"budget","kind":"reclaim_released","limit_bytes":377487360,"pool":"p","seq":15,"time_ms":1764000000013,"usage_bytes":1}"#,
            r#"{"cgroup":"/sys/fs/cgroup/memory/x/vmm-p","kernel_oom_killer":"off","kind":"memcg_pool_created","limit_bytes":268435456,"pool":"p","seq":16,"time_ms":1764000000014,"version":"v1"}"#,
            r#"{"kind":"memcg_reserve_returned","lent_ms":1500,"pool":"p","seq":17,"time_ms":1764000000015,"usage_bytes":1}"#,
            r#"{"kind":"daemon_stopping","seq":18,"signal":15,"time_ms":1764000000016}"#,
        ];
        for line in lines {
            let record: EventRecord =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            let value: Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["kind"], record.kind());
            // Written again, the same fields with the same values, but for
            // a `null` PSI figure of the host (now left out).
            let mut again = serde_json::to_value(&record).unwrap();
            let mut value = value;
            for v in [&mut again, &mut value] {
                if let Some(o) = v.as_object_mut() {
                    o.retain(|k, v| !(k.starts_with("psi_") && v.is_null()));
                }
            }
            assert_eq!(again, value, "{line}");
        }
        let kill: EventRecord = serde_json::from_str(lines[12]).unwrap();
        match kill.event {
            Event::OomKill(OomKill {
                outcome: KillOutcome::Reaped { report, .. },
                ..
            }) => assert_eq!(report.freed_us, 40_000),
            other => panic!("{other:?}"),
        }
        let failed: EventRecord = serde_json::from_str(lines[13]).unwrap();
        assert!(matches!(
            failed.event,
            Event::OomKill(OomKill {
                pid: None,
                outcome: KillOutcome::Failed {
                    method: ReapMethod::VmmRelease,
                    ..
                },
                ..
            })
        ));
    }

    #[test]
    fn unknown_kinds_come_back_as_json() {
        let newer = serde_json::json!({"seq": 9, "time_ms": 1, "kind": "vm_migrated", "vm": "a"});
        assert_eq!(EventRecord::from_value(newer.clone()), Err(newer));
        // A known kind with a field added by a newer daemon still parses.
        let more = serde_json::json!({"seq": 9, "time_ms": 1, "kind": "vm_running", "vm": "a", "boot_ms": 31});
        assert_eq!(
            EventRecord::from_value(more).unwrap().event,
            Event::VmRunning { vm: "a".into() }
        );
    }
}
