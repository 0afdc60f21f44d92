//! What the API asks of the VM: the [`VmBackend`] trait.

use super::error::ApiError;
use super::types::{
    BalloonConfig, BalloonInfo, BalloonStats, BalloonStatsUpdate, BalloonUpdate, MemoryReleased,
    VmInfo, VsockConfig, VsockInfo,
};

/// The VM behind the API. The server calls it only with requests that
/// parsed and validated (a malformed request never gets here), from its
/// worker threads, and **one call at a time**: calls are serialised in
/// the order the requests completed, so an implementation need not guard
/// against two API calls racing each other (it must still be `Sync` for
/// its own threads).
///
/// Errors the server expects, and the status each becomes:
/// - [`ApiError::Conflict`] (409): not allowed in the VM's current state,
///   e.g. `put_balloon` after `start`, `start` twice, or statistics calls
///   while statistics are disabled (`stats_polling_interval_s` is 0).
/// - [`ApiError::BalloonNotConfigured`] (404): a balloon call on a VM
///   without a balloon device.
/// - [`ApiError::BadRequest`] (400): a value the VM cannot take, e.g.
///   `amount_mib` larger than guest RAM.
/// - [`ApiError::Internal`] (500): the VMM failed.
pub trait VmBackend: Send + Sync + 'static {
    /// `GET /vm`.
    fn vm_info(&self) -> VmInfo;
    /// `PUT /actions {"action_type": "InstanceStart"}`: boot the VM.
    fn start(&self) -> Result<(), ApiError>;
    /// `PUT /balloon`: add the balloon device; before boot only.
    fn put_balloon(&self, config: BalloonConfig) -> Result<(), ApiError>;
    /// `PATCH /balloon`: set a new target size; before or after boot.
    fn patch_balloon(&self, update: BalloonUpdate) -> Result<(), ApiError>;
    /// `GET /balloon`.
    fn balloon(&self) -> Result<BalloonInfo, ApiError>;
    /// `GET /balloon/statistics`.
    fn balloon_stats(&self) -> Result<BalloonStats, ApiError>;
    /// `PATCH /balloon/statistics`: change the polling interval.
    fn patch_balloon_stats(&self, update: BalloonStatsUpdate) -> Result<(), ApiError>;
    /// `GET /balloon/metrics`: what the device did and what it refused
    /// from the guest, as counters (a JSON object).
    fn balloon_metrics(&self) -> Result<serde_json::Value, ApiError>;
    /// `PUT /vsock`: add the vsock device; before boot only. A
    /// configuration the device cannot use (CID, path) is a 400.
    fn put_vsock(&self, config: VsockConfig) -> Result<(), ApiError>;
    /// `GET /vsock`.
    fn vsock(&self) -> Result<VsockInfo, ApiError>;
    /// `GET /vsock/metrics`: what the device did and what it refused from
    /// the guest, as counters (a JSON object).
    fn vsock_metrics(&self) -> Result<serde_json::Value, ApiError>;
    /// `GET /drives/{drive_id}/metrics`: what the drive's device did and
    /// what it refused from the guest, as counters (a JSON object). Not
    /// found (404) for a drive the VM does not have.
    fn drive_metrics(&self, drive_id: &str) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::NotFound(format!(
            "the VM has no drive {drive_id:?}"
        )))
    }
    /// `PUT /actions {"action_type": "ReleaseMemory"}`: stop the vCPUs
    /// for good and give all guest RAM back to the host. Conflict (409)
    /// when the VM is not running, and then nothing changes; any other
    /// outcome, success or failure, leaves the VM stopped for good, and the
    /// server calls [`end_after_release`](VmBackend::end_after_release)
    /// once the answer is written.
    fn release_memory(&self) -> Result<MemoryReleased, ApiError>;
    /// Ends the VMM if [`release_memory`](VmBackend::release_memory)
    /// stopped the VM; does nothing otherwise.
    fn end_after_release(&self);
}
