//! The allowlist of each thread kind of `vmm daemon`: every syscall with
//! why that thread makes it. Found with `strace -f -b execve -ff` over the
//! daemon's integration tests (`tests/tests/daemon.rs`: VMs created,
//! paused, patched, deleted, killed by every reap method, memcg pools,
//! PSI, guest agents, a full disk, shutdown) and from the code; a syscall
//! not listed kills the daemon (see [`super`]).
//!
//! What no daemon thread may do: `execve`, fork (a `clone` without
//! `CLONE_THREAD`), `ptrace`, `kill` or `tgkill` another process (signals
//! go through pidfds: SIGTERM, SIGKILL, SIGSTOP, SIGCONT only), open an IP
//! or netlink socket, any `ioctl` but `FIONBIO` (no KVM, no terminal),
//! map executable memory, mount, load modules or BPF, change
//! namespaces, ids or capabilities, `chmod`/`chown` by path, or make
//! links. The one thread that may fork and exec is the spawner, which
//! has no filter at all: see [`crate::daemon::spawner`] for why.
//!
//! Why a forbidden syscall kills the daemon rather than fails with an
//! error (`SECCOMP_RET_ERRNO`, systemd's `SystemCallErrorNumber=`): an
//! error would let a thread that was made to misbehave go on, and would
//! turn a syscall missing from these lists into a silent half-done kill
//! at the moment the host is short of memory. A dead daemon is loud, and
//! cheap by design: its VMMs run on (their own processes and process
//! groups), systemd's `Restart=` brings it back, and the new daemon takes
//! back every VM it finds (`vms/<id>/vm.json`). This is systemd's default
//! for `SystemCallFilter=` (`KillProcess`) and Firecracker's for its VMM.
//!
//! To extend: add the syscall to the thread kind that makes it (to
//! [`daemon_base`] when every daemon thread does), with the argument
//! values it takes where they are cheap to match, and say why.

use seccompiler::SeccompCmpOp::{Eq, MaskedEq};

use super::allowlist::Allowlist;
use super::allowlist::Rules;
use super::filters::{base, starts_threads};
use super::{SeccompError, ThreadKind};

/// The rules of the daemon's thread kind `kind`.
///
/// # Panics
/// If `kind` is one of `vmm run`'s (see [`super::filters::rules`]).
pub fn rules(kind: ThreadKind) -> Result<Rules, SeccompError> {
    let list = daemon_base()?;
    let list = match kind {
        ThreadKind::DaemonSupervisor => supervisor(list)?,
        ThreadKind::DaemonApi => control_api(list)?,
        ThreadKind::DaemonAgents => agents(list)?,
        ThreadKind::DaemonAsker => asker(list)?,
        ThreadKind::Vcpu | ThreadKind::Api | ThreadKind::EventLoop | ThreadKind::ReleaseWorker => {
            panic!("{kind:?} is a thread of `vmm run`, not of the daemon")
        }
    };
    Ok(list.into_rules())
}

/// What every daemon thread does through std and glibc.
fn daemon_base() -> Result<Allowlist, SeccompError> {
    use libc::*;
    // abort() raises SIGABRT at itself; the daemon signals no thread.
    base()?.arg_in(SYS_tgkill, 2, &[SIGABRT as u64])
}

/// Appending to the event log (`events.ndjson`): any thread that records
/// an event writes it (see [`crate::daemon::events`]). Each kind adds the
/// `openat` of a rotation (`O_RDWR | O_CREAT`) in its own terms.
fn event_log(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    Ok(list
        // One pwrite per line; a short write is cut back.
        .any(SYS_pwrite64)
        .any(SYS_ftruncate)
        // Rotation at 64 MiB: the old file is renamed, a new one opened,
        // its mode checked and narrowed to 0600.
        .any(SYS_rename)
        .any(SYS_fchmod)
        .any(SYS_statx)
        .any(SYS_newfstatat)
        .any(SYS_fstat))
}

/// A client of the VMMs' per-VM APIs ([`crate::daemon::vm_client`]):
/// one Unix socket per request, with timeouts.
fn vmm_client(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    list.rule(SYS_socket, &[(0, Eq, AF_UNIX as u64)])?
        .any(SYS_connect)
        .any(SYS_sendto)
        .any(SYS_recvfrom)
        .rule(
            SYS_setsockopt,
            &[(1, Eq, SOL_SOCKET as u64), (2, Eq, SO_SNDTIMEO as u64)],
        )?
        .rule(
            SYS_setsockopt,
            &[(1, Eq, SOL_SOCKET as u64), (2, Eq, SO_RCVTIMEO as u64)],
        )
}

