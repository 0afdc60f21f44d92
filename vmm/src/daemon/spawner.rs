//! The spawner: the daemon's one thread without a seccomp filter, which
//! starts every `vmm run` child and does nothing else.
//!
//! Why a thread of its own, unfiltered: seccomp filters are inherited
//! across `fork` and kept across `execve`, and a process runs every filter
//! it holds (the strictest answer wins). A VMM forked by a filtered daemon
//! thread would run its own per-thread filters *and* the daemon's, so the
//! daemon's would have to allow everything any VMM thread does (`KVM_RUN`
//! and the other KVM ioctls, guest memory, TAP and vsock I/O), and
//! `fork` and `execve` besides: every daemon thread could then do what a
//! VMM does. Instead, this thread is created by the main thread before any
//! filter is installed (threads inherit their creator's filter, and
//! [`Spawner::start`] refuses to start under one), never installs one, and
//! forks only here: its children start with no filter and install only
//! their own. Every other daemon thread is filtered and may neither fork
//! nor `execve` (see [`crate::seccomp::daemon_filters`]).
//!
//! What it takes: [`Spawn`] requests over a channel, for the one program
//! it was started with (the `vmm` binary); it parses nothing and answers
//! each with the new process's [`Pidfd`]. What it cannot defend against:
//! threads share one address space, so an attacker who can already write
//! the daemon's memory at will could steer this thread too. The filters
//! are against the far more common primitive, a thread made to issue
//! syscalls its job never needs.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;

use super::process::Pidfd;

/// The spawner's thread name.
pub const THREAD_NAME: &str = "vmmd-spawner";

