//! The per-VM control API: HTTP/1.1 with JSON bodies on a Unix socket
//! (`vmm run --api-sock PATH`), shaped like Firecracker's. The OpenAPI
//! document is `vmm/api/openapi.yaml`.
//!
//! | method | path | body | success |
//! |---|---|---|---|
//! | `GET` | `/` | – | 200 [`InstanceInfo`] |
//! | `GET` | `/version` | – | 200 [`VersionInfo`] |
//! | `GET` | `/vm` | – | 200 [`VmInfo`] (ours) |
//! | `PATCH` | `/vm` | [`VmStateUpdate`] `{"state":"Paused"}` | 204 |
//! | `GET` | `/vm/config` | – | 200 [`FullVmConfig`] |
//! | `PUT` | `/boot-source` | [`BootSource`] (before boot) | 204 |
//! | `GET` | `/machine-config` | – | 200 [`MachineConfig`] |
//! | `PUT` | `/machine-config` | [`MachineConfig`] (before boot) | 204 |
//! | `PATCH` | `/machine-config` | [`MachineConfigUpdate`] (before boot) | 204 |
//! | `PUT` | `/logger` | [`LoggerConfig`] | 204 |
//! | `PUT` | `/metrics` | [`MetricsConfig`] | 204 |
//! | `PUT` | `/actions` | [`ActionBody`] `{"action_type":"InstanceStart"}` | 204 once booted |
//! | `PUT` | `/actions` | [`ActionBody`] `{"action_type":"FlushMetrics"}` | 204 |
//! | `PUT` | `/actions` | [`ActionBody`] `{"action_type":"ReleaseMemory"}` (ours) | 200 [`MemoryReleased`], then the VMM exits |
//! | `PUT` | `/balloon` | [`BalloonConfig`] (before boot) | 204 |
//! | `PATCH` | `/balloon` | [`BalloonUpdate`] | 204 |
//! | `GET` | `/balloon` | – | 200 [`BalloonInfo`] |
//! | `GET` | `/balloon/statistics` | – | 200 [`BalloonStats`] |
//! | `PATCH` | `/balloon/statistics` | [`BalloonStatsUpdate`] | 204 |
//! | `GET` | `/balloon/metrics` | – | 200 counters (JSON object) |
//! | `PUT` | `/vsock` | [`VsockConfig`] (before boot) | 204 |
//! | `GET` | `/vsock` | – | 200 [`VsockInfo`] |
//! | `GET` | `/vsock/metrics` | – | 200 counters (JSON object) |
//! | `GET` | `/drives/{drive_id}/metrics` (ours) | – | 200 counters (JSON object) |
//! | `GET` | `/network-interfaces/{iface_id}/metrics` (ours) | – | 200 counters (JSON object) |
//!
//! Firecracker's other resources (`/drives`, `/network-interfaces`,
//! `/snapshot/*`, `/mmds*`, `/entropy`, ...) answer 400 naming what is not
//! supported (`unsupported`).
//!
//! Every error is a 4xx or 5xx status with `{"fault_message": "..."}`
//! ([`ApiError`]). Requests that are not HTTP, too large, too slow, for an
//! unknown path or method, with a body that is not `application/json` or
//! does not deserialize exactly (unknown fields are errors) are answered
//! by the server and never reach the [`VmBackend`]; the backend sees one
//! call at a time.
//!
//! With the socket at `/tmp/vm.sock`:
//!
//! ```text
//! curl --unix-socket /tmp/vm.sock http://localhost/vm
//! curl --unix-socket /tmp/vm.sock -X PUT http://localhost/balloon \
//!      -H 'Content-Type: application/json' \
//!      -d '{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1, "free_page_reporting": true}'
//! curl --unix-socket /tmp/vm.sock -X PUT http://localhost/actions \
//!      -H 'Content-Type: application/json' -d '{"action_type": "InstanceStart"}'
//! curl --unix-socket /tmp/vm.sock -X PATCH http://localhost/balloon \
//!      -H 'Content-Type: application/json' -d '{"amount_mib": 32}'
//! curl --unix-socket /tmp/vm.sock http://localhost/balloon
//! curl --unix-socket /tmp/vm.sock http://localhost/balloon/statistics
//! curl --unix-socket /tmp/vm.sock -X PATCH http://localhost/balloon/statistics \
//!      -H 'Content-Type: application/json' -d '{"stats_polling_interval_s": 5}'
//! ```
//!
//! `curl -d` sends `application/x-www-form-urlencoded` unless told
//! otherwise, which the server refuses (415): keep the `-H` flag. Add
//! `-i` to see the status of the 204 answers.
//!
//! Layout: [`server`] (the generic [`crate::http`] server with this API's
//! handler: one backend call at a time), `routes` (method + path →
//! backend call), [`types`] (bodies), [`error`] (shared with the daemon's
//! API), [`backend`] (the trait the VM implements). Socket, framing,
//! limits and threads are [`crate::http`]'s.

pub mod backend;
pub mod error;
pub mod instance;
mod routes;
pub mod server;
pub mod types;
mod unsupported;
pub mod vm_config;

#[cfg(test)]
pub(crate) mod fuzz;
#[cfg(test)]
mod tests;

pub use crate::http::{Limits as ApiLimits, MAX_HEADER_FIELDS};
pub use backend::VmBackend;
pub use error::{ApiError, ApiServerError};
pub use instance::{InstanceInfo, InstanceState, RequestedState, VersionInfo, VmStateUpdate};
pub use server::ApiServer;
pub use types::{
    ActionBody, ActionType, BalloonConfig, BalloonInfo, BalloonStats, BalloonStatsUpdate,
    BalloonUpdate, DriveConfig, MemoryReleased, NetworkInterfaceConfig, VmInfo, VmState,
    VsockConfig, VsockInfo,
};
pub use vm_config::{
    BootSource, FullVmConfig, LoggerConfig, MachineConfig, MachineConfigUpdate, MetricsConfig,
};
