//! The seccomp filters of `vmm run` in real VMs, and of `vmm daemon`:
//! every thread runs under one (but the daemon's spawner, which has none
//! so that the VMMs it starts have only their own), and a syscall outside
//! a thread's allowlist kills the VMM or the daemon with SIGSYS, while
//! `--no-seccomp` turns them off. The hidden `--seccomp-selftest KIND`
//! makes a thread of that kind call `socket(AF_INET)` right after it
//! installed its filter.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use vmm_integration_tests::daemon::{Daemon, BOOT};
use vmm_integration_tests::{poll_until, require_kvm, socket_path, VmProcess};

const EXIT: Duration = Duration::from_secs(60);

/// Runs the tiny guest (which exits with 3) with a self-test for `kind`.
fn selftest(kind: &str, extra: &[&str]) -> (std::process::ExitStatus, String, String) {
    require_kvm();
    let sock = socket_path(&format!("seccomp-{kind}"));
    let mut args = vec![
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--boot-now",
        "--cmdline",
        "tiny.exit=3",
        "--seccomp-selftest",
        kind,
    ];
    args.extend_from_slice(extra);
    let mut vm = VmProcess::start(&args);
    let (status, err) = vm.wait_exit(EXIT);
    let out = vm.output();
    // A VMM killed by SIGSYS cannot remove its socket.
    let _ = std::fs::remove_file(&sock);
    (status, out, err)
}

#[test]
fn a_forbidden_syscall_on_a_vcpu_kills_the_vmm_before_the_guest_runs() {
    let (status, out, err) = selftest("vcpu", &[]);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status:?}\n{out}\n{err}"
    );
    // The filter was in place before the guest's first instruction.
    assert!(!out.contains("tiny-guest"), "the guest ran:\n{out}");
}

#[test]
fn a_forbidden_syscall_on_an_api_thread_kills_the_vmm() {
    let (status, out, err) = selftest("api", &[]);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status:?}\n{out}\n{err}"
    );
}

#[test]
fn a_forbidden_syscall_on_the_event_loop_kills_the_vmm() {
    let (status, out, err) = selftest("event-loop", &[]);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status:?}\n{out}\n{err}"
    );
}

/// The release worker starts when the guest's balloon driver accepts
/// `MUST_TELL_HOST`; the tiny guest then serves the balloon forever.
#[test]
fn a_forbidden_syscall_on_the_balloon_release_worker_kills_the_vmm() {
    require_kvm();
    let mut vm = VmProcess::start(&[
        "run",
        "--balloon",
        "",
        "--cmdline",
        "tiny.balloon=on",
        "--seccomp-selftest",
        "release-worker",
    ]);
    let (status, err) = vm.wait_exit(EXIT);
    assert_eq!(
        status.signal(),
        Some(libc::SIGSYS),
        "{status:?}\n{}\n{err}",
        vm.output()
    );
}

#[test]
fn with_no_seccomp_the_same_syscalls_are_harmless() {
    for kind in ["vcpu", "api", "event-loop"] {
        let (status, out, err) = selftest(kind, &["--no-seccomp"]);
        assert_eq!(status.code(), Some(3), "{kind}: {status:?}\n{out}\n{err}");
    }
}

/// `Seccomp:` and `Seccomp_filters:` of every thread, by thread name
/// (without a trailing number: `vcpu0` is `vcpu`).
fn filters_by_thread(pid: u32) -> BTreeMap<String, (u32, u32)> {
    filters_of_each_thread(pid).into_iter().collect()
}

/// `Seccomp:` and `Seccomp_filters:` of each thread, with its name.
fn filters_of_each_thread(pid: u32) -> Vec<(String, (u32, u32))> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue; // the thread ended meanwhile
        };
        let field = |f: &str| -> u32 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(f))
                .map_or(0, |v| v.trim().parse().unwrap())
        };
        let name = name.trim().trim_end_matches(char::is_numeric).to_string();
        out.push((name, (field("Seccomp:"), field("Seccomp_filters:"))));
    }
    out
}

