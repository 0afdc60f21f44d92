//! What the daemon's API asks of the daemon: the [`DaemonBackend`] trait.

use std::sync::mpsc::Receiver;

use super::events::EventRecord;
use super::types::{OomPatch, OomTrigger, OomView, VmPatch, VmSpec, VmView};
use crate::http::ApiError;

/// The daemon behind the API.
///
/// The server calls it only with requests that parsed and validated (the
/// bodies' `validate` passed; a malformed request never gets here), from
/// its worker threads, **concurrently** (up to [`Limits::workers`] calls at
/// once, 4 by default): a slow `create_vm` must not hold up an operator's
/// `trigger_oom` in an emergency, so the daemon guards its own state. A
/// call holds a worker while it runs: keep calls short (a kill waits for
/// the victim's memory, at most a few seconds).
///
/// [`Limits::workers`]: crate::http::Limits::workers
///
/// Errors the server expects, and the status each becomes:
/// - [`ApiError::NotFound`] (404): no VM with this id (say which:
///   "no VM 'web-1'").
/// - [`ApiError::Conflict`] (409): the id is taken; the VM is not running
///   (balloon target of an exited VM); it has no balloon.
/// - [`ApiError::BadRequest`] (400): a value the daemon cannot take, e.g.
///   a pool without a budget, a balloon target above guest RAM, a PSI
///   threshold above the window ([`OomPolicy::apply`] checks that one).
/// - [`ApiError::Unavailable`] (503): the daemon is shutting down.
/// - [`ApiError::Internal`] (500): the daemon failed (e.g. cannot spawn
///   the VMM).
///
/// [`OomPolicy::apply`]: super::OomPolicy::apply
pub trait DaemonBackend: Send + Sync + 'static {
    /// `POST /vms` (201): create and boot a VM; the view of the new VM.
    fn create_vm(&self, spec: VmSpec) -> Result<VmView, ApiError>;
    /// `GET /vms`: every VM the daemon knows, live or ended, by id.
    fn list_vms(&self) -> Vec<VmView>;
    /// `GET /vms/{id}`.
    fn get_vm(&self, id: &str) -> Result<VmView, ApiError>;
    /// `PATCH /vms/{id}`: the view after the change.
    fn patch_vm(&self, id: &str, patch: VmPatch) -> Result<VmView, ApiError>;
    /// `DELETE /vms/{id}` (204): stop the VM if it runs and forget it.
    fn delete_vm(&self, id: &str) -> Result<(), ApiError>;
    /// `GET /oom`: the knobs and the pressure now.
    fn oom(&self) -> OomView;
    /// `PATCH /oom`: the view after the change.
    fn patch_oom(&self, patch: OomPatch) -> Result<OomView, ApiError>;
    /// `POST /oom/trigger`: one OOM decision now, like sysrq-f (acted on
    /// unless `dry_run`); the `oom_decision` event (as also recorded in
    /// the event log).
    fn trigger_oom(&self, req: OomTrigger) -> Result<EventRecord, ApiError>;
    /// `GET /events?since=N`: the events still kept whose `seq` is above
    /// `since`, oldest first.
    fn events(&self, since: u64) -> Vec<EventRecord>;
    /// `GET /events?since=N&follow=true`: the same events, then every new
    /// one as it happens, without a gap or a repeat between the two. The
    /// server drops the receiver when the client goes away, so a send
    /// failing means that follower is gone; dropping the sender ends the
    /// stream.
    fn follow_events(&self, since: u64) -> Receiver<EventRecord>;
    /// `GET /metrics`: Prometheus text exposition format 0.0.4.
    fn metrics(&self) -> String;
}
