//! The VM behind the per-VM API: the [`VmBackend`] of one `vmm run`.
//!
//! Before `InstanceStart` the API edits the configuration the VM will boot
//! with ([`StartConfig`]); `InstanceStart` hands it to the VMM's main thread
//! ([`VmControl::wait_for_start`]), which boots and reports back
//! ([`VmControl::set_running`] or [`VmControl::set_failed`]) before the
//! request is answered. Afterwards the API talks to the live devices. A VM
//! that boots at once (`vmm run` without `--api-sock`, or with `--kernel`,
//! `--config-file` or `--boot-now`) is past `InstanceStart` from the API's
//! first request.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use balloon::{pages_to_mib, Balloon, BalloonConfig};
use block::{Block, BlockConfig};
use net::{Net, NetConfig};
use vsock::{Vsock, VsockConfig};

use crate::api::instance::{APP_NAME, VMM_VERSION};
use crate::api::{
    self, ApiError, BootSource, FullVmConfig, InstanceInfo, InstanceState, LoggerConfig,
    MachineConfig, MachineConfigUpdate, MemoryReleased, MetricsConfig, RequestedState, VmBackend,
    VmInfo, VmState, VmStateUpdate,
};
use crate::host::memstat::{self, MmCounters, ProcessMemory};
use crate::metrics::{MetricsFile, MetricsLine};
use crate::vm::exit::{ExitSignal, VmExit};
use crate::vm::release::Releaser;
use crate::vm::vcpu::VcpuThreads;

/// How long pausing waits for every vCPU to leave `KVM_RUN`.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often metrics are written once `PUT /metrics` set a file
/// (Firecracker's period).
const METRICS_PERIOD: Duration = Duration::from_secs(60);

/// Shared between the API threads and the thread that boots the VM.
pub struct VmControl {
    id: String,
    state: Mutex<State>,
    changed: Condvar,
    /// For the metrics thread.
    me: Weak<VmControl>,
}

struct State {
    config: StartConfig,
    phase: Phase,
    /// An `InstanceStart` answer is not written yet: the VMM must not end.
    start_answer_pending: bool,
    metrics: Option<Arc<MetricsFile>>,
}

enum Phase {
    /// Configurable; waiting for `InstanceStart`.
    NotStarted,
    /// `InstanceStart` came (or the VM boots at once): the main thread is
    /// booting with the configuration.
    Starting,
    /// The boot failed; the VMM is ending.
    Failed(String),
    Running(LiveVm),
    Paused(LiveVm),
    /// `ReleaseMemory` stopped the vCPUs for good; the VMM ends with this
    /// once the answer is written.
    Released {
        exit: Arc<ExitSignal>,
        end: VmExit,
    },
    Exited,
}

/// What a VM boots with, as configured on the command line, in a
/// configuration file or over the API before `InstanceStart`.
#[derive(Clone, Debug)]
pub struct StartConfig {
    /// A PVH ELF or bzImage; `None`: the embedded tiny guest.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    /// Guest RAM in bytes.
    pub mem_size: u64,
    pub balloon: Option<BalloonConfig>,
    pub vsock: Option<VsockConfig>,
    /// virtio-blk devices, in the order they were given.
    pub drives: Vec<BlockConfig>,
    /// virtio-net devices, in the order they were given (`vmm run --net`).
    pub nets: Vec<NetConfig>,
}

impl Default for StartConfig {
    /// The tiny guest, 1 vCPU, 128 MiB, no devices.
    fn default() -> Self {
        StartConfig {
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            vcpus: 1,
            mem_size: 128 << 20,
            balloon: None,
            vsock: None,
            drives: Vec::new(),
            nets: Vec::new(),
        }
    }
}

/// Handles into the live VM.
pub struct LiveVm {
    pub balloon: Option<Arc<Mutex<Balloon>>>,
    pub vsock: Option<Arc<Mutex<Vsock>>>,
    pub drives: Vec<Arc<Mutex<Block>>>,
    pub nets: Vec<Arc<Mutex<Net>>>,
    /// Host addresses where guest RAM regions start, for residency.
    pub guest_ram_starts: Vec<u64>,
    /// Stops the VM and releases its RAM (`ReleaseMemory`).
    pub releaser: Releaser,
    /// Pauses and resumes the vCPUs.
    pub vcpus: Arc<VcpuThreads>,
    /// Ends the VM's event loop, and so the VMM.
    pub exit: Arc<ExitSignal>,
}