/// Every thread of a running VM with an API and a balloon is filtered,
/// each by its own filter (the release worker also by the vCPU's it
/// inherits); with `--no-seccomp` none is.
#[test]
fn every_thread_of_a_running_vm_is_filtered() {
    require_kvm();
    for (flag, want) in [("", (2, 1)), ("--no-seccomp", (0, 0))] {
        let sock = socket_path("seccomp-threads");
        let mut args = vec![
            "run",
            "--api-sock",
            sock.to_str().unwrap(),
            "--boot-now",
            "--balloon",
            "",
            "--cmdline",
            "tiny.balloon=on",
        ];
        if !flag.is_empty() {
            args.push(flag);
        }
        let mut vm = VmProcess::start(&args);
        let pid = vm.pid();
        let threads = poll_until(EXIT, || {
            let t = filters_by_thread(pid);
            t.contains_key("balloon-release").then_some(t)
        });
        let out = vm.output();
        vm.kill();
        let _ = std::fs::remove_file(&sock);
        let threads = threads.unwrap_or_else(|| panic!("no balloon release worker:\n{out}"));
        for name in ["vmm", "vcpu", "vmm-api", "vmm-api-w"] {
            assert!(threads.contains_key(name), "no {name} thread: {threads:?}");
        }
        for (name, filters) in threads.iter().filter(|(n, _)| *n != "balloon-release") {
            assert_eq!(filters, &want, "{flag} {name}: {threads:?}");
        }
        let worker = if want.0 == 0 { (0, 0) } else { (2, 2) };
        assert_eq!(
            threads.get("balloon-release"),
            Some(&worker),
            "{flag}: {threads:?}"
        );
    }
}

/// The daemon's thread names and the filters each runs under.
const DAEMON_THREADS: [&str; 6] = [
    "vmm",
    "vmm-daemon",
    "vmm-daemon-w",
    "vmm-daemon-s",
    "vmmd-agents",
    "vmmd-spawner",
];

/// Every thread of a daemon runs under its own filter, one each, but the
/// spawner, which has none (the VMMs it forks would inherit it); with
/// `--no-seccomp` none is filtered.
#[test]
fn every_daemon_thread_is_filtered_but_the_spawner() {
    for (args, want) in [(&[][..], (2, 1)), (&["--no-seccomp"][..], (0, 0))] {
        let d = Daemon::start_with_args("seccomp-threads", args);
        // The supervisor filters itself just before its first tick.
        // Each thread installs its filter first thing; the supervisor just
        // before its first tick.
        let expected = |name: &str| {
            if name == "vmmd-spawner" {
                (0, 0)
            } else {
                want
            }
        };
        // Settled: every thread named (a new thread is "vmm" until it
        // names itself) and filtered as it will be.
        let settled = |t: &[(String, (u32, u32))]| {
            t.iter().all(|(n, f)| *f == expected(n))
                && DAEMON_THREADS
                    .iter()
                    .all(|name| t.iter().any(|(n, _)| n == name))
                && t.iter().filter(|(n, _)| n == "vmm").count() == 1
        };
        let threads = poll_until(BOOT, || {
            let t = filters_of_each_thread(d.child.id());
            settled(&t).then_some(t)
        })
        .unwrap_or_else(|| panic!("{args:?}: {:?}", filters_of_each_thread(d.child.id())));
        for name in DAEMON_THREADS {
            assert!(
                threads.iter().any(|(n, _)| n == name),
                "{args:?}: no {name}: {threads:?}"
            );
        }
        for (name, _) in &threads {
            assert!(
                DAEMON_THREADS.contains(&name.as_str()),
                "{name}: {threads:?}"
            );
        }
    }
}

