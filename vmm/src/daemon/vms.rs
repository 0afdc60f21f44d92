//! The VMs the daemon runs: one `vmm run` child process each, in its own
//! directory of the state directory (`vms/<id>/`: `api.sock`,
//! `console.log`, `vmm.log`), held by a pidfd.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::daemon_api::{VmSpec, VmState};
use crate::host::cgroup::PoolCgroup;
use crate::host::memstat::{rss_of_mapping_sized, CounterFiles, MmCounters};
use crate::oom::badness::OomScoreAdj;
use crate::oom::constraint::{Placed, Placement};

use super::persist::{self, ProcessIdentity, VmRecordOnDisk};
use super::process::Pidfd;
use super::spawner::{Spawn, SpawnFailure, Spawner};

/// Whether the VM's process may still be alive.
pub fn is_live(state: VmState) -> bool {
    matches!(
        state,
        VmState::Starting | VmState::Running | VmState::Paused | VmState::Reaping
    )
}

/// The span of resident-memory samples a growth rate is taken over
/// (`kill_fastest_grower`): one second, whether the VM is looked at every
/// tick (under pressure) or every [`CALM_LOOK_EVERY`] (calm).
const GROWTH_SPAN: Duration = Duration::from_secs(1);
/// At most this many samples are kept, whatever the tick.
const GROWTH_SAMPLES_MAX: usize = 64;

/// One VM.
pub struct VmRecord {
    pub id: String,
    pub spec: VmSpec,
    pub dir: PathBuf,
    pub api_sock: PathBuf,
    pub pidfd: Option<Pidfd>,
    pub state: VmState,
    pub oom_score_adj: OomScoreAdj,
    pub placement: Placement,
    pub created_at_ms: u64,
    /// How it ended, once it has.
    pub exit: Option<String>,
    /// The host kernel's `oom_score_adj` of the VMM as last read back,
    /// when it is not the operator's (see [`mirror_adj`]).
    pub kernel_oom_score_adj: Option<i16>,
    /// Who its VMM process is, for a restarted daemon to re-adopt it.
    pub identity: Option<ProcessIdentity>,
    /// Recent `(when, rss bytes)` samples.
    samples: VecDeque<(Instant, u64)>,
    /// The kernel's memory counters of the VMM as the supervisor last
    /// read them ([`Self::observe`]): what the policy measures usage with,
    /// without reading `/proc` again per domain.
    counters: Option<MmCounters>,
    /// The VMM's `statm` and `status`, open while it lives.
    proc_files: Option<CounterFiles>,
    /// Resident pages at the last look, and when `status` was last read.
    last_resident: Option<u64>,
    last_status_read: Option<Instant>,
    /// Whether its pidfd is in the daemon's [`super::exit_watch::ExitWatch`].
    pub exit_watched: bool,
    /// Guest RAM resident bytes, and the resident pages when they were
    /// read ([`Self::guest_ram_resident`]).
    guest_ram_seen: Option<(u64, u64)>,
}

/// How often the supervisor looks at a calm VM's resident pages (`statm`)
/// when nothing needs them every tick.
pub const CALM_LOOK_EVERY: Duration = Duration::from_secs(1);

/// How stale a calm VM's `status` counters (swap, page tables, the split
/// of its RSS) may get while its resident pages do not move. Pages going
/// to or coming from swap move the resident count, which triggers a read
/// at once; this bound is for what does not (page tables alone).
pub const STATUS_READ_EVERY: Duration = Duration::from_secs(10);