/// Whether `vmm run` boots at once or waits for `InstanceStart`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    Now,
    OnInstanceStart,
}

impl VmControl {
    /// The VM `id` (`GET /`), to boot with `config` now or on
    /// `InstanceStart`.
    pub fn new(id: String, config: StartConfig, boot: Boot) -> Arc<Self> {
        Arc::new_cyclic(|me| VmControl {
            id,
            state: Mutex::new(State {
                config,
                phase: match boot {
                    Boot::Now => Phase::Starting,
                    Boot::OnInstanceStart => Phase::NotStarted,
                },
                start_answer_pending: false,
                metrics: None,
            }),
            changed: Condvar::new(),
            me: me.clone(),
        })
    }

    /// Blocks until the VM is to boot and returns what to boot with; or
    /// returns `Err` with what `stop()` (polled every 100 ms) reported
    /// instead.
    pub fn wait_for_start<S>(&self, mut stop: impl FnMut() -> Option<S>) -> Result<StartConfig, S> {
        let mut state = self.state();
        loop {
            if let Phase::Starting = state.phase {
                return Ok(state.config.clone());
            }
            if let Some(s) = stop() {
                return Err(s);
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The VM booted with these devices.
    pub fn set_running(&self, vm: LiveVm) {
        self.set_phase(Phase::Running(vm));
    }

    /// The VM could not boot, for this reason.
    pub fn set_failed(&self, why: String) {
        self.set_phase(Phase::Failed(why));
    }

    /// The VM ended.
    pub fn set_exited(&self) {
        self.set_phase(Phase::Exited);
    }

    fn set_phase(&self, phase: Phase) {
        self.state().phase = phase;
        self.changed.notify_all();
    }

    /// Waits (up to `timeout`) until a pending `InstanceStart` answer is
    /// written, so that a VMM that ends soon after the boot does not cut
    /// it off.
    pub fn settle(&self, timeout: Duration) {
        let state = self.state();
        let _ = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.start_answer_pending);
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live VM's handles through `f`, or the right error.
    fn live<T>(&self, f: impl FnOnce(&LiveVm) -> Result<T, ApiError>) -> Result<T, ApiError> {
        match &self.state().phase {
            Phase::Running(vm) | Phase::Paused(vm) => f(vm),
            Phase::NotStarted | Phase::Starting => {
                Err(ApiError::Conflict("the VM is not started yet".into()))
            }
            Phase::Failed(_) => Err(ApiError::Conflict("the VM failed to start".into())),
            Phase::Released { .. } => Err(released_conflict()),
            Phase::Exited => Err(ApiError::Conflict("the VM has exited".into())),
        }
    }

    /// The live balloon, or the right error.
    fn live_balloon(&self) -> Result<Arc<Mutex<Balloon>>, ApiError> {
        self.live(|vm| vm.balloon.clone().ok_or(ApiError::BalloonNotConfigured))
    }

    /// The live vsock device, or the right error.
    fn live_vsock(&self) -> Result<Arc<Mutex<Vsock>>, ApiError> {
        self.live(|vm| vm.vsock.clone().ok_or_else(vsock_not_configured))
    }

    /// The live drive `drive_id`, or the right error.
    fn live_drive(&self, drive_id: &str) -> Result<Arc<Mutex<Block>>, ApiError> {
        self.live(|vm| {
            vm.drives
                .iter()
                .find(|d| lock(d).config().drive_id == drive_id)
                .cloned()
                .ok_or_else(|| drive_not_configured(drive_id))
        })
    }

    /// The live network interface `iface_id`, or the right error.
    fn live_net(&self, iface_id: &str) -> Result<Arc<Mutex<Net>>, ApiError> {
        self.live(|vm| {
            vm.nets
                .iter()
                .find(|n| lock(n).config().iface_id == iface_id)
                .cloned()
                .ok_or_else(|| net_not_configured(iface_id))
        })
    }

    /// `edit` applied to the configuration if the VM is not started yet;
    /// Firecracker's 400 otherwise.
    fn configure<T>(
        &self,
        what: &str,
        edit: impl FnOnce(&mut StartConfig) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut state = self.state();
        match state.phase {
            Phase::NotStarted => edit(&mut state.config),
            _ => Err(ApiError::BadRequest(format!(
                "{what} can only be configured before InstanceStart"
            ))),
        }
    }

    /// Writes one line of metrics, if a metrics file is set.
    fn write_metrics(&self) -> Result<(), ApiError> {
        let Some(file) = self.state().metrics.clone() else {
            return Err(ApiError::BadRequest(
                "FlushMetrics: no metrics file (configure one with PUT /metrics)".into(),
            ));
        };
        let line = MetricsLine {
            utc_timestamp_ms: crate::metrics::now_ms(),
            id: self.id.clone(),
            vm: self.vm_info(),
            balloon: self.live_balloon().ok().map(|b| lock(&b).metrics()),
            vsock: self.live_vsock().ok().map(|v| lock(&v).metrics()),
        };
        file.write_line(&line)
            .map_err(|e| ApiError::Internal(format!("cannot write metrics: {e}")))
    }
}

/// Writes metrics every [`METRICS_PERIOD`] while the VMM lives.
fn metrics_thread(control: Weak<VmControl>) {
    loop {
        std::thread::sleep(METRICS_PERIOD);
        let Some(control) = control.upgrade() else {
            return;
        };
        if let Err(e) = control.write_metrics() {
            log::warn!("{e}");
        }
    }
}

fn check_amount(config: &StartConfig, amount_mib: u32) -> Result<(), ApiError> {
    let mem_mib = config.mem_size >> 20;
    if u64::from(amount_mib) > mem_mib {
        return Err(ApiError::BadRequest(format!(
            "amount_mib {amount_mib} is larger than guest RAM ({mem_mib} MiB)"
        )));
    }
    Ok(())
}

impl StartConfig {
    /// `boot-source` as the API shows it.
    pub fn boot_source(&self) -> BootSource {
        BootSource {
            kernel_image_path: self.kernel.as_ref().map(|p| p.display().to_string()),
            initrd_path: self.initrd.as_ref().map(|p| p.display().to_string()),
            boot_args: Some(self.cmdline.clone()),
        }
    }

    /// `machine-config` as the API shows it.
    pub fn machine_config(&self) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpus,
            mem_size_mib: self.mem_size >> 20,
            ..MachineConfig::default()
        }
    }

    /// Takes a `PUT /boot-source` body: the files must open.
    pub fn set_boot_source(&mut self, source: BootSource) -> Result<(), ApiError> {
        let open = |field: &str, path: &Option<String>| match path {
            Some(p) => match std::fs::File::open(p) {
                Ok(_) => Ok(Some(PathBuf::from(p))),
                Err(e) => Err(ApiError::BadRequest(format!(
                    "{field}: cannot open {p}: {e}"
                ))),
            },
            None => Ok(None),
        };
        let kernel = open("kernel_image_path", &source.kernel_image_path)?;
        let initrd = open("initrd_path", &source.initrd_path)?;
        self.kernel = kernel;
        self.initrd = initrd;
        self.cmdline = source.boot_args.unwrap_or_default();
        Ok(())
    }

    /// Takes a machine configuration, checked; the balloon must still fit.
    pub fn set_machine_config(&mut self, config: &MachineConfig) -> Result<(), ApiError> {
        config.validate().map_err(ApiError::BadRequest)?;
        if let Some(b) = &self.balloon {
            if u64::from(b.amount_mib) > config.mem_size_mib {
                return Err(ApiError::BadRequest(format!(
                    "mem_size_mib: {} is smaller than the balloon's amount_mib ({})",
                    config.mem_size_mib, b.amount_mib
                )));
            }
        }
        self.vcpus = config.vcpu_count;
        self.mem_size = config.mem_size_mib << 20;
        Ok(())
    }

    /// The configuration a `--config-file` describes, checked as the API
    /// checks it. Block and network devices are refused until they exist.
    pub fn from_file(full: &FullVmConfig) -> Result<StartConfig, ApiError> {
        let mut config = StartConfig::default();
        if let Some(source) = &full.boot_source {
            config
                .set_boot_source(source.clone())
                .map_err(in_section("boot-source"))?;
        }
        if let Some(machine) = &full.machine_config {
            config
                .set_machine_config(machine)
                .map_err(in_section("machine-config"))?;
        }
        if let Some(b) = &full.balloon {
            check_amount(&config, b.amount_mib).map_err(in_section("balloon"))?;
            config.balloon = Some((*b).into());
        }
        if let Some(v) = &full.vsock {
            config.vsock = Some(VsockConfig::try_from(v.clone()).map_err(in_section("vsock"))?);
        }
        // Firecracker's fields we do not do refused here; the rest is
        // checked when the devices are made, as `--drive` is.
        for d in &full.drives {
            d.check_supported()
                .map_err(ApiError::BadRequest)
                .map_err(in_section("drives"))?;
        }
        config.drives = full.drives.iter().cloned().map(Into::into).collect();
        for n in &full.network_interfaces {
            n.check_supported()
                .map_err(ApiError::BadRequest)
                .map_err(in_section("network-interfaces"))?;
            let net = NetConfig::try_from(n.clone())
                .map_err(|e| ApiError::BadRequest(e.to_string()))
                .map_err(in_section("network-interfaces"))?;
            config.nets.push(net);
        }
        Ok(config)
    }

    /// The whole configuration, as `GET /vm/config` shows it.
    pub fn full(&self) -> FullVmConfig {
        FullVmConfig {
            boot_source: Some(self.boot_source()),
            machine_config: Some(self.machine_config()),
            balloon: self.balloon.as_ref().map(to_api_config),
            vsock: self.vsock.as_ref().map(|v| api::VsockConfig {
                guest_cid: v.guest_cid,
                uds_path: v.uds_path.to_string_lossy().into_owned(),
                vsock_id: None,
            }),
            drives: self.drives.iter().map(drive_config).collect(),
            network_interfaces: self.nets.iter().map(net_config).collect(),
            ..FullVmConfig::default()
        }
    }
}

fn vsock_not_configured() -> ApiError {
    ApiError::NotFound(
        "the VM has no vsock device (configure one with PUT /vsock before InstanceStart)".into(),
    )
}

fn drive_not_configured(drive_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "the VM has no drive {drive_id:?} (add one with --drive or PUT /drives/{drive_id} \
         before it boots)"
    ))
}

