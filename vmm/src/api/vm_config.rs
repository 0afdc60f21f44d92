//! The VM's configuration in Firecracker's shapes: `PUT /boot-source`,
//! `PUT`/`PATCH`/`GET /machine-config`, `GET /vm/config` and the
//! `--config-file` layout.
//!
//! Each type checks what this VMM cannot do ([`MachineConfig::validate`])
//! so that the API and the configuration file refuse the same things with
//! the same words.

use serde::{Deserialize, Serialize};

use crate::vm::MAX_VCPUS;

use super::types::{BalloonConfig, DriveConfig, NetworkInterfaceConfig, VsockConfig};

/// Body of `PUT /boot-source`, and `boot-source` in `GET /vm/config` and
/// the configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The kernel: a PVH ELF (`vmlinux`) or a bzImage. Required in
    /// requests; absent in `GET /vm/config` when the VM boots the embedded
    /// tiny guest (no `PUT /boot-source`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_image_path: Option<String>,
    /// An initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// The kernel command line; absent means empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// Firecracker's `huge_pages`: only `None` (4 KiB pages) here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HugePages {
    /// 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages (refused).
    Transparent,
    /// hugetlbfs 2 MiB pages (refused).
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Body of `PUT /machine-config` and answer of `GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs: 1 up to 254 (Firecracker: 32).
    pub vcpu_count: u8,
    /// Guest RAM in MiB: 8 or more.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading: only `false`.
    #[serde(default)]
    pub smt: bool,
    /// Firecracker's deprecated static CPU templates: only `"None"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Dirty page tracking for diff snapshots: only `false`.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages backing guest RAM: only `None`.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfig {
    /// Firecracker's defaults: 1 vCPU, 128 MiB.
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// Smallest guest RAM in MiB (the VM's layout needs 8 MiB).
pub const MIN_MEM_SIZE_MIB: u64 = crate::vm::layout::MIN_MEM_SIZE >> 20;
/// Largest guest RAM in MiB we accept (1 TiB).
pub const MAX_MEM_SIZE_MIB: u64 = 1 << 20;

impl MachineConfig {
    /// Refuses what this VMM cannot do, naming the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(format!(
                "vcpu_count: {} is out of range (1 to {MAX_VCPUS})",
                self.vcpu_count
            ));
        }
        if !(MIN_MEM_SIZE_MIB..=MAX_MEM_SIZE_MIB).contains(&self.mem_size_mib) {
            return Err(format!(
                "mem_size_mib: {} is out of range ({MIN_MEM_SIZE_MIB} to {MAX_MEM_SIZE_MIB})",
                self.mem_size_mib
            ));
        }
        if self.smt {
            return Err("smt: simultaneous multithreading is not supported; only false".into());
        }
        if let Some(t) = self.cpu_template.as_deref().filter(|t| *t != "None") {
            return Err(format!(
                "cpu_template: CPU templates are not supported (got {t:?}); only \"None\" \
                 (hide CPU features with `vmm run --cpuid-hide` instead)"
            ));
        }
        if self.track_dirty_pages {
            return Err(
                "track_dirty_pages: dirty page tracking (for diff snapshots) is not \
                        supported; only false"
                    .into(),
            );
        }
        if self.huge_pages != HugePages::None {
            return Err(format!(
                "huge_pages: {:?} is not supported; only \"None\"",
                self.huge_pages
            ));
        }
        Ok(())
    }

    /// `self` with the fields `update` sets.
    pub fn patched(&self, update: &MachineConfigUpdate) -> MachineConfig {
        MachineConfig {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            cpu_template: update
                .cpu_template
                .clone()
                .or_else(|| self.cpu_template.clone()),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
        }
    }
}

/// Body of `PATCH /machine-config`: the fields to change; at least one.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// As in [`MachineConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// As in [`MachineConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<u64>,
    /// As in [`MachineConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// As in [`MachineConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// As in [`MachineConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// As in [`MachineConfig`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigUpdate {
    /// No field set: Firecracker refuses such a `PATCH`.
    pub fn is_empty(&self) -> bool {
        *self == MachineConfigUpdate::default()
    }
}

/// Body of `PUT /logger`, Firecracker's shape.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// The file or named pipe the VMM's messages go to (its standard error
    /// from then on); created if missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off`
    /// (case-insensitive); accepted and checked, but the VMM only writes
    /// warnings and errors, whatever the level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Accepted; the VMM's messages carry no level or origin to show.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Accepted; see `show_level`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// A module filter: refused (there are no modules to filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// The levels `PUT /logger` accepts.
pub const LOG_LEVELS: [&str; 6] = ["Error", "Warning", "Info", "Debug", "Trace", "Off"];

impl LoggerConfig {
    /// Refuses an unknown level and the module filter.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(level) = &self.level {
            if !LOG_LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
                return Err(format!(
                    "level: unknown level {level:?} (one of {})",
                    LOG_LEVELS.join(", ")
                ));
            }
        }
        if self.module.is_some() {
            return Err("module: filtering the log by module is not supported".into());
        }
        Ok(())
    }
}

/// Body of `PUT /metrics`, Firecracker's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// The file or named pipe that gets one JSON line of metrics every 60
    /// seconds and on `FlushMetrics`; created if missing.
    pub metrics_path: String,
}

/// `GET /vm/config`, and the `--config-file` layout: Firecracker's
/// full-configuration shape.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FullVmConfig {
    /// Absent (or without `kernel_image_path`): the embedded tiny guest.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    /// Absent: 1 vCPU, 128 MiB.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    /// A virtio-balloon device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonConfig>,
    /// A virtio-vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// virtio-blk devices, as `vmm run --drive`.
    #[serde(default)]
    pub drives: Vec<DriveConfig>,
    /// virtio-net interfaces, as `vmm run --net`.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// As `PUT /logger` (configuration file only; `GET /vm/config` leaves
    /// it out, as Firecracker does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    /// As `PUT /metrics` (configuration file only; `GET /vm/config` leaves
    /// it out, as Firecracker does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}