impl Placed for VmRecord {
    fn placement(&self) -> &Placement {
        &self.placement
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot prepare {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {bin}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {bin} in memory cgroup {cgroup}")]
    Cgroup {
        bin: PathBuf,
        cgroup: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot place the VM in its pool's memory cgroup: {0}")]
    Placement(crate::host::cgroup::CgroupError),
    #[error("cannot open a pidfd for the new VMM")]
    Pidfd(#[source] std::io::Error),
}

/// Mirrors the operator's `adj` into the kernel's `oom_score_adj` of the
/// VMM `pid`, so that the host kernel's own OOM killer, should it act
/// before the daemon, ranks the VMs as the operator did. Returns what the
/// kernel holds when that is not `adj`: lowering it below 0 needs
/// `CAP_SYS_RESOURCE`, and without it the kernel refuses (the daemon's own
/// decisions use `adj` either way).
pub fn mirror_adj(adj: OomScoreAdj, pid: u32) -> Option<i16> {
    let _ = adj.apply_to_process(pid);
    let kernel: i16 = fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (kernel != adj.get()).then_some(kernel)
}

/// What [`VmRecord::adopt`] found.
pub enum Adoption {
    /// The VMM runs on and is ours again.
    Adopted,
    /// It ended while no daemon watched it; how, as far as is known.
    Ended(String),
}

/// VM `id`'s directory: its sockets, console and logs.
pub fn vm_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("vms").join(id)
}

/// Where VM `id`'s API socket lives.
pub fn api_sock_path(state_dir: &Path, id: &str) -> PathBuf {
    vm_dir(state_dir, id).join("api.sock")
}

/// The vsock CID of a guest with an agent (each VM has its own vsock
/// device, so every guest can be 3, the first CID for guests).
const GUEST_CID: u32 = 3;

/// The most of a VMM's log that an error carries.
const LOG_TAIL_BYTES: u64 = 2048;

/// The `vmm run` arguments for `spec`.
fn run_args(spec: &VmSpec, api_sock: &Path, console: &Path) -> Vec<String> {
    let mut args = vec![
        "run".to_string(),
        "--mem".into(),
        format!("{}M", spec.mem_mib),
        "--vcpus".into(),
        spec.vcpus.to_string(),
        "--api-sock".into(),
        api_sock.display().to_string(),
        // Boot at once, also the embedded tiny guest (no --kernel).
        "--boot-now".into(),
        "--serial-out".into(),
        console.display().to_string(),
    ];
    for (flag, value) in [
        ("--kernel", &spec.kernel),
        ("--initrd", &spec.initrd),
        ("--cmdline", &spec.cmdline),
    ] {
        // One argument, `--flag=value`: a value that starts with `-` (a
        // command line like "-v") must not be taken for a flag.
        if let Some(v) = value {
            args.push(format!("{flag}={v}"));
        }
    }
    if let Some(nodes) = &spec.numa_nodes {
        args.push("--numa-nodes".into());
        args.push(nodes.clone());
    }
    if spec.agent {
        // The guest's agent reaches CID 2 port 1025, which the VMM
        // forwards to `<uds>_1025`, where the daemon listens.
        let uds = super::agents::vsock_uds(api_sock.parent().unwrap_or(Path::new(".")));
        args.push(format!("--vsock=cid={GUEST_CID},uds={}", uds.display()));
    }
    for d in &spec.drives {
        args.push(format!(
            "--drive=id={},path={},ro={},root={}",
            d.drive_id, d.path_on_host, d.is_read_only, d.is_root_device
        ));
    }
    for n in &spec.network_interfaces {
        let mac = n
            .guest_mac
            .as_ref()
            .map_or(String::new(), |m| format!(",mac={m}"));
        args.push(format!(
            "--net=id={},tap={}{mac}",
            n.iface_id, n.host_dev_name
        ));
    }
    if let Some(b) = &spec.balloon {
        args.push("--balloon".into());
        args.push(format!(
            "amount_mib={},deflate_on_oom={},stats_polling_interval_s={},free_page_reporting={}",
            b.amount_mib, b.deflate_on_oom, b.stats_polling_interval_s, b.free_page_reporting
        ));
    }
    args
}

impl VmRecord {
    /// Starts `vmm run` for `spec` (whose `id` is set) under `state_dir`,
    /// through `spawner` (the daemon's unfiltered thread), in memory
    /// cgroup `cgroup` if given: the child joins it between fork and exec,
    /// before the VMM allocates anything.
    pub fn spawn(
        spawner: &Spawner,
        state_dir: &Path,
        id: String,
        spec: VmSpec,
        now_ms: u64,
        cgroup: Option<&PoolCgroup>,
    ) -> Result<Self, SpawnError> {
        let dir = state_dir.join("vms").join(&id);
        let dir_err = |source| SpawnError::Dir {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(dir_err)?;
        let api_sock = api_sock_path(state_dir, &id);
        let log = File::create(dir.join("vmm.log")).map_err(dir_err)?;
        let cgroup_procs = cgroup
            .map(PoolCgroup::open_procs)
            .transpose()
            .map_err(SpawnError::Placement)?;
        let bin = || spawner.program().to_path_buf();
        let pidfd = spawner
            .spawn(Spawn {
                args: run_args(&spec, &api_sock, &dir.join("console.log")),
                stderr: log,
                cgroup_procs,
            })
            .map_err(|failure| match failure {
                SpawnFailure::Pidfd(source) => SpawnError::Pidfd(source),
                SpawnFailure::Start(source) => match cgroup {
                    Some(cg) => SpawnError::Cgroup {
                        bin: bin(),
                        cgroup: cg.dir().to_path_buf(),
                        source,
                    },
                    None => SpawnError::Spawn { bin: bin(), source },
                },
                SpawnFailure::Gone => SpawnError::Spawn {
                    bin: bin(),
                    source: std::io::Error::other("the spawner thread is gone"),
                },
            })?;
        let pid = pidfd.pid();
        let oom_score_adj =
            OomScoreAdj::try_from(i64::from(spec.oom_score_adj)).unwrap_or_default();
        // Mirror the operator's adj into the kernel's, so the kernel's own
        // OOM killer agrees with ours. Lowering it below 0 needs
        // CAP_SYS_RESOURCE; without it the daemon's own policy still
        // honours the value (the decision event shows it).
        let kernel_adj = mirror_adj(oom_score_adj, pid);
        let identity = ProcessIdentity::of(pid).ok();
        let mut record = VmRecord::new(state_dir, id, spec, Some(pidfd), now_ms, cgroup);
        record.identity = identity;
        record.kernel_oom_score_adj = kernel_adj;
        Ok(record)
    }

    /// A record for `spec` (whose `id` is set) without a process yet.
    fn new(
        state_dir: &Path,
        id: String,
        spec: VmSpec,
        pidfd: Option<Pidfd>,
        created_at_ms: u64,
        cgroup: Option<&PoolCgroup>,
    ) -> Self {
        VmRecord {
            placement: Placement {
                pool: spec.pool.clone(),
                cgroup: cgroup.map(|cg| cg.dir().to_path_buf()),
                // Checked by VmSpec::validate.
                nodes: spec.numa_nodes.as_deref().and_then(|n| n.parse().ok()),
            },
            dir: state_dir.join("vms").join(&id),
            api_sock: api_sock_path(state_dir, &id),
            id,
            oom_score_adj: OomScoreAdj::try_from(i64::from(spec.oom_score_adj)).unwrap_or_default(),
            spec,
            pidfd,
            state: VmState::Starting,
            created_at_ms,
            exit: None,
            kernel_oom_score_adj: None,
            identity: None,
            samples: VecDeque::new(),
            counters: None,
            proc_files: None,
            last_resident: None,
            last_status_read: None,
            exit_watched: false,
            guest_ram_seen: None,
        }
    }

    /// Takes back a VM a previous daemon on this state directory started,
    /// from its record: adopted when its VMM is still the very process the
    /// record names (pid, start time, executable), else an exited VM. The
    /// identity is checked again once the pidfd is open, so a pid reused
    /// between the check and the open is never adopted.
    pub fn adopt(
        state_dir: &Path,
        on_disk: VmRecordOnDisk,
        cgroup: Option<&PoolCgroup>,
    ) -> (Self, Adoption) {
        let id = on_disk.spec.id.clone().unwrap_or_default();
        let same = |p: &ProcessIdentity| ProcessIdentity::of(p.pid).is_ok_and(|now| now == *p);
        let pidfd = Some(&on_disk.process)
            .filter(|p| same(p))
            .and_then(|p| Pidfd::open(p.pid).ok())
            .filter(|_| same(&on_disk.process));
        let adopted = pidfd.is_some();
        let mut record = VmRecord::new(
            state_dir,
            id,
            on_disk.spec,
            pidfd,
            on_disk.created_at_ms,
            cgroup,
        );
        record.oom_score_adj =
            OomScoreAdj::try_from(i64::from(on_disk.oom_score_adj)).unwrap_or_default();
        record.spec.oom_score_adj = record.oom_score_adj.get();
        if adopted {
            record.state = on_disk.state;
            record.identity = Some(on_disk.process);
            (record, Adoption::Adopted)
        } else {
            let how = format!(
                "VMM pid {} ended while no daemon watched it (status unknown)",
                on_disk.process.pid
            );
            record.state = VmState::Exited;
            record.exit = Some(how.clone());
            record.clean_up_after_exit();
            persist::forget(&record.dir);
            (record, Adoption::Ended(how))
        }
    }

    /// Writes (for a running or paused VM) or removes (for an ended one)
    /// the record a restarted daemon re-adopts it from. A `Reaping` VM
    /// keeps its last record: writing is an `fsync`, and the kill path
    /// must not wait for one; its SIGKILLed process is gone long before a
    /// successor daemon could adopt it.
    pub fn persist(&self) -> std::io::Result<()> {
        match (&self.identity, self.state) {
            (_, VmState::Starting | VmState::Reaping) => Ok(()),
            (Some(identity), VmState::Running | VmState::Paused) => persist::save(
                &self.dir,
                &VmRecordOnDisk {
                    spec: self.spec.clone(),
                    process: identity.clone(),
                    state: self.state,
                    oom_score_adj: self.oom_score_adj.get(),
                    created_at_ms: self.created_at_ms,
                },
            ),
            _ => {
                persist::forget(&self.dir);
                Ok(())
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.pidfd.as_ref().map(Pidfd::pid)
    }

    /// The VMM's memory counters as the supervisor last read them
    /// ([`Self::observe`]; while calm, at most [`CALM_LOOK_EVERY`] behind
    /// a change of RSS, one tick under pressure), while it is alive: what `GET /vms` and
    /// `/metrics` show, without reading `/proc` for every VM on every
    /// request.
    pub fn counters(&self) -> Option<MmCounters> {
        self.counters.filter(|_| is_live(self.state))
    }

    /// Bytes of guest RAM resident in host memory (the `Rss` of its
    /// mapping in `smaps`, which costs a walk of the VMM's mappings): read
    /// again only when the VMM's resident pages moved since the last read,
    /// so a thousand idle VMs cost no `smaps` read at all.
    pub fn guest_ram_resident(&mut self) -> u64 {
        let Some(pid) = self.pid().filter(|_| is_live(self.state)) else {
            return 0;
        };
        match (self.guest_ram_seen, self.last_resident) {
            (Some((at, bytes)), Some(now)) if at == now => bytes,
            (_, now) => {
                let bytes = fs::read_to_string(format!("/proc/{pid}/smaps")).map_or(0, |s| {
                    rss_of_mapping_sized(&s, u64::from(self.spec.mem_mib) << 20)
                });
                if let Some(now) = now {
                    self.guest_ram_seen = Some((now, bytes));
                }
                bytes
            }
        }
    }

    /// Looks at the VMM's memory: its resident pages (`statm`) every
    /// time, for the growth rate; the kernel's counters (`status`: swap,
    /// page tables, the RSS split; no page-table walk, unlike
    /// `smaps_rollup`) when `exact` (a domain is under pressure), when the
    /// resident pages moved, or every [`STATUS_READ_EVERY`]. A calm VM
    /// thus costs ~2 µs a look instead of ~25 µs (issue 11); pages that go
    /// to swap leave the resident count, so usage never lags a change
    /// of RSS.
    pub fn observe(&mut self, exact: bool, page_size: u64) {
        let Some(pid) = self.pid().filter(|_| is_live(self.state)) else {
            self.proc_files = None;
            return;
        };
        if self.proc_files.is_none() {
            // Opened while the pidfd shows the process alive: the files
            // are then bound to it, not to whoever reuses its pid.
            let files = CounterFiles::open(pid).ok();
            let alive = self.pidfd.as_ref().is_some_and(|p| !p.has_exited());
            self.proc_files = files.filter(|_| alive);
        }
        let Some(files) = self.proc_files.as_mut() else {
            return;
        };
        let Ok(resident) = files.resident_pages() else {
            return;
        };
        let now = Instant::now();
        let due = self
            .last_status_read
            .is_none_or(|t| now.duration_since(t) >= STATUS_READ_EVERY);
        if exact || due || self.last_resident != Some(resident) {
            if let Ok(Some(c)) = files.counters() {
                self.counters = Some(c);
                self.last_status_read = Some(now);
            }
        }
        self.last_resident = Some(resident);
        self.sample(resident * page_size);
    }

    /// RSS + swap of the VMM at the last [`Self::observe`], bytes.
    pub fn usage_bytes(&self) -> u64 {
        self.counters
            .filter(|_| is_live(self.state))
            .map_or(0, |c| c.rss_anon + c.rss_file + c.rss_shmem + c.swap)
    }

    /// Records an RSS sample for the growth rate.
    fn sample(&mut self, rss: u64) {
        let now = Instant::now();
        self.samples.push_back((now, rss));
        // Keep the newest sample at least GROWTH_SPAN old, so that a
        // rate exists even when samples come a second apart.
        while self.samples.len() > GROWTH_SAMPLES_MAX
            || (self.samples.len() > 2
                && self
                    .samples
                    .get(1)
                    .is_some_and(|&(t, _)| now.duration_since(t) >= GROWTH_SPAN))
        {
            self.samples.pop_front();
        }
    }

    /// RSS growth in bytes per second over the sample window.
    pub fn growth_bytes_per_s(&self) -> i64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(&(t0, r0)), Some(&(t1, r1))) if t1 > t0 + Duration::from_millis(10) => {
                ((r1 as i64 - r0 as i64) as f64 / (t1 - t0).as_secs_f64()) as i64
            }
            _ => 0,
        }
    }

    /// Removes what a dead VM leaves behind that nothing will use again:
    /// its API socket (a SIGKILLed VMM cannot unlink it). Logs stay until
    /// the VM is deleted.
    pub fn clean_up_after_exit(&self) {
        let _ = fs::remove_file(&self.api_sock);
    }

    /// What the VMM said before it failed to start: the `vmm:` lines at
    /// the end of its log (bounded), joined.
    pub fn start_error_log(&self) -> String {
        use std::io::{Read, Seek, SeekFrom};
        let mut tail = String::new();
        if let Ok(mut f) = File::open(self.dir.join("vmm.log")) {
            let len = f.metadata().map_or(0, |m| m.len());
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
            let mut bytes = Vec::new();
            let _ = f.take(LOG_TAIL_BYTES).read_to_end(&mut bytes);
            tail = String::from_utf8_lossy(&bytes).into_owned();
        }
        let said: Vec<&str> = tail
            .lines()
            .filter_map(|l| l.strip_prefix("vmm: "))
            .collect();
        if said.is_empty() {
            // Not the VMM's own words (an argument error, a crash): its
            // last line is the best there is.
            return tail
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
        }
        said.join("; ")
    }

    /// Removes the VM's directory.
    pub fn remove_files(&self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}
