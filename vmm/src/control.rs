//! The VM behind the per-VM API: the [`VmBackend`] of one `vmm run`.
//!
//! Before `InstanceStart` (with `--wait-for-start`) the API edits the
//! configuration the VM will boot with; afterwards it talks to the live
//! devices. `vmm run` without `--wait-for-start` starts at once and the API
//! sees a running VM from its first request.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use balloon::{pages_to_mib, Balloon, BalloonConfig};
use block::{Block, BlockConfig};
use vsock::{Vsock, VsockConfig};

use crate::api::{self, ApiError, MemoryReleased, VmBackend, VmInfo, VmState};
use crate::host::memstat::{self, MmCounters, ProcessMemory};
use crate::vm::exit::{ExitSignal, VmExit};
use crate::vm::release::Releaser;

/// Shared between the API threads and the thread that boots the VM.
pub struct VmControl {
    vcpus: u32,
    mem_size: u64,
    phase: Mutex<Phase>,
    started: Condvar,
}

enum Phase {
    /// Not booted; the devices the VM will get.
    NotStarted {
        balloon: Option<BalloonConfig>,
        vsock: Option<VsockConfig>,
        drives: Vec<BlockConfig>,
        start_requested: bool,
    },
    Running(LiveVm),
    /// `ReleaseMemory` stopped the vCPUs for good; the VMM ends with this
    /// once the answer is written.
    Released {
        exit: Arc<ExitSignal>,
        end: VmExit,
    },
    Exited,
}

/// The devices a VM boots with, as configured before `InstanceStart`.
#[derive(Clone, Debug, Default)]
pub struct StartConfig {
    pub balloon: Option<BalloonConfig>,
    pub vsock: Option<VsockConfig>,
    /// virtio-blk devices, in the order they were given.
    pub drives: Vec<BlockConfig>,
}

/// Handles into the live VM.
pub struct LiveVm {
    pub balloon: Option<Arc<Mutex<Balloon>>>,
    pub vsock: Option<Arc<Mutex<Vsock>>>,
    pub drives: Vec<Arc<Mutex<Block>>>,
    /// Host addresses where guest RAM regions start, for residency.
    pub guest_ram_starts: Vec<u64>,
    /// Stops the VM and releases its RAM (`ReleaseMemory`).
    pub releaser: Releaser,
    /// Ends the VM's event loop, and so the VMM.
    pub exit: Arc<ExitSignal>,
}

impl VmControl {
    pub fn new(vcpus: u8, mem_size: u64, devices: StartConfig) -> Self {
        VmControl {
            vcpus: u32::from(vcpus),
            mem_size,
            phase: Mutex::new(Phase::NotStarted {
                balloon: devices.balloon,
                vsock: devices.vsock,
                drives: devices.drives,
                start_requested: false,
            }),
            started: Condvar::new(),
        }
    }