fn net_not_configured(iface_id: &str) -> ApiError {
    ApiError::NotFound(format!(
        "the VM has no network interface {iface_id:?} (add one with --net before it boots)"
    ))
}

impl TryFrom<api::NetworkInterfaceConfig> for NetConfig {
    type Error = net::ConfigError;
    /// The API's body as the device's configuration: parses the MAC; the
    /// device checks the rest ([`NetConfig::validate`]) when it is created.
    fn try_from(c: api::NetworkInterfaceConfig) -> Result<Self, Self::Error> {
        Ok(NetConfig {
            iface_id: c.iface_id,
            host_dev_name: c.host_dev_name,
            guest_mac: c.guest_mac.as_deref().map(str::parse).transpose()?,
        })
    }
}

fn net_config(c: &NetConfig) -> api::NetworkInterfaceConfig {
    api::NetworkInterfaceConfig {
        iface_id: c.iface_id.clone(),
        host_dev_name: c.host_dev_name.clone(),
        guest_mac: c.guest_mac.map(|m| m.to_string()),
        ..Default::default()
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

fn drive_config(c: &BlockConfig) -> api::DriveConfig {
    api::DriveConfig {
        drive_id: c.drive_id.clone(),
        path_on_host: c.path.to_string_lossy().into_owned(),
        is_root_device: c.is_root_device,
        is_read_only: c.read_only,
        ..Default::default()
    }
}

fn released_conflict() -> ApiError {
    ApiError::Conflict("the VM's memory was released; the VMM is exiting".into())
}

/// A 400 that names the configuration file's section.
fn in_section(section: &'static str) -> impl Fn(ApiError) -> ApiError {
    move |e| ApiError::BadRequest(format!("{section}: {e}"))
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
    fn instance_info(&self) -> InstanceInfo {
        let state = match self.state().phase {
            Phase::NotStarted | Phase::Starting | Phase::Failed(_) => InstanceState::NotStarted,
            Phase::Paused(_) => InstanceState::Paused,
            Phase::Running(_) | Phase::Released { .. } | Phase::Exited => InstanceState::Running,
        };
        InstanceInfo {
            id: self.id.clone(),
            state,
            vmm_version: VMM_VERSION.into(),
            app_name: APP_NAME.into(),
        }
    }

    fn vm_info(&self) -> VmInfo {
        let (state, starts, config): (_, Vec<u64>, _) = {
            let s = self.state();
            let (state, starts) = match &s.phase {
                Phase::NotStarted | Phase::Starting | Phase::Failed(_) => {
                    (VmState::NotStarted, Vec::new())
                }
                Phase::Running(r) => (VmState::Running, r.guest_ram_starts.clone()),
                Phase::Paused(r) => (VmState::Paused, r.guest_ram_starts.clone()),
                Phase::Released { .. } | Phase::Exited => (VmState::Exited, Vec::new()),
            };
            (state, starts, s.config.clone())
        };
        let me = ProcessMemory::read(None).unwrap_or_default();
        VmInfo {
            state,
            vcpus: u32::from(config.vcpus),
            mem_size_mib: config.mem_size >> 20,
            guest_ram_bytes: config.mem_size,
            guest_ram_resident_bytes: memstat::resident_in_mappings(None, &starts).unwrap_or(0),
            vmm_rss_bytes: me.rss,
            vmm_swap_bytes: me.swap,
            vmm_page_tables_bytes: me.page_tables,
        }
    }

    fn patch_vm(&self, update: VmStateUpdate) -> Result<(), ApiError> {
        let mut state = self.state();
        let phase = std::mem::replace(&mut state.phase, Phase::Exited);
        let (phase, result) = match (phase, update.state) {
            (Phase::Running(vm), RequestedState::Paused) => match vm.vcpus.pause_all(PAUSE_TIMEOUT)
            {
                Ok(_) => (Phase::Paused(vm), Ok(())),
                Err(e) => {
                    // Those that stopped run again; the VM is not paused.
                    vm.vcpus.resume_all();
                    let err = ApiError::Internal(format!("cannot pause the vCPUs: {e}"));
                    (Phase::Running(vm), Err(err))
                }
            },
            (Phase::Paused(vm), RequestedState::Resumed) => {
                vm.vcpus.resume_all();
                (Phase::Running(vm), Ok(()))
            }
            // Firecracker answers 204 to pausing a paused VM and resuming a
            // running one.
            (phase @ (Phase::Paused(_) | Phase::Running(_)), _) => (phase, Ok(())),
            (phase, _) => {
                let err = ApiError::BadRequest(
                    "the VM can only be paused or resumed while it runs".into(),
                );
                (phase, Err(err))
            }
        };
        state.phase = phase;
        result
    }

    fn vm_config(&self) -> FullVmConfig {
        self.state().config.full()
    }

    fn put_boot_source(&self, source: BootSource) -> Result<(), ApiError> {
        self.configure("the boot source", |c| c.set_boot_source(source))
    }

    fn machine_config(&self) -> MachineConfig {
        self.state().config.machine_config()
    }

    fn put_machine_config(&self, config: MachineConfig) -> Result<(), ApiError> {
        self.configure("the machine", |c| c.set_machine_config(&config))
    }

    fn patch_machine_config(&self, update: MachineConfigUpdate) -> Result<(), ApiError> {
        self.configure("the machine", |c| {
            let config = c.machine_config().patched(&update);
            c.set_machine_config(&config)
        })
    }

    fn put_logger(&self, config: LoggerConfig) -> Result<(), ApiError> {
        config.validate().map_err(ApiError::BadRequest)?;
        if let Some(path) = &config.log_path {
            crate::logger::redirect_stderr(path.as_ref())
                .map_err(|e| ApiError::BadRequest(format!("log_path: {e}")))?;
        }
        Ok(())
    }

    fn put_metrics(&self, config: MetricsConfig) -> Result<(), ApiError> {
        let mut state = self.state();
        if state.metrics.is_some() {
            return Err(ApiError::BadRequest(
                "metrics are already configured (PUT /metrics works once)".into(),
            ));
        }
        let file = MetricsFile::open(config.metrics_path.as_ref())
            .map_err(|e| ApiError::BadRequest(format!("metrics_path: {e}")))?;
        state.metrics = Some(Arc::new(file));
        let me = self.me.clone();
        std::thread::Builder::new()
            .name("vmm-metrics".into())
            .spawn(move || {
                // Started by an API thread or, with --config-file, by the
                // main thread before it is filtered: either way it does
                // what the API does, under the API's filter.
                crate::seccomp::apply_or_exit(
                    crate::seccomp::ThreadKind::Api,
                    crate::vm::exit::status::VMM_ERROR,
                );
                metrics_thread(me)
            })
            .map_err(|e| ApiError::Internal(format!("cannot start the metrics thread: {e}")))?;
        Ok(())
    }

    fn flush_metrics(&self) -> Result<(), ApiError> {
        self.write_metrics()
    }

    fn start(&self) -> Result<(), ApiError> {
        let mut state = self.state();
        match state.phase {
            Phase::NotStarted => {
                state.phase = Phase::Starting;
                state.start_answer_pending = true;
                self.changed.notify_all();
            }
            _ => return Err(ApiError::Conflict("the VM is already started".into())),
        }
        let state = self
            .changed
            .wait_while(state, |s| matches!(s.phase, Phase::Starting))
            .unwrap_or_else(|p| p.into_inner());
        match &state.phase {
            Phase::Failed(why) => Err(ApiError::BadRequest(format!("cannot start the VM: {why}"))),
            // Running, or already over (a guest that ends at once).
            _ => Ok(()),
        }
    }

    fn start_answered(&self) {
        self.state().start_answer_pending = false;
        self.changed.notify_all();
    }

    fn put_balloon(&self, config: api::BalloonConfig) -> Result<(), ApiError> {
        let mut state = self.state();
        check_amount(&state.config, config.amount_mib)?;
        match state.phase {
            Phase::NotStarted => {
                state.config.balloon = Some(config.into());
                Ok(())
            }
            _ => Err(ApiError::Conflict(
                "the balloon can only be configured before InstanceStart (use PATCH /balloon to change its target)".into(),
            )),
        }
    }

    fn patch_balloon(&self, update: api::BalloonUpdate) -> Result<(), ApiError> {
        {
            let mut state = self.state();
            check_amount(&state.config, update.amount_mib)?;
            if let Phase::NotStarted | Phase::Starting = state.phase {
                let cfg = state
                    .config
                    .balloon
                    .as_mut()
                    .ok_or(ApiError::BalloonNotConfigured)?;
                cfg.amount_mib = update.amount_mib;
                return Ok(());
            }
        }
        let b = self.live_balloon()?;
        let result = lock(&b).set_target_mib(update.amount_mib);
        result.map_err(|e| ApiError::BadRequest(e.to_string()))
    }

    fn balloon(&self) -> Result<api::BalloonInfo, ApiError> {
        {
            let state = self.state();
            if let Phase::NotStarted | Phase::Starting = state.phase {
                let cfg = state
                    .config
                    .balloon
                    .as_ref()
                    .ok_or(ApiError::BalloonNotConfigured)?;
                return Ok(info(cfg, cfg.amount_mib * balloon::PAGES_PER_MIB, 0));
            }
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
        let mut state = self.state();
        let (releaser, exit, vcpus) = match &state.phase {
            Phase::Running(vm) | Phase::Paused(vm) => {
                (vm.releaser.clone(), vm.exit.clone(), vm.vcpus.clone())
            }
            Phase::NotStarted | Phase::Starting | Phase::Failed(_) => {
                return Err(ApiError::Conflict("the VM is not started yet".into()))
            }
            Phase::Released { .. } => return Err(released_conflict()),
            Phase::Exited => return Err(ApiError::Conflict("the VM has exited".into())),
        };
        let rss_before = own_rss();
        // Paused vCPUs must run on to park: they release too.
        vcpus.resume_all();
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
        state.phase = Phase::Released { exit, end };
        answer
    }

    fn end_after_release(&self) {
        if let Phase::Released { exit, end } = &self.state().phase {
            exit.request(end.clone());
        }
    }

    fn put_vsock(&self, config: api::VsockConfig) -> Result<(), ApiError> {
        let config = VsockConfig::try_from(config)?;
        let mut state = self.state();
        match state.phase {
            Phase::NotStarted => {
                state.config.vsock = Some(config);
                Ok(())
            }
            _ => Err(ApiError::Conflict(
                "the vsock device can only be configured before InstanceStart".into(),
            )),
        }
    }

    fn vsock(&self) -> Result<api::VsockInfo, ApiError> {
        {
            let state = self.state();
            if let Phase::NotStarted | Phase::Starting = state.phase {
                let cfg = state
                    .config
                    .vsock
                    .as_ref()
                    .ok_or_else(vsock_not_configured)?;
                return Ok(vsock_info(cfg, 0, false));
            }
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

    fn put_drive(&self, drive_id: &str, config: api::DriveConfig) -> Result<(), ApiError> {
        if config.drive_id != drive_id {
            return Err(ApiError::BadRequest(format!(
                "the drive_id in the path ({drive_id:?}) and in the body ({:?}) differ",
                config.drive_id
            )));
        }
        config.check_supported().map_err(ApiError::BadRequest)?;
        let drive = BlockConfig::from(config);
        drive
            .validate()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        // The early answer; the device opens the image again when it is
        // made, and a start that fails there says so.
        if !drive.path.is_file() {
            return Err(ApiError::BadRequest(format!(
                "path_on_host {}: not a regular file that can be read",
                drive.path.display()
            )));
        }
        let mut state = self.state();
        if !matches!(state.phase, Phase::NotStarted) {
            return Err(ApiError::BadRequest(
                "drives can only be configured before InstanceStart".into(),
            ));
        }
        let drives = &mut state.config.drives;
        if drive.is_root_device
            && drives
                .iter()
                .any(|d| d.is_root_device && d.drive_id != drive.drive_id)
        {
            return Err(ApiError::BadRequest(format!(
                "drive {:?} cannot be the root device: another drive is",
                drive.drive_id
            )));
        }
        // A PUT of an existing id replaces it, as in Firecracker.
        match drives.iter_mut().find(|d| d.drive_id == drive.drive_id) {
            Some(d) => *d = drive,
            None => drives.push(drive),
        }
        Ok(())
    }

    fn drive_metrics(&self, drive_id: &str) -> Result<serde_json::Value, ApiError> {
        let d = self.live_drive(drive_id)?;
        let metrics = lock(&d).metrics();
        serde_json::to_value(metrics).map_err(|e| ApiError::Internal(e.to_string()))
    }

    fn put_net(&self, iface_id: &str, config: api::NetworkInterfaceConfig) -> Result<(), ApiError> {
        if config.iface_id != iface_id {
            return Err(ApiError::BadRequest(format!(
                "the iface_id in the path ({iface_id:?}) and in the body ({:?}) differ",
                config.iface_id
            )));
        }
        config.check_supported().map_err(ApiError::BadRequest)?;
        let net = NetConfig::try_from(config).map_err(|e| ApiError::BadRequest(e.to_string()))?;
        net.validate()
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let mut state = self.state();
        if !matches!(state.phase, Phase::NotStarted) {
            return Err(ApiError::BadRequest(
                "network interfaces can only be configured before InstanceStart".into(),
            ));
        }
        // The TAP is opened (and must exist) when the device is made; a
        // start that fails there says so. A PUT of an existing id
        // replaces it, as in Firecracker.
        let nets = &mut state.config.nets;
        match nets.iter_mut().find(|n| n.iface_id == net.iface_id) {
            Some(n) => *n = net,
            None => nets.push(net),
        }
        Ok(())
    }

    fn net_metrics(&self, iface_id: &str) -> Result<serde_json::Value, ApiError> {
        let n = self.live_net(iface_id)?;
        let metrics = lock(&n).metrics();
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
