//! The seccomp filters of `vmm run` in real VMs: every thread runs under
//! one, and a syscall outside a thread's allowlist kills the VMM with
//! SIGSYS, while `--no-seccomp` turns them off. The hidden
//! `--seccomp-selftest KIND` makes a thread of that kind call
//! `socket(AF_INET)` right after it installed its filter.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

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

/// `Seccomp:` and `Seccomp_filters:` of every thread, by thread name.
fn filters_by_thread(pid: u32) -> BTreeMap<String, (u32, u32)> {
    let mut out = BTreeMap::new();
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
        out.insert(name, (field("Seccomp:"), field("Seccomp_filters:")));
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
