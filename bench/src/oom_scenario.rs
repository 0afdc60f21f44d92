//! `oom-scenario`: the reference overcommit scenario in a cgroup v1 memory
//! cgroup, under three regimes side by side (runs interleaved):
//!
//! 1. **kernel**: the kernel's memcg OOM killer alone. The benchmark makes
//!    a memory cgroup below its own (the limit, the OOM killer on) and
//!    starts the VMs there as plain `vmm run` processes, each joining it
//!    between fork and exec; no daemon.
//! 2. **kill-only**: `vmm daemon` with a memcg pool of the same limit and
//!    the policy `reclaim_first: false`.
//! 3. **balloon-first**: the same with `reclaim_first: true` (the daemon's
//!    defaults otherwise).
//!
//! The scenario: idle tiny guests that allocated memory and freed most of
//! it (still resident on the host; balloon, statistics and free page
//! reporting on) start first; once each is live, and after a settle time,
//! growers start that touch memory until the pool is past its limit, then
//! hold. The VMs get exactly the `vmm run` arguments the daemon gives its
//! VMs. For a fixed window after the growers start the benchmark polls the
//! cgroup's counters, the growers' consoles (`touched ... verified`: its
//! work is done) and each VMM's pidfd (dead or alive). Afterwards it reads
//! the VMMs' exit statuses (kernel) or the daemon's events and VM table.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use vmm::daemon_api::events::{KillOutcome, OomKill};
use vmm::daemon_api::{Event, EventRecord, VmView};

use crate::child::pidfd_open;
use crate::common::{describe_binary, display_path, shell_quote, PinnedBinary, Scratch};
use crate::control::HttpCall;
use crate::machine::Machine;
use crate::memcg::{own_memcg_v1, CgroupDir, MemcgFiles, MemcgSample};
use crate::stats::Summary;

const MIB: u64 = 1 << 20;
/// An idle guest is live once its balloon driver runs (after its
/// `tiny.alloc` and `tiny.free`).
const LIVE: &str = "tiny-guest: virtio-balloon features";
/// A grower's work is done.
const TOUCHED: &str = "tiny-guest: touched ";
/// A free page reporting round of the guest that reported something.
const REPORTED: &str = "tiny-guest: reported ";
/// The end of a balloon deflation (the guest has re-touched the pages).
const DEFLATED: &str = "tiny-guest: deflated ";
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(20);
const DAEMON_STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Options {
    pub runs: usize,
    pub vmm: PathBuf,
    pub scenario: Scenario,
    /// Observation window from the first grower's start.
    pub window: Duration,
    /// Wait between the idle guests being live and the growers' start.
    pub settle: Duration,
    /// Polling interval of the cgroup, the consoles and the pidfds.
    pub poll: Duration,
    /// Regimes to run (default: all).
    pub only: Vec<Regime>,
    /// Keep each run's files (consoles, VMM logs, the daemon's
    /// `events.ndjson`) below this directory.
    pub keep: Option<PathBuf>,
}

/// The VMs and the pool.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub idle: usize,
    pub idle_mem_mib: u32,
    pub idle_alloc_mib: u32,
    pub idle_free_mib: u32,
    /// The idle guests' free page reporting period (`tiny.report-every`;
    /// `0` = never; the device offers reporting either way).
    pub report_every: String,
    /// The balloon's statistics polling interval, seconds.
    pub stats_s: u32,
    pub growers: usize,
    pub grower_mem_mib: u32,
    pub grower_touch_mib: u32,
    pub limit_mib: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Regime {
    Kernel,
    KillOnly,
    BalloonFirst,
}

impl Regime {
    const ALL: [Regime; 3] = [Regime::Kernel, Regime::KillOnly, Regime::BalloonFirst];

