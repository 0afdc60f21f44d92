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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vmm_integration_tests::{
    api, cache_dir, guest_kernel, poll_until, repo_root, require_kvm, vmm_bin,
};

/// The command line a PVM host needs (resources/linux/README.md).
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init noxsave nofsgsbase \
     clearcpuid=smap,pcid,invpcid,rdrand,rdseed,popcnt,erms,fsrm no-kvmapf nopvspin";

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

/// A daemon on `dir`; SIGTERM (it stops its VMs) and reaped on drop.
struct Daemon {
    child: Child,
    sock: PathBuf,
    state: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let sock = dir.join("d.sock");
        let _ = std::fs::remove_file(&sock);
        let state = dir.join("state");
        let child = Command::new(vmm_bin())
            .arg("daemon")
            .arg("--socket")
            .arg(&sock)
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        poll_until(Duration::from_secs(20), || sock.exists().then_some(()))
            .expect("the daemon's socket never appeared");
        Daemon { child, sock, state }
    }

    fn events(&self, kind: &str) -> Vec<Value> {
        let (_, body) = api(&self.sock, "GET", "/events?since=0", None);
        let all: Vec<Value> = serde_json::from_str(&body).unwrap_or_default();
        all.into_iter().filter(|e| e["kind"] == kind).collect()
    }

    fn console(&self, id: &str) -> String {
        std::fs::read_to_string(self.state.join("vms").join(id).join("console.log"))
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = poll_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_in_guest_oom_kill_reaches_the_daemon_timeline_over_vsock() {
    require_kvm();
    let kernel = guest_kernel();
    let initrd = agent_initramfs();
    let dir = std::env::temp_dir().join(format!("vmm-linux-agent-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let d = Daemon::start(&dir);
    let spec = serde_json::json!({
        "id": "lx",
        "mem_mib": 96,
        "kernel": kernel,
        "initrd": initrd,
        "agent": true,
        "cmdline": format!("{CMDLINE} init.oom_hog=16M init.memcg_max=2M init.hold"),
    });
    let started = Instant::now();
    let (status, vm) = api(&d.sock, "POST", "/vms", Some(&spec.to_string()));
    assert_eq!(status, 201, "{vm}");

    let connected = poll_until(Duration::from_secs(240), || {
        d.events("guest_agent_connected").first().cloned()
    })
    .unwrap_or_else(|| panic!("the agent never connected:\n{}", d.console("lx")));
    eprintln!(
        "[linux-agent] agent connected {:.1} s after create: {connected}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(connected["kernel"], "6.12.117", "{connected}");

    // The kill as the guest kernel printed it (host time of the console
    // line) and as the daemon recorded it (host time of the event).
    let pid_line = poll_until(Duration::from_secs(60), || {
        d.console("lx")
            .lines()
            .find(|l| l.contains("init: hog pid "))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("no hog:\n{}", d.console("lx")));
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
        if console_at.is_none() && d.console("lx").contains(&needle) {
            console_at = Some(Instant::now());
        }
        if let Some(k) = d.events("guest_oom_kill").first().cloned() {
            event_at.get_or_insert_with(Instant::now);
            if console_at.is_some() {
                break k;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no guest_oom_kill:\n{}",
            d.console("lx")
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
    let mut d = d;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    let (state, sock) = (d.state.clone(), d.sock.clone());
    std::mem::forget(d);
    let _ = std::fs::remove_file(&sock);
    let d = Daemon::start(&dir);
    assert_eq!(d.state, state);
    let again = poll_until(Duration::from_secs(60), || {
        d.events("guest_agent_connected").last().cloned()
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
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
}
