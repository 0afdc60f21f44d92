use super::*;

/// Every filter, the VMM's and the daemon's, compiles to a BPF program
/// the kernel accepts in size (`BPF_MAXINSNS`), for x86_64, the one
/// architecture they run on.
#[test]
fn every_filter_compiles_to_bpf_for_x86_64() {
    let filters = Filters::compile_for(&ThreadKind::ALL, TargetArch::x86_64).unwrap();
    for kind in ThreadKind::ALL {
        let len = filters.program(kind).unwrap().len();
        assert!(len > 10 && len <= 4096, "{kind:?}: {len} instructions");
    }
}

#[test]
fn kvm_ioctl_numbers_are_the_kernel_ones() {
    assert_eq!(filters::KVM_RUN, 0xae80);
    assert_eq!(filters::KVM_GET_REGS, 0x8090_ae81);
}

/// The vCPU filter differs from the API's: each kind has its own table
/// (a kind that fell back to another's would compile just as well).
#[test]
fn each_kind_has_its_own_filter() {
    let filters = Filters::compile(&ThreadKind::ALL).unwrap();
    for (i, a) in ThreadKind::ALL.iter().enumerate() {
        for b in &ThreadKind::ALL[i + 1..] {
            assert_ne!(filters.program(*a), filters.program(*b), "{a:?} = {b:?}");
        }
    }
}

/// Each program's kinds are its own: `vmm run` and `vmm daemon` compile
/// only theirs, split as the command line's self-test names them.
#[test]
fn each_program_compiles_only_its_own_kinds() {
    for process in [Process::Vmm, Process::Daemon] {
        let filters = Filters::compile(process.kinds()).unwrap();
        for kind in ThreadKind::ALL {
            assert_eq!(kind.process() == process, filters.program(kind).is_some());
        }
    }
    assert_eq!(
        Process::Daemon.kinds(),
        [
            ThreadKind::DaemonSupervisor,
            ThreadKind::DaemonApi,
            ThreadKind::DaemonAgents,
            ThreadKind::DaemonAsker
        ]
    );
}

/// What the daemon's allowlists must never let through, whatever the
/// thread: starting a program, forking, tracing, IP sockets, KVM. (The
/// one thread that forks and execs has no filter: the spawner.)
#[test]
fn no_daemon_filter_allows_exec_fork_ptrace_ip_or_kvm() {
    use libc::*;
    for &kind in Process::Daemon.kinds() {
        let rules = daemon_filters::rules(kind).unwrap();
        for nr in [
            SYS_execve,
            SYS_execveat,
            SYS_fork,
            SYS_vfork,
            SYS_ptrace,
            SYS_process_vm_writev,
            SYS_kill,
            SYS_mount,
            SYS_setns,
            SYS_unshare,
            SYS_bpf,
            SYS_init_module,
            SYS_finit_module,
            SYS_chmod,
            SYS_symlink,
            SYS_link,
        ] {
            assert!(!rules.contains_key(&nr), "{kind:?} allows syscall {nr}");
        }
        // clone only with CLONE_THREAD, socket only AF_UNIX, ioctl only
        // FIONBIO: each allowed with conditions, never outright.
        for nr in [SYS_clone, SYS_socket, SYS_ioctl, SYS_mmap, SYS_mprotect] {
            assert!(
                rules.get(&nr).is_none_or(|r| !r.is_empty()),
                "{kind:?} allows syscall {nr} outright"
            );
        }
    }
}

/// A thread under each filter can do what every thread does through std
/// and glibc (allocate, lock, sleep, end), and is joined: the common part
/// of the allowlists is complete enough for a thread's life. (A missing
/// syscall kills this test binary with SIGSYS: loud.)
#[test]
fn a_thread_lives_and_ends_under_each_filter() {
    let filters = Arc::new(Filters::compile(&ThreadKind::ALL).unwrap());
    for kind in ThreadKind::ALL {
        let filters = Arc::clone(&filters);
        std::thread::Builder::new()
            .name(format!("seccomp-{kind:?}"))
            .spawn(move || {
                seccompiler::apply_filter(filters.program(kind).unwrap()).unwrap();
                let v: Vec<u64> = (0..100_000).collect();
                let m = std::sync::Mutex::new(v.len());
                assert_eq!(*m.lock().unwrap(), 100_000);
                std::thread::sleep(std::time::Duration::from_millis(1));
                let mut big = vec![0u8; 8 << 20];
                big[4 << 20] = 1;
                drop(big);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}

use std::sync::Arc;

/// An asker of `ask_each` starts under its creator's filter (the
/// supervisor's or the control API's), adds its own, and can still ask a
/// VMM: connect to a Unix socket, set its timeouts, send, receive, close.
#[test]
fn an_asker_asks_under_its_creators_filter_and_its_own() {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    let filters = Arc::new(Filters::compile(Process::Daemon.kinds()).unwrap());
    let dir = std::env::temp_dir().join(format!("vmm-seccomp-asker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(b"pong").unwrap();
        }
    });
    for creator in [ThreadKind::DaemonSupervisor, ThreadKind::DaemonApi] {
        let (filters, sock) = (Arc::clone(&filters), sock.clone());
        std::thread::spawn(move || {
            seccompiler::apply_filter(filters.program(creator).unwrap()).unwrap();
            std::thread::scope(|s| {
                s.spawn(|| {
                    let asker = filters.program(ThreadKind::DaemonAsker).unwrap();
                    seccompiler::apply_filter(asker).unwrap();
                    let mut conn = UnixStream::connect(&sock).unwrap();
                    let timeout = Some(std::time::Duration::from_secs(5));
                    conn.set_read_timeout(timeout).unwrap();
                    conn.set_write_timeout(timeout).unwrap();
                    conn.write_all(b"ping").unwrap();
                    let mut answer = String::new();
                    conn.read_to_string(&mut answer).unwrap();
                    assert_eq!(answer, "pong");
                })
                .join()
                .unwrap();
            });
        })
        .join()
        .unwrap();
    }
    server.join().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
