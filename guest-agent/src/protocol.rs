//! The agent ↔ host protocol: newline-delimited JSON over one stream socket
//! (AF_VSOCK from the guest to CID [`HOST_CID`] port [`VSOCK_PORT`]).
//!
//! Agent → host, one JSON object per line:
//!
//! ```text
//! {"type":"hello","proto":1,"agent":"0.1.0","kernel":"6.12.117","boot_id":"…","instance":"9f2c…","interval_ms":5000}
//! {"seq":1,"type":"oom_kill","kmsg_seq":812,"ts_us":48211733,"reason":"Memory cgroup out of memory","pid":95,…}
//! {"seq":2,"type":"summary","uptime_ms":50120,"mem_total_kb":118000,…}
//! ```
//!
//! Host → agent: `{"ack":N}` lines, *cumulative*: the host holds every
//! message of this stream up to and including `seq` N.
//!
//! Rules (the full text is `guest-agent/PROTOCOL.md`):
//!
//! - Every connection starts with a [`Hello`] (no `seq`); it names the
//!   stream: `(boot_id, instance)`. `instance` is random per agent process,
//!   so an agent restarted within one boot starts a new stream instead of
//!   colliding with the old one's sequence numbers.
//! - Every other line carries `seq`, strictly increasing within a stream,
//!   starting at 1. Gaps are allowed: a [`Summary`] replaces the previous
//!   unacknowledged one, and the agent's bounded queue drops the oldest
//!   messages when full (counted in [`Summary::dropped`]).
//! - The agent keeps every message until it is acknowledged and resends all
//!   unacknowledged ones, in order, after reconnecting. The host dedups by
//!   `(boot_id, instance, seq)`: anything at or below the stream's highest
//!   seq is a duplicate. Nothing is lost (unless dropped and counted) and
//!   nothing is delivered twice.
//! - After a hello for a stream it already knows, the host acks the highest
//!   seq it holds at once, so the agent can forget those without resending.
//! - Unknown fields are ignored and unknown message types are delivered as
//!   [`AgentMessage::Unknown`] (and acknowledged), so a newer agent can talk
//!   to an older host. A different [`PROTOCOL_VERSION`] is refused.
//! - Numbers only, no floats: PSI averages are hundredths of a percent
//!   (`avg10 = 1234` means 12.34 %), sizes are KiB as the kernel prints them.

use serde::{Deserialize, Serialize};

/// The protocol's version, in every [`Hello`]. Bump it for changes an older
/// host would misread (new fields and new message types are not such
/// changes).
pub const PROTOCOL_VERSION: u32 = 1;

/// The host's vsock CID (`VMADDR_CID_HOST`).
pub const HOST_CID: u32 = 2;

/// The vsock port the host listens on. With Firecracker's hybrid vsock (our
/// VMM's model) a guest connection to CID 2 port 1025 reaches the Unix
/// socket `<uds_path>_1025` on the host.
pub const VSOCK_PORT: u32 = 1025;

/// Longest agent → host line the host accepts (bytes, without the newline).
/// A kill report is under 1 KiB; cgroup paths are truncated by the agent to
/// [`MAX_PATH`] bytes so that no honest line comes near this.
pub const MAX_LINE: usize = 16 * 1024;

/// Longest host → agent line the agent accepts.
pub const MAX_HOST_LINE: usize = 256;

/// Longest cgroup path or other free text the agent puts into one field.
pub const MAX_PATH: usize = 1024;

/// First line of every connection, agent → host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the agent.
    pub proto: u32,
    /// The agent's version (its crate version).
    pub agent: String,
    /// The guest kernel's release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// `/proc/sys/kernel/random/boot_id`: changes at every guest boot.
    pub boot_id: String,
    /// Random per agent process (16 hex digits): a restarted agent is a new
    /// stream whose sequence numbers start at 1 again.
    pub instance: String,
    /// How often the agent sends a [`Summary`] (its heartbeat).
    pub interval_ms: u64,
}

/// One agent → host line after the hello.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub seq: u64,
    #[serde(flatten)]
    pub message: AgentMessage,
}