/// Managing VMM processes and the daemon's files: what both the
/// supervisor and the control API do (kills, reaps, pauses, records,
/// cgroup writes, `/proc` reads), short of starting a process.
fn manages_vms(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    list.then(event_log)?
        .then(vmm_client)?
        // A VMM is held by a pidfd (process.rs): signals go to exactly
        // that process, and only these: stop (TERM, then KILL), pause
        // (STOP) and resume (CONT).
        .any(SYS_pidfd_open)
        .arg_in(
            SYS_pidfd_send_signal,
            1,
            &[SIGTERM, SIGKILL, SIGSTOP, SIGCONT].map(|s| s as u64),
        )?
        // A SIGKILLed victim's memory is reaped at once.
        .any(SYS_process_mrelease)
        // Its exit is polled on the pidfd and its status collected.
        .any(SYS_poll)
        .any(SYS_ppoll)
        .arg_in(SYS_waitid, 0, &[P_PIDFD as u64])?
        // Exits: one epoll set over the VMMs' pidfds (`ExitWatch`, made
        // before the filter), pidfds added and removed, asked without
        // waiting; by the supervisor's tick and by a decision carried out
        // on a control API thread (`POST /oom/trigger`).
        .any(SYS_epoll_ctl)
        .any(SYS_epoll_wait)
        .any(SYS_epoll_pwait)
        // /proc and cgroup files are read; cgroup limits, `cgroup.procs`,
        // `oom_score_adj` and the VM records (`vm.json`, written to a
        // temporary file, synced, renamed) are written: any path, so any
        // flags (paths are out of a filter's reach).
        .any(SYS_openat)
        .any(SYS_read)
        // A VMM's `statm` and `status`, kept open and read from 0
        // (`CounterFiles`).
        .any(SYS_pread64)
        .any(SYS_lseek)
        .any(SYS_readlink)
        .any(SYS_fsync)
        .any(SYS_fdatasync)
        // Listing and removing a VM's directory and files, its sockets,
        // a memcg pool at shutdown.
        .any(SYS_getdents64)
        .any(SYS_mkdir)
        .any(SYS_unlink)
        .any(SYS_unlinkat)
        .any(SYS_rmdir)
        // The host's free swap (constraints, memcg swap room).
        .any(SYS_sysinfo)
        // Asking every VMM at once (`ask_each`): each asker then narrows
        // its own filter.
        .then(starts_threads)
}

/// The main thread once it supervises: the tick (reaps exits, samples
/// `/proc` and cgroups, runs the policy, asks balloons, kills and reaps),
/// its wake-ups (PSI triggers, memcg watchers: opened before the filter,
/// only read and polled here), stop signals; then the shutdown (every VM
/// stopped, files and memcg pools removed).
fn supervisor(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    Ok(list
        .then(manages_vms)?
        // SIGTERM and SIGINT are blocked and taken with a zero timeout.
        .any(SYS_rt_sigtimedwait))
}

/// The control API's threads: the reactor (accepts, checks the peer's
/// uid, reads requests), the workers (every operator request: create,
/// pause, patch, delete, trigger a decision, list) and the stream workers
/// (`GET /events?follow`).
fn control_api(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    Ok(list
        .then(manages_vms)?
        // The reactor: accept and poll clients without blocking; its
        // wake-up eventfd is read with `read`.
        .any(SYS_accept4)
        .arg_in(SYS_ioctl, 1, &[FIONBIO])?
        .any(SYS_shutdown)
        // Only the socket owner's uid (or root) is served.
        .rule(
            SYS_getsockopt,
            &[(1, Eq, SOL_SOCKET as u64), (2, Eq, SO_PEERCRED as u64)],
        )?
        .any(SYS_geteuid)
        // `POST /vms` with an agent: the daemon listens on the VM's
        // `vsock.sock_1025` before its VMM starts (the socket is
        // `AF_UNIX`, by `vmm_client`).
        .any(SYS_bind)
        .any(SYS_listen))
}

/// The guest agents' thread: it polls every VM's agent listener and
/// connection, parses what guests send (untrusted: bounded by the
/// session), answers acks, remembers them in `agent.json`, and records
/// events. It reads no file and starts nothing.
fn agents(list: Allowlist) -> Result<Allowlist, SeccompError> {
    use libc::*;
    list.then(event_log)?
        .any(SYS_poll)
        .any(SYS_ppoll)
        // A VMM forwards a guest's connection; it is made non-blocking.
        .any(SYS_accept4)
        .arg_in(SYS_ioctl, 1, &[FIONBIO])?
        // Lines in, acks out; the wake-up eventfd.
        .any(SYS_read)
        .any(SYS_recvfrom)
        .any(SYS_sendto)
        // Files are only written, never read: `agent.json` through a
        // temporary file (`O_WRONLY | O_CREAT | O_TRUNC`, renamed), and a
        // rotated event log (`O_RDWR | O_CREAT`).
        .rule(
            SYS_openat,
            &[(
                2,
                MaskedEq((O_ACCMODE | O_CREAT | O_TRUNC) as u64),
                (O_WRONLY | O_CREAT | O_TRUNC) as u64,
            )],
        )?
        .rule(
            SYS_openat,
            &[(
                2,
                MaskedEq((O_ACCMODE | O_CREAT) as u64),
                (O_RDWR | O_CREAT) as u64,
            )],
        )
}

/// A thread of `ask_each`: one request to one VMM's API and its answer
/// (which a VMM, perhaps taken over by its guest, could have crafted). It
/// inherits its creator's filter (supervisor or control API) and adds
/// this one: the VMM client and nothing else.
fn asker(list: Allowlist) -> Result<Allowlist, SeccompError> {
    list.then(vmm_client)
}
