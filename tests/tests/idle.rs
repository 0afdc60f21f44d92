//! Idle tiny guests sleep in the VMM's idle port (port 0xf8) instead of
//! spinning a host core, and still answer the host at once.
//!
//! CPU is read from every thread's `/proc/<pid>/task/<tid>/schedstat`
//! (nanoseconds on a CPU). The bounds are loose (a few percent of one core)
//! so that a loaded host cannot fail them: a sleeping VM's own CPU does not
//! grow with load, while a spinning one takes all it is given. Speed
//! figures are `bench/idle-cpu.sh`'s job, not these tests'.

use std::path::Path;
use std::time::{Duration, Instant};

use vmm_integration_tests::{api, require_kvm, socket_path, VmProcess};

const BOOT: Duration = Duration::from_secs(20);
/// How long CPU is counted.
const WINDOW: Duration = Duration::from_secs(3);
/// At most this share of one core while idle. A spinning guest took
/// 14-100 % here, depending on how many others wanted the two CPUs.
const MAX_IDLE_SHARE: f64 = 0.05;

/// CPU time of every thread of process `pid` so far.
fn cpu_time(pid: u32) -> Duration {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("read the task list") {
        let path = task.expect("task entry").path().join("schedstat");
        // A thread that just ended has no file any more: it counts 0.
        if let Ok(text) = std::fs::read_to_string(path) {
            ns += text
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .expect("schedstat starts with the run time in ns");
        }
    }
    Duration::from_nanos(ns)
}

/// The share of one core `vm` used over [`WINDOW`].
fn idle_share(vm: &VmProcess) -> f64 {
    let (c0, t0) = (cpu_time(vm.pid()), Instant::now());
    std::thread::sleep(WINDOW);
    let used = cpu_time(vm.pid()) - c0;
    used.as_secs_f64() / t0.elapsed().as_secs_f64()
}

#[test]
fn a_guest_holding_forever_uses_almost_no_cpu() {
    require_kvm();
    let mut vm = VmProcess::start(&["run", "--mem", "32M", "--cmdline", "tiny.hold=forever"]);
    vm.wait_for("tiny-guest: hold forever", BOOT)
        .unwrap_or_else(|| panic!("the guest did not start holding:\n{}", vm.output()));
    let share = idle_share(&vm);
    vm.kill();
    assert!(
        share < MAX_IDLE_SHARE,
        "an idle guest used {:.1} % of a core",
        share * 100.0
    );
}

#[test]
fn a_timed_hold_still_lasts_as_long_as_asked_and_ends_the_vm() {
    require_kvm();
    let mut vm = VmProcess::start(&[
        "run",
        "--mem",
        "32M",
        "--cmdline",
        "tiny.hold=1500ms tiny.exit=9",
    ]);
    let hold = vm
        .wait_for("tiny-guest: hold 1500 ms", BOOT)
        .unwrap_or_else(|| panic!("no hold line:\n{}", vm.output()));
    let (status, err) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(9), "{err}");
    let exit = vm
        .wait_for("tiny-guest: exit 9", Duration::ZERO)
        .expect("exit line");
    let held = exit.at - hold.at;
    // Asleep, the guest must still not end the hold early (the VMM's
    // wakes and its 1 s cap are no reason to stop), nor oversleep by
    // much. The guest counts TSC ticks at the frequency it found or
    // assumed (2 GHz), which can be off: this host's TSC runs at 2.6 GHz,
    // so 1500 ms last ~1.2 s here, asleep or spinning alike.
    assert!(
        held >= Duration::from_millis(1000) && held < Duration::from_secs(5),
        "the hold ended after {held:?}"
    );
}

/// A guest in its balloon loop, with the per-VM API on `sock`.
fn balloon_guest(name: &str) -> (VmProcess, std::path::PathBuf) {
    require_kvm();
    let sock = socket_path(name);
    let _ = std::fs::remove_file(&sock);
    let mut vm = VmProcess::start(&[
        "run",
        "--mem",
        "64M",
        "--api-sock",
        sock.to_str().unwrap(),
        "--boot-now",
        "--balloon",
        "amount_mib=0",
        "--cmdline",
        "tiny.alloc=8M tiny.balloon=on tiny.report-every=0 tiny.balloon-log=settled",
    ]);
    vm.wait_for("virtio-balloon features", BOOT)
        .unwrap_or_else(|| panic!("the balloon driver did not start:\n{}", vm.output()));
    (vm, sock)
}

fn patch_target(sock: &Path, mib: u32) {
    let (status, body) = api(
        sock,
        "PATCH",
        "/balloon",
        Some(&format!("{{\"amount_mib\": {mib}}}")),
    );
    assert_eq!(status, 204, "{body}");
}

#[test]
fn a_guest_waiting_for_a_balloon_target_sleeps_and_follows_changes_at_once() {
    let (mut vm, sock) = balloon_guest("idle-balloon");
    let share = idle_share(&vm);
    assert!(
        share < MAX_IDLE_SHARE,
        "a guest waiting in its balloon loop used {:.1} % of a core",
        share * 100.0
    );

    // Each change must wake the sleeping guest: one that slept through it
    // would follow only at the VMM's 1 s cap on a sleep. Each change is
    // 1 MiB, so the guest's own work is a millisecond or so.
    let mut latencies = Vec::new();
    for mib in [1, 0, 2, 1] {
        let needle = format!("balloon settled actual={} ", mib * 256);
        // Lines already seen do not count: settle lines repeat values.
        let seen_before = vm.output().matches(&needle).count();
        let t0 = Instant::now();
        patch_target(&sock, mib);
        let deadline = t0 + Duration::from_secs(10);
        loop {
            if vm.output().matches(&needle).count() > seen_before {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the guest did not follow {mib} MiB:\n{}",
                vm.output()
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        latencies.push(t0.elapsed());
        // Asleep again before the next change.
        std::thread::sleep(Duration::from_millis(300));
    }
    vm.kill();
    // SIGKILL leaves the socket file behind.
    let _ = std::fs::remove_file(&sock);
    eprintln!("PATCH /balloon -> guest settled: {latencies:?}");
    for (i, l) in latencies.iter().enumerate() {
        assert!(
            *l < Duration::from_millis(500),
            "change {i} took {l:?} (all: {latencies:?})"
        );
    }
}

/// `ReleaseMemory` must stop the vCPUs first; a vCPU asleep in the idle
/// port is in no `KVM_RUN` that a kick could end, so the park request
/// itself must wake it (else it would wait out its sleep, up to 1 s, and
/// the release would be late or fail with a park timeout).
#[test]
fn release_memory_stops_a_sleeping_guest_at_once() {
    require_kvm();
    let sock = socket_path("idle-release");
    let _ = std::fs::remove_file(&sock);
    let mut vm = VmProcess::start(&[
        "run",
        "--mem",
        "64M",
        "--api-sock",
        sock.to_str().unwrap(),
        "--boot-now",
        "--cmdline",
        "tiny.touch=16M tiny.hold=forever",
    ]);
    vm.wait_for("tiny-guest: hold forever", BOOT)
        .unwrap_or_else(|| panic!("the guest did not start holding:\n{}", vm.output()));
    // Well into a sleep.
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = api(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "ReleaseMemory"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stop_us = answer["stop_vcpus_us"]
        .as_u64()
        .unwrap_or_else(|| panic!("no stop_vcpus_us in {body}"));
    assert!(
        stop_us < 300_000,
        "stopping the sleeping vCPU took {stop_us} µs: {body}"
    );
    let (status, err) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(253), "{err}");
}
