//! seccomp filters for the threads of `vmm run` and of `vmm daemon`, one
//! allowlist per thread kind ([`filters`] for the VMM's,
//! [`daemon_filters`] for the daemon's), after Firecracker's.
//!
//! Invariants:
//! - [`enable`] compiles every filter of one [`Process`] on the main thread
//!   before any thread that needs one starts; a filter that does not
//!   compile stops the VMM before the guest exists, and the daemon before
//!   it serves anything.
//! - Each thread installs its own filter ([`apply`]) before it does its
//!   job: the API threads and the vCPU threads first thing (a vCPU before
//!   its first `KVM_RUN`), the balloon's release worker when it starts, the
//!   main thread after it started the vCPUs and before it handles any
//!   guest event; in the daemon, the control API's and the guest agents'
//!   threads first thing, each asker of `ask_each` before it connects,
//!   the main thread before its first supervision tick. Filters are per
//!   thread (no `TSYNC`); a thread created later inherits its creator's
//!   filter and adds its own, so it can only be narrower.
//! - A forbidden syscall kills the whole process (`SECCOMP_RET_KILL_PROCESS`,
//!   seen by the parent as SIGSYS): loud, and nothing half-done goes on.
//!   The daemon too (see [`daemon_filters`] for why a supervisor dies
//!   rather than gets an error).
//! - Filters are inherited across `fork` and `execve`: the daemon starts
//!   its VMMs from the one thread that never has a filter
//!   ([`crate::daemon::spawner`]), so a VMM runs under its own filters only.
//!
//! Without [`enable`] (`--no-seccomp`, unit tests) [`apply`] installs
//! nothing.

mod allowlist;
pub mod daemon_filters;
pub mod filters;

use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The program whose threads a set of filters is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Process {
    /// `vmm run`: one microVM.
    Vmm,
    /// `vmm daemon`: the host OOM manager.
    Daemon,
}

impl Process {
    /// The thread kinds of this program, each with its own filter.
    pub fn kinds(self) -> &'static [ThreadKind] {
        match self {
            Process::Vmm => &ThreadKind::ALL[..4],
            Process::Daemon => &ThreadKind::ALL[4..],
        }
    }
}

/// The kinds of threads in `vmm run` and `vmm daemon`, each with its own
/// filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum ThreadKind {
    /// A vCPU thread (`vcpuN`): `KVM_RUN` and device exits.
    Vcpu,
    /// The per-VM API server's threads (`vmm-api`, `vmm-api-w`, `vmm-api-s`).
    Api,
    /// The main thread once the VM runs: the device event loop (balloon,
    /// vsock), stop signals, the exit.
    EventLoop,
    /// The balloon's release worker (`balloon-release`).
    ReleaseWorker,
    /// The daemon's main thread once it supervises: reaps exits, samples
    /// memory, runs the policy and carries out its kills; then the
    /// shutdown.
    DaemonSupervisor,
    /// The daemon's control API threads (`vmm-daemon`, `vmm-daemon-w`,
    /// `vmm-daemon-s`): every operator request, VM creation included
    /// (through the spawner).
    DaemonApi,
    /// The guest agents' thread (`vmmd-agents`): bytes from guests.
    DaemonAgents,
    /// A thread of `ask_each`: one request to one VMM's API, whose answer
    /// it parses.
    DaemonAsker,
}

impl ThreadKind {
    /// Every kind: the VMM's four, then the daemon's (see
    /// [`Process::kinds`]).
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::EventLoop,
        ThreadKind::ReleaseWorker,
        ThreadKind::DaemonSupervisor,
        ThreadKind::DaemonApi,
        ThreadKind::DaemonAgents,
        ThreadKind::DaemonAsker,
    ];

    /// The program whose threads are of this kind.
    pub fn process(self) -> Process {
        if Process::Vmm.kinds().contains(&self) {
            Process::Vmm
        } else {
            Process::Daemon
        }
    }
}

/// A command-line parser that takes the kinds of `process` only (the
/// hidden `--seccomp-selftest` of `vmm run` and of `vmm daemon`).
pub fn kind_parser(process: Process) -> impl clap::builder::TypedValueParser<Value = ThreadKind> {
    use clap::builder::TypedValueParser;
    use clap::ValueEnum;
    clap::builder::PossibleValuesParser::new(
        process
            .kinds()
            .iter()
            .filter_map(ThreadKind::to_possible_value),
    )
    .map(|name: String| ThreadKind::from_str(&name, false).expect("one of the possible values"))
}

