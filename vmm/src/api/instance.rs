//! What the instance is: `GET /` ([`InstanceInfo`]), `GET /version`
//! ([`VersionInfo`]) and `PATCH /vm` ([`VmStateUpdate`]), in Firecracker's
//! shapes.

use serde::{Deserialize, Serialize};

/// The name `GET /` reports as `app_name`.
pub const APP_NAME: &str = "vmm";
/// Our version, reported as `vmm_version` and `firecracker_version`.
pub const VMM_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The instance id when `vmm run --id` is not given (Firecracker's).
pub const DEFAULT_INSTANCE_ID: &str = "anonymous-instance";

/// The state in `GET /`, spelt as Firecracker spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configurable; waiting for `InstanceStart`.
    #[serde(rename = "Not started")]
    NotStarted,
    /// Booted (also while it is ending).
    Running,
    /// `PATCH /vm {"state": "Paused"}` stopped the vCPUs.
    Paused,
}

/// Response of `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// `vmm run --id`, `anonymous-instance` by default.
    pub id: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Our version (not Firecracker's).
    pub vmm_version: String,
    /// `vmm`.
    pub app_name: String,
}

/// Response of `GET /version`: Firecracker's field name, our version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Our version (e.g. `0.1.0`), not a Firecracker release.
    pub firecracker_version: String,
}

/// The states `PATCH /vm` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestedState {
    /// Stop the vCPUs; guest RAM and devices stay.
    Paused,
    /// Run the vCPUs again.
    Resumed,
}

/// Body of `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateUpdate {
    /// What the VM should be.
    pub state: RequestedState,
}
