//! The API over a real Unix socket, against a fake backend that records
//! every call it gets.

use std::fs;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// A VM that records calls and enforces the state rules a real one has.
#[derive(Default)]
struct FakeVm {
    calls: Mutex<Vec<String>>,
    started: Mutex<bool>,
    balloon: Mutex<Option<BalloonConfig>>,
    vsock: Mutex<Option<VsockConfig>>,
}

impl FakeVm {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits (at most 5 s) until `start_answered` was called: the server
    /// calls it once InstanceStart's answer is sent, so a client may get
    /// the answer, and send its next request, before it runs.
    fn wait_start_answered(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.calls().iter().any(|c| c == "start_answered") {
            assert!(Instant::now() < deadline, "{:?}", self.calls());
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn balloon_config(&self) -> Result<BalloonConfig, ApiError> {
        self.balloon
            .lock()
            .unwrap()
            .ok_or(ApiError::BalloonNotConfigured)
    }
}

impl VmBackend for FakeVm {
    fn instance_info(&self) -> InstanceInfo {
        self.record("instance_info".into());
        InstanceInfo {
            id: "fake".into(),
            state: InstanceState::NotStarted,
            vmm_version: "0".into(),
            app_name: "fake".into(),
        }
    }

    fn patch_vm(&self, update: VmStateUpdate) -> Result<(), ApiError> {
        self.record(format!("patch_vm {update:?}"));
        Ok(())
    }

    fn vm_config(&self) -> FullVmConfig {
        self.record("vm_config".into());
        FullVmConfig::default()
    }

    fn put_boot_source(&self, source: BootSource) -> Result<(), ApiError> {
        self.record(format!("put_boot_source {source:?}"));
        Ok(())
    }

    fn machine_config(&self) -> MachineConfig {
        self.record("machine_config".into());
        MachineConfig::default()
    }

    fn put_machine_config(&self, config: MachineConfig) -> Result<(), ApiError> {
        self.record(format!("put_machine_config {config:?}"));
        Ok(())
    }

    fn patch_machine_config(&self, update: MachineConfigUpdate) -> Result<(), ApiError> {
        self.record(format!("patch_machine_config {update:?}"));
        Ok(())
    }

    fn put_logger(&self, config: LoggerConfig) -> Result<(), ApiError> {
        self.record(format!("put_logger {config:?}"));
        Ok(())
    }

    fn put_metrics(&self, config: MetricsConfig) -> Result<(), ApiError> {
        self.record(format!("put_metrics {config:?}"));
        Ok(())
    }

    fn flush_metrics(&self) -> Result<(), ApiError> {
        self.record("flush_metrics".into());
        Ok(())
    }

    fn start_answered(&self) {
        self.record("start_answered".into());
    }

    fn release_memory(&self) -> Result<MemoryReleased, ApiError> {
        self.record("release_memory".into());
        if !*self.started.lock().unwrap() {
            return Err(ApiError::Conflict("the VM is not started yet".into()));
        }
        Ok(MemoryReleased {
            released_bytes: 250 << 20,
            vmm_rss_before_bytes: 260 << 20,
            vmm_rss_after_bytes: 10 << 20,
            guest_ram_bytes: 256 << 20,
            regions: 1,
            threads: 2,
            madvise_calls: 128,
            stop_vcpus_us: 50,
            madvise_us: 20_000,
            elapsed_us: 20_100,
        })
    }

    fn end_after_release(&self) {
        self.record("end_after_release".into());
    }

    fn balloon_metrics(&self) -> Result<serde_json::Value, ApiError> {
        self.record("balloon_metrics".into());
        Ok(serde_json::json!({ "inflate_pages": 7, "rejections": { "pfn_outside_ram": 1 } }))
    }

    fn vm_info(&self) -> VmInfo {
        self.record("vm_info".into());
        VmInfo {
            state: if *self.started.lock().unwrap() {
                VmState::Running
            } else {
                VmState::NotStarted
            },
            vcpus: 1,
            mem_size_mib: 128,
            guest_ram_bytes: 128 << 20,
            guest_ram_resident_bytes: 3 << 20,
            vmm_rss_bytes: 7 << 20,
            vmm_swap_bytes: 0,
            vmm_page_tables_bytes: 40960,
        }
    }

    fn start(&self) -> Result<(), ApiError> {
        self.record("start".into());
        let mut started = self.started.lock().unwrap();
        if *started {
            return Err(ApiError::Conflict("the VM is already running".into()));
        }
        *started = true;
        Ok(())
    }

    fn put_balloon(&self, config: BalloonConfig) -> Result<(), ApiError> {
        self.record(format!("put_balloon {config:?}"));
        if *self.started.lock().unwrap() {
            return Err(ApiError::Conflict(
                "the balloon can only be configured before InstanceStart".into(),
            ));
        }
        if config.amount_mib > 128 {
            return Err(ApiError::BadRequest(format!(
                "amount_mib {} is larger than guest RAM (128 MiB)",
                config.amount_mib
            )));
        }
        *self.balloon.lock().unwrap() = Some(config);
        Ok(())
    }

    fn patch_balloon(&self, update: BalloonUpdate) -> Result<(), ApiError> {
        self.record(format!("patch_balloon {update:?}"));
        let mut balloon = self.balloon.lock().unwrap();
        let config = balloon.as_mut().ok_or(ApiError::BalloonNotConfigured)?;
        config.amount_mib = update.amount_mib;
        Ok(())
    }

    fn balloon(&self) -> Result<BalloonInfo, ApiError> {
        self.record("balloon".into());
        let c = self.balloon_config()?;
        Ok(BalloonInfo {
            amount_mib: c.amount_mib,
            deflate_on_oom: c.deflate_on_oom,
            stats_polling_interval_s: c.stats_polling_interval_s,
            free_page_reporting: c.free_page_reporting,
            target_pages: c.amount_mib * 256,
            actual_pages: 256,
            target_mib: c.amount_mib,
            actual_mib: 1,
        })
    }

    fn balloon_stats(&self) -> Result<BalloonStats, ApiError> {
        self.record("balloon_stats".into());
        let c = self.balloon_config()?;
        if c.stats_polling_interval_s == 0 {
            return Err(ApiError::Conflict(
                "balloon statistics are disabled (stats_polling_interval_s is 0)".into(),
            ));
        }
        Ok(BalloonStats {
            target_pages: c.amount_mib * 256,
            target_mib: c.amount_mib,
            free_memory: Some(100 << 20),
            oom_kills: Some(2),
            age_ms: Some(250),
            ..BalloonStats::default()
        })
    }

    fn patch_balloon_stats(&self, update: BalloonStatsUpdate) -> Result<(), ApiError> {
        self.record(format!("patch_balloon_stats {update:?}"));
        let mut balloon = self.balloon.lock().unwrap();
        let config = balloon.as_mut().ok_or(ApiError::BalloonNotConfigured)?;
        config.stats_polling_interval_s = update.stats_polling_interval_s;
        Ok(())
    }

    fn put_vsock(&self, config: VsockConfig) -> Result<(), ApiError> {
        self.record(format!(
            "put_vsock {} {}",
            config.guest_cid, config.uds_path
        ));
        if *self.started.lock().unwrap() {
            return Err(ApiError::Conflict(
                "the vsock device can only be configured before InstanceStart".into(),
            ));
        }
        if config.guest_cid < 3 {
            return Err(ApiError::BadRequest(format!(
                "guest_cid {} is reserved",
                config.guest_cid
            )));
        }
        *self.vsock.lock().unwrap() = Some(config);
        Ok(())
    }

    fn vsock(&self) -> Result<VsockInfo, ApiError> {
        self.record("vsock".into());
        let c = self
            .vsock
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| ApiError::NotFound("the VM has no vsock device".into()))?;
        Ok(VsockInfo {
            guest_cid: c.guest_cid,
            uds_path: c.uds_path,
            connections: 2,
            activated: true,
        })
    }

    fn vsock_metrics(&self) -> Result<serde_json::Value, ApiError> {
        self.record("vsock_metrics".into());
        Ok(serde_json::json!({ "connections": 2, "rejections": { "wrong_src_cid": 1 } }))
    }
}

/// A backend whose every call panics.
struct PanickyVm;

impl VmBackend for PanickyVm {
    fn instance_info(&self) -> InstanceInfo {
        unreachable!()
    }
    fn patch_vm(&self, _: VmStateUpdate) -> Result<(), ApiError> {
        unreachable!()
    }
    fn vm_config(&self) -> FullVmConfig {
        unreachable!()
    }
    fn put_boot_source(&self, _: BootSource) -> Result<(), ApiError> {
        unreachable!()
    }
    fn machine_config(&self) -> MachineConfig {
        unreachable!()
    }
    fn put_machine_config(&self, _: MachineConfig) -> Result<(), ApiError> {
        unreachable!()
    }
    fn patch_machine_config(&self, _: MachineConfigUpdate) -> Result<(), ApiError> {
        unreachable!()
    }
    fn put_logger(&self, _: LoggerConfig) -> Result<(), ApiError> {
        unreachable!()
    }
    fn put_metrics(&self, _: MetricsConfig) -> Result<(), ApiError> {
        unreachable!()
    }
    fn flush_metrics(&self) -> Result<(), ApiError> {
        unreachable!()
    }
    fn start_answered(&self) {}
    fn vm_info(&self) -> VmInfo {
        panic!("vm_info exploded")
    }
    fn start(&self) -> Result<(), ApiError> {
        panic!("start exploded")
    }
    fn put_balloon(&self, _: BalloonConfig) -> Result<(), ApiError> {
        unreachable!()
    }
    fn patch_balloon(&self, _: BalloonUpdate) -> Result<(), ApiError> {
        unreachable!()
    }
    fn balloon(&self) -> Result<BalloonInfo, ApiError> {
        unreachable!()
    }
    fn balloon_stats(&self) -> Result<BalloonStats, ApiError> {
        unreachable!()
    }
    fn patch_balloon_stats(&self, _: BalloonStatsUpdate) -> Result<(), ApiError> {
        unreachable!()
    }
    fn balloon_metrics(&self) -> Result<serde_json::Value, ApiError> {
        unreachable!()
    }
    fn release_memory(&self) -> Result<MemoryReleased, ApiError> {
        unreachable!()
    }
    fn end_after_release(&self) {
        unreachable!()
    }
    fn put_vsock(&self, _: VsockConfig) -> Result<(), ApiError> {
        unreachable!()
    }
    fn vsock(&self) -> Result<VsockInfo, ApiError> {
        unreachable!()
    }
    fn vsock_metrics(&self) -> Result<serde_json::Value, ApiError> {
        unreachable!()
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmm-api-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("api.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

struct Harness {
    server: Option<ApiServer>,
    vm: Arc<FakeVm>,
    path: PathBuf,
    _dir: TempDir,
}

fn short_limits() -> ApiLimits {
    ApiLimits {
        request_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
        ..ApiLimits::default()
    }
}

fn harness_with(limits: ApiLimits) -> Harness {
    let dir = TempDir::new();
    let path = dir.sock();
    let vm = Arc::new(FakeVm::default());
    let server = ApiServer::start_with_limits(&path, vm.clone(), limits).unwrap();
    Harness {
        server: Some(server),
        vm,
        path,
        _dir: dir,
    }
}

fn harness() -> Harness {
    harness_with(short_limits())
}

/// One parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn parse(raw: &[u8]) -> Option<Reply> {
        let text = String::from_utf8(raw.to_vec()).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some(Reply {
            status,
            head: head.to_string(),
            body: body.to_string(),
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    fn fault(&self) -> String {
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {:?}", self.body))
            .to_string()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

fn connect(path: &Path) -> UnixStream {
    let stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends raw bytes, half-closes, and reads everything the server says.
fn exchange_raw(path: &Path, raw: &[u8]) -> Vec<u8> {
    let mut stream = connect(path);
    // The server may answer and close before reading everything.
    let _ = stream.write_all(raw);
    let _ = stream.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    out
}

fn exchange(path: &Path, raw: &[u8]) -> Reply {
    let out = exchange_raw(path, raw);
    Reply::parse(&out)
        .unwrap_or_else(|| panic!("not an HTTP response: {:?}", String::from_utf8_lossy(&out)))
}

fn request_bytes(method: &str, target: &str, body: Option<&str>) -> Vec<u8> {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(body) = body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    } else {
        raw.push_str("\r\n");
    }
    raw.into_bytes()
}

fn send(path: &Path, method: &str, target: &str, body: Option<&str>) -> Reply {
    exchange(path, &request_bytes(method, target, body))
}

const BALLOON: &str = r#"{"amount_mib": 64, "deflate_on_oom": true, "stats_polling_interval_s": 1, "free_page_reporting": true}"#;

#[test]
fn every_route_works() {
    let h = harness();
    let p = &h.path;

    let r = send(p, "GET", "/vm", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type").as_deref(),
        Some("application/json")
    );
    let vm: VmInfo = serde_json::from_str(&r.body).unwrap();
    assert_eq!(vm.state, VmState::NotStarted);
    assert_eq!(r.json()["state"], "NotStarted");
    assert_eq!(r.json()["vmm_page_tables_bytes"], 40960);

    let r = send(p, "PUT", "/balloon", Some(BALLOON));
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    assert_eq!(r.header("Content-Length"), None);

    let r = send(
        p,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(r.status, 204);
    h.vm.wait_start_answered();
    assert_eq!(send(p, "GET", "/vm", None).json()["state"], "Running");

    assert_eq!(
        send(p, "PATCH", "/balloon", Some(r#"{"amount_mib": 32}"#)).status,
        204
    );

    let r = send(p, "GET", "/balloon", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({
            "amount_mib": 32, "deflate_on_oom": true, "stats_polling_interval_s": 1,
            "free_page_reporting": true, "target_pages": 8192, "actual_pages": 256,
            "target_mib": 32, "actual_mib": 1
        })
    );

    let r = send(p, "GET", "/balloon/statistics", None);
    assert_eq!(r.status, 200);
    // Statistics the guest never sent are absent, not zero.
    assert_eq!(
        r.json(),
        serde_json::json!({
            "target_pages": 8192, "actual_pages": 0, "target_mib": 32, "actual_mib": 0,
            "free_memory": 104857600, "oom_kills": 2, "age_ms": 250
        })
    );

    let r = send(
        p,
        "PATCH",
        "/balloon/statistics",
        Some(r#"{"stats_polling_interval_s": 5}"#),
    );
    assert_eq!(r.status, 204);

    assert_eq!(
        h.vm.calls(),
        [
            "vm_info",
            "put_balloon BalloonConfig { amount_mib: 64, deflate_on_oom: true, stats_polling_interval_s: 1, free_page_reporting: true }",
            "start",
            "start_answered",
            "vm_info",
            "patch_balloon BalloonUpdate { amount_mib: 32 }",
            "balloon",
            "balloon_stats",
            "patch_balloon_stats BalloonStatsUpdate { stats_polling_interval_s: 5 }",
        ]
    );
}

#[test]
fn vsock_routes_work() {
    let h = harness();
    let p = &h.path;
    let r = send(p, "GET", "/vsock", None);
    assert_eq!(
        (r.status, r.fault()),
        (404, "the VM has no vsock device".into())
    );
    let r = send(
        p,
        "PUT",
        "/vsock",
        Some(r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock"}"#),
    );
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let r = send(
        p,
        "PUT",
        "/vsock",
        Some(r#"{"guest_cid": 2, "uds_path": "v"}"#),
    );
    assert_eq!(
        (r.status, r.fault()),
        (400, "guest_cid 2 is reserved".into())
    );
    let r = send(p, "PUT", "/vsock", Some(r#"{"guest_cid": 3, "path": "v"}"#));
    assert_eq!(r.status, 400);
    assert!(
        r.fault().starts_with("path: unknown field `path`"),
        "{}",
        r.fault()
    );
    let r = send(p, "GET", "/vsock", None);
    assert_eq!(
        r.json(),
        serde_json::json!({"guest_cid": 3, "uds_path": "/tmp/v.sock", "connections": 2, "activated": true})
    );
    let r = send(p, "GET", "/vsock/metrics", None);
    assert_eq!(r.json()["rejections"]["wrong_src_cid"], 1);
    send(
        p,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    h.vm.wait_start_answered();
    let r = send(
        p,
        "PUT",
        "/vsock",
        Some(r#"{"guest_cid": 4, "uds_path": "w"}"#),
    );
    assert_eq!(r.status, 409);
    assert_eq!(send(p, "DELETE", "/vsock", None).status, 405);
    assert_eq!(
        h.vm.calls(),
        [
            "vsock",
            "put_vsock 3 /tmp/v.sock",
            "put_vsock 2 v",
            "vsock",
            "vsock_metrics",
            "start",
            "start_answered",
            "put_vsock 4 w",
        ]
    );
}

#[test]
fn backend_errors_keep_their_status_and_message() {
    let h = harness();
    let p = &h.path;
    let r = send(p, "GET", "/balloon", None);
    assert_eq!(r.status, 404);
    assert!(r.fault().contains("no balloon device"), "{}", r.fault());
    let r = send(
        p,
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 4096, "deflate_on_oom": false}"#),
    );
    assert_eq!(
        (r.status, r.fault().as_str()),
        (400, "amount_mib 4096 is larger than guest RAM (128 MiB)")
    );
    assert_eq!(
        send(
            p,
            "PUT",
            "/balloon",
            Some(r#"{"amount_mib": 1, "deflate_on_oom": false}"#)
        )
        .status,
        204
    );
    let r = send(p, "GET", "/balloon/statistics", None);
    assert_eq!(r.status, 409);
    assert!(r.fault().contains("statistics are disabled"));
    assert_eq!(
        send(
            p,
            "PUT",
            "/actions",
            Some(r#"{"action_type":"InstanceStart"}"#)
        )
        .status,
        204
    );
    let r = send(
        p,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
    );
    assert_eq!(
        (r.status, r.fault().as_str()),
        (409, "the VM is already running")
    );
    let r = send(p, "PUT", "/balloon", Some(BALLOON));
    assert_eq!(r.status, 409);
    assert!(r.fault().contains("before InstanceStart"));
}

/// Bad requests of every kind: the right status, a fault_message that
/// says what is wrong, and no backend call.
#[test]
fn bad_requests_never_reach_the_backend() {
    let h = harness();
    let p = &h.path;
    let long_head = format!("GET /vm HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(9000));
    let big_body = format!(
        r#"{{"amount_mib": 1, "deflate_on_oom": true, "pad": "{}"}}"#,
        "x".repeat(100_000)
    );
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (request_bytes("PUT", "/balloon", Some(r#"{"amount_mib": 1,"#)), 400, "EOF while parsing a value at line 1 column 17"),
        (
            request_bytes("PUT", "/balloon", Some(r#"{"amount_mib":"x","deflate_on_oom":true}"#)),
            400,
            r#"amount_mib: invalid type: string "x", expected u32 at line 1 column 17"#,
        ),
        (
            request_bytes("PUT", "/balloon", Some(r#"{"amount_mib":1,"deflate_on_oom":true,"colour":"red"}"#)),
            400,
            "colour: unknown field `colour`, expected one of `amount_mib`, `deflate_on_oom`",
        ),
        (request_bytes("PUT", "/balloon", Some(r#"{"amount_mib":1}"#)), 400, "missing field `deflate_on_oom`"),
        (request_bytes("PUT", "/balloon", None), 400, "PUT /balloon needs a JSON request body"),
        (request_bytes("PATCH", "/balloon", Some("[1]")), 400, "the request body must be a JSON object"),
        (request_bytes("PATCH", "/balloon", Some("null")), 400, "the request body must be a JSON object"),
        (request_bytes("PUT", "/actions", Some(r#"{"action_type":"Reboot"}"#)), 400, "action_type: unknown variant `Reboot`"),
        (request_bytes("GET", "/vm", Some("{}")), 400, "GET /vm takes no request body"),
        (request_bytes("GET", "/nope", None), 404, "no such resource: /nope"),
        (request_bytes("GET", "/machine-config/", None), 404, "no such resource: /machine-config/"),
        (request_bytes("PUT", "/snapshot/create", Some("{}")), 400, "/snapshot/create: snapshots are not supported"),
        (request_bytes("PUT", "/drives/rootfs", Some("{}")), 400, "missing field `drive_id`"),
        (request_bytes("PATCH", "/machine-config", Some("{}")), 400, "PATCH /machine-config needs at least one field"),
        (request_bytes("PUT", "/machine-config", Some(r#"{"vcpu_count":1}"#)), 400, "missing field `mem_size_mib`"),
        (request_bytes("PUT", "/machine-config", Some(r#"{"vcpu_count":1,"mem_size_mib":64,"huge_pages":"1G"}"#)), 400, "huge_pages: unknown variant `1G`"),
        (request_bytes("PATCH", "/vm", Some(r#"{"state":"Stopped"}"#)), 400, "state: unknown variant `Stopped`, expected `Paused` or `Resumed`"),
        (request_bytes("PUT", "/actions", Some(r#"{"action_type":"SendCtrlAltDel"}"#)), 400, "SendCtrlAltDel is not supported"),
        (request_bytes("PUT", "/boot-source", Some(r#"{"kernel_image_path":"/k","bootargs":""}"#)), 400, "bootargs: unknown field `bootargs`"),
        (request_bytes("PUT", "/metrics", Some("{}")), 400, "missing field `metrics_path`"),
        (request_bytes("DELETE", "/vm", None), 405, "method DELETE is not allowed on /vm (allowed: GET, PATCH)"),
        (request_bytes("DELETE", "/balloon", None), 405, "method DELETE is not allowed on /balloon (allowed: GET, PUT, PATCH)"),
        (request_bytes("POST", "/actions", Some("{}")), 405, "method POST is not allowed on /actions (allowed: PUT)"),
        (request_bytes("PUT", "/balloon", Some(&big_body)), 413, "larger than the limit of 16384 bytes"),
        (
            b"PATCH /balloon HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 17\r\n\r\n{\"amount_mib\": 1}".to_vec(),
            415,
            "unsupported Content-Type \"application/x-www-form-urlencoded\"",
        ),
        (
            b"PATCH /balloon HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11\r\n{\"amount_mib\": 1}\r\n0\r\n\r\n".to_vec(),
            411,
            "Transfer-Encoding is not supported",
        ),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello".to_vec(), 400, "malformed HTTP request"),
        (b"hello there\r\n\r\n".to_vec(), 400, "malformed HTTP request"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 400, "malformed HTTP request: invalid HTTP version"),
        (long_head.into_bytes(), 431, "request head is larger than 8192 bytes"),
        (b"GET /vm HTTP/1.1\r\nContent-Length: 1x\r\n\r\n".to_vec(), 400, "invalid Content-Length \"1x\""),
    ];
    for (raw, status, fault) in cases {
        let what = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
        let r = exchange(p, &raw);
        assert_eq!(r.status, status, "{what}: {r:?}");
        assert!(
            r.fault().contains(fault),
            "{what}: {:?} lacks {fault:?}",
            r.fault()
        );
        if status == 405 {
            assert!(r.header("Allow").is_some(), "{what}: no Allow header");
        }
    }
    assert_eq!(h.vm.calls(), Vec::<String>::new());
}

/// `ReleaseMemory` answers with what was released, and only once that
/// answer is written does the VMM get told to end; before the VM runs it
/// is a conflict that changes nothing.
#[test]
fn release_memory_answers_first_then_ends_the_vmm() {
    let h = harness();
    let p = &h.path;
    let release = r#"{"action_type": "ReleaseMemory"}"#;
    let r = send(p, "PUT", "/actions", Some(release));
    assert_eq!(r.status, 409, "{r:?}");
    assert_eq!(r.fault(), "the VM is not started yet");
    assert_eq!(h.vm.calls(), ["release_memory"]);

    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(send(p, "PUT", "/actions", Some(start)).status, 204);
    let r = send(p, "PUT", "/actions", Some(release));
    assert_eq!(r.status, 200, "{r:?}");
    let body: MemoryReleased = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body.released_bytes, 250 << 20);
    assert_eq!(r.json()["madvise_us"], 20_000);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.vm.calls().len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", h.vm.calls());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        h.vm.calls(),
        [
            "release_memory",
            "start",
            "start_answered",
            "release_memory",
            "end_after_release"
        ]
    );
}

#[test]
fn idle_and_slow_clients_do_not_block_others() {
    let h = harness_with(ApiLimits {
        request_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        ..ApiLimits::default()
    });
    let p = &h.path;
    // One connects and says nothing; one sends half a request.
    let mut idle = connect(p);
    let mut slow = connect(p);
    slow.write_all(b"PUT /balloon HTTP/1.1\r\nContent-Length: 50\r\n\r\n{\"amount")
        .unwrap();

    // Answered long before either of them times out.
    let t = Instant::now();
    assert_eq!(send(p, "GET", "/vm", None).status, 200);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    let mut out = Vec::new();
    slow.read_to_end(&mut out).unwrap();
    let r = Reply::parse(&out).unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(r.fault(), "the request body did not arrive within 1000 ms");

    out.clear();
    idle.read_to_end(&mut out).unwrap();
    let r = Reply::parse(&out).unwrap();
    assert_eq!(r.status, 408);
    assert_eq!(r.fault(), "no request arrived within 2000 ms of connecting");
    assert_eq!(h.vm.calls(), ["vm_info"]);
}

#[test]
fn too_many_connections_get_503_and_the_server_recovers() {
    let h = harness_with(ApiLimits {
        max_connections: 2,
        ..short_limits()
    });
    let p = &h.path;
    // Accepted in order, so these two hold both places.
    let a = connect(p);
    let b = connect(p);
    let r = send(p, "GET", "/vm", None);
    assert_eq!(r.status, 503);
    assert_eq!(
        r.fault(),
        "too many open API connections (limit 2); retry later"
    );
    drop((a, b));
    let deadline = Instant::now() + Duration::from_secs(5);
    while send(p, "GET", "/vm", None).status != 200 {
        assert!(Instant::now() < deadline, "the server did not recover");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn keep_alive_pipelining_and_expect_continue() {
    let h = harness();
    let p = &h.path;
    let mut s = connect(p);
    // Two pipelined requests in one write, the first keep-alive.
    let mut raw = b"GET /vm HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    raw.extend(request_bytes("PUT", "/balloon", Some(BALLOON)));
    s.write_all(&raw).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("}HTTP/1.1 204 No Content\r\n"), "{text}");

    // Expect: 100-continue gets the interim answer before the body.
    let body = r#"{"amount_mib": 8}"#;
    let mut s = connect(p);
    write!(
        s,
        "PATCH /balloon HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert_eq!(Reply::parse(&out).unwrap().status, 204);
    assert_eq!(h.vm.calls().len(), 3);
}

#[test]
fn a_panicking_backend_gets_500_and_the_server_lives_on() {
    let dir = TempDir::new();
    let server =
        ApiServer::start_with_limits(dir.sock(), Arc::new(PanickyVm), short_limits()).unwrap();
    for _ in 0..2 {
        let r = send(server.path(), "GET", "/vm", None);
        assert_eq!(r.status, 500);
        assert_eq!(r.fault(), "the VMM panicked while handling the request");
    }
    assert_eq!(send(server.path(), "GET", "/nope", None).status, 404);
}

/// Random bytes and randomly damaged requests: every answer is HTTP with a
/// status and a fault_message for errors, and the server keeps serving.
#[test]
fn garbage_never_breaks_the_server() {
    let h = harness();
    let p = &h.path;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let valid = request_bytes(
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 1, "deflate_on_oom": true}"#),
    );
    for round in 0..300 {
        let raw: Vec<u8> = if round % 2 == 0 {
            (0..next() % 600).map(|_| next() as u8).collect()
        } else {
            let mut raw = valid.clone();
            for _ in 0..1 + next() % 3 {
                let i = (next() as usize) % raw.len();
                raw[i] = next() as u8;
            }
            raw
        };
        let out = exchange_raw(p, &raw);
        if out.is_empty() {
            continue; // an incomplete request followed by EOF: nothing to answer
        }
        let r = Reply::parse(&out)
            .unwrap_or_else(|| panic!("not HTTP: {:?}", String::from_utf8_lossy(&out)));
        assert!(matches!(r.status, 204 | 400..=499), "{r:?} for {raw:?}");
        if r.status != 204 {
            assert!(!r.fault().is_empty());
        }
    }
    assert!(h.vm.calls().iter().all(|c| c.starts_with("put_balloon")));
    assert_eq!(send(p, "GET", "/vm", None).status, 200);
}

#[test]
fn socket_is_private_and_removed_on_shutdown() {
    let mut h = harness();
    let meta = fs::symlink_metadata(&h.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // Shutdown is prompt even with a client connected and idle.
    let _idle = connect(&h.path);
    let t = Instant::now();
    h.server.take().unwrap().shutdown();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    assert!(!h.path.exists());
}

#[test]
fn a_replaced_socket_file_is_not_removed() {
    let mut h = harness();
    fs::remove_file(&h.path).unwrap();
    fs::write(&h.path, "someone else's").unwrap();
    drop(h.server.take());
    assert_eq!(fs::read_to_string(&h.path).unwrap(), "someone else's");
}

#[test]
fn stale_socket_is_replaced_live_one_and_other_files_refused() {
    let dir = TempDir::new();
    let path = dir.sock();
    let vm: Arc<dyn VmBackend> = Arc::new(FakeVm::default());

    // Stale: the file of a listener that is gone.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let server = ApiServer::start(&path, vm.clone()).unwrap();
    assert_eq!(send(&path, "GET", "/vm", None).status, 200);

    // Live: ours, then someone else's.
    let err = ApiServer::start(&path, vm.clone()).unwrap_err();
    assert!(matches!(err, ApiServerError::SocketInUse(_)), "{err}");
    server.shutdown();
    let other = UnixListener::bind(&path).unwrap();
    let err = ApiServer::start(&path, vm.clone()).unwrap_err();
    assert!(err.to_string().contains("is in use"), "{err}");
    drop(other);
    fs::remove_file(&path).unwrap();

    // Not a socket: left alone.
    fs::write(&path, "data").unwrap();
    let err = ApiServer::start(&path, vm.clone()).unwrap_err();
    assert!(matches!(err, ApiServerError::NotASocket(_)), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "data");

    let long = dir.0.join("x".repeat(120));
    let err = ApiServer::start(&long, vm).unwrap_err();
    assert!(matches!(err, ApiServerError::BadPath(..)), "{err}");
}

/// `vmm/api/openapi.yaml` names every route, body field and error status
/// the server has.
#[test]
fn openapi_document_covers_every_route_field_and_status() {
    let spec = include_str!("../../api/openapi.yaml");
    for path in [
        "/",
        "/version",
        "/vm/config",
        "/boot-source",
        "/machine-config",
        "/logger",
        "/metrics",
        "/vm",
        "/actions",
        "/balloon",
        "/balloon/statistics",
        "/balloon/metrics",
        "/vsock",
        "/vsock/metrics",
        "/network-interfaces/{iface_id}/metrics",
    ] {
        assert!(spec.contains(&format!("\n  {path}:\n")), "{path}");
    }
    let full_stats = BalloonStats {
        swap_in: Some(0),
        swap_out: Some(0),
        major_faults: Some(0),
        minor_faults: Some(0),
        free_memory: Some(0),
        total_memory: Some(0),
        available_memory: Some(0),
        disk_caches: Some(0),
        hugetlb_allocations: Some(0),
        hugetlb_failures: Some(0),
        oom_kills: Some(0),
        alloc_stalls: Some(0),
        async_scans: Some(0),
        direct_scans: Some(0),
        async_reclaims: Some(0),
        direct_reclaims: Some(0),
        age_ms: Some(0),
        ..BalloonStats::default()
    };
    let config = BalloonConfig {
        amount_mib: 0,
        deflate_on_oom: false,
        stats_polling_interval_s: 0,
        free_page_reporting: false,
    };
    let bodies = [
        serde_json::to_value(FakeVm::default().vm_info()).unwrap(),
        serde_json::to_value(full_stats).unwrap(),
        serde_json::to_value(config).unwrap(),
        serde_json::to_value(BalloonStatsUpdate {
            stats_polling_interval_s: 0,
        })
        .unwrap(),
        serde_json::json!({"action_type": "InstanceStart"}),
        serde_json::to_value(FakeVm::default().instance_info()).unwrap(),
        serde_json::to_value(VersionInfo {
            firecracker_version: "0".into(),
        })
        .unwrap(),
        serde_json::to_value(BootSource {
            kernel_image_path: Some("k".into()),
            initrd_path: Some("i".into()),
            boot_args: Some("a".into()),
        })
        .unwrap(),
        serde_json::to_value(MachineConfig {
            cpu_template: Some("None".into()),
            ..MachineConfig::default()
        })
        .unwrap(),
        serde_json::to_value(LoggerConfig {
            log_path: Some("l".into()),
            level: Some("Info".into()),
            show_level: Some(true),
            show_log_origin: Some(true),
            module: Some("m".into()),
        })
        .unwrap(),
        serde_json::to_value(MetricsConfig {
            metrics_path: "m".into(),
        })
        .unwrap(),
        serde_json::to_value(VmStateUpdate {
            state: RequestedState::Paused,
        })
        .unwrap(),
        serde_json::to_value(FullVmConfig {
            boot_source: Some(BootSource::default()),
            machine_config: Some(MachineConfig::default()),
            logger: Some(LoggerConfig::default()),
            metrics: Some(MetricsConfig {
                metrics_path: "m".into(),
            }),
            ..FullVmConfig::default()
        })
        .unwrap(),
        serde_json::to_value(VsockConfig {
            guest_cid: 3,
            uds_path: "v".into(),
            vsock_id: Some("v".into()),
        })
        .unwrap(),
        serde_json::to_value(VsockInfo {
            guest_cid: 3,
            uds_path: "v".into(),
            connections: 0,
            activated: false,
        })
        .unwrap(),
        serde_json::to_value(MemoryReleased {
            released_bytes: 0,
            vmm_rss_before_bytes: 0,
            vmm_rss_after_bytes: 0,
            guest_ram_bytes: 0,
            regions: 0,
            threads: 0,
            madvise_calls: 0,
            stop_vcpus_us: 0,
            madvise_us: 0,
            elapsed_us: 0,
        })
        .unwrap(),
    ];
    for body in bodies {
        for key in body.as_object().unwrap().keys() {
            assert!(spec.contains(&format!("\n        {key}:\n")), "{key}");
        }
    }
    for status in [400, 404, 405, 408, 409, 411, 413, 415, 417, 431, 500, 503] {
        assert!(spec.contains(&format!("\"{status}\":")), "{status}");
    }
}

/// The real backend of `vmm run` ([`crate::control::VmControl`]) behind
/// the server, before boot: nothing here needs a VM.
struct ControlHarness {
    _server: ApiServer,
    control: Arc<crate::control::VmControl>,
    path: PathBuf,
    dir: TempDir,
}

fn control_harness() -> ControlHarness {
    use crate::control::{Boot, StartConfig, VmControl};
    let dir = TempDir::new();
    let path = dir.sock();
    let control = VmControl::new("vm-7".into(), StartConfig::default(), Boot::OnInstanceStart);
    let server = ApiServer::start_with_limits(&path, control.clone(), short_limits()).unwrap();
    ControlHarness {
        _server: server,
        control,
        path,
        dir,
    }
}

const JSON_204: (u16, &str) = (204, "");

fn status_body(r: &Reply) -> (u16, &str) {
    (r.status, r.body.as_str())
}

#[test]
fn firecracker_configuration_routes_before_boot() {
    let h = control_harness();
    let p = &h.path;

    let r = send(p, "GET", "/", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({"id": "vm-7", "state": "Not started",
            "vmm_version": env!("CARGO_PKG_VERSION"), "app_name": "vmm"})
    );
    let r = send(p, "GET", "/version", None);
    assert_eq!(
        r.json(),
        serde_json::json!({"firecracker_version": env!("CARGO_PKG_VERSION")})
    );

    // Firecracker's defaults, in its shape.
    let r = send(p, "GET", "/machine-config", None);
    assert_eq!(
        r.json(),
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 128, "smt": false,
            "track_dirty_pages": false, "huge_pages": "None"})
    );
    let put = |body: &str| send(p, "PUT", "/machine-config", Some(body));
    let r = put(r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "cpu_template": "None"}"#);
    assert_eq!(status_body(&r), JSON_204);
    let r = send(
        p,
        "PATCH",
        "/machine-config",
        Some(r#"{"mem_size_mib": 64}"#),
    );
    assert_eq!(status_body(&r), JSON_204);
    let r = send(p, "GET", "/machine-config", None);
    assert_eq!(
        (
            r.json()["vcpu_count"].clone(),
            r.json()["mem_size_mib"].clone()
        ),
        (2.into(), 64.into())
    );

    // What we cannot do is refused whole, naming the field.
    for (body, fault) in [
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "smt": true}"#,
            "smt: simultaneous multithreading is not supported",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "track_dirty_pages": true}"#,
            "track_dirty_pages: dirty page tracking (for diff snapshots) is not supported",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "T2"}"#,
            "cpu_template: CPU templates are not supported (got \"T2\")",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "2M"}"#,
            "huge_pages: Hugetlbfs2M is not supported",
        ),
        (
            r#"{"vcpu_count": 0, "mem_size_mib": 64}"#,
            "vcpu_count: 0 is out of range (1 to 254)",
        ),
        (
            r#"{"vcpu_count": 1, "mem_size_mib": 4}"#,
            "mem_size_mib: 4 is out of range (8 to 1048576)",
        ),
        (
            r#"{"vcpu_count": 300, "mem_size_mib": 64}"#,
            "vcpu_count: invalid value: integer `300`",
        ),
    ] {
        let r = put(body);
        assert_eq!(r.status, 400, "{body}: {r:?}");
        assert!(r.fault().starts_with(fault), "{body}: {}", r.fault());
    }
    let r = send(p, "GET", "/machine-config", None);
    assert_eq!(
        r.json()["mem_size_mib"],
        64,
        "a refused PUT changed nothing"
    );

    // The balloon must fit the memory, whichever comes first.
    let r = send(
        p,
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 48, "deflate_on_oom": false}"#),
    );
    assert_eq!(r.status, 204);
    let r = send(
        p,
        "PATCH",
        "/machine-config",
        Some(r#"{"mem_size_mib": 32}"#),
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.fault(),
        "mem_size_mib: 32 is smaller than the balloon's amount_mib (48)"
    );

    // Boot source: the files must open.
    let r = send(
        p,
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/nonexistent/vmlinux"}"#),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.fault()
            .starts_with("kernel_image_path: cannot open /nonexistent/vmlinux: No such file"),
        "{}",
        r.fault()
    );
    let kernel = h.dir.0.join("vmlinux");
    fs::write(&kernel, b"not checked until boot").unwrap();
    let body = format!(
        r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"}}"#,
        kernel.display()
    );
    assert_eq!(
        status_body(&send(p, "PUT", "/boot-source", Some(&body))),
        JSON_204
    );

    let r = send(p, "GET", "/vm/config", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({
            "boot-source": {"kernel_image_path": kernel.display().to_string(),
                "boot_args": "console=ttyS0 reboot=k panic=1 pci=off"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 64, "smt": false,
                "track_dirty_pages": false, "huge_pages": "None"},
            "balloon": {"amount_mib": 48, "deflate_on_oom": false,
                "stats_polling_interval_s": 0, "free_page_reporting": false},
            "drives": [],
            "network-interfaces": [],
        })
    );
    // What GET /vm/config gives, a configuration file takes.
    let full = crate::config_file::parse(r.body.as_bytes()).unwrap();
    let again = crate::control::StartConfig::from_file(&full).unwrap();
    assert_eq!(again.full(), full);

    // Only a running VM pauses.
    let r = send(p, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(
        (r.status, r.fault()),
        (
            400,
            "the VM can only be paused or resumed while it runs".into()
        )
    );
}

#[test]
fn logger_and_metrics_take_firecrackers_shapes() {
    let h = control_harness();
    let p = &h.path;
    let flush = r#"{"action_type": "FlushMetrics"}"#;
    let r = send(p, "PUT", "/actions", Some(flush));
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("no metrics file"), "{}", r.fault());

    let metrics = h.dir.0.join("metrics.json");
    let body = format!(r#"{{"metrics_path": "{}"}}"#, metrics.display());
    assert_eq!(
        status_body(&send(p, "PUT", "/metrics", Some(&body))),
        JSON_204
    );
    let r = send(p, "PUT", "/metrics", Some(&body));
    assert_eq!(
        (r.status, r.fault()),
        (
            400,
            "metrics are already configured (PUT /metrics works once)".into()
        )
    );
    assert_eq!(
        status_body(&send(p, "PUT", "/actions", Some(flush))),
        JSON_204
    );
    assert_eq!(
        status_body(&send(p, "PUT", "/actions", Some(flush))),
        JSON_204
    );
    let text = fs::read_to_string(&metrics).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["id"], "vm-7");
    assert_eq!(lines[0]["vm"]["state"], "NotStarted");
    assert_eq!(lines[0]["vm"]["mem_size_mib"], 128);
    assert!(lines[1]["utc_timestamp_ms"].as_u64() >= lines[0]["utc_timestamp_ms"].as_u64());

    for (body, fault) in [
        (r#"{"level": "Chatty"}"#, "level: unknown level \"Chatty\""),
        (
            r#"{"module": "api_server"}"#,
            "module: filtering the log by module is not supported",
        ),
        (
            r#"{"log_path": "/nonexistent/dir/log"}"#,
            "log_path: cannot open /nonexistent/dir/log",
        ),
    ] {
        let r = send(p, "PUT", "/logger", Some(body));
        assert_eq!(r.status, 400, "{body}");
        assert!(r.fault().starts_with(fault), "{body}: {}", r.fault());
    }
    // Firecracker's fields without a path change nothing and are accepted.
    let r = send(
        p,
        "PUT",
        "/logger",
        Some(r#"{"level": "debug", "show_level": true, "show_log_origin": false}"#),
    );
    assert_eq!(status_body(&r), JSON_204);
}

/// `InstanceStart` is answered once the boot is over: with its failure as
/// a 400; afterwards the configuration is closed (400, as Firecracker).
#[test]
fn instance_start_waits_for_the_boot_and_reports_its_failure() {
    let h = control_harness();
    let p = &h.path;
    let r = send(
        p,
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 3, "mem_size_mib": 96}"#),
    );
    assert_eq!(r.status, 204);
    let control = h.control.clone();
    let main_thread = std::thread::spawn(move || {
        let config = control.wait_for_start(|| None::<()>).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        control.set_failed("the kernel is not an ELF".into());
        control.settle(Duration::from_secs(5));
        config
    });
    let t0 = Instant::now();
    let r = send(
        p,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(100),
        "answered before the boot ended"
    );
    assert_eq!(
        (r.status, r.fault()),
        (400, "cannot start the VM: the kernel is not an ELF".into())
    );
    let config = main_thread.join().unwrap();
    assert_eq!((config.vcpus, config.mem_size), (3, 96 << 20));

    for (method, path, body) in [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
        ),
        ("PATCH", "/machine-config", r#"{"vcpu_count": 1}"#),
        ("PUT", "/boot-source", r#"{"boot_args": "x"}"#),
        (
            "PUT",
            "/drives/d",
            r#"{"drive_id": "d", "path_on_host": "/proc/self/exe"}"#,
        ),
    ] {
        let r = send(p, method, path, Some(body));
        assert_eq!(r.status, 400, "{method} {path}");
        assert!(
            r.fault()
                .ends_with("can only be configured before InstanceStart"),
            "{}",
            r.fault()
        );
    }
    let r = send(
        p,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(r.status, 409);
    assert_eq!(
        send(p, "GET", "/machine-config", None).json()["vcpu_count"],
        3
    );
}

/// `PUT /drives/{drive_id}` as Firecracker's clients send it (with its
/// optional fields), before boot: added, replaced by id, shown in
/// `GET /vm/config`; what this device does not do is refused naming the
/// field.
#[test]
fn drives_are_put_before_boot_in_firecrackers_shape() {
    let h = control_harness();
    let p = &h.path;
    let image = h.dir.0.join("root.img");
    fs::write(&image, vec![0u8; 4096]).unwrap();
    let other = h.dir.0.join("data.img");
    fs::write(&other, vec![0u8; 4096]).unwrap();
    let body = |id: &str, path: &Path, extra: &str| {
        format!(
            r#"{{"drive_id": "{id}", "path_on_host": "{}", "is_root_device": true,
                "is_read_only": false{extra}}}"#,
            path.display()
        )
    };
    let put = |id: &str, body: &str| send(p, "PUT", &format!("/drives/{id}"), Some(body));
    // firecracker-python and the getting-started guide send these too.
    let fc =
        r#", "partuuid": null, "cache_type": "Unsafe", "io_engine": "Sync", "rate_limiter": null"#;
    assert_eq!(
        status_body(&put("rootfs", &body("rootfs", &image, fc))),
        JSON_204
    );
    // The same id again replaces it.
    assert_eq!(
        status_body(&put("rootfs", &body("rootfs", &other, ""))),
        JSON_204
    );
    let drives = send(p, "GET", "/vm/config", None).json()["drives"].clone();
    assert_eq!(drives.as_array().unwrap().len(), 1, "{drives}");
    assert_eq!(drives[0]["path_on_host"], other.display().to_string());
    assert_eq!(drives[0]["is_root_device"], true);
    for (id, body, fault) in [
        (
            "a",
            body("b", &image, ""),
            "in the path (\"a\") and in the body (\"b\") differ",
        ),
        (
            "d2",
            body("d2", &image, ""),
            "cannot be the root device: another drive is",
        ),
        (
            "d3",
            body("d3", Path::new("/nonexistent.img"), ""),
            "/nonexistent.img: not a regular file",
        ),
        (
            "d4",
            body("d4", &image, r#", "partuuid": "0eaa91a0-01""#),
            "partuuid:",
        ),
        (
            "d5",
            body("d5", &image, r#", "io_engine": "Async""#),
            "io_engine: \"Async\"",
        ),
        (
            "d6",
            body("d6", &image, r#", "cache_type": "Fast""#),
            "cache_type: \"Fast\"",
        ),
        (
            "d7",
            body(
                "d7",
                &image,
                r#", "rate_limiter": {"bandwidth": {"size": 1}}"#,
            ),
            "rate_limiter:",
        ),
        (
            "d8",
            body("d8", &image, r#", "colour": "red""#),
            "unknown field `colour`",
        ),
    ] {
        let r = put(id, &body);
        assert_eq!(r.status, 400, "{id}: {}", r.body);
        assert!(r.fault().contains(fault), "{id}: {}", r.fault());
    }
    let r = send(
        p,
        "PATCH",
        "/drives/rootfs",
        Some(r#"{"drive_id": "rootfs"}"#),
    );
    assert_eq!(r.status, 400);
    assert!(r.fault().contains("not supported"), "{}", r.fault());
    // A second, non-root drive is fine.
    let data = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}"}}"#,
        image.display()
    );
    assert_eq!(status_body(&put("data", &data)), JSON_204);
    let drives = send(p, "GET", "/vm/config", None).json()["drives"].clone();
    assert_eq!(drives.as_array().unwrap().len(), 2, "{drives}");
}

/// `PUT /network-interfaces/{iface_id}` as Firecracker's clients send it,
/// before boot: added, replaced by id, shown in `GET /vm/config`; rate
/// limiters and bad MACs refused naming the field.
#[test]
fn network_interfaces_are_put_before_boot_in_firecrackers_shape() {
    let h = control_harness();
    let p = &h.path;
    let put =
        |id: &str, body: &str| send(p, "PUT", &format!("/network-interfaces/{id}"), Some(body));
    let fc = r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02",
                 "rx_rate_limiter": null, "tx_rate_limiter": null}"#;
    assert_eq!(status_body(&put("eth0", fc)), JSON_204);
    let again = r#"{"iface_id": "eth0", "host_dev_name": "tap1"}"#;
    assert_eq!(status_body(&put("eth0", again)), JSON_204);
    let nets = send(p, "GET", "/vm/config", None).json()["network-interfaces"].clone();
    assert_eq!(
        nets,
        serde_json::json!([{"iface_id": "eth0", "host_dev_name": "tap1"}]),
        "replaced by id"
    );
    for (id, body, fault) in [
        (
            "eth1",
            r#"{"iface_id": "eth2", "host_dev_name": "t"}"#,
            "differ",
        ),
        (
            "eth1",
            r#"{"iface_id": "eth1", "host_dev_name": "t", "rx_rate_limiter": {"ops": {"size": 1}}}"#,
            "rx_rate_limiter: network rate limiting is not supported",
        ),
        (
            "eth1",
            r#"{"iface_id": "eth1", "host_dev_name": "t", "guest_mac": "01:00:5e:00:00:01"}"#,
            "multicast",
        ),
        (
            "eth1",
            r#"{"iface_id": "eth1", "host_dev_name": "t", "mtu": 9000}"#,
            "unknown field `mtu`",
        ),
    ] {
        let r = put(id, body);
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.fault().contains(fault), "{body}: {}", r.fault());
    }
    let r = send(
        p,
        "PATCH",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id": "eth0"}"#),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn a_configuration_file_is_checked_like_the_api() {
    use crate::control::StartConfig;
    let from = |text: &str| {
        StartConfig::from_file(&crate::config_file::parse(text.as_bytes()).unwrap())
            .map_err(|e| e.to_string())
    };
    let c = from(r#"{"boot-source": {"boot_args": "tiny.exit=3"}, "machine-config": {"vcpu_count": 2, "mem_size_mib": 64}}"#).unwrap();
    assert_eq!(
        (c.kernel, c.cmdline.as_str(), c.vcpus, c.mem_size),
        (None, "tiny.exit=3", 2, 64 << 20)
    );
    // Drives as `--drive`: checked when the device is made.
    let c = from(r#"{"drives": [{"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true, "is_read_only": false}]}"#).unwrap();
    assert_eq!(c.drives.len(), 1);
    assert!(c.drives[0].is_root_device);
    // Network interfaces as `--net`.
    let c = from(r#"{"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "02:00:00:00:00:01"}]}"#).unwrap();
    assert_eq!(c.nets.len(), 1);
    assert_eq!(c.nets[0].host_dev_name, "tap0");
    for (text, err) in [
        (
            r#"{"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "t", "tx_rate_limiter": {}}]}"#,
            "network-interfaces: tx_rate_limiter: network rate limiting is not supported",
        ),
        (
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": true}}"#,
            "machine-config: smt: simultaneous",
        ),
        (
            r#"{"balloon": {"amount_mib": 200, "deflate_on_oom": false}}"#,
            "balloon: amount_mib 200 is larger than guest RAM (128 MiB)",
        ),
        (
            r#"{"vsock": {"guest_cid": 2, "uds_path": "/tmp/v"}}"#,
            "vsock: ",
        ),
        (
            r#"{"boot-source": {"kernel_image_path": "/nonexistent"}}"#,
            "boot-source: kernel_image_path: cannot open /nonexistent",
        ),
    ] {
        let e = from(text).unwrap_err();
        assert!(e.starts_with(err), "{text}: {e}");
    }
}
