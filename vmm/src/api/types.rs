//! Request and response bodies of the API, with Firecracker's field names
//! where Firecracker has the same thing.
//!
//! Request bodies reject unknown fields, so a misspelt field is an error
//! rather than a silently ignored one. Response bodies also deserialize, so
//! that clients written in Rust (the host OOM manager) can reuse them.

use serde::{Deserialize, Serialize};

/// Body of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// What to do.
    pub action_type: ActionType,
}

/// The actions of `PUT /actions`: Firecracker's, and `ReleaseMemory`,
/// which is ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the VM; answered once it booted (or failed to).
    InstanceStart,
    /// Write a line of metrics now (after `PUT /metrics`).
    FlushMetrics,
    /// Firecracker's Ctrl+Alt+Del: refused (400), our i8042 has no
    /// keyboard.
    SendCtrlAltDel,
    /// Our extension: stop the vCPUs for good, give all guest RAM back to
    /// the host (`madvise(MADV_DONTNEED)`), answer with
    /// [`MemoryReleased`], then exit (status 253). For a VM that is to die
    /// anyway: its memory comes back before the process's exit path runs.
    ReleaseMemory,
}

/// Response of `PUT /actions {"action_type": "ReleaseMemory"}` (ours).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReleased {
    /// What the host got back: `vmm_rss_before_bytes` minus
    /// `vmm_rss_after_bytes`.
    pub released_bytes: u64,
    /// Resident bytes of the VMM process (`RssAnon + RssFile + RssShmem`
    /// of `/proc/self/status`) when the request arrived.
    pub vmm_rss_before_bytes: u64,
    /// The same once guest RAM was released.
    pub vmm_rss_after_bytes: u64,
    /// Guest RAM covered by the `madvise` calls: all of it.
    pub guest_ram_bytes: u64,
    /// Guest RAM regions (one below 3 GiB; two above).
    pub regions: u32,
    /// Threads that released at once, over disjoint ranges (the API's
    /// thread and parked vCPU threads).
    pub threads: u32,
    /// `madvise(MADV_DONTNEED)` calls made (2 MiB each).
    pub madvise_calls: u64,
    /// Time the vCPUs took to leave `KVM_RUN` for good, µs.
    pub stop_vcpus_us: u64,
    /// Time of the `madvise` calls, µs.
    pub madvise_us: u64,
    /// From the start of the request's handling to memory released, µs.
    pub elapsed_us: u64,
}

/// Body of `PUT /balloon`: add a virtio-balloon device (before boot only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonConfig {
    /// Target balloon size in MiB: guest memory taken from the guest.
    pub amount_mib: u32,
    /// Let the guest deflate the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Seconds between statistics requests to the guest; 0 disables them.
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Offer free page reporting (VIRTIO_BALLOON_F_REPORTING): the guest
    /// hands back pages it frees and the host releases them.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// Body of `PATCH /balloon`: change the target size at any time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// New target balloon size in MiB.
    pub amount_mib: u32,
}

/// Body of `PATCH /balloon/statistics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// New interval between statistics requests, in seconds.
    pub stats_polling_interval_s: u16,
}

/// Response of `GET /balloon`: the configuration plus where the balloon
/// stands. Firecracker returns only the first three fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonInfo {
    /// Target size in MiB (last `PUT` or `PATCH`).
    pub amount_mib: u32,
    /// As configured.
    pub deflate_on_oom: bool,
    /// As configured or last patched.
    pub stats_polling_interval_s: u16,
    /// As configured.
    pub free_page_reporting: bool,
    /// Target size in 4 KiB pages, as written to the device's `num_pages`.
    pub target_pages: u32,
    /// Pages the guest has given to the balloon (`actual`).
    pub actual_pages: u32,
    /// `target_pages` in MiB.
    pub target_mib: u32,
    /// `actual_pages` in MiB.
    pub actual_mib: u32,
}

/// Response of `GET /balloon/statistics`: the balloon's size and the last
/// statistics the guest sent. A statistic the guest never sent is absent
/// (not zero); tags a guest kernel does not know are never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BalloonStats {
    /// Target size in 4 KiB pages.
    pub target_pages: u32,
    /// Pages in the balloon now.
    pub actual_pages: u32,
    /// Target size in MiB.
    pub target_mib: u32,
    /// Size now in MiB.
    pub actual_mib: u32,
    /// Bytes swapped in (tag 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_in: Option<u64>,
    /// Bytes swapped out (tag 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap_out: Option<u64>,
    /// Major page faults (tag 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major_faults: Option<u64>,
    /// Minor page faults (tag 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor_faults: Option<u64>,
    /// Free memory in bytes (tag 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_memory: Option<u64>,
    /// Total memory in bytes (tag 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_memory: Option<u64>,
    /// Available memory in bytes, as in `MemAvailable` (tag 6).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_memory: Option<u64>,
    /// Disk caches in bytes (tag 7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations (tag 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations (tag 9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugetlb_failures: Option<u64>,
    /// OOM kills in the guest (tag 10, Linux 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_kills: Option<u64>,
    /// Allocation stalls (tag 11, Linux 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alloc_stalls: Option<u64>,
    /// Pages scanned by kswapd (tag 12, Linux 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_scans: Option<u64>,
    /// Pages scanned in direct reclaim (tag 13, Linux 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_scans: Option<u64>,
    /// Pages reclaimed by kswapd (tag 14, Linux 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub async_reclaims: Option<u64>,
    /// Pages reclaimed in direct reclaim (tag 15, Linux 6.12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_reclaims: Option<u64>,
    /// Milliseconds since the guest last sent statistics; absent until it
    /// first does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
}

