//! The allowlist of each thread kind of `vmm run`: every syscall with why
//! that thread makes it. Found with `strace -f` over the integration tests
//! (api, balloon, vsock, release-memory, daemon) and from the code (the
//! virtio-blk device, the Firecracker-style configuration routes), and
//! kept as narrow as the code allows; a syscall not listed kills the
//! process (see [`super`]).
//!
//! To extend: add the syscall to the thread kind that makes it (or to
//! [`common`] when every thread does, e.g. through std or glibc; to
//! [`base`] when the daemon's threads do too), with the argument values it
//! takes where they are cheap to match.

use seccompiler::SeccompCmpOp::{Eq, MaskedEq};
use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE, _IOC_READ};

use super::allowlist::{Allowlist, Rules};
use super::{SeccompError, ThreadKind};

const KVMIO: u32 = 0xae;
/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = ioctl_expr(_IOC_NONE, KVMIO, 0x80, 0) as u64;
/// `KVM_GET_REGS`: `_IOR(KVMIO, 0x81, struct kvm_regs)`.
pub const KVM_GET_REGS: u64 = ioctl_expr(
    _IOC_READ,
    KVMIO,
    0x81,
    std::mem::size_of::<kvm_bindings::kvm_regs>() as u32,
) as u64;

/// The rules of `vmm run`'s thread kind `kind`.
///
/// # Panics
/// If `kind` is one of the daemon's (see [`super::daemon_filters::rules`]).
pub fn rules(kind: ThreadKind) -> Result<Rules, SeccompError> {
    let list = common()?;
    let list = match kind {
        ThreadKind::Vcpu => vcpu(list)?,
        ThreadKind::Api => api(list)?,
        ThreadKind::EventLoop => event_loop(list)?,
        ThreadKind::ReleaseWorker => release_worker(list)?,
        ThreadKind::DaemonSupervisor
        | ThreadKind::DaemonApi
        | ThreadKind::DaemonAgents
        | ThreadKind::DaemonAsker => {
            panic!("{kind:?} is a thread of the daemon, not of `vmm run`")
        }
    };
    Ok(list.into_rules())
}

/// What every thread of `vmm run` does through std and glibc, whatever its
/// job; and kicking vCPUs.
fn common() -> Result<Allowlist, SeccompError> {
    use libc::*;
    // abort() raises SIGABRT at itself; the API kicks vCPU threads out of
    // KVM_RUN with the kick signal.
    base()?.arg_in(
        SYS_tgkill,
        2,
        &[SIGABRT as u64, crate::vm::vcpu::kick_signal() as u64],
    )
}

/// What every thread does through std and glibc, whatever its job and
/// program (the VMM's and the daemon's), but signalling itself: each
/// program adds the `tgkill` signals it sends.
pub(super) fn base() -> Result<Allowlist, SeccompError> {
    use libc::*;
    let list = Allowlist::default()
        // Mutexes, condition variables, joins, thread-local destructors.
        .any(SYS_futex)
        // malloc: a thread's first allocation maps its own arena.
        .any(SYS_munmap)
        .any(SYS_brk)
        .any(SYS_mremap)
        // glibc sizes a new thread's arena by the CPUs it may run on.
        .any(SYS_sched_getaffinity)
        .any(SYS_sched_yield)
        // Signal masks around thread exit and abort; returning from the
        // vCPU kick handler.
        .any(SYS_rt_sigprocmask)
        .any(SYS_rt_sigreturn)
        // std takes down a thread's alternate signal stack when it ends.
        .any(SYS_sigaltstack)
        // A thread ends; the process ends (any thread may end it).
        .any(SYS_exit)
        .any(SYS_exit_group)
        // Diagnostics to stderr; eventfds (the VM's exit signal, irqfds).
        .any(SYS_write)
        .any(SYS_close)
        // std::thread::sleep; clocks where the vDSO falls back.
        .any(SYS_clock_nanosleep)
        .any(SYS_nanosleep)
        .any(SYS_clock_gettime)
        .any(SYS_gettid)
        .any(SYS_getpid)
        // A sleep or poll interrupted by a stop (SIGSTOP, a frozen cgroup)
        // resumes through it.
        .any(SYS_restart_syscall)
        // HashMap keys, once per thread.
        .any(SYS_getrandom)
        // New mappings are never executable: thread stacks, malloc arenas.
        .rule(SYS_mmap, &[(2, MaskedEq(PROT_EXEC as u64), 0)])?
        .rule(SYS_mprotect, &[(2, MaskedEq(PROT_EXEC as u64), 0)])?
        // glibc frees the stacks of ended threads and trims arenas with
        // MADV_DONTNEED; the ReleaseMemory action releases guest RAM so.
        .arg_in(SYS_madvise, 2, &[MADV_DONTNEED as u64])?
        // Descriptor flags: std checks a descriptor before closing it (debug
        // builds), set_nonblocking, try_clone.
        .arg_in(
            SYS_fcntl,
            1,
            &[F_GETFD, F_SETFD, F_GETFL, F_SETFL, F_DUPFD_CLOEXEC].map(|c| c as u64),
        )?;
    Ok(list)
}

