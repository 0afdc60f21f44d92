//! The control API of the host OOM manager (`vmm daemon --socket PATH`):
//! HTTP/1.1 with JSON bodies on a Unix socket (mode 0600), on the same
//! server as the per-VM API ([`crate::http`]), with the same error shape
//! (`{"fault_message": "..."}`) and the same handling of bad requests.
//! The OpenAPI document is `vmm/api/daemon-openapi.yaml`; the client is
//! `vmm ctl` ([`crate::ctl`]).
//!
//! | method | path | body | success |
//! |---|---|---|---|
//! | `POST` | `/vms` | [`VmSpec`] | 201 [`VmView`], `Location: /vms/{id}` |
//! | `GET` | `/vms` | – | 200 `[`[`VmView`]`]` |
//! | `GET` | `/vms/{id}` | – | 200 [`VmView`] |
//! | `PATCH` | `/vms/{id}` | [`VmPatch`] | 200 [`VmView`] |
//! | `DELETE` | `/vms/{id}` | – | 204 |
//! | `GET` | `/oom` | – | 200 [`OomView`] |
//! | `PATCH` | `/oom` | [`OomPatch`] | 200 [`OomView`] |
//! | `POST` | `/oom/trigger` | [`OomTrigger`] (optional) | 200 the decision event |
//! | `GET` | `/events?since=N` | – | 200 `[`[`EventRecord`]`]` |
//! | `GET` | `/events?since=N&follow=true` | – | 200 NDJSON stream, chunked |
//! | `GET` | `/metrics` | – | 200 Prometheus text 0.0.4 |
//!
//! Requests are parsed and validated before the [`DaemonBackend`] sees
//! them: unknown paths are 404, wrong methods 405 with `Allow`, bodies
//! that are not exactly the type (unknown fields too) or fail its
//! `validate` 400 naming the field. Query strings are refused except on
//! `/events`.
//!
//! With the socket at `/run/vmm/daemon.sock`:
//!
//! ```text
//! curl --unix-socket /run/vmm/daemon.sock -X POST http://localhost/vms \
//!      -H 'Content-Type: application/json' -d '{"id": "web-1", "mem_mib": 128}'
//! curl --unix-socket /run/vmm/daemon.sock http://localhost/vms
//! curl --unix-socket /run/vmm/daemon.sock -X PATCH http://localhost/vms/web-1 \
//!      -H 'Content-Type: application/json' -d '{"oom_score_adj": -1000}'
//! curl --unix-socket /run/vmm/daemon.sock -X POST http://localhost/oom/trigger \
//!      -H 'Content-Type: application/json' -d '{"dry_run": true}'
//! curl -N --unix-socket /run/vmm/daemon.sock 'http://localhost/events?follow=true'
//! curl --unix-socket /run/vmm/daemon.sock http://localhost/metrics
//! ```
//!
//! Layout: [`server`] ([`DaemonApiServer`]), `routes` (method + path →
//! backend call, the NDJSON event stream), [`types`] (bodies and their
//! validation), [`events`] (the typed events), [`backend`] (the trait the
//! daemon implements). Errors are [`crate::http::ApiError`].

pub mod backend;
pub mod events;
mod routes;
pub mod server;
pub mod types;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use crate::http::ApiError;
pub use backend::DaemonBackend;
pub use events::{Event, EventLogView, EventRecord};
pub use server::DaemonApiServer;
pub use types::{
    AgentView, BalloonView, ConstraintKind, OomAction, OomPatch, OomPolicy, OomTrigger, OomView,
    PoolView, PressureView, RunState, StuckDomain, VmPatch, VmSpec, VmState, VmView,
};