/// Body of `PUT /vsock`: add a virtio-vsock device (before boot only),
/// with Firecracker's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID: 3 up to 2^32 - 2.
    pub guest_cid: u64,
    /// Host processes connect to this Unix socket and send
    /// `CONNECT <port>\n`; guest connections to host port P go to
    /// `<uds_path>_P`. At most 96 bytes, so every `_P` path fits a socket
    /// address.
    pub uds_path: String,
    /// Firecracker's deprecated device name: accepted and ignored, so its
    /// clients work unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// Body of `PUT /drives/{drive_id}` and the fields of `vmm run --drive`:
/// a virtio-blk device over a raw image file (before boot only), with
/// Firecracker's fields. Of Firecracker's others, the values that mean
/// what this device does are accepted (`cache_type` `Unsafe` or
/// `Writeback`: flushes are always honoured; `io_engine` `Sync`;
/// `partuuid` and `rate_limiter` null), any other is refused naming the
/// field ([`DriveConfig::check_supported`]); unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// 1 to 64 ASCII letters, digits, `_` or `-`; the guest's `GET_ID`
    /// answer (its first 20 bytes).
    pub drive_id: String,
    /// The raw image file.
    pub path_on_host: String,
    /// Boot from it: `root=/dev/vda` and `ro` or `rw` are appended to the
    /// kernel command line, and it becomes the first drive (`vda`). One
    /// drive at most.
    #[serde(default)]
    pub is_root_device: bool,
    /// Open the image read-only; the guest sees a read-only disk.
    #[serde(default)]
    pub is_read_only: bool,
    /// Firecracker: a partition of the root device by UUID. Not supported:
    /// null or absent only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Firecracker: `Unsafe` (flushes ignored) or `Writeback` (honoured).
    /// Both accepted; this device always honours flushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// Firecracker: `Sync` or `Async` (io_uring). `Sync` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    /// Firecracker: a token-bucket rate limiter. Not supported: null or
    /// absent only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
}

impl DriveConfig {
    /// Refuses, naming the field, what Firecracker accepts and this device
    /// does not do.
    pub fn check_supported(&self) -> Result<(), String> {
        if self.partuuid.is_some() {
            return Err(
                "partuuid: booting from a partition is not supported (give the \
                        partition's image as the drive)"
                    .into(),
            );
        }
        if let Some(c) = self
            .cache_type
            .as_deref()
            .filter(|c| !matches!(*c, "Unsafe" | "Writeback"))
        {
            return Err(format!(
                "cache_type: {c:?} is not one of \"Unsafe\", \"Writeback\""
            ));
        }
        if let Some(e) = self.io_engine.as_deref().filter(|e| *e != "Sync") {
            return Err(format!("io_engine: {e:?} is not supported (only \"Sync\")"));
        }
        if self.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
            return Err("rate_limiter: drive rate limiting is not supported".into());
        }
        Ok(())
    }
}

/// Body of `PUT /network-interfaces/{iface_id}` and the fields of
/// `vmm run --net`: a virtio-net device over a TAP the operator created
/// (before boot only), with Firecracker's fields. Firecracker's
/// `rx_rate_limiter` and `tx_rate_limiter` must be null or absent
/// ([`NetworkInterfaceConfig::check_supported`]); unknown fields are
/// refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    /// 1 to 64 ASCII letters, digits, `_` or `-`.
    pub iface_id: String,
    /// The TAP device, in the VMM's network namespace.
    pub host_dev_name: String,
    /// The guest's MAC (`aa:bb:cc:dd:ee:ff`, not multicast); without one
    /// the guest picks its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Firecracker: a token-bucket rate limiter. Not supported: null or
    /// absent only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<serde_json::Value>,
    /// As `rx_rate_limiter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<serde_json::Value>,
}

impl NetworkInterfaceConfig {
    /// Refuses, naming the field, what Firecracker accepts and this device
    /// does not do.
    pub fn check_supported(&self) -> Result<(), String> {
        for (field, limiter) in [
            ("rx_rate_limiter", &self.rx_rate_limiter),
            ("tx_rate_limiter", &self.tx_rate_limiter),
        ] {
            if limiter.as_ref().is_some_and(|l| !l.is_null()) {
                return Err(format!("{field}: network rate limiting is not supported"));
            }
        }
        Ok(())
    }
}

/// Response of `GET /vsock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockInfo {
    /// As configured.
    pub guest_cid: u64,
    /// As configured.
    pub uds_path: String,
    /// Open connections now (0 before boot).
    pub connections: u64,
    /// The guest's driver has set the device up.
    pub activated: bool,
}

/// Lifecycle state of the VM in `GET /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Configured, waiting for `InstanceStart`.
    NotStarted,
    /// vCPUs are running.
    Running,
    /// `PATCH /vm {"state": "Paused"}` stopped the vCPUs.
    Paused,
    /// The guest has shut down, reset or crashed; the process is ending.
    Exited,
}

/// Response of `GET /vm`: what the VM is and what it costs the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Lifecycle state.
    pub state: VmState,
    /// Number of vCPUs.
    pub vcpus: u32,
    /// Guest RAM size in MiB.
    pub mem_size_mib: u64,
    /// Guest RAM size in bytes.
    pub guest_ram_bytes: u64,
    /// Bytes of guest RAM resident in host memory now.
    pub guest_ram_resident_bytes: u64,
    /// Resident set of the whole VMM process (`VmRSS`), guest RAM included.
    pub vmm_rss_bytes: u64,
    /// Swapped-out bytes of the VMM process (`VmSwap`).
    pub vmm_swap_bytes: u64,
    /// Page-table bytes of the VMM process (`VmPTE`).
    pub vmm_page_tables_bytes: u64,
}