/// A vCPU thread: `KVM_RUN` and the device accesses of its exits (serial,
/// virtio-mmio registers, the exit ports), for as long as the VM runs;
/// then, parked, its share of the `ReleaseMemory` action.
fn vcpu(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    list
        // KVM_RUN is the vCPU; KVM_GET_REGS puts the instruction pointer in
        // a crash report.
        .arg_in(SYS_ioctl, 1, &[KVM_RUN, KVM_GET_REGS])?
        // A full memory cgroup: the charge wait reads the cgroup files it
        // opened before the filter was installed.
        .any(SYS_pread64)
        // ... and weighs the host's free swap (sysinfo: no file to open).
        .any(SYS_sysinfo)
        // Activating the balloon arms its statistics timer ...
        .any(SYS_timerfd_settime)
        // ... and starts its release worker.
        .then(starts_threads)
}

/// What a filtered thread needs to start a thread: the child begins under
/// its creator's filter (it inherits it), names itself and adds its own.
pub(super) fn starts_threads(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    list
        // clone3's flags are in memory, out of a filter's reach; clone's
        // must make a thread, not a process.
        .any(SYS_clone3)
        .rule(
            SYS_clone,
            &[(0, MaskedEq(CLONE_THREAD as u64), CLONE_THREAD as u64)],
        )?
        // glibc's start of a new thread.
        .any(SYS_set_robust_list)
        .any(SYS_rseq)
        // The child names itself, then installs its filter (which can
        // only narrow what it inherited).
        .arg_in(
            SYS_prctl,
            0,
            &[PR_SET_NAME as u64, PR_SET_NO_NEW_PRIVS as u64],
        )?
        .arg_in(SYS_seccomp, 0, &[SECCOMP_SET_MODE_FILTER as u64])
}

/// The per-VM API server's threads (reactor, workers, stream workers) and
/// the metrics thread (`vmm-metrics`), which does what the API's
/// `FlushMetrics` action does, every minute.
fn api(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    list
        // The reactor: accept and poll clients without blocking.
        .any(SYS_accept4)
        .any(SYS_poll)
        .any(SYS_ppoll)
        .arg_in(SYS_ioctl, 1, &[FIONBIO])?
        // Requests and answers; the reactor's wake-up eventfd.
        .any(SYS_recvfrom)
        .any(SYS_sendto)
        .any(SYS_read)
        .any(SYS_shutdown)
        // Answers are written with a timeout.
        .rule(
            SYS_setsockopt,
            &[(1, Eq, SOL_SOCKET as u64), (2, Eq, SO_SNDTIMEO as u64)],
        )?
        .rule(
            SYS_setsockopt,
            &[(1, Eq, SOL_SOCKET as u64), (2, Eq, SO_RCVTIMEO as u64)],
        )?
        // Only the socket owner's uid (or root) is served.
        .rule(
            SYS_getsockopt,
            &[(1, Eq, SOL_SOCKET as u64), (2, Eq, SO_PEERCRED as u64)],
        )?
        .any(SYS_geteuid)
        // Memory accounting reads /proc/self files, `PUT /boot-source`
        // checks that the guest's files open: read-only, no flag that
        // writes, creates or truncates ...
        .rule(
            SYS_openat,
            &[(2, MaskedEq((O_ACCMODE | O_CREAT | O_TRUNC) as u64), 0)],
        )?
        // ... and `PUT /logger` and `PUT /metrics` open their files to
        // append (created if missing), never truncated.
        .rule(
            SYS_openat,
            &[(2, MaskedEq((O_APPEND | O_TRUNC) as u64), O_APPEND as u64)],
        )?
        // `PUT /logger` makes its file the standard error.
        .arg_in(SYS_dup2, 1, &[STDERR_FILENO as u64])?
        .arg_in(SYS_dup3, 1, &[STDERR_FILENO as u64])?
        .any(SYS_statx)
        .any(SYS_newfstatat)
        .any(SYS_fstat)
        .any(SYS_lseek)
        // PATCH of the balloon's statistics interval re-arms its timer.
        .any(SYS_timerfd_settime)
        // `PUT /metrics` starts the metrics thread.
        .then(starts_threads)
}

/// The main thread once the VM runs: the event loop of the virtio devices
/// (balloon, vsock), stop signals and the end of the VM; then the exit.
fn event_loop(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    Ok(list
        // The event loop (event-manager).
        .any(SYS_epoll_wait)
        .any(SYS_epoll_pwait)
        .any(SYS_epoll_ctl)
        // Eventfds, timerfds, the signalfd, vsock streams.
        .any(SYS_read)
        .any(SYS_timerfd_settime)
        // virtio-blk requests on the image opened at boot: reads, writes,
        // and flushes (`sync_data`).
        .any(SYS_pread64)
        .any(SYS_pwrite64)
        .any(SYS_fdatasync)
        // Inflated and reported balloon pages, released at once when the
        // driver has no release worker; MADV_REMOVE for shared memory.
        .arg_in(SYS_madvise, 2, &[MADV_REMOVE as u64])?
        // vsock: host connections to its Unix socket, guest connections to
        // `uds_<port>` sockets; Unix sockets only.
        .any(SYS_accept4)
        .rule(SYS_socket, &[(0, Eq, AF_UNIX as u64)])?
        .any(SYS_connect)
        .any(SYS_recvfrom)
        .any(SYS_sendto)
        .any(SYS_shutdown)
        .arg_in(SYS_ioctl, 1, &[FIONBIO])?
        // At the end: the API's and the vsock's socket files are removed
        // (after checking they are still ours).
        .any(SYS_unlink)
        .any(SYS_statx)
        .any(SYS_newfstatat))
}

/// The balloon's release worker: `madvise` over inflated ranges.
fn release_worker(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    // MADV_DONTNEED is in the common list; shared guest memory needs
    // MADV_REMOVE.
    list.arg_in(SYS_madvise, 2, &[MADV_REMOVE as u64])
}