/// What the agent reports. On the wire the variant is the `type` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// The guest kernel's OOM killer killed a process.
    OomKill(Box<OomKill>),
    /// The OOM reaper reported on an earlier kill's victim.
    OomReaped(OomReaped),
    /// The kernel was out of memory and found nothing to kill.
    OomNoVictim(OomNoVictim),
    /// `/proc/vmstat` `oom_kill` counted kills that the kernel log lost.
    KillsUnlogged(KillsUnlogged),
    /// Kernel log records were overwritten before the agent read them.
    KmsgLost(KmsgLost),
    /// A cgroup v2 `memory.events` changed.
    MemcgEvents(MemcgEvents),
    /// The PSI trigger fired (memory pressure crossed the threshold).
    Pressure(Pressure),
    /// Periodic memory summary; also the heartbeat.
    Summary(Summary),
    /// A message type this host does not know (from a newer agent).
    #[serde(other)]
    Unknown,
}

impl AgentMessage {
    /// The `type` on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentMessage::OomKill(_) => "oom_kill",
            AgentMessage::OomReaped(_) => "oom_reaped",
            AgentMessage::OomNoVictim(_) => "oom_no_victim",
            AgentMessage::KillsUnlogged(_) => "kills_unlogged",
            AgentMessage::KmsgLost(_) => "kmsg_lost",
            AgentMessage::MemcgEvents(_) => "memcg_events",
            AgentMessage::Pressure(_) => "pressure",
            AgentMessage::Summary(_) => "summary",
            AgentMessage::Unknown => "unknown",
        }
    }
}

/// The task that ran into the OOM (`<comm> invoked oom-killer: …`), with
/// its pid from the stack dump's `CPU: … PID: … Comm: …` line when the
/// kernel printed one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoker {
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The allocation's gfp mask, e.g. `0xcc0`.
    pub gfp_mask: String,
    /// The mask as the kernel names it, e.g. `GFP_KERNEL`.
    pub gfp_flags: String,
    pub order: i32,
    pub oom_score_adj: i32,
}

/// One OOM kill, merged from the kernel's lines about it: `invoked
/// oom-killer`, the memcg's `memory: usage …` line, `oom-kill:constraint=…`
/// and `…: Killed process …`. Sent as soon as the `Killed process` line is
/// read; the reaper's outcome follows as [`OomReaped`].
///
/// The kernel rate-limits everything but the `Killed process` line, so every
/// field that comes from the other lines is optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomKill {
    /// Kernel log sequence number of the `Killed process` record: with
    /// `boot_id` it names this kill across agent restarts.
    pub kmsg_seq: u64,
    /// Kernel timestamp of that record (µs since boot).
    pub ts_us: u64,
    /// The kernel's prefix verbatim: `Out of memory`, `Memory cgroup out of
    /// memory` or `Out of memory (oom_kill_allocating_task)`.
    pub reason: String,
    pub pid: i32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_vm_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anon_rss_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_rss_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shmem_rss_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgtables_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    /// `CONSTRAINT_NONE`, `CONSTRAINT_CPUSET`, `CONSTRAINT_MEMORY_POLICY` or
    /// `CONSTRAINT_MEMCG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodemask: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mems_allowed: Option<String>,
    /// True when the kernel said `global_oom` (no memcg limit was hit).
    #[serde(default, skip_serializing_if = "is_false")]
    pub global_oom: bool,
    /// The memory cgroup whose limit was hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_memcg: Option<String>,
    /// The victim's memory cgroup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_memcg: Option<String>,
    /// The `oom_memcg`'s usage, limit and failcnt as the kernel printed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memcg_usage_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memcg_limit_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memcg_failcnt: Option<u64>,
    /// The cgroup named by `Tasks in <cgroup> are going to be killed due to
    /// memory.oom.group set` when this kill is part of such a group kill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoker: Option<Invoker>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `oom_reaper: reaped process <pid> (<comm>), now anon-rss:…` (the reaper
/// finished: `reaped` true, RSS after reaping) or `oom_reaper: unable to
/// reap pid:<pid> (<comm>)` (`reaped` false). The kernel prints neither
/// when the victim released its memory by exiting before the reaper ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomReaped {
    pub kmsg_seq: u64,
    pub ts_us: u64,
    pub pid: i32,
    pub comm: String,
    pub reaped: bool,
    /// The agent `seq` of the [`OomKill`] of this pid, if it reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anon_rss_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_rss_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shmem_rss_kb: Option<u64>,
}

/// `Out of memory and no killable processes...`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OomNoVictim {
    pub kmsg_seq: u64,
    pub ts_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoker: Option<Invoker>,
}