    fn name(self) -> &'static str {
        match self {
            Regime::Kernel => "kernel",
            Regime::KillOnly => "kill-only",
            Regime::BalloonFirst => "balloon-first",
        }
    }

    fn header(self) -> &'static str {
        match self {
            Regime::Kernel => "(i) kernel memcg OOM killer",
            Regime::KillOnly => "(ii) daemon, kill-only",
            Regime::BalloonFirst => "(iii) daemon, balloon-first",
        }
    }

    fn reclaim_first(self) -> Option<bool> {
        match self {
            Regime::Kernel => None,
            Regime::KillOnly => Some(false),
            Regime::BalloonFirst => Some(true),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Idle,
    Grower,
}

/// One VM of the scenario.
#[derive(Clone, Debug)]
struct VmDef {
    name: String,
    role: Role,
    mem_mib: u32,
    cmdline: String,
    balloon: bool,
    /// Guest memory in use that dies with the VM: an idle guest's
    /// allocation it did not free, a grower's whole touch.
    in_use_mib: u32,
}

impl Scenario {
    fn vms(&self) -> Vec<VmDef> {
        let idle = (1..=self.idle).map(|i| VmDef {
            name: format!("idle{i}"),
            role: Role::Idle,
            mem_mib: self.idle_mem_mib,
            cmdline: format!(
                "tiny.alloc={}M tiny.free={}M tiny.balloon=on tiny.report-every={}",
                self.idle_alloc_mib, self.idle_free_mib, self.report_every
            ),
            balloon: true,
            in_use_mib: self.idle_alloc_mib - self.idle_free_mib,
        });
        let growers = (1..=self.growers).map(|i| VmDef {
            name: format!("grower{i}"),
            role: Role::Grower,
            mem_mib: self.grower_mem_mib,
            cmdline: format!("tiny.touch={}M tiny.hold=forever", self.grower_touch_mib),
            balloon: false,
            in_use_mib: self.grower_touch_mib,
        });
        idle.chain(growers).collect()
    }

    fn limit(&self) -> u64 {
        self.limit_mib * MIB
    }

    /// `--balloon` of an idle VM, exactly as the daemon writes it for the
    /// JSON of [`Scenario::balloon_json`].
    fn balloon_arg(&self) -> String {
        format!(
            "amount_mib=0,deflate_on_oom=true,stats_polling_interval_s={},free_page_reporting=true",
            self.stats_s
        )
    }

    fn balloon_json(&self) -> Value {
        json!({
            "amount_mib": 0,
            "deflate_on_oom": true,
            "stats_polling_interval_s": self.stats_s,
            "free_page_reporting": true,
        })
    }

    /// `vmm run` arguments, in the order the daemon's `run_args` uses.
    fn run_args(&self, vm: &VmDef, api_sock: &str, console: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "--mem",
            &format!("{}M", vm.mem_mib),
            "--vcpus",
            "1",
            "--api-sock",
            api_sock,
            "--boot-now",
            "--serial-out",
            console,
            "--cmdline",
            &vm.cmdline,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if vm.balloon {
            args.push("--balloon".into());
            args.push(self.balloon_arg());
        }
        args
    }

    /// `POST /vms` body for the daemon.
    fn daemon_json(&self, vm: &VmDef, pool: &str) -> String {
        let mut body = json!({
            "id": vm.name,
            "pool": pool,
            "mem_mib": vm.mem_mib,
            "cmdline": vm.cmdline,
        });
        if vm.balloon {
            body["balloon"] = self.balloon_json();
        }
        body.to_string()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.idle_free_mib > self.idle_alloc_mib {
            bail!("--idle-free-mib must not exceed --idle-alloc-mib");
        }
        if self.idle_alloc_mib + 8 > self.idle_mem_mib {
            bail!("--idle-alloc-mib must leave at least 8 MiB of --idle-mem-mib");
        }
        if self.grower_touch_mib + 4 > self.grower_mem_mib {
            bail!("--grower-touch-mib must leave at least 4 MiB of --grower-mem-mib");
        }
        if self.growers == 0 {
            bail!("the scenario needs at least one grower");
        }
        // The idle guests alone must fit, with room for the VMMs.
        let idle = self.idle as u64 * (u64::from(self.idle_alloc_mib) + 8);
        if idle >= self.limit_mib {
            bail!(
                "the idle VMs alone (~{idle} MiB) do not fit under --limit-mib {}",
                self.limit_mib
            );
        }
        let all = self.idle as u64 * u64::from(self.idle_alloc_mib)
            + self.growers as u64 * u64::from(self.grower_touch_mib);
        if all <= self.limit_mib {
            eprintln!(
                "note: the VMs touch {all} MiB, not more than the {} MiB limit: no pressure",
                self.limit_mib
            );
        }
        Ok(())
    }
}

/// A VM being watched: its process (by pidfd), console and log.
struct Watched {
    def: usize,
    pidfd: Option<OwnedFd>,
    console: PathBuf,
    log: PathBuf,
    finished: Option<Duration>,
    died: Option<Duration>,
    /// Free page reports on its console when the growers started.
    reports_at_t0: usize,
}

impl Watched {
    fn new(def: usize, pid: u32, console: PathBuf, log: PathBuf) -> Watched {
        Watched {
            def,
            pidfd: pidfd_open(pid).ok(),
            console,
            log,
            finished: None,
            died: None,
            reports_at_t0: 0,
        }
    }

    /// Console lines that start with `prefix`.
    fn count(&self, prefix: &str) -> usize {
        fs::read_to_string(&self.console)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with(prefix))
            .count()
    }

    /// Counts the free page reports so far (call at the growers' start).
    fn mark_t0(&mut self) {
        self.reports_at_t0 = self.count(REPORTED);
    }

    fn result(&self, def: &VmDef, fate: Fate) -> VmResult {
        VmResult {
            name: def.name.clone(),
            role: def.role,
            mem_mib: def.mem_mib,
            in_use_mib: def.in_use_mib,
            finished_ms: self.finished.map(ms),
            died_ms: self.died.map(ms),
            fate,
            reports_before: self.reports_at_t0,
            reports_after: self.count(REPORTED).saturating_sub(self.reports_at_t0),
            deflations: self.count(DEFLATED),
        }
    }

    fn exited(&self) -> bool {
        let Some(fd) = &self.pidfd else {
            return true;
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut pfd, 1, 0) > 0 }
    }
}

/// Polls the cgroup, the growers' consoles and every VMM's pidfd until
/// `window` has passed since `t0`.
fn observe(
    files: &MemcgFiles,
    defs: &[VmDef],
    vms: &mut [Watched],
    t0: Instant,
    opts: &Options,
) -> anyhow::Result<Vec<(Duration, MemcgSample)>> {
    let mut samples = Vec::with_capacity(4096);
    loop {
        let t = t0.elapsed();
        samples.push((t, files.read()?));
        for vm in vms.iter_mut() {
            if defs[vm.def].role == Role::Grower && vm.finished.is_none() {
                let text = fs::read_to_string(&vm.console).unwrap_or_default();
                if text.contains(TOUCHED) {
                    vm.finished = Some(t);
                }
            }
            if vm.died.is_none() && vm.exited() {
                vm.died = Some(t);
            }
        }
        if t >= opts.window {
            return Ok(samples);
        }
        std::thread::sleep(opts.poll);
    }
}

/// How a VM ended up.
#[derive(Clone, Debug, PartialEq)]
enum Fate {
    Alive,
    /// SIGKILL while nobody but the kernel's OOM killer could send it.
    KernelOom,
    /// The daemon's decision.
    Daemon,
    /// Anything else: an exit status, with the last line of its log.
    Other(String),
}

#[derive(Clone, Debug)]
struct VmResult {
    name: String,
    role: Role,
    mem_mib: u32,
    in_use_mib: u32,
    finished_ms: Option<f64>,
    died_ms: Option<f64>,
    fate: Fate,
    /// Free page reporting rounds (that reported something) before and
    /// after the growers' start.
    reports_before: usize,
    reports_after: usize,
    /// Balloon deflations (the tiny guest re-touches every deflated page).
    deflations: usize,
}

impl VmResult {
    fn killed(&self) -> bool {
        self.died_ms.is_some() && matches!(self.fate, Fate::KernelOom | Fate::Daemon)
    }
}

/// The daemon's timeline, in ms since the growers' start.
#[derive(Clone, Debug, Default)]
struct DaemonEvents {
    lent: Vec<f64>,
    reclaim: Vec<f64>,
    /// The last balloon target the policy asked of each VM, MiB.
    balloon_targets: Vec<(String, u64)>,
    released: Vec<f64>,
    pressure: Vec<f64>,
    decisions: Vec<(f64, u64, Option<String>)>,
    kills: Vec<KillEvent>,
}

#[derive(Clone, Debug)]
struct KillEvent {
    at: f64,
    vm: String,
    kill_to_freed_us: Option<u64>,
    decision_to_freed_us: Option<u64>,
}

impl DaemonEvents {
    /// The timeline of `events` (other kinds are not part of it).
    fn parse(events: &[EventRecord], t0_unix_ms: f64) -> DaemonEvents {
        let mut d = DaemonEvents::default();
        for e in events {
            let at = e.time_ms as f64 - t0_unix_ms;
            match &e.event {
                Event::MemcgReserveLent { .. } => d.lent.push(at),
                Event::Reclaim(r) => {
                    d.reclaim.push(at);
                    for b in &r.balloons {
                        let mib = u64::from(b.target_mib);
                        match d.balloon_targets.iter_mut().find(|(v, _)| *v == b.vm) {
                            Some(t) => t.1 = mib,
                            None => d.balloon_targets.push((b.vm.clone(), mib)),
                        }
                    }
                }
                Event::ReclaimReleased(_) => d.released.push(at),
                Event::OomPressure(_) => d.pressure.push(at),
                Event::OomDecision(decision) if !decision.dry_run => {
                    d.decisions
                        .push((at, decision.decision_us, decision.victim.clone()))
                }
                Event::OomKill(OomKill { vm, outcome, .. }) => {
                    let (kill_to_freed_us, decision_to_freed_us) = match outcome {
                        KillOutcome::Reaped {
                            report,
                            decision_to_freed_us,
                        } => (Some(report.freed_us), Some(*decision_to_freed_us)),
                        KillOutcome::Failed { .. } => (None, None),
                    };
                    d.kills.push(KillEvent {
                        at,
                        vm: vm.clone(),
                        kill_to_freed_us,
                        decision_to_freed_us,
                    })
                }
                _ => {}
            }
        }
        d
    }
}

