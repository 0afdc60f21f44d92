//! `vmm daemon` for integration tests: started on its own socket and
//! state directory, called over its API, SIGTERMed and cleaned up on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::{api, poll_until, require_kvm, vmm_bin};

/// How long a VM or the daemon may take to come up.
pub const BOOT: Duration = Duration::from_secs(20);

/// A daemon process with its own socket and state directory; killed and
/// cleaned up on drop.
pub struct Daemon {
    pub child: Child,
    pub sock: PathBuf,
    pub state: PathBuf,
}

impl Daemon {
    pub fn start(name: &str) -> Daemon {
        Self::start_with_config(name, None)
    }

    pub fn start_with_config(name: &str, config: Option<&str>) -> Daemon {
        Self::start_in(&fresh_dir(name), config)
    }

    /// A daemon with more command-line arguments (`--no-seccomp`, ...).
    pub fn start_with_args(name: &str, args: &[&str]) -> Daemon {
        Self::start_in_with_args(&fresh_dir(name), None, args)
    }

    /// Waits up to `timeout` for a daemon that should die by itself (of
    /// SIGSYS, say); returns how it ended and its directory for a
    /// successor, nothing cleaned up. `None` (and the daemon killed and
    /// cleaned up) if it did not.
    pub fn wait_death(mut self, timeout: Duration) -> Option<(std::process::ExitStatus, PathBuf)> {
        let status = poll_until(timeout, || self.child.try_wait().ok().flatten())?;
        let base = self.state.parent().unwrap().to_path_buf();
        std::mem::forget(self);
        Some((status, base))
    }

    /// Kills the daemon with SIGKILL (its VMs stay, orphaned) and returns
    /// its directory for a successor; nothing is cleaned up.
    pub fn kill_9(mut self) -> PathBuf {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let base = self.state.parent().unwrap().to_path_buf();
        std::mem::forget(self);
        base
    }

    /// A daemon on `base`'s socket and state directory as they are.
    pub fn start_in(base: &Path, config: Option<&str>) -> Daemon {
        Self::start_in_with_args(base, config, &[])
    }

    /// [`Daemon::start_in`] with more command-line arguments.
    pub fn start_in_with_args(base: &Path, config: Option<&str>, args: &[&str]) -> Daemon {
        let sock = base.join("daemon.sock");
        let _ = std::fs::remove_file(&sock);
        let state = base.join("state");
        let mut cmd = Command::new(vmm_bin());
        cmd.args([
            "daemon",
            "--socket",
            sock.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        if let Some(config) = config {
            let path = base.join("config.json");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(path);
        }
        cmd.args(args);
        let child = cmd.stdin(Stdio::null()).spawn().unwrap();
        poll_until(BOOT, || sock.exists().then_some(())).expect("daemon socket never appeared");
        Daemon { child, sock, state }
    }

    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
        let (status, body) = api(&self.sock, method, path, body);
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    pub fn create(&self, body: &str) -> Value {
        let (status, vm) = self.call("POST", "/vms", Some(body));
        assert_eq!(status, 201, "{vm}");
        vm
    }

    /// Waits until VM `id`'s console shows `needle`.
    pub fn wait_console(&self, id: &str, needle: &str) {
        let console = self.state.join("vms").join(id).join("console.log");
        poll_until(BOOT, || {
            std::fs::read_to_string(&console)
                .ok()
                .filter(|c| c.contains(needle))
                .map(|_| ())
        })
        .unwrap_or_else(|| panic!("{id} never printed {needle:?}"));
    }

    pub fn vm(&self, id: &str) -> Value {
        let (status, vm) = self.call("GET", &format!("/vms/{id}"), None);
        assert_eq!(status, 200, "{vm}");
        vm
    }

    pub fn trigger(&self, dry_run: bool) -> Value {
        let (status, d) = self.call(
            "POST",
            "/oom/trigger",
            Some(&format!("{{\"dry_run\": {dry_run}}}")),
        );
        assert_eq!(status, 200, "{d}");
        d
    }
}

/// A new, empty directory for a daemon called `name` in this test run.
fn fresh_dir(name: &str) -> PathBuf {
    require_kvm();
    let base = std::env::temp_dir().join(format!("vmm-daemon-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    base
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon stops its VMs; then make sure.
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = poll_until(Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(self.state.parent().unwrap());
    }
}

/// The events of `kind` the daemon holds, oldest first.
pub fn events_of(d: &Daemon, kind: &str) -> Vec<Value> {
    let (_, events) = d.call("GET", "/events?since=0", None);
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == kind)
        .cloned()
        .collect()
}
