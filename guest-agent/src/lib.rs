//! The guest agent of our microVMs, and the host side of its protocol.
//!
//! The agent runs inside a Linux guest (a static binary, see
//! `build-static.sh`) and reports to the host over AF_VSOCK: every
//! in-guest OOM kill from the kernel log, merged from the kernel's lines
//! into one report; kills the log lost, from `/proc/vmstat`'s counter;
//! cgroup v2 `memory.events`; PSI memory pressure; and a periodic memory
//! summary that doubles as the heartbeat.
//!
//! - [`protocol`]: the messages and the wire rules (NDJSON, sequence
//!   numbers, cumulative acks, resend after reconnect). Also in
//!   `PROTOCOL.md`.
//! - [`host`]: [`host::HostSession`], the host's decoder: bytes in, typed
//!   and deduplicated messages and acks out, bounded on garbage.
//! - `agent` (feature `agent`, on by default): the guest-only code. The
//!   host daemon depends on this crate with `default-features = false` and
//!   gets `protocol` and `host` only, without libc or the guest's loop.

pub mod host;
pub mod protocol;

#[cfg(feature = "agent")]
pub mod agent;