/// Why the spawner cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error(
        "the spawner must be started by a thread without a seccomp filter \
         (its children would inherit it); this one is in seccomp mode {0}"
    )]
    Filtered(u32),
    #[error("cannot read the calling thread's seccomp mode")]
    Mode(#[source] io::Error),
    #[error("cannot start the spawner thread")]
    Thread(#[source] io::Error),
}

/// Why a process was not started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnFailure {
    #[error("cannot start the process")]
    Start(#[source] io::Error),
    #[error("cannot open a pidfd for the new process")]
    Pidfd(#[source] io::Error),
    #[error("the spawner thread is gone")]
    Gone,
}

/// One process to start: the spawner's program with `args`, stdin and
/// stdout on `/dev/null`, stderr to `stderr`, in its own process group
/// (a Ctrl-C meant for the daemon's terminal must not reach its VMs).
#[derive(Debug)]
pub struct Spawn {
    pub args: Vec<String>,
    pub stderr: File,
    /// A cgroup's `cgroup.procs`, opened for writing: the child joins that
    /// cgroup between fork and exec, before it allocates anything.
    pub cgroup_procs: Option<File>,
}

struct Request {
    spawn: Spawn,
    reply: mpsc::SyncSender<Result<Pidfd, SpawnFailure>>,
}

/// The spawner thread and the way to it.
pub struct Spawner {
    program: PathBuf,
    /// Dropped first when the spawner is: its thread then ends.
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Spawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawner")
            .field("program", &self.program)
            .finish_non_exhaustive()
    }
}

impl Spawner {
    /// Starts the spawner thread for `program`. Call it from a thread that
    /// has no seccomp filter (the daemon's main thread, before it installs
    /// its own): the new thread inherits the caller's, and so would every
    /// process it starts. Refused otherwise.
    pub fn start(program: PathBuf) -> Result<Self, SpawnerError> {
        let mode = crate::seccomp::current_thread_mode().map_err(SpawnerError::Mode)?;
        if mode != 0 {
            return Err(SpawnerError::Filtered(mode));
        }
        let (requests, queue) = mpsc::channel::<Request>();
        let thread = {
            let program = program.clone();
            std::thread::Builder::new()
                .name(THREAD_NAME.into())
                .spawn(move || {
                    // Ends when the Spawner is dropped.
                    for request in queue {
                        let _ = request.reply.send(spawn(&program, request.spawn));
                    }
                })
                .map_err(SpawnerError::Thread)?
        };
        Ok(Spawner {
            program,
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    /// The program it starts.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Starts a process as `how` says, on the spawner thread, and returns
    /// it held by a pidfd (it is our child: nobody else can reap it, so
    /// its pid cannot be reused before the pidfd is open).
    pub fn spawn(&self, how: Spawn) -> Result<Pidfd, SpawnFailure> {
        let (reply, answer) = mpsc::sync_channel(1);
        let requests = self.requests.as_ref().ok_or(SpawnFailure::Gone)?;
        requests
            .send(Request { spawn: how, reply })
            .map_err(|_| SpawnFailure::Gone)?;
        answer.recv().unwrap_or(Err(SpawnFailure::Gone))
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts `program` as `how` says (on the spawner thread).
// The child is reaped through its pidfd (waitid P_PIDFD) by whoever holds
// it; clippy cannot see that.
#[allow(clippy::zombie_processes)]
fn spawn(program: &Path, how: Spawn) -> Result<Pidfd, SpawnFailure> {
    let mut cmd = Command::new(program);
    if let Some(procs) = &how.cgroup_procs {
        let fd = procs.as_raw_fd();
        // SAFETY: only write(2), async-signal-safe, on an fd that stays
        // open until spawn returns (`how` lives until then; close-on-exec,
        // so the child never sees it). "0" moves the writer itself.
        unsafe {
            cmd.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }
    let mut child = cmd
        .args(&how.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(how.stderr)
        .process_group(0)
        .spawn()
        .map_err(SpawnFailure::Start)?;
    drop(how.cgroup_procs);
    match Pidfd::open(child.id()) {
        Ok(pidfd) => Ok(pidfd),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(SpawnFailure::Pidfd(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stderr_file(name: &str) -> (PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("vmm-spawner-{name}-{}.log", std::process::id()));
        (path.clone(), File::create(&path).unwrap())
    }

    /// A process started through the spawner runs the spawner's program
    /// with the arguments given, its stderr where asked, and is held by a
    /// pidfd that reaps it.
    #[test]
    fn starts_the_program_and_answers_a_pidfd() {
        let spawner = Spawner::start(PathBuf::from("/bin/sh")).unwrap();
        let (path, stderr) = stderr_file("run");
        let pidfd = spawner
            .spawn(Spawn {
                args: vec!["-c".into(), "echo hello >&2; exit 7".into()],
                stderr,
                cgroup_procs: None,
            })
            .unwrap();
        assert!(pidfd.wait_exit(Duration::from_secs(10)));
        assert_eq!(
            pidfd.try_reap().unwrap(),
            Some(super::super::process::ExitReport::Exited(7))
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\n");
        let _ = std::fs::remove_file(path);
    }

    /// A program that cannot be started is the caller's error, and the
    /// spawner goes on.
    #[test]
    fn a_missing_program_is_an_error_and_the_spawner_goes_on() {
        let spawner = Spawner::start(PathBuf::from("/nonexistent/vmm")).unwrap();
        for _ in 0..2 {
            let (path, stderr) = stderr_file("missing");
            let e = spawner
                .spawn(Spawn {
                    args: Vec::new(),
                    stderr,
                    cgroup_procs: None,
                })
                .unwrap_err();
            assert!(matches!(e, SpawnFailure::Start(_)), "{e:?}");
            let _ = std::fs::remove_file(path);
        }
    }

    /// Started from a filtered thread, the spawner would hand its filter
    /// to every child: it refuses.
    #[test]
    fn a_filtered_thread_cannot_start_a_spawner() {
        std::thread::spawn(|| {
            // A filter that allows everything but `acct`, which no test
            // makes: enough to put the thread in seccomp mode 2.
            let filter = seccompiler::SeccompFilter::new(
                [(libc::SYS_acct, vec![])].into_iter().collect(),
                seccompiler::SeccompAction::Allow,
                seccompiler::SeccompAction::Errno(libc::EPERM as u32),
                seccompiler::TargetArch::x86_64,
            )
            .unwrap();
            let program: seccompiler::BpfProgram = filter.try_into().unwrap();
            seccompiler::apply_filter(&program).unwrap();
            let e = Spawner::start(PathBuf::from("/bin/true")).unwrap_err();
            assert!(matches!(e, SpawnerError::Filtered(2)), "{e:?}");
        })
        .join()
        .unwrap();
    }
}
