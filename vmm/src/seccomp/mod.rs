//! seccomp filters for the threads of `vmm run`, one allowlist per thread
//! kind ([`filters`]), after Firecracker's.
//!
//! Invariants:
//! - [`enable`] compiles every filter on the main thread before any thread
//!   of the VM starts; a filter that does not compile stops the VMM before
//!   the guest exists.
//! - Each thread installs its own filter ([`apply`]) before it does its
//!   job: the API threads and the vCPU threads first thing (a vCPU before
//!   its first `KVM_RUN`), the balloon's release worker when it starts, the
//!   main thread after it started the vCPUs and before it handles any
//!   guest event. Filters are per thread (no `TSYNC`); a thread created
//!   later inherits its creator's filter and adds its own, so it can only
//!   be narrower.
//! - A forbidden syscall kills the whole process (`SECCOMP_RET_KILL_PROCESS`,
//!   seen by the parent as SIGSYS): loud, and nothing half-done goes on.
//!
//! Without [`enable`] (`--no-seccomp`, the daemon, unit tests) [`apply`]
//! installs nothing.

mod allowlist;
pub mod filters;

use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The kinds of threads in `vmm run`, each with its own filter.
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
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Vcpu,
        ThreadKind::Api,
        ThreadKind::EventLoop,
        ThreadKind::ReleaseWorker,
    ];
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
}

/// The compiled filters, one per kind.
pub struct Filters {
    programs: Vec<(ThreadKind, BpfProgram)>,
}

impl Filters {
    /// Compiles the filter of every kind for this machine's architecture.
    pub fn compile() -> Result<Self, SeccompError> {
        Self::compile_for(TargetArch::x86_64)
    }

    /// Compiles the filter of every kind for `arch`.
    pub fn compile_for(arch: TargetArch) -> Result<Self, SeccompError> {
        let programs = ThreadKind::ALL
            .iter()
            .map(|&kind| Ok((kind, compile(kind, arch)?)))
            .collect::<Result<_, SeccompError>>()?;
        Ok(Filters { programs })
    }

    /// The BPF program of `kind`.
    pub fn program(&self, kind: ThreadKind) -> &BpfProgram {
        &self
            .programs
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("every kind is compiled")
            .1
    }
}

/// Compiles the filter of `kind`: its allowlist, and death for the rest.
pub fn compile(kind: ThreadKind, arch: TargetArch) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        filters::rules(kind)?,
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

/// Compiles the filters and makes [`apply`] install them from now on.
/// Call once, on the main thread, before any VM thread starts.
pub fn enable() -> Result<(), SeccompError> {
    let filters = Filters::compile()?;
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
        seccompiler::apply_filter(filters.program(kind))
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

/// `socket(AF_INET)`: no thread of `vmm run` needs an IP socket, so every
/// filter kills the process here. Without filters the socket is closed.
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
