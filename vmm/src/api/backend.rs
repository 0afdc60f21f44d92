//! What the API asks of the VM: the [`VmBackend`] trait.

use super::error::ApiError;
use super::instance::{InstanceInfo, VmStateUpdate};
use super::types::{
    BalloonConfig, BalloonInfo, BalloonStats, BalloonStatsUpdate, BalloonUpdate, DriveConfig,
    MemoryReleased, NetworkInterfaceConfig, VmInfo, VsockConfig, VsockInfo,
};
use super::vm_config::{
    BootSource, FullVmConfig, LoggerConfig, MachineConfig, MachineConfigUpdate, MetricsConfig,
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
///   The Firecracker resources added later (`/boot-source`,
///   `/machine-config`, `/logger`, `/metrics`, `PATCH /vm`) answer such
///   conflicts with a 400 instead, as Firecracker does.
/// - [`ApiError::BalloonNotConfigured`] (404): a balloon call on a VM
///   without a balloon device.
/// - [`ApiError::BadRequest`] (400): a value the VM cannot take, e.g.
///   `amount_mib` larger than guest RAM.
/// - [`ApiError::Internal`] (500): the VMM failed.
pub trait VmBackend: Send + Sync + 'static {
    /// `GET /`.
    fn instance_info(&self) -> InstanceInfo;
    /// `GET /vm`.
    fn vm_info(&self) -> VmInfo;
    /// `PATCH /vm`: pause or resume the vCPUs.
    fn patch_vm(&self, update: VmStateUpdate) -> Result<(), ApiError>;
    /// `GET /vm/config`: the configuration the VM boots (booted) with.
    fn vm_config(&self) -> FullVmConfig;
    /// `PUT /boot-source`; before boot only.
    fn put_boot_source(&self, source: BootSource) -> Result<(), ApiError>;
    /// `GET /machine-config`.
    fn machine_config(&self) -> MachineConfig;
    /// `PUT /machine-config`; before boot only.
    fn put_machine_config(&self, config: MachineConfig) -> Result<(), ApiError>;
    /// `PATCH /machine-config` (at least one field set); before boot only.
    fn patch_machine_config(&self, update: MachineConfigUpdate) -> Result<(), ApiError>;
    /// `PUT /logger`.
    fn put_logger(&self, config: LoggerConfig) -> Result<(), ApiError>;
    /// `PUT /metrics`; once.
    fn put_metrics(&self, config: MetricsConfig) -> Result<(), ApiError>;
    /// `PUT /actions {"action_type": "FlushMetrics"}`.
    fn flush_metrics(&self) -> Result<(), ApiError>;
    /// `PUT /actions {"action_type": "InstanceStart"}`: boot the VM and
    /// return once it runs, or with the reason it could not boot (400).
    fn start(&self) -> Result<(), ApiError>;
    /// The answer to a `start` that did not conflict has been written: a
    /// VMM that is ending may go.
    fn start_answered(&self);
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
    /// `PUT /drives/{drive_id}`: adds (or replaces) a drive, before boot
    /// only.
    fn put_drive(&self, drive_id: &str, config: DriveConfig) -> Result<(), ApiError> {
        let _ = (drive_id, config);
        Err(ApiError::BadRequest(
            "drives cannot be configured on this VM".into(),
        ))
    }

    /// `GET /drives/{drive_id}/metrics`: what the drive's device did and
    /// what it refused from the guest, as counters (a JSON object). Not
    /// found (404) for a drive the VM does not have.
    fn drive_metrics(&self, drive_id: &str) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::NotFound(format!(
            "the VM has no drive {drive_id:?}"
        )))
    }
    /// `PUT /network-interfaces/{iface_id}`: adds (or replaces) an
    /// interface, before boot only.
    fn put_net(&self, iface_id: &str, config: NetworkInterfaceConfig) -> Result<(), ApiError> {
        let _ = (iface_id, config);
        Err(ApiError::BadRequest(
            "network interfaces cannot be configured on this VM".into(),
        ))
    }

    /// `GET /network-interfaces/{iface_id}/metrics`: what the interface's
    /// device did, dropped and refused from the guest, as counters (a
    /// JSON object). Not found (404) for an interface the VM does not have.
    fn net_metrics(&self, iface_id: &str) -> Result<serde_json::Value, ApiError> {
        Err(ApiError::NotFound(format!(
            "the VM has no network interface {iface_id:?}"
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