/// One run of one regime.
#[derive(Clone, Debug)]
struct RunResult {
    vms: Vec<VmResult>,
    /// The cgroup right before the growers' start, and every sample after.
    base: MemcgSample,
    samples: Vec<(f64, MemcgSample)>,
    daemon: Option<DaemonEvents>,
}

impl RunResult {
    fn killed(&self, role: Option<Role>) -> usize {
        self.vms
            .iter()
            .filter(|v| v.killed() && role.is_none_or(|r| v.role == r))
            .count()
    }

    fn other_deaths(&self) -> usize {
        self.vms
            .iter()
            .filter(|v| v.died_ms.is_some() && !v.killed())
            .count()
    }

    fn growers_finished(&self) -> usize {
        self.vms
            .iter()
            .filter(|v| v.role == Role::Grower && v.finished_ms.is_some())
            .count()
    }

    fn lost_in_use_mib(&self) -> f64 {
        self.dead().map(|v| u64::from(v.in_use_mib)).sum::<u64>() as f64
    }

    fn lost_ram_mib(&self) -> f64 {
        self.dead().map(|v| u64::from(v.mem_mib)).sum::<u64>() as f64
    }

    /// Every VM that died in the window, killed or not: its work is lost
    /// either way.
    fn dead(&self) -> impl Iterator<Item = &VmResult> {
        self.vms.iter().filter(|v| v.died_ms.is_some())
    }

    /// When every grower had finished its touch or was dead (ms since the
    /// start), if that happened in the window.
    fn growers_done_ms(&self) -> Option<f64> {
        self.vms
            .iter()
            .filter(|v| v.role == Role::Grower)
            .map(|v| match (v.finished_ms, v.died_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            })
            .try_fold(0.0f64, |acc, t| Some(acc.max(t?)))
    }

    fn first_refused_ms(&self) -> Option<f64> {
        self.samples
            .iter()
            .find(|(_, s)| s.failcnt > self.base.failcnt)
            .map(|(t, _)| *t)
    }

    fn last_refused_ms(&self) -> Option<f64> {
        self.samples
            .windows(2)
            .filter(|w| w[1].1.failcnt > w[0].1.failcnt)
            .map(|w| w[1].0)
            .next_back()
    }

    /// First refused charge → every grower finished or dead; 0 without a
    /// refused charge; to the window's end if the growers never got done.
    fn pressure_ms(&self) -> f64 {
        let Some(first) = self.first_refused_ms() else {
            return 0.0;
        };
        let end = self
            .growers_done_ms()
            .or_else(|| self.samples.last().map(|(t, _)| *t))
            .unwrap_or(first);
        (end - first).max(0.0)
    }

    fn last(&self) -> MemcgSample {
        self.samples.last().map_or(self.base, |(_, s)| *s)
    }

    fn refused(&self) -> f64 {
        (self.last().failcnt - self.base.failcnt) as f64
    }

    fn refused_after_done(&self) -> f64 {
        let Some(done) = self.growers_done_ms() else {
            return 0.0;
        };
        let at_done = self
            .samples
            .iter()
            .find(|(t, _)| *t >= done)
            .map_or(self.last().failcnt, |(_, s)| s.failcnt);
        (self.last().failcnt - at_done) as f64
    }

    fn kernel_kills(&self) -> f64 {
        (self.last().oom_kill - self.base.oom_kill) as f64
    }

    /// First refused charge → the first kill: the kernel's `oom_kill`
    /// counter rising, or the daemon's first decision with a victim.
    fn first_kill_after_refusal_ms(&self) -> Option<f64> {
        let first = self.first_refused_ms()?;
        let kill = match &self.daemon {
            Some(d) => d.decisions.iter().find(|x| x.2.is_some())?.0,
            None => {
                self.samples
                    .iter()
                    .find(|(_, s)| s.oom_kill > self.base.oom_kill)?
                    .0
            }
        };
        Some(kill - first)
    }

    fn first_death_after_refusal_ms(&self) -> Option<f64> {
        let first = self.first_refused_ms()?;
        let death = self
            .vms
            .iter()
            .filter(|v| v.killed())
            .filter_map(|v| v.died_ms)
            .reduce(f64::min)?;
        Some(death - first)
    }

    fn idle_reported_before(&self) -> f64 {
        self.vms.iter().filter(|v| v.reports_before > 0).count() as f64
    }

    fn reports_after(&self) -> f64 {
        self.vms.iter().map(|v| v.reports_after).sum::<usize>() as f64
    }