/// The kernel counted more kills (`/proc/vmstat` `oom_kill`) than the agent
/// found `Killed process` lines for: `count` kills happened whose log lines
/// were lost (overwritten in the ring before anyone read them, or before
/// the agent started). Reported once per missing kill, after the gap was
/// seen on two consecutive checks.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillsUnlogged {
    pub count: u64,
    /// `oom_kill` from `/proc/vmstat` (kills since boot).
    pub vmstat_oom_kill: u64,
    /// `Killed process` lines the agent read since boot.
    pub logged: u64,
}

/// Kernel log records lost: the sequence numbers jumped by `records` (the
/// ring was overwritten faster than the agent read it; `read` said EPIPE),
/// or the ring had already dropped its oldest records when the agent
/// started (`before_start`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsgLost {
    pub records: u64,
    /// The first sequence number read after the gap.
    pub resumed_at: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub before_start: bool,
}

/// A cgroup v2 `memory.events` (hierarchical counters), sent when it
/// changed, at the first sight of a cgroup with non-zero OOM counters, and
/// right after a kill.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemcgEvents {
    /// The cgroup's path below the cgroup2 mount, `/` style.
    pub cgroup: String,
    pub low: u64,
    pub high: u64,
    pub max: u64,
    pub oom: u64,
    pub oom_kill: u64,
    pub oom_group_kill: u64,
}

/// One line of `/proc/pressure/memory`; averages in hundredths of a percent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsiLine {
    pub avg10: u32,
    pub avg60: u32,
    pub avg300: u32,
    /// Total stall time since boot, µs.
    pub total_us: u64,
}

/// `/proc/pressure/memory` when the PSI trigger fired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    pub some: PsiLine,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full: Option<PsiLine>,
}

/// The periodic summary, every `interval_ms`; the host treats a missing
/// summary as a missing heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The guest's CLOCK_MONOTONIC, ms.
    pub uptime_ms: u64,
    pub mem_total_kb: u64,
    pub mem_free_kb: u64,
    pub mem_available_kb: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_total_kb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_free_kb: Option<u64>,
    /// PSI memory `some`/`full` avg10, hundredths of a percent; absent
    /// without CONFIG_PSI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_some_avg10: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub psi_full_avg10: Option<u32>,
    /// `/proc/vmstat` `oom_kill` (absent before Linux 4.13).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmstat_oom_kill: Option<u64>,
    /// `Killed process` lines read since boot.
    pub kills_logged: u64,
    /// Kills counted by the kernel but lost from its log, since boot.
    pub kills_unlogged: u64,
    /// Kernel log records lost (overruns and before the agent started).
    pub kmsg_lost: u64,
    /// Messages the agent's queue dropped because the host did not take
    /// them in time (bounded queue), since the agent started.
    pub dropped: u64,
    /// Messages waiting for an ack when this summary was made.
    pub queued: u32,
}

/// Host → agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Cumulative: every message of the stream up to this seq is held.
    pub ack: u64,
}

impl Ack {
    /// The line to write, newline included.
    pub fn to_line(self) -> Vec<u8> {
        let mut v = format!("{{\"ack\":{}}}", self.ack).into_bytes();
        v.push(b'\n');
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_flat_with_type_and_seq() {
        let e = Envelope {
            seq: 7,
            message: AgentMessage::KillsUnlogged(KillsUnlogged {
                count: 1,
                vmstat_oom_kill: 3,
                logged: 2,
            }),
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"seq":7,"type":"kills_unlogged","count":1,"vmstat_oom_kill":3,"logged":2}"#
        );
        let back: Envelope = serde_json::from_str(&s).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn unknown_types_and_fields_are_tolerated() {
        let e: Envelope =
            serde_json::from_str(r#"{"seq":3,"type":"from_the_future","x":1}"#).unwrap();
        assert_eq!(e.message, AgentMessage::Unknown);
        let e: Envelope = serde_json::from_str(
            r#"{"seq":4,"type":"kmsg_lost","records":2,"resumed_at":9,"new_field":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(e.message.kind(), "kmsg_lost");
    }

    #[test]
    fn ack_line() {
        assert_eq!(Ack { ack: 42 }.to_line(), b"{\"ack\":42}\n");
        let a: Ack = serde_json::from_slice(b"{\"ack\":42}").unwrap();
        assert_eq!(a.ack, 42);
    }
}
