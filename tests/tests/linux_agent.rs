//! The whole guest side, end to end (issue 8): `vmm daemon` runs the tiny
//! Linux guest with the guest agent in its initramfs; a hog in a 2 MiB
//! memory cgroup is killed by the guest kernel's OOM killer; the agent
//! reads the kill from `/dev/kmsg` and sends it over virtio-vsock (CID 2,
//! port 1025) through our VMM's device to the daemon's listener; the kill
//! is a `guest_oom_kill` event on the daemon's timeline. Then the daemon is
//! killed with SIGKILL and restarted: the agent reconnects, and the kill is
//! not reported again.
//!
//! Slow by nature on PVM hosts (see `linux_guest.rs`): one Linux VM, about
//! a minute.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmm_integration_tests::daemon::{events_of, Daemon};
use vmm_integration_tests::{
    api, cache_dir, guest_kernel, poll_until, repo_root, require_kvm, LINUX_CMDLINE,
};

/// Runs `script` with `env` and returns the path it prints on stdout.
fn built_by(script: &Path, args: &[&str], env: &[(&str, &Path)]) -> PathBuf {
    let mut cmd = Command::new(script);
    cmd.args(args).stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        out.status
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The initramfs with the static guest agent in it. The agent is built in
/// a target directory of its own, so that this cargo never waits for the
/// lock of the cargo that runs the tests.
fn agent_initramfs() -> PathBuf {
    let root = repo_root();
    let agent = built_by(
        &root.join("guest-agent/build-static.sh"),
        &[],
        &[("CARGO_TARGET_DIR", &root.join("target/agent-static"))],
    );
    let out = cache_dir().join("linux-guest/agent-initramfs.cpio");
    built_by(
        &root.join("resources/linux/build-initramfs.sh"),
        &[
            "--agent",
            agent.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    )
}

/// What VM `id` printed on its console so far.
fn console(d: &Daemon, id: &str) -> String {
    std::fs::read_to_string(d.state.join("vms").join(id).join("console.log")).unwrap_or_default()
}

#[test]
fn an_in_guest_oom_kill_reaches_the_daemon_timeline_over_vsock() {
    require_kvm();
    let kernel = guest_kernel();
    let initrd = agent_initramfs();
    let d = Daemon::start("linux-agent");
    let spec = serde_json::json!({
        "id": "lx",
        "mem_mib": 96,
        "kernel": kernel,
        "initrd": initrd,
        "agent": true,
        "cmdline": format!("{LINUX_CMDLINE} init.oom_hog=16M init.memcg_max=2M init.hold"),
    });
    let started = Instant::now();
    let (status, vm) = api(&d.sock, "POST", "/vms", Some(&spec.to_string()));
    assert_eq!(status, 201, "{vm}");

    let connected = poll_until(Duration::from_secs(240), || {
        events_of(&d, "guest_agent_connected").first().cloned()
    })
    .unwrap_or_else(|| panic!("the agent never connected:\n{}", console(&d, "lx")));
    eprintln!(
        "[linux-agent] agent connected {:.1} s after create: {connected}",
        started.elapsed().as_secs_f64()
    );
    // The release the kernel build recorded (Debian moves its 6.12 point
    // release on: 6.12.117 once, 6.12.118 now).
    let version = std::fs::read_to_string(kernel.with_file_name("VERSION")).unwrap();
    let release = version
        .lines()
        .find_map(|l| l.strip_prefix("kernel_version="))
        .expect("VERSION names kernel_version");
    assert_eq!(connected["kernel"], release, "{connected}");

    // The kill as the guest kernel printed it (host time of the console
    // line) and as the daemon recorded it (host time of the event).
    let pid_line = poll_until(Duration::from_secs(60), || {
        console(&d, "lx")
            .lines()
            .find(|l| l.contains("init: hog pid "))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no hog:\n{}", console(&d, "lx")));
    let pid: i64 = pid_line
        .split("init: hog pid ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {pid_line}"));
    let needle = format!("Killed process {pid} (hog)");
    let mut console_at = None;
    let mut event_at = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let kill = loop {
        if console_at.is_none() && console(&d, "lx").contains(&needle) {
            console_at = Some(Instant::now());
        }
        if let Some(k) = events_of(&d, "guest_oom_kill").first().cloned() {
            event_at.get_or_insert_with(Instant::now);
            if console_at.is_some() {
                break k;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no guest_oom_kill:\n{}",
            console(&d, "lx")
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let (console_at, event_at) = (console_at.unwrap(), event_at.unwrap());
    eprintln!(
        "[linux-agent] console line -> daemon event: {} ms (polled every 10 ms; negative: the event came first)",
        event_at.saturating_duration_since(console_at).as_millis() as i64
            - console_at.saturating_duration_since(event_at).as_millis() as i64
    );
    assert_eq!(
        (kill["pid"].as_i64(), kill["comm"].as_str()),
        (Some(pid), Some("hog")),
        "{kill}"
    );
    assert_eq!(kill["vm"], "lx");
    assert_eq!(kill["constraint"], "CONSTRAINT_MEMCG", "{kill}");
    assert_eq!(kill["oom_memcg"], "/hog", "{kill}");
    assert!(
        event_at.saturating_duration_since(console_at) < Duration::from_secs(10),
        "the report came {:?} after the kernel's line",
        event_at.saturating_duration_since(console_at)
    );
    let (_, view) = api(&d.sock, "GET", "/vms/lx", None);
    let view: Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["agent"]["oom_kills"], 1, "{view}");

    // The daemon dies and comes back: the agent reconnects to the new
    // listener (its VMM re-adopted), and the kill is not reported again.
    let d = Daemon::start_in(&d.kill_9(), None);
    let again = poll_until(Duration::from_secs(60), || {
        events_of(&d, "guest_agent_connected").last().cloned()
    })
    .expect("the agent never reconnected after the daemon's restart");
    assert!(
        again["resumed_at"].as_u64().is_some(),
        "a known stream: {again}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = std::fs::read_to_string(d.state.join("events.ndjson")).unwrap();
    let kills = log
        .lines()
        .filter(|l| l.contains("\"kind\":\"guest_oom_kill\""))
        .count();
    assert_eq!(kills, 1, "the kill once, across the restart");
    // Dropping the daemon stops the VM and removes its directory.
}