/// A VMM the daemon starts runs under its own filters only, exactly as
/// one started by hand: the same count on every thread, none inherited
/// from the daemon.
#[test]
fn a_vmm_started_by_the_daemon_has_only_its_own_filters() {
    let balloon = r#""balloon": {"amount_mib": 0, "deflate_on_oom": false}"#;
    let with_release_worker = |pid: u32| {
        move || {
            let t = filters_by_thread(pid);
            t.contains_key("balloon-release").then_some(t)
        }
    };
    let d = Daemon::start("seccomp-child");
    let vm = d.create(&format!(
        r#"{{"id": "f", "mem_mib": 32, "cmdline": "tiny.balloon=on", {balloon}}}"#
    ));
    let pid = vm["pid"].as_u64().unwrap() as u32;
    let from_daemon = poll_until(EXIT, with_release_worker(pid)).expect("no release worker");

    let sock = socket_path("seccomp-direct");
    let mut direct = VmProcess::start(&[
        "run",
        "--mem",
        "32M",
        "--api-sock",
        sock.to_str().unwrap(),
        "--boot-now",
        "--balloon",
        "",
        "--cmdline",
        "tiny.balloon=on",
    ]);
    let by_hand = poll_until(EXIT, with_release_worker(direct.pid()));
    direct.kill();
    let _ = std::fs::remove_file(&sock);
    let by_hand = by_hand.expect("no release worker in the VMM started by hand");

    for name in ["vmm", "vcpu", "vmm-api", "vmm-api-w", "balloon-release"] {
        assert!(from_daemon.contains_key(name), "{name}: {from_daemon:?}");
        assert_eq!(
            from_daemon.get(name),
            by_hand.get(name),
            "{name}: from the daemon {from_daemon:?}, by hand {by_hand:?}"
        );
    }
    assert_eq!(from_daemon.get("vcpu"), Some(&(2, 1)), "{from_daemon:?}");
}

/// A forbidden syscall on the supervisor, a control API thread or the
/// guest agents' thread kills the daemon with SIGSYS; with `--no-seccomp`
/// the same syscalls are harmless and the daemon answers.
#[test]
fn a_forbidden_syscall_on_each_daemon_thread_kills_the_daemon() {
    for kind in ["daemon-supervisor", "daemon-api", "daemon-agents"] {
        let d = Daemon::start_with_args("seccomp-selftest", &["--seccomp-selftest", kind]);
        let (status, base) = d
            .wait_death(EXIT)
            .unwrap_or_else(|| panic!("{kind}: lives on"));
        let _ = std::fs::remove_dir_all(base);
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{kind}: {status:?}");

        let d = Daemon::start_with_args(
            "seccomp-selftest",
            &["--no-seccomp", "--seccomp-selftest", kind],
        );
        let (status, vms) = d.call("GET", "/vms", None);
        assert_eq!(status, 200, "{kind} --no-seccomp: {vms}");
    }
}

/// An asker of `ask_each` (here: the answer to `POST /vms` reads the new
/// VM's balloon) has its own filter: a forbidden syscall there kills the
/// daemon. Its VM runs on, and a new daemon on the same state directory
/// takes it back.
#[test]
fn a_forbidden_syscall_on_an_asker_kills_the_daemon_and_its_vms_run_on() {
    let d = Daemon::start_with_args("seccomp-asker", &["--seccomp-selftest", "daemon-asker"]);
    let body = r#"{"id": "b", "mem_mib": 32, "cmdline": "tiny.hold=forever", "balloon": {"amount_mib": 0, "deflate_on_oom": false}}"#;
    // The answer never comes: the asker kills the daemon first.
    let _ = std::panic::catch_unwind(|| d.call("POST", "/vms", Some(body)));
    let (status, base) = d.wait_death(EXIT).expect("the daemon lives on");
    let record = std::fs::read_to_string(base.join("state/vms/b/vm.json"));
    let pid = record
        .ok()
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
        .and_then(|r| r["process"]["pid"].as_u64());
    let alive = pid.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    // Whatever failed, a successor stops the VM and removes the directory
    // when dropped.
    let d = Daemon::start_in(&base, None);
    assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
    assert!(alive, "the VMM ({pid:?}) did not outlive the daemon");
    let vm = d.vm("b");
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["pid"].as_u64(), pid, "{vm}");
}