    fn deflations(&self) -> f64 {
        self.vms.iter().map(|v| v.deflations).sum::<usize>() as f64
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The last non-empty line of a file, for a VMM's log.
fn last_line(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Waits until every idle VM's console shows [`LIVE`]; fails early if one
/// of them died.
fn wait_live(defs: &[VmDef], vms: &[Watched]) -> anyhow::Result<()> {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    for vm in vms.iter().filter(|v| defs[v.def].role == Role::Idle) {
        loop {
            if fs::read_to_string(&vm.console).is_ok_and(|t| t.contains(LIVE)) {
                break;
            }
            if vm.exited() {
                bail!(
                    "{} died before its balloon was live: {}",
                    defs[vm.def].name,
                    last_line(&vm.log)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} printed no '{LIVE}' within {BOOT_TIMEOUT:?}",
                    defs[vm.def].name
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Everything one invocation needs to run a regime.
struct Bench<'a> {
    opts: &'a Options,
    defs: Vec<VmDef>,
    vmm: PathBuf,
    scratch: &'a Path,
    own: PathBuf,
}

/// The kernel regime's VMMs, killed by pid and reaped on drop, before the
/// cgroup (declared after them) is removed.
struct KernelVms {
    children: Vec<Child>,
    cgroup: CgroupDir,
}

impl Drop for KernelVms {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // `cgroup` drops next: it kills anything left and removes the dir.
    }
}

/// A `vmm daemon`, stopped on drop: SIGTERM (it stops its VMs and removes
/// its pool cgroups), SIGKILL after a while; then the pool guard makes
/// sure nothing is left in the pool's cgroup.
struct DaemonProc {
    child: Child,
    pool_guard: Option<CgroupDir>,
}

impl DaemonProc {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if let Ok(Some(s)) = self.child.try_wait() {
            return Some(s);
        }
        // SAFETY: kill(2) of our own unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + DAEMON_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("vmm-bench: the daemon did not stop within {DAEMON_STOP_TIMEOUT:?}; SIGKILL");
        let _ = self.child.kill();
        self.child.wait().ok()
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.stop();
        drop(self.pool_guard.take());
    }
}

impl Bench<'_> {
    fn run(&self, regime: Regime, run: usize) -> anyhow::Result<RunResult> {
        let dir = self.scratch.join(format!("{}-{run}", regime.name()));
        fs::create_dir_all(&dir)?;
        let result = match regime.reclaim_first() {
            None => self.kernel(&dir),
            Some(reclaim_first) => self.daemon(reclaim_first, &dir),
        };
        match &self.opts.keep {
            Some(keep) => {
                fs::create_dir_all(keep)?;
                let to = keep.join(format!("{}-{run}", regime.name()));
                let _ = fs::remove_dir_all(&to);
                fs::rename(&dir, &to)
                    .or_else(|_| copy_dir(&dir, &to))
                    .with_context(|| {
                        format!("cannot keep {} as {}", dir.display(), to.display())
                    })?;
                let _ = fs::remove_dir_all(&dir);
            }
            None => {
                let _ = fs::remove_dir_all(&dir);
            }
        }
        result
    }

    /// (i): a cgroup of our own, the kernel's OOM killer on, plain VMMs.
    fn kernel(&self, dir: &Path) -> anyhow::Result<RunResult> {
        let s = &self.opts.scenario;
        let cg_dir = self
            .own
            .join(format!("bench-oom-{}-kernel", std::process::id()));
        let mut vms = KernelVms {
            children: Vec::new(),
            cgroup: CgroupDir::create(&cg_dir, s.limit())?,
        };
        let files = MemcgFiles::open(&cg_dir)?;
        let procs = vms.cgroup.open_procs()?;
        let mut watched = Vec::new();
        let (idle, growers): (Vec<usize>, Vec<usize>) =
            (0..self.defs.len()).partition(|&i| self.defs[i].role == Role::Idle);
        for &i in &idle {
            let (child, w) = self.spawn_plain(i, dir, &procs, &cg_dir)?;
            vms.children.push(child);
            watched.push(w);
        }
        wait_live(&self.defs, &watched)?;
        std::thread::sleep(self.opts.settle);
        watched.iter_mut().for_each(Watched::mark_t0);
        let base = files.read()?;
        let t0 = Instant::now();
        for &i in &growers {
            let (child, w) = self.spawn_plain(i, dir, &procs, &cg_dir)?;
            vms.children.push(child);
            watched.push(w);
        }
        drop(procs);
        let samples = observe(&files, &self.defs, &mut watched, t0, self.opts)?;
        let mut out = Vec::new();
        for (w, child) in watched.iter().zip(vms.children.iter_mut()) {
            let def = &self.defs[w.def];
            let fate = match w.died {
                None => Fate::Alive,
                Some(_) => match child.try_wait() {
                    Ok(Some(st)) if st.signal() == Some(libc::SIGKILL) => Fate::KernelOom,
                    Ok(Some(st)) => Fate::Other(format!("{st}: {}", last_line(&w.log))),
                    _ => Fate::Other("gone, status unknown".into()),
                },
            };
            out.push(w.result(def, fate));
        }
        drop(vms);
        let samples = samples.into_iter().map(|(t, s)| (ms(t), s)).collect();
        Ok(RunResult {
            vms: out,
            base,
            samples,
            daemon: None,
        })
    }

    /// Starts VM `i` as a plain `vmm run` that joins the cgroup through
    /// `procs` between fork and exec.
    fn spawn_plain(
        &self,
        i: usize,
        dir: &Path,
        procs: &File,
        cg_dir: &Path,
    ) -> anyhow::Result<(Child, Watched)> {
        let def = &self.defs[i];
        let vm_dir = dir.join(&def.name);
        fs::create_dir_all(&vm_dir)?;
        let console = vm_dir.join("console.log");
        let log = vm_dir.join("vmm.log");
        let args = self.opts.scenario.run_args(
            def,
            &vm_dir.join("api.sock").to_string_lossy(),
            &console.to_string_lossy(),
        );
        let mut cmd = Command::new(&self.vmm);
        let fd = procs.as_raw_fd();
        // SAFETY: prctl and write(2) are async-signal-safe; `procs` stays
        // open until spawn returns (close-on-exec: the VMM never sees it).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {} in {}", def.name, cg_dir.display()))?;
        let w = Watched::new(i, child.id(), console, log);
        Ok((child, w))
    }

    /// (ii) and (iii): a daemon with a memcg pool of the same limit.
    fn daemon(&self, reclaim_first: bool, dir: &Path) -> anyhow::Result<RunResult> {
        let s = &self.opts.scenario;
        let pool = format!("benchoom{}", std::process::id());
        let pool_dir = self.own.join(format!("vmm-{pool}"));
        if pool_dir.exists() {
            bail!("{} exists already", pool_dir.display());
        }
        let sock = dir.join("daemon.sock");
        let state = dir.join("state");
        let config = dir.join("config.json");
        fs::write(&config, daemon_config(&pool, s.limit(), reclaim_first))?;
        let log = dir.join("daemon.log");
        let log_file = File::create(&log)?;
        let mut cmd = Command::new(&self.vmm);
        cmd.arg("daemon")
            .arg("--socket")
            .arg(&sock)
            .arg("--state-dir")
            .arg(&state)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe. Should the benchmark die, the
        // daemon gets SIGTERM and stops its VMs itself.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut daemon = DaemonProc {
            child: cmd.spawn().context("cannot start vmm daemon")?,
            pool_guard: Some(CgroupDir::guard(&pool_dir)),
        };
        let deadline = Instant::now() + DAEMON_START_TIMEOUT;
        while !sock.exists() {
            if let Ok(Some(st)) = daemon.child.try_wait() {
                bail!("vmm daemon exited ({st}): {}", last_line(&log));
            }
            if Instant::now() > deadline {
                bail!("vmm daemon made no socket within {DAEMON_START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let files = MemcgFiles::open(&pool_dir)?;
        let create = |i: usize| -> anyhow::Result<Watched> {
            let def = &self.defs[i];
            let (status, body) = HttpCall::call(&sock, "POST", "/vms", &s.daemon_json(def, &pool))?;
            if status != 201 {
                bail!("POST /vms {} answered {status}: {body}", def.name);
            }
            let view: VmView = serde_json::from_str(&body).context("POST /vms reply")?;
            let pid = view.pid.context("no pid in POST /vms reply")?;
            let vm_dir = state.join("vms").join(&def.name);
            Ok(Watched::new(
                i,
                pid,
                vm_dir.join("console.log"),
                vm_dir.join("vmm.log"),
            ))
        };
        let mut watched = Vec::new();
        for i in (0..self.defs.len()).filter(|&i| self.defs[i].role == Role::Idle) {
            watched.push(create(i)?);
        }
        wait_live(&self.defs, &watched)?;
        std::thread::sleep(self.opts.settle);
        watched.iter_mut().for_each(Watched::mark_t0);
        let base = files.read()?;
        let t0 = Instant::now();
        let t0_unix = unix_ms(SystemTime::now());
        for i in (0..self.defs.len()).filter(|&i| self.defs[i].role == Role::Grower) {
            watched.push(create(i)?);
        }
        let samples = observe(&files, &self.defs, &mut watched, t0, self.opts)?;

        // Everything the daemon knows, before it stops (and removes the
        // VMs' directories).
        let (status, body) = HttpCall::call(&sock, "GET", "/events?since=0", "")?;
        if status != 200 {
            bail!("GET /events answered {status}: {body}");
        }
        // Kinds this build does not know (a newer daemon) are not part of
        // the timeline.
        let events: Vec<EventRecord> = serde_json::from_str::<Vec<Value>>(&body)
            .context("GET /events reply")?
            .into_iter()
            .filter_map(|e| EventRecord::from_value(e).ok())
            .collect();
        let (status, body) = HttpCall::call(&sock, "GET", "/vms", "")?;
        if status != 200 {
            bail!("GET /vms answered {status}: {body}");
        }
        let views: Vec<VmView> = serde_json::from_str(&body).context("GET /vms reply")?;
        let events = DaemonEvents::parse(&events, t0_unix);
        let mut out = Vec::new();
        for w in &watched {
            let def = &self.defs[w.def];
            let view = views.iter().find(|v| v.id == def.name);
            let fate = match w.died {
                None => Fate::Alive,
                Some(_) if events.kills.iter().any(|k| k.vm == def.name) => Fate::Daemon,
                Some(_) => Fate::Other(format!(
                    "{}: {}",
                    view.and_then(|v| v.exit.as_deref())
                        .unwrap_or("exited, status unknown"),
                    last_line(&w.log)
                )),
            };
            out.push(w.result(def, fate));
        }
        let st = daemon.stop();
        drop(daemon);
        if pool_dir.exists() {
            bail!(
                "{} is left behind after the daemon stopped",
                pool_dir.display()
            );
        }
        if !st.is_some_and(|s| s.success()) {
            eprintln!(
                "note: vmm daemon ended with {st:?}: {}",
                last_line(&dir.join("daemon.log"))
            );
        }
        Ok(RunResult {
            vms: out,
            base,
            samples: samples.into_iter().map(|(t, s)| (ms(t), s)).collect(),
            daemon: Some(events),
        })
    }
}

/// Copies the regular files of a directory tree (sockets are skipped).
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else if ty.is_file() {
            fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn daemon_config(pool: &str, limit: u64, reclaim_first: bool) -> String {
    json!({
        "memcg_pools": { pool: limit },
        "policy": { "reclaim_first": reclaim_first },
    })
    .to_string()
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    opts.scenario.validate()?;
    if !opts.vmm.is_file() {
        bail!(
            "no vmm binary at {}: build it first with `cargo build --release`, or pass --vmm",
            opts.vmm.display()
        );
    }
    let own = own_memcg_v1().context(
        "this benchmark needs a writable cgroup v1 memory controller (memory.failcnt, \
         memory.oom_control)",
    )?;
    let scratch = Scratch::new()?;
    let pinned = PinnedBinary::new(&opts.vmm, &scratch.0)?;
    let vmm_binary = describe_binary(&opts.vmm);
    let repo_dir = opts
        .vmm
        .canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let machine = Machine::probe("qemu-system-x86_64", &repo_dir);
    let regimes: Vec<Regime> = Regime::ALL
        .into_iter()
        .filter(|r| opts.only.is_empty() || opts.only.contains(r))
        .collect();
    let bench = Bench {
        opts: &opts,
        defs: opts.scenario.vms(),
        vmm: pinned.path.clone(),
        scratch: &scratch.0,
        own: own.clone(),
    };
    let load_before = loadavg();
    let mut results: Vec<(Regime, Vec<RunResult>)> =
        regimes.iter().map(|r| (*r, Vec::new())).collect();
    for i in 0..opts.runs {
        for (regime, series) in &mut results {
            let r = bench
                .run(*regime, i)
                .with_context(|| format!("run {} of {}", i + 1, regime.name()))?;
            eprintln!(
                "run {}/{} {}: {}",
                i + 1,
                opts.runs,
                regime.name(),
                one_line(&r)
            );
            series.push(r);
        }
    }
    let invocation = std::iter::once("vmm-bench".to_string())
        .chain(std::env::args().skip(1))
        .map(|a| shell_quote(&a))
        .collect::<Vec<_>>()
        .join(" ");
    print!(
        "{}",
        report(&Report {
            opts: &opts,
            machine: &machine,
            vmm_binary: &vmm_binary,
            vmm_shown: &display_path(&opts.vmm),
            own: &own,
            invocation: &invocation,
            results: &results,
            load: (load_before, loadavg()),
        })
    );
    Ok(())
}

/// The three load averages of `/proc/loadavg`.
fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

fn secs(v: Option<f64>) -> String {
    v.map_or("–".to_string(), |t| format!("{:.2} s", t / 1e3))
}

/// Who died, how and when: one line for the progress output and the
/// per-run table.
fn deaths(r: &RunResult) -> String {
    let mut dead: Vec<&VmResult> = r.dead().collect();
    dead.sort_by(|a, b| {
        a.died_ms
            .unwrap_or(f64::NAN)
            .total_cmp(&b.died_ms.unwrap_or(f64::NAN))
    });
    if dead.is_empty() {
        return "none".into();
    }
    dead.iter()
        .map(|v| {
            let how = match &v.fate {
                Fate::KernelOom => "kernel OOM kill".to_string(),
                Fate::Daemon => "daemon kill".to_string(),
                Fate::Other(s) => s.clone(),
                Fate::Alive => "alive?".to_string(),
            };
            format!("{} ({how}) at {}", v.name, secs(v.died_ms))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn finished(r: &RunResult) -> String {
    let growers: Vec<String> = r
        .vms
        .iter()
        .filter(|v| v.role == Role::Grower)
        .map(|v| match v.finished_ms {
            Some(t) => format!("{} at {}", v.name, secs(Some(t))),
            None => format!("{} no", v.name),
        })
        .collect();
    growers.join(", ")
}

fn one_line(r: &RunResult) -> String {
    format!(
        "dead: {}; growers finished: {}; first refused charge at {}; under pressure {:.2} s; \
         {} refused charges; {} kernel OOM kills",
        deaths(r),
        finished(r),
        secs(r.first_refused_ms()),
        r.pressure_ms() / 1e3,
        r.refused(),
        r.kernel_kills()
    )
}

struct Report<'a> {
    opts: &'a Options,
    machine: &'a Machine,
    vmm_binary: &'a str,
    vmm_shown: &'a str,
    own: &'a Path,
    invocation: &'a str,
    results: &'a [(Regime, Vec<RunResult>)],
    load: (String, String),
}

/// `median (min–max)` of the values, `–` for none, with `k of N runs`
/// when only some runs have a value.
fn cell(values: &[f64], runs: usize, decimals: usize) -> String {
    // `+ 0.0` turns a -0.0 (an empty f64 sum) into 0.0.
    let values: Vec<f64> = values.iter().map(|v| v + 0.0).collect();
    let Some(s) = Summary::of(&values) else {
        return "–".into();
    };
    let mut out = if s.min == s.max {
        format!("**{:.d$}**", s.median, d = decimals)
    } else {
        format!(
            "**{:.d$}** ({:.d$}–{:.d$})",
            s.median,
            s.min,
            s.max,
            d = decimals
        )
    };
    if s.n < runs {
        let _ = write!(out, ", {} of {runs} runs", s.n);
    }
    out
}

fn report(r: &Report<'_>) -> String {
    let m = r.machine;
    let s = &r.opts.scenario;
    let runs = r.opts.runs;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "### {} idle VMs + {} grower{} in a {} MiB memory cgroup: kernel vs daemon ({runs} runs each, interleaved)\n",
        s.idle,
        s.growers,
        if s.growers == 1 { "" } else { "s" },
        s.limit_mib
    );
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| date | {} |", m.date_utc);
    let _ = writeln!(
        o,
        "| machine | {}, cgroup v1 memory controller |",
        m.describe()
    );
    let _ = writeln!(o, "| vmm commit | {} |", m.vmm_commit);
    let _ = writeln!(o, "| vmm binary | {} |", r.vmm_binary);
    let _ = writeln!(o, "| produced by | `{}` |", r.invocation);
    let _ = writeln!(
        o,
        "| host load average (1, 5, 15 min) | {} before the first run, {} after the last (idle tiny guests sleep in the idle port; the growers' vCPUs are busy while they touch) |",
        r.load.0,
        r.load.1,
    );
    let all_mib = s.idle as u64 * u64::from(s.idle_alloc_mib)
        + s.growers as u64 * u64::from(s.grower_touch_mib);
    let _ = writeln!(
        o,
        "| scenario | {} idle VMs of {} MiB (`tiny.alloc={}M tiny.free={}M`, balloon with statistics every {} s and free page reporting, guest reporting period `{}`{}) start; {} ms after the last is live, {} grower{} of {} MiB start (`tiny.touch={}M`, then hold); memory cgroup limit {} MiB < {} MiB touched in all; observed for {:.0} s from the growers' start, polled every {} ms |",
        s.idle,
        s.idle_mem_mib,
        s.idle_alloc_mib,
        s.idle_free_mib,
        s.stats_s,
        s.report_every,
        if s.report_every == "0" { ": never" } else { "" },
        r.opts.settle.as_millis(),
        s.growers,
        if s.growers == 1 { "" } else { "s" },
        s.grower_mem_mib,
        s.grower_touch_mib,
        s.limit_mib,
        all_mib,
        r.opts.window.as_secs_f64(),
        r.opts.poll.as_millis()
    );
    let _ = writeln!(o);

    // The main table.
    let _ = write!(o, "| per run: median (min–max) |");
    for (regime, _) in r.results {
        let _ = write!(o, " {} |", regime.header());
    }
    let _ = writeln!(o, "\n|---|{}", "---|".repeat(r.results.len()));
    let mut row = |name: &str, f: &dyn Fn(&RunResult) -> Option<f64>, decimals: usize| {
        let _ = write!(o, "| {name} |");
        for (_, series) in r.results {
            let v: Vec<f64> = series.iter().filter_map(f).collect();
            let _ = write!(o, " {} |", cell(&v, runs, decimals));
        }
        let _ = writeln!(o);
    };
    row(
        "VMs killed (kernel OOM killer or daemon)",
        &|x| Some(x.killed(None) as f64),
        0,
    );
    row(
        "… idle VMs killed",
        &|x| Some(x.killed(Some(Role::Idle)) as f64),
        0,
    );
    row(
        "… growers killed",
        &|x| Some(x.killed(Some(Role::Grower)) as f64),
        0,
    );
    row(
        "VMs dead otherwise (VMM error exits)",
        &|x| Some(x.other_deaths() as f64),
        0,
    );
    row(
        &format!("growers that finished their touch (of {})", s.growers),
        &|x| Some(x.growers_finished() as f64),
        0,
    );
    row(
        "guest memory in use lost with dead VMs (MiB)",
        &|x| Some(x.lost_in_use_mib()),
        0,
    );
    row(
        "guest RAM of dead VMs (MiB, `--mem`)",
        &|x| Some(x.lost_ram_mib()),
        0,
    );
    row(
        "**time under pressure** (s): first refused charge → every grower finished or dead (or the window's end)",
        &|x| Some(x.pressure_ms() / 1e3),
        2,
    );
    row(
        "growers' start → every grower finished or dead (s)",
        &|x| x.growers_done_ms().map(|t| t / 1e3),
        2,
    );
    row(
        "growers' start → first refused charge (s)",
        &|x| x.first_refused_ms().map(|t| t / 1e3),
        2,
    );
    row(
        "first refused charge → first kill (kernel: `oom_kill` counter seen rising; daemon: `oom_decision` event; ms)",
        &|x| x.first_kill_after_refusal_ms(),
        0,
    );
    row(
        "first refused charge → first VM killed (its exit seen; ms)",
        &|x| x.first_death_after_refusal_ms(),
        0,
    );
    row(
        "refused charges (`memory.failcnt` rise) in the window",
        &|x| Some(x.refused()),
        0,
    );
    row(
        "… of them after every grower was done",
        &|x| Some(x.refused_after_done()),
        0,
    );
    row(
        "growers' start → last refused charge (s)",
        &|x| x.last_refused_ms().map(|t| t / 1e3),
        2,
    );
    row(
        "kernel OOM kills (`memory.oom_control` `oom_kill`)",
        &|x| Some(x.kernel_kills()),
        0,
    );
    row(
        "idle guests that had reported free pages before the growers' start",
        &|x| Some(x.idle_reported_before()),
        0,
    );
    row(
        "free page reports (rounds) by the idle guests in the window",
        &|x| Some(x.reports_after()),
        0,
    );
    row(
        "balloon deflations in the window (the tiny guest re-touches each deflated page)",
        &|x| Some(x.deflations()),
        0,
    );
    row(
        "cgroup usage at the growers' start (MiB)",
        &|x| Some(x.base.usage as f64 / MIB as f64),
        0,
    );
    row(
        "cgroup usage at the window's end (MiB)",
        &|x| Some(x.last().usage as f64 / MIB as f64),
        0,
    );

    // The daemon's timeline.
    let daemons: Vec<&(Regime, Vec<RunResult>)> = r
        .results
        .iter()
        .filter(|(reg, _)| *reg != Regime::Kernel)
        .collect();
    if !daemons.is_empty() {
        let _ = writeln!(
            o,
            "\nThe daemon's timeline, from its events (`GET /events`; `time_ms` has 1 ms resolution, the first refused charge is the first poll that saw `memory.failcnt` rise, up to {} ms late):\n",
            r.opts.poll.as_millis()
        );
        let _ = write!(o, "| per run: median (min–max) |");
        for (regime, _) in &daemons {
            let _ = write!(o, " {} |", regime.header());
        }
        let _ = writeln!(o, "\n|---|{}", "---|".repeat(daemons.len()));
        let mut row =
            |name: &str, f: &dyn Fn(&RunResult, &DaemonEvents) -> Option<f64>, d: usize| {
                let _ = write!(o, "| {name} |");
                for (_, series) in &daemons {
                    let v: Vec<f64> = series
                        .iter()
                        .filter_map(|x| f(x, x.daemon.as_ref()?))
                        .collect();
                    let _ = write!(o, " {} |", cell(&v, runs, d));
                }
                let _ = writeln!(o);
            };
        let since_refused = |x: &RunResult, t: Option<&f64>| Some(t? - x.first_refused_ms()?);
        row(
            "first refused charge → reserve lent (`memcg_reserve_lent`: the daemon sees tasks waiting; ms)",
            &|x, d| since_refused(x, d.lent.first()),
            0,
        );
        row(
            "first refused charge → first balloon request (`reclaim`; ms)",
            &|x, d| since_refused(x, d.reclaim.first()),
            0,
        );
        row(
            "first refused charge → `oom_pressure` (no progress for `no_progress_ms`: the decision starts; ms)",
            &|x, d| since_refused(x, d.pressure.first()),
            0,
        );
        row(
            "decision (`oom_decision` `decision_us`; ms)",
            &|_, d| d.decisions.first().map(|x| x.1 as f64 / 1e3),
            2,
        );
        row(
            "kill → memory freed (`oom_kill` `kill_to_freed_us`; ms)",
            &|_, d| d.kills.first()?.kill_to_freed_us.map(|u| u as f64 / 1e3),
            2,
        );
        row(
            "decision → memory freed (`decision_to_freed_us`; ms)",
            &|_, d| {
                d.kills
                    .first()?
                    .decision_to_freed_us
                    .map(|u| u as f64 / 1e3)
            },
            2,
        );
        row(
            "first refused charge → first victim's memory freed (`oom_kill` event; ms)",
            &|x, d| since_refused(x, d.kills.first().map(|k| &k.at)),
            0,
        );
        row(
            "OOM decisions in the window",
            &|_, d| Some(d.decisions.len() as f64),
            0,
        );
        row(
            "reserve loans (`memcg_reserve_lent`)",
            &|_, d| Some(d.lent.len() as f64),
            0,
        );
        row(
            "balloon requests (`reclaim` events)",
            &|_, d| Some(d.reclaim.len() as f64),
            0,
        );
        row(
            "balloon targets asked, summed over VMs (MiB, the last target of each)",
            &|_, d| Some(d.balloon_targets.iter().map(|(_, m)| *m).sum::<u64>() as f64),
            0,
        );
        row(
            "balloons deflated (`reclaim_released`)",
            &|_, d| Some(d.released.len() as f64),
            0,
        );
    }

    // Every run.
    let _ = writeln!(
        o,
        "\nEvery run (times in s from the growers' start; \"dead\" lists every VMM that died in the window, in order):\n"
    );
    let _ = writeln!(
        o,
        "| run | regime | dead | growers finished | first refused charge | under pressure | refused charges | kernel OOM kills |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|");
    for i in 0..runs {
        for (regime, series) in r.results {
            let Some(x) = series.get(i) else { continue };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {:.2} s | {} | {} |",
                i + 1,
                regime.name(),
                deaths(x),
                finished(x),
                secs(x.first_refused_ms()),
                x.pressure_ms() / 1e3,
                x.refused(),
                x.kernel_kills()
            );
        }
    }

    // Commands.
    let defs = s.vms();
    let show = |def: &VmDef| {
        let args = s.run_args(
            def,
            &format!("{}/api.sock", def.name),
            &format!("{}/console.log", def.name),
        );
        std::iter::once(r.vmm_shown.to_string())
            .chain(args)
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let first_idle = defs.iter().find(|d| d.role == Role::Idle);
    let first_grower = defs.iter().find(|d| d.role == Role::Grower);
    let _ = writeln!(
        o,
        "\nCommands (the vmm ran through a private hard link or copy of the binary; `OWN` is this process's memory cgroup, here `{}`):\n",
        r.own.display()
    );
    let _ = writeln!(o, "```sh");
    let _ = writeln!(
        o,
        "# (i) kernel: a cgroup of our own, the OOM killer on (oom_kill_disable 0)"
    );
    let _ = writeln!(
        o,
        "mkdir $OWN/bench-oom-<pid>-kernel && echo {} > $OWN/bench-oom-<pid>-kernel/memory.limit_in_bytes",
        s.limit()
    );
    let _ = writeln!(
        o,
        "# each VMM writes 0 to its cgroup.procs between fork and exec; {} idle VMs like",
        s.idle
    );
    if let Some(d) = first_idle {
        let _ = writeln!(o, "{}", show(d));
    }
    let _ = writeln!(
        o,
        "# when every idle console shows '{LIVE}', {} ms later, {} grower(s) like",
        r.opts.settle.as_millis(),
        s.growers
    );
    if let Some(d) = first_grower {
        let _ = writeln!(o, "{}", show(d));
    }
    let _ = writeln!(
        o,
        "# (ii) kill-only, (iii) balloon-first: the daemon creates $OWN/vmm-<pool> (limit, oom_kill_disable 1)"
    );
    let _ = writeln!(
        o,
        "vmm daemon --socket daemon.sock --state-dir state --config config.json"
    );
    let _ = writeln!(
        o,
        "# config.json: {}   ((iii): \"reclaim_first\": true)",
        daemon_config("<pool>", s.limit(), false)
    );
    if let Some(d) = first_idle {
        let _ = writeln!(
            o,
            "curl --unix-socket daemon.sock -X POST http://localhost/vms -d '{}'",
            s.daemon_json(d, "<pool>")
        );
    }
    if let Some(d) = first_grower {
        let _ = writeln!(
            o,
            "curl --unix-socket daemon.sock -X POST http://localhost/vms -d '{}'",
            s.daemon_json(d, "<pool>")
        );
    }
    let _ = writeln!(o, "```");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario {
            idle: 2,
            idle_mem_mib: 160,
            idle_alloc_mib: 128,
            idle_free_mib: 112,
            report_every: "2s".into(),
            stats_s: 1,
            growers: 1,
            grower_mem_mib: 192,
            grower_touch_mib: 128,
            limit_mib: 300,
        }
    }

    #[test]
    fn the_vms_get_the_daemons_arguments() {
        let s = scenario();
        let defs = s.vms();
        assert_eq!(
            defs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(),
            ["idle1", "idle2", "grower1"]
        );
        assert_eq!(
            s.run_args(&defs[0], "a.sock", "c.log").join(" "),
            "run --mem 160M --vcpus 1 --api-sock a.sock --boot-now --serial-out c.log --cmdline \
             tiny.alloc=128M tiny.free=112M tiny.balloon=on tiny.report-every=2s --balloon \
             amount_mib=0,deflate_on_oom=true,stats_polling_interval_s=1,free_page_reporting=true"
        );
        assert_eq!(
            s.run_args(&defs[2], "a.sock", "c.log").join(" "),
            "run --mem 192M --vcpus 1 --api-sock a.sock --boot-now --serial-out c.log --cmdline \
             tiny.touch=128M tiny.hold=forever"
        );
        let body: Value = serde_json::from_str(&s.daemon_json(&defs[0], "p")).unwrap();
        assert_eq!(body["balloon"]["free_page_reporting"], true);
        assert_eq!(body["pool"], "p");
        assert!(
            serde_json::from_str::<Value>(&s.daemon_json(&defs[2], "p")).unwrap()["balloon"]
                .is_null()
        );
        assert_eq!((defs[0].in_use_mib, defs[2].in_use_mib), (16, 128));
        assert!(s.validate().is_ok());
        let mut bad = scenario();
        bad.limit_mib = 200;
        assert!(bad.validate().is_err(), "the idle VMs alone fill the pool");
    }

    fn sample(failcnt: u64, oom_kill: u64) -> MemcgSample {
        MemcgSample {
            failcnt,
            oom_kill,
            ..MemcgSample::default()
        }
    }

    #[test]
    fn pressure_and_losses() {
        let vm = |name: &str, role, finished, died, fate| VmResult {
            name: name.into(),
            role,
            mem_mib: 100,
            in_use_mib: if role == Role::Idle { 16 } else { 128 },
            finished_ms: finished,
            died_ms: died,
            fate,
            reports_before: 0,
            reports_after: 0,
            deflations: 0,
        };
        let r = RunResult {
            vms: vec![
                vm("idle1", Role::Idle, None, Some(300.0), Fate::KernelOom),
                vm("idle2", Role::Idle, None, None, Fate::Alive),
                vm("grower1", Role::Grower, Some(900.0), None, Fate::Alive),
            ],
            base: sample(5, 1),
            samples: vec![
                (100.0, sample(5, 1)),
                (200.0, sample(9, 2)),
                (900.0, sample(20, 2)),
                (1500.0, sample(23, 2)),
            ],
            daemon: None,
        };
        assert_eq!(r.first_refused_ms(), Some(200.0));
        assert_eq!(r.growers_done_ms(), Some(900.0));
        assert_eq!(r.pressure_ms(), 700.0);
        assert_eq!((r.refused(), r.refused_after_done()), (18.0, 3.0));
        assert_eq!(r.last_refused_ms(), Some(1500.0));
        assert_eq!(r.kernel_kills(), 1.0);
        assert_eq!((r.killed(None), r.killed(Some(Role::Grower))), (1, 0));
        assert_eq!(r.lost_in_use_mib(), 16.0);
        assert_eq!(r.first_kill_after_refusal_ms(), Some(0.0));
        assert_eq!(r.first_death_after_refusal_ms(), Some(100.0));
        assert_eq!(r.growers_finished(), 1);
    }

    #[test]
    fn daemon_events_become_a_timeline() {
        // As the daemon writes them (a kind the bench does not know, from
        // a newer daemon, is left out).
        let lines = [
            r#"{"seq":1,"time_ms":1000,"kind":"vm_created","vm":"idle1","pid":7,"mem_mib":160,"oom_score_adj":0,"pool":"p","numa_nodes":null}"#,
            r#"{"seq":2,"time_ms":1250,"kind":"memcg_reserve_lent","pool":"p","reserve_bytes":16777216,"usage_bytes":1,"under_oom":false}"#,
            r#"{"seq":3,"time_ms":1300,"kind":"reclaim","pool":"p","constraint":"memcg","excess_bytes":1048576,"balloons":[{"vm":"idle1","target_mib":20,"can_give_mib":100}]}"#,
            r#"{"seq":4,"time_ms":1400,"kind":"reclaim","pool":"p","constraint":"memcg","excess_bytes":2097152,"balloons":[{"vm":"idle1","target_mib":30,"can_give_mib":90},{"vm":"idle2","target_mib":5,"can_give_mib":20}]}"#,
            r#"{"seq":5,"time_ms":3400,"kind":"oom_pressure","pool":"p","constraint":"memcg","cgroup":"/c","failcnt":3,"under_oom":true,"reserve_lent":true,"kernel_oom_kills":0,"usage_bytes":1,"limit_bytes":1,"why":"w","pressure_to_decision_ms":2000}"#,
            r#"{"seq":6,"time_ms":3401,"kind":"oom_decision","trigger":"memcg","dry_run":false,"constraint":"c","basis":"b","totalpages":1,"victim":"grower1","reason":"r","action":"kill","decision_us":700}"#,
            r#"{"seq":7,"time_ms":3450,"kind":"oom_kill","vm":"grower1","pid":9,"method":"sigkill_mrelease","fallback_from":null,"fallback_reason":null,"rss_before":1,"bytes_freed":1,"vmm_answer_us":0,"vmm_madvise_us":0,"sigkill_us":10,"mrelease_us":40000,"mrelease_raced":false,"kill_to_freed_us":40000,"freed_by":"mrelease_returned","kill_to_exit_us":41000,"decision_to_freed_us":49000}"#,
            r#"{"seq":8,"time_ms":3500,"kind":"vm_migrated","vm":"idle1"}"#,
        ];
        let events: Vec<EventRecord> = lines
            .iter()
            .filter_map(|l| EventRecord::from_value(serde_json::from_str(l).unwrap()).ok())
            .collect();
        assert_eq!(events.len(), 7);
        let d = DaemonEvents::parse(&events, 1000.0);
        assert_eq!(d.lent, [250.0]);
        assert_eq!(d.reclaim, [300.0, 400.0]);
        assert_eq!(
            d.balloon_targets,
            [("idle1".to_string(), 30), ("idle2".to_string(), 5)]
        );
        assert_eq!(d.pressure, [2400.0]);
        assert_eq!(d.decisions, [(2401.0, 700, Some("grower1".to_string()))]);
        assert_eq!(d.kills[0].vm, "grower1");
        assert_eq!(d.kills[0].kill_to_freed_us, Some(40000));
        assert_eq!(d.kills[0].decision_to_freed_us, Some(49000));
    }
}