    /// Blocks until `PUT /actions InstanceStart` and returns the devices
    /// to boot with; or returns `Err` with what `stop()` (polled every
    /// 100 ms) reported instead.
    pub fn wait_for_start<S>(&self, mut stop: impl FnMut() -> Option<S>) -> Result<StartConfig, S> {
        let mut phase = self.phase();
        loop {
            if let Phase::NotStarted {
                balloon,
                vsock,
                drives,
                start_requested: true,
            } = &*phase
            {
                return Ok(StartConfig {
                    balloon: *balloon,
                    vsock: vsock.clone(),
                    drives: drives.clone(),
                });
            }
            if let Some(s) = stop() {
                return Err(s);
            }
            phase = self
                .started
                .wait_timeout(phase, std::time::Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The VM booted with these devices.
    pub fn set_running(&self, vm: LiveVm) {
        *self.phase() = Phase::Running(vm);
    }

    /// The VM ended.
    pub fn set_exited(&self) {
        *self.phase() = Phase::Exited;
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live balloon, or the right error.
    fn live_balloon(&self) -> Result<Arc<Mutex<Balloon>>, ApiError> {
        match &*self.phase() {
            Phase::Running(LiveVm {
                balloon: Some(b), ..
            }) => Ok(b.clone()),
            Phase::Running(_) => Err(ApiError::BalloonNotConfigured),
            Phase::NotStarted { .. } => Err(ApiError::Conflict("the VM is not started yet".into())),
            Phase::Released { .. } => Err(released_conflict()),
            Phase::Exited => Err(ApiError::Conflict("the VM has exited".into())),
        }
    }

    /// The live vsock device, or the right error.
    fn live_vsock(&self) -> Result<Arc<Mutex<Vsock>>, ApiError> {
        match &*self.phase() {
            Phase::Running(LiveVm { vsock: Some(v), .. }) => Ok(v.clone()),
            Phase::Running(_) => Err(vsock_not_configured()),
            Phase::NotStarted { .. } => Err(ApiError::Conflict("the VM is not started yet".into())),
            Phase::Released { .. } => Err(released_conflict()),
            Phase::Exited => Err(ApiError::Conflict("the VM has exited".into())),
        }
    }

    /// The live drive `drive_id`, or the right error.
    fn live_drive(&self, drive_id: &str) -> Result<Arc<Mutex<Block>>, ApiError> {
        match &*self.phase() {
            Phase::Running(LiveVm { drives, .. }) => drives
                .iter()
                .find(|d| lock(d).config().drive_id == drive_id)
                .cloned()
                .ok_or_else(|| drive_not_configured(drive_id)),
            Phase::NotStarted { .. } => Err(ApiError::Conflict("the VM is not started yet".into())),
            Phase::Released { .. } => Err(released_conflict()),
            Phase::Exited => Err(ApiError::Conflict("the VM has exited".into())),
        }
    }

    fn check_amount(&self, amount_mib: u32) -> Result<(), ApiError> {
        let mem_mib = self.mem_size >> 20;
        if u64::from(amount_mib) > mem_mib {
            return Err(ApiError::BadRequest(format!(
                "amount_mib {amount_mib} is larger than guest RAM ({mem_mib} MiB)"
            )));
        }
        Ok(())
    }
}

fn vsock_not_configured() -> ApiError {
    ApiError::NotFound(
        "the VM has no vsock device (configure one with PUT /vsock before InstanceStart)".into(),
    )
}

fn drive_not_configured(drive_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "the VM has no drive {drive_id:?} (add one with --drive or PUT /drives/{{drive_id}} before InstanceStart)"
    ))
}

fn released_conflict() -> ApiError {
    ApiError::Conflict("the VM's memory was released; the VMM is exiting".into())
}

/// Resident bytes of this process, from the mm counters (exact on Linux
/// 6.16 and later, and cheap: no page-table walk).
fn own_rss() -> u64 {
    MmCounters::read(None)
        .ok()
        .flatten()
        .map_or(0, |c| c.rss_anon + c.rss_file + c.rss_shmem)
}

fn lock<T>(b: &Mutex<T>) -> MutexGuard<'_, T> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

impl TryFrom<api::VsockConfig> for VsockConfig {
    type Error = ApiError;

    /// The API's body as the device's configuration, checked (CID range,
    /// path length).
    fn try_from(c: api::VsockConfig) -> Result<Self, ApiError> {
        let cfg = VsockConfig {
            guest_cid: c.guest_cid,
            uds_path: c.uds_path.into(),
        };
        cfg.validate()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        Ok(cfg)
    }
}

impl From<api::DriveConfig> for BlockConfig {
    /// The API's body as the device's configuration; the device checks it
    /// ([`BlockConfig::validate`]) when it is created.
    fn from(c: api::DriveConfig) -> Self {
        BlockConfig {
            drive_id: c.drive_id,
            path: c.path_on_host.into(),
            read_only: c.is_read_only,
            is_root_device: c.is_root_device,
        }
    }
}

fn vsock_info(cfg: &VsockConfig, connections: usize, activated: bool) -> api::VsockInfo {
    api::VsockInfo {
        guest_cid: cfg.guest_cid,
        uds_path: cfg.uds_path.to_string_lossy().into_owned(),
        connections: connections as u64,
        activated,
    }
}

impl From<api::BalloonConfig> for BalloonConfig {
    fn from(c: api::BalloonConfig) -> Self {
        BalloonConfig {
            amount_mib: c.amount_mib,
            deflate_on_oom: c.deflate_on_oom,
            stats_polling_interval_s: c.stats_polling_interval_s,
            free_page_reporting: c.free_page_reporting,
        }
    }
}

pub fn to_api_config(c: &BalloonConfig) -> api::BalloonConfig {
    api::BalloonConfig {
        amount_mib: c.amount_mib,
        deflate_on_oom: c.deflate_on_oom,
        stats_polling_interval_s: c.stats_polling_interval_s,
        free_page_reporting: c.free_page_reporting,
    }
}

impl VmBackend for VmControl {
    fn vm_info(&self) -> VmInfo {
        let (state, starts) = match &*self.phase() {
            Phase::NotStarted { .. } => (VmState::NotStarted, Vec::new()),
            Phase::Running(r) => (VmState::Running, r.guest_ram_starts.clone()),
            Phase::Released { .. } | Phase::Exited => (VmState::Exited, Vec::new()),
        };
        let me = ProcessMemory::read(None).unwrap_or_default();
        VmInfo {
            state,
            vcpus: self.vcpus,
            mem_size_mib: self.mem_size >> 20,
            guest_ram_bytes: self.mem_size,
            guest_ram_resident_bytes: memstat::resident_in_mappings(None, &starts).unwrap_or(0),
            vmm_rss_bytes: me.rss,
            vmm_swap_bytes: me.swap,
            vmm_page_tables_bytes: me.page_tables,
        }
    }

    fn start(&self) -> Result<(), ApiError> {
        match &mut *self.phase() {
            Phase::NotStarted {
                start_requested, ..
            } if !*start_requested => {
                *start_requested = true;
                self.started.notify_all();
                Ok(())
            }
            _ => Err(ApiError::Conflict("the VM is already started".into())),
        }
    }

    fn put_balloon(&self, config: api::BalloonConfig) -> Result<(), ApiError> {
        self.check_amount(config.amount_mib)?;
        match &mut *self.phase() {
            Phase::NotStarted { balloon, start_requested: false, .. } => {
                *balloon = Some(config.into());
                Ok(())
            }
            _ => Err(ApiError::Conflict(
                "the balloon can only be configured before InstanceStart (use PATCH /balloon to change its target)".into(),
            )),
        }
    }

    fn patch_balloon(&self, update: api::BalloonUpdate) -> Result<(), ApiError> {
        self.check_amount(update.amount_mib)?;
        if let Phase::NotStarted { balloon, .. } = &mut *self.phase() {
            let cfg = balloon.as_mut().ok_or(ApiError::BalloonNotConfigured)?;
            cfg.amount_mib = update.amount_mib;
            return Ok(());
        }
        let b = self.live_balloon()?;
        let result = lock(&b).set_target_mib(update.amount_mib);
        result.map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    fn balloon(&self) -> Result<api::BalloonInfo, ApiError> {
        if let Phase::NotStarted { balloon, .. } = &*self.phase() {
            let cfg = balloon.as_ref().ok_or(ApiError::BalloonNotConfigured)?;
            return Ok(info(cfg, cfg.amount_mib * balloon::PAGES_PER_MIB, 0));
        }
        let b = self.live_balloon()?;
        let b = lock(&b);
        Ok(info(&b.config(), b.target_pages(), b.actual_pages()))
    }

    fn balloon_stats(&self) -> Result<api::BalloonStats, ApiError> {
        let b = self.live_balloon()?;
        let b = lock(&b);
        if b.config().stats_polling_interval_s == 0 {
            return Err(ApiError::Conflict(
                "balloon statistics are disabled (stats_polling_interval_s is 0)".into(),
            ));
        }
        let (target, actual) = (b.target_pages(), b.actual_pages());
        let mut out = api::BalloonStats {
            target_pages: target,
            actual_pages: actual,
            target_mib: pages_to_mib(target),
            actual_mib: pages_to_mib(actual),
            ..Default::default()
        };
        if let Some(s) = b.stats() {
            out.swap_in = s.swap_in;
            out.swap_out = s.swap_out;
            out.major_faults = s.major_faults;
            out.minor_faults = s.minor_faults;
            out.free_memory = s.free_memory;
            out.total_memory = s.total_memory;
            out.available_memory = s.available_memory;
            out.disk_caches = s.disk_caches;
            out.hugetlb_allocations = s.hugetlb_allocations;
            out.hugetlb_failures = s.hugetlb_failures;
            out.oom_kills = s.oom_kills;
            out.alloc_stalls = s.alloc_stalls;
            out.async_scans = s.async_scans;
            out.direct_scans = s.direct_scans;
            out.async_reclaims = s.async_reclaims;
            out.direct_reclaims = s.direct_reclaims;
            out.age_ms = Some(s.age().as_millis() as u64);
        }
        Ok(out)
    }

    fn balloon_metrics(&self) -> Result<serde_json::Value, ApiError> {
        let b = self.live_balloon()?;
        let metrics = lock(&b).metrics();
        serde_json::to_value(metrics).map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn release_memory(&self) -> Result<MemoryReleased, ApiError> {
        let t0 = Instant::now();
        let mut phase = self.phase();
        let (releaser, exit) = match &*phase {
            Phase::Running(vm) => (vm.releaser.clone(), vm.exit.clone()),
            Phase::NotStarted { .. } => {
                return Err(ApiError::Conflict("the VM is not started yet".into()))
            }
            Phase::Released { .. } => return Err(released_conflict()),
            Phase::Exited => return Err(ApiError::Conflict("the VM has exited".into())),
        };
        let rss_before = own_rss();
        let result = releaser.stop_and_release();
        let elapsed = t0.elapsed();
        let rss_after = own_rss();
        let (end, answer) = match result {
            Ok((stop, released)) => (
                VmExit::Released,
                Ok(MemoryReleased {
                    released_bytes: rss_before.saturating_sub(rss_after),
                    vmm_rss_before_bytes: rss_before,
                    vmm_rss_after_bytes: rss_after,
                    guest_ram_bytes: released.advised_bytes,
                    regions: released.regions as u32,
                    threads: released.threads as u32,
                    madvise_calls: released.calls,
                    stop_vcpus_us: stop.as_micros() as u64,
                    madvise_us: released.elapsed.as_micros() as u64,
                    elapsed_us: elapsed.as_micros() as u64,
                }),
            ),
            Err(e) => {
                let why = format!("releasing guest RAM failed: {e}");
                (VmExit::VmmError(why.clone()), Err(ApiError::Internal(why)))
            }
        };
        *phase = Phase::Released { exit, end };
        answer
    }

    fn end_after_release(&self) {
        if let Phase::Released { exit, end } = &*self.phase() {
            exit.request(end.clone());
        }
    }

    fn put_vsock(&self, config: api::VsockConfig) -> Result<(), ApiError> {
        let config = VsockConfig::try_from(config)?;
        match &mut *self.phase() {
            Phase::NotStarted {
                vsock,
                start_requested: false,
                ..
            } => {
                *vsock = Some(config);
                Ok(())
            }
            _ => Err(ApiError::Conflict(
                "the vsock device can only be configured before InstanceStart".into(),
            )),
        }
    }

    fn vsock(&self) -> Result<api::VsockInfo, ApiError> {
        if let Phase::NotStarted { vsock, .. } = &*self.phase() {
            let cfg = vsock.as_ref().ok_or_else(vsock_not_configured)?;
            return Ok(vsock_info(cfg, 0, false));
        }
        let v = self.live_vsock()?;
        let v = lock(&v);
        Ok(vsock_info(v.config(), v.connections(), v.is_activated()))
    }

    fn vsock_metrics(&self) -> Result<serde_json::Value, ApiError> {
        let v = self.live_vsock()?;
        let metrics = lock(&v).metrics();
        serde_json::to_value(metrics).map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn drive_metrics(&self, drive_id: &str) -> Result<serde_json::Value, ApiError> {
        let d = self.live_drive(drive_id)?;
        let metrics = lock(&d).metrics();
        serde_json::to_value(metrics).map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn patch_balloon_stats(&self, update: api::BalloonStatsUpdate) -> Result<(), ApiError> {
        let b = self.live_balloon()?;
        let result = lock(&b).set_stats_interval(update.stats_polling_interval_s);
        result.map_err(|e| ApiError::Conflict(e.to_string()))
    }
}

fn info(cfg: &BalloonConfig, target: u32, actual: u32) -> api::BalloonInfo {
    let c = to_api_config(cfg);
    api::BalloonInfo {
        amount_mib: c.amount_mib,
        deflate_on_oom: c.deflate_on_oom,
        stats_polling_interval_s: c.stats_polling_interval_s,
        free_page_reporting: c.free_page_reporting,
        target_pages: target,
        actual_pages: actual,
        target_mib: pages_to_mib(target),
        actual_mib: pages_to_mib(actual),
    }
}