/// Why a filter could not be built or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp rule: {0}")]
    Rule(#[from] seccompiler::BackendError),
    #[error("cannot compile the {kind:?} seccomp filter: {source}")]
    Compile {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the {kind:?} seccomp filter: {source}")]
    Install {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    #[error("seccomp filters were already enabled")]
    AlreadyEnabled,
    #[error("no {kind:?} seccomp filter was compiled (filters are enabled for another program)")]
    NotCompiled { kind: ThreadKind },
}

/// The compiled filters, one per kind.
pub struct Filters {
    programs: Vec<(ThreadKind, BpfProgram)>,
}

impl Filters {
    /// Compiles the filter of each of `kinds` for this machine's
    /// architecture.
    pub fn compile(kinds: &[ThreadKind]) -> Result<Self, SeccompError> {
        Self::compile_for(kinds, TargetArch::x86_64)
    }

    /// Compiles the filter of each of `kinds` for `arch`.
    pub fn compile_for(kinds: &[ThreadKind], arch: TargetArch) -> Result<Self, SeccompError> {
        let programs = kinds
            .iter()
            .map(|&kind| Ok((kind, compile(kind, arch)?)))
            .collect::<Result<_, SeccompError>>()?;
        Ok(Filters { programs })
    }

    /// The BPF program of `kind`, if it was compiled.
    pub fn program(&self, kind: ThreadKind) -> Option<&BpfProgram> {
        self.programs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, program)| program)
    }
}

/// Compiles the filter of `kind`: its allowlist, and death for the rest.
pub fn compile(kind: ThreadKind, arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        match kind.process() {
            Process::Vmm => filters::rules(kind)?,
            Process::Daemon => daemon_filters::rules(kind)?,
        },
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .map_err(|source| SeccompError::Compile { kind, source })?;
    filter
        .try_into()
        .map_err(|source| SeccompError::Compile { kind, source })
}

static FILTERS: OnceLock<Filters> = OnceLock::new();
static SELFTEST: OnceLock<ThreadKind> = OnceLock::new();

/// Compiles the filters of `process` and makes [`apply`] install them from
/// now on. Call once, on the main thread, before any thread that needs a
/// filter starts.
pub fn enable(process: Process) -> Result<(), SeccompError> {
    let filters = Filters::compile(process.kinds())?;
    FILTERS
        .set(filters)
        .map_err(|_| SeccompError::AlreadyEnabled)
}

/// Test hook (hidden `--seccomp-selftest`): once a thread of `kind` has
/// applied its filter, it calls a syscall no filter allows, which must
/// kill the process (and, with `--no-seccomp`, fails harmlessly).
pub fn set_selftest(kind: ThreadKind) {
    let _ = SELFTEST.set(kind);
}

/// Installs the filter of `kind` on the calling thread, if filters are
/// enabled; then runs the self-test if it is for `kind`.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    if let Some(filters) = FILTERS.get() {
        let program = filters
            .program(kind)
            .ok_or(SeccompError::NotCompiled { kind })?;
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { kind, source })?;
    }
    if SELFTEST.get() == Some(&kind) {
        forbidden_syscall();
    }
    Ok(())
}

/// [`apply`] for threads that cannot report an error to anyone: a thread
/// that would run unfiltered ends the process instead, with `status`.
pub fn apply_or_exit(kind: ThreadKind, status: u8) {
    if let Err(e) = apply(kind) {
        use std::io::Write;
        // Nothing better to do if stderr fails too.
        let _ = writeln!(std::io::stderr(), "vmm: {e}");
        std::process::exit(i32::from(status));
    }
}

/// [`apply`] for the balloon's release worker, as its thread-start hook.
pub fn release_worker_start() -> std::io::Result<()> {
    apply(ThreadKind::ReleaseWorker).map_err(std::io::Error::other)
}

/// The calling thread's seccomp mode, as `/proc/thread-self/status` says
/// (`Seccomp:`): 0 none, 1 strict, 2 filtered.
pub fn current_thread_mode() -> std::io::Result<u32> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "/proc/thread-self/status has no Seccomp: line",
            )
        })
}

/// `socket(AF_INET)`: no thread of `vmm run` or `vmm daemon` needs an IP
/// socket, so every filter kills the process here. Without filters the socket is closed.
fn forbidden_syscall() {
    // SAFETY: socket() takes no pointers; the descriptor, if any, is ours
    // and closed at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: `fd` was just opened here and is used by nothing else.
        unsafe { libc::close(fd) };
    }
}

#[cfg(test)]
mod tests;
