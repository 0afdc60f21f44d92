//! The `vmm ctl` binary against a daemon API server with a stand-in
//! backend: socket selection, output, and the exit status of errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;

use serde_json::Value;
use vmm::daemon_api::{
    ApiError, DaemonApiServer, DaemonBackend, Event, EventRecord, OomPatch, OomTrigger, OomView,
    VmPatch, VmSpec, VmState, VmView,
};

/// One VM, and nothing else works.
struct OneVm;

fn web1() -> VmView {
    VmView {
        id: "web-1".into(),
        pid: Some(4321),
        state: VmState::Running,
        pool: None,
        mem_mib: 256,
        vcpus: 2,
        oom_score_adj: 0,
        kernel_oom_score_adj: None,
        rss_bytes: 100 << 20,
        swap_bytes: 0,
        page_tables_bytes: 1 << 20,
        guest_ram_resident_bytes: 96 << 20,
        balloon: None,
        badness: Some(25_856),
        oom_score: Some(4),
        exit: None,
        created_at_ms: 0,
        agent: None,
    }
}

fn unsupported() -> ApiError {
    ApiError::Internal("not in this test".into())
}

impl DaemonBackend for OneVm {
    fn create_vm(&self, _: VmSpec) -> Result<VmView, ApiError> {
        Err(unsupported())
    }
    fn list_vms(&self) -> Vec<VmView> {
        vec![web1()]
    }
    fn get_vm(&self, id: &str) -> Result<VmView, ApiError> {
        match id {
            "web-1" => Ok(web1()),
            _ => Err(ApiError::NotFound(format!("no VM '{id}'"))),
        }
    }
    fn patch_vm(&self, _: &str, _: VmPatch) -> Result<VmView, ApiError> {
        Err(unsupported())
    }
    fn delete_vm(&self, _: &str) -> Result<(), ApiError> {
        Err(unsupported())
    }
    fn oom(&self) -> OomView {
        unimplemented!()
    }
    fn patch_oom(&self, _: OomPatch) -> Result<OomView, ApiError> {
        Err(unsupported())
    }
    fn trigger_oom(&self, _: OomTrigger) -> Result<EventRecord, ApiError> {
        Err(unsupported())
    }
    fn events(&self, _: u64) -> Vec<EventRecord> {
        vec![EventRecord {
            seq: 1,
            time_ms: 0,
            event: Event::VmCreated {
                vm: "web-1".into(),
                pid: Some(4321),
                mem_mib: 256,
                oom_score_adj: 0,
                pool: None,
                numa_nodes: None,
            },
        }]
    }
    fn follow_events(&self, _: u64) -> Receiver<EventRecord> {
        mpsc::channel().1
    }
    fn metrics(&self) -> String {
        "vmm_vms 1\n".into()
    }
}

struct Daemon {
    _server: DaemonApiServer,
    dir: PathBuf,
}

impl Daemon {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("vmm-ctl-cli-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let server = DaemonApiServer::start(dir.join("daemon.sock"), Arc::new(OneVm)).unwrap();
        Daemon {
            _server: server,
            dir,
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("daemon.sock")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn vmm(env_sock: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm"));
    cmd.arg("ctl").args(args).env_remove("VMM_DAEMON_SOCKET");
    if let Some(sock) = env_sock {
        cmd.env("VMM_DAEMON_SOCKET", sock);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ctl_prints_tables_json_and_errors() {
    let d = Daemon::start();
    let sock = d.sock();
    let sock_arg = sock.to_str().unwrap();

    let out = vmm(None, &["--socket", sock_arg, "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "ID      PID  STATE    POOL     MEM     RSS  SWAP  ADJ  BADNESS  SCORE  BALLOON\n\
         web-1  4321  running  -     256MiB  100MiB  0MiB    0    25856      4        -\n"
    );

    // The socket from the environment; --json after the command.
    let out = vmm(Some(&sock), &["get", "web-1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let vm: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(vm["vcpus"], 2);

    let out = vmm(Some(&sock), &["events"]);
    assert_eq!(
        text(&out.stdout),
        "1970-01-01T00:00:00.000Z  #1  vm_created vm=web-1 pid=4321 mem=256MiB oom_score_adj=0 \
         pool=- numa_nodes=-\n"
    );
    // The daemon has nothing to follow: the stream ends at once.
    let out = vmm(Some(&sock), &["events", "--follow"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");

    assert_eq!(text(&vmm(Some(&sock), &["metrics"]).stdout), "vmm_vms 1\n");

    // The daemon's fault_message, exit status 1.
    let out = vmm(Some(&sock), &["get", "db-9"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stderr), "vmm ctl: no VM 'db-9' (HTTP 404)\n");
    assert!(out.stdout.is_empty());

    // No daemon there.
    let out = vmm(None, &["--socket", "/nonexistent/daemon.sock", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("vmm ctl: cannot connect to /nonexistent/daemon.sock"),
        "{}",
        text(&out.stderr)
    );
}
