//! The daemon's API over a real Unix socket, against the fake daemon:
//! every route, errors, and the event stream of follow mode.

use std::io::{BufRead, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::fake::{FakeDaemon, TempDir};
use super::*;

fn running(vm: String) -> Event {
    Event::VmRunning { vm }
}
use crate::http::{Client, ClientResponse, Limits};

struct Harness {
    server: Option<DaemonApiServer>,
    daemon: Arc<FakeDaemon>,
    client: Client,
    _dir: TempDir,
}

fn harness() -> Harness {
    harness_with(Limits {
        request_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(1),
        ..DaemonApiServer::default_limits()
    })
}

fn harness_with(limits: Limits) -> Harness {
    let dir = TempDir::new("daemon-api");
    let daemon = Arc::new(FakeDaemon::default());
    let server = DaemonApiServer::start_with_limits(dir.sock(), daemon.clone(), limits).unwrap();
    let client = Client::new(server.path())
        .with_timeout(Some(Duration::from_secs(10)))
        .with_stream_timeout(Some(Duration::from_secs(10)));
    Harness {
        server: Some(server),
        daemon,
        client,
        _dir: dir,
    }
}

impl Harness {
    fn send(&self, method: &str, target: &str, body: Option<&str>) -> ClientResponse {
        self.client.request(method, target, body).unwrap()
    }
}

fn json_of(r: &ClientResponse) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {:?}", r.text()))
}

#[test]
fn every_route_works() {
    let h = harness();

    let r = h.send(
        "POST",
        "/vms",
        Some(r#"{"id": "web-1", "mem_mib": 128, "oom_score_adj": 100, "balloon": {"amount_mib": 0, "deflate_on_oom": true}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("Location"), Some("/vms/web-1"));
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let vm: VmView = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((vm.id.as_str(), vm.mem_mib, vm.vcpus), ("web-1", 128, 1));
    assert_eq!(json_of(&r)["state"], "running");
    // Absent things are null, not missing.
    assert!(json_of(&r).as_object().unwrap()["exit"].is_null());

    let r = h.send("POST", "/vms", Some(r#"{"mem_mib": 64}"#));
    assert_eq!(r.status, 201);
    assert_eq!(r.header("Location"), Some("/vms/vm2"));

    let r = h.send("GET", "/vms", None);
    assert_eq!(r.status, 200);
    let ids: Vec<String> = serde_json::from_slice::<Vec<VmView>>(&r.body)
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, ["vm2", "web-1"]);

    let r = h.send("GET", "/vms/web-1", None);
    assert_eq!(
        (r.status, json_of(&r)["oom_score_adj"].clone()),
        (200, json!(100))
    );

    let r = h.send(
        "PATCH",
        "/vms/web-1",
        Some(r#"{"oom_score_adj": -1000, "balloon_target_mib": 32}"#),
    );
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r)["oom_score_adj"], -1000);
    assert_eq!(json_of(&r)["balloon"]["target_mib"], 32);

    let r = h.send("GET", "/oom", None);
    assert_eq!(r.status, 200);
    let oom: OomView = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(oom.policy, super::fake::policy());
    assert_eq!(json_of(&r)["action"], "kill");
    assert_eq!(json_of(&r)["pressure"]["pools"][0]["name"], "batch");

    let r = h.send(
        "PATCH",
        "/oom",
        Some(r#"{"action": "notify", "psi_window_us": 2000000}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json_of(&r)["action"], "notify");
    assert_eq!(json_of(&r)["psi_window_us"], 2_000_000);

    let r = h.send("POST", "/oom/trigger", Some(r#"{"dry_run": true}"#));
    assert_eq!(r.status, 200);
    let decision = json_of(&r);
    assert_eq!(decision["kind"], "oom_decision");
    assert_eq!(decision["victim"], "vm2");
    assert_eq!(decision["dry_run"], true);
    // No body at all is an empty trigger.
    assert_eq!(h.send("POST", "/oom/trigger", None).status, 200);

    let r = h.send("GET", "/events?since=1", None);
    assert_eq!(r.status, 200);
    let kinds: Vec<Value> = json_of(&r)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].clone())
        .collect();
    assert_eq!(
        kinds,
        [
            json!("vm_created"),
            json!("oom_decision"),
            json!("oom_decision")
        ]
    );
    assert_eq!(
        json_of(&h.send("GET", "/events", None))
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let r = h.send("GET", "/metrics", None);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert!(r.text().contains("vmm_vms{state=\"running\"} 2\n"));

    let r = h.send("DELETE", "/vms/vm2", None);
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert_eq!(h.send("GET", "/vms/vm2", None).status, 404);

    assert_eq!(
        h.daemon.calls(),
        [
            "create_vm VmSpec { id: Some(\"web-1\"), kernel: None, initrd: None, cmdline: None, mem_mib: 128, vcpus: 1, balloon: Some(BalloonConfig { amount_mib: 0, deflate_on_oom: true, stats_polling_interval_s: 0, free_page_reporting: false }), oom_score_adj: 100, pool: None, numa_nodes: None, agent: false, drives: [], network_interfaces: [] }",
            "create_vm VmSpec { id: None, kernel: None, initrd: None, cmdline: None, mem_mib: 64, vcpus: 1, balloon: None, oom_score_adj: 0, pool: None, numa_nodes: None, agent: false, drives: [], network_interfaces: [] }",
            "list_vms",
            "get_vm web-1",
            "patch_vm web-1 VmPatch { oom_score_adj: Some(-1000), balloon_target_mib: Some(32), state: None }",
            "oom",
            "patch_oom OomPatch { action: Some(Notify), kill_fastest_grower: None, dump_vms: None, reclaim_first: None, no_progress_ms: None, min_kill_interval_ms: None, psi_some_threshold_us: None, psi_window_us: Some(2000000), host_min_available_permille: None }",
            "oom",
            "trigger_oom OomTrigger { dry_run: true, pool: None, nodes: None }",
            "trigger_oom OomTrigger { dry_run: false, pool: None, nodes: None }",
            "events 1",
            "events 0",
            "metrics",
            "delete_vm vm2",
            "get_vm vm2",
        ]
    );
}

#[test]
fn backend_errors_keep_their_status_and_message() {
    let h = harness();
    let body = r#"{"id": "a", "mem_mib": 64}"#;
    assert_eq!(h.send("POST", "/vms", Some(body)).status, 201);
    let cases = [
        ("POST", "/vms", Some(body), 409, "a VM 'a' already exists"),
        ("GET", "/vms/b", None, 404, "no VM 'b'"),
        ("DELETE", "/vms/b", None, 404, "no VM 'b'"),
        (
            "PATCH",
            "/vms/a",
            Some(r#"{"balloon_target_mib": 8}"#),
            409,
            "VM 'a' has no balloon",
        ),
        (
            "PATCH",
            "/oom",
            Some(r#"{"psi_some_threshold_us": 2000000}"#),
            400,
            "psi_some_threshold_us: 2000000 µs is longer than the window of 1000000 µs",
        ),
        (
            "POST",
            "/oom/trigger",
            Some(r#"{"pool": "web"}"#),
            400,
            "pool 'web' has no budget configured",
        ),
    ];
    for (method, target, body, status, fault) in cases {
        let r = h.send(method, target, body);
        assert_eq!(
            (r.status, r.fault_message().as_str()),
            (status, fault),
            "{method} {target}"
        );
    }
    // The policy did not change.
    assert_eq!(
        json_of(&h.send("GET", "/oom", None))["psi_some_threshold_us"],
        150_000
    );
}

/// Bad requests of every kind: the right status, a fault_message that
/// says what is wrong, and no backend call.
#[test]
fn bad_requests_never_reach_the_backend() {
    let h = harness();
    let big = format!(r#"{{"mem_mib": 64, "cmdline": "{}"}}"#, "x".repeat(20_000));
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        ("POST", "/vms", Some(r#"{"mem_mib": 64,"#), 400, "EOF while parsing"),
        ("POST", "/vms", Some(r#"{"mem_mib": -1}"#), 400, "mem_mib: invalid value: integer `-1`, expected u32"),
        ("POST", "/vms", Some(r#"{"mem_mib": 64, "colour": 1}"#), 400, "colour: unknown field `colour`"),
        ("POST", "/vms", Some(r#"{"mem_mib": 2}"#), 400, "mem_mib: 2 is below the minimum of 8"),
        ("POST", "/vms", Some(r#"{"mem_mib": 64, "id": "a b"}"#), 400, "id: \"a b\" is not a valid name"),
        ("POST", "/vms", Some(r#"{"mem_mib": 64, "kernel": "vmlinux"}"#), 400, "kernel: \"vmlinux\" is not an absolute path"),
        ("POST", "/vms", Some(r#"{"mem_mib": 64, "oom_score_adj": 1001}"#), 400, "oom_score_adj: 1001 is out of range"),
        ("POST", "/vms", Some(r#"{"mem_mib": 64, "vcpus": 0}"#), 400, "vcpus: 0 is out of range: 1 to 254"),
        ("POST", "/vms", Some("[64]"), 400, "the request body must be a JSON object"),
        ("POST", "/vms", None, 400, "POST /vms needs a JSON request body"),
        ("POST", "/vms", Some(&big), 413, "larger than the limit of 16384 bytes"),
        ("PATCH", "/vms/a", Some("{}"), 400, "nothing to change"),
        ("PATCH", "/vms/a", Some(r#"{"oom_score_adj": "high"}"#), 400, "oom_score_adj: invalid type: string \"high\", expected i16"),
        ("PATCH", "/oom", Some(r#"{"action": "reboot"}"#), 400, "action: unknown variant `reboot`"),
        ("PATCH", "/oom", Some(r#"{"no_progress_ms": 99999999}"#), 400, "no_progress_ms: 99999999 is longer than the limit"),
        ("PATCH", "/oom", Some("{}"), 400, "nothing to change"),
        ("POST", "/oom/trigger", Some(r#"{"dry_run": "yes"}"#), 400, "dry_run: invalid type: string \"yes\", expected a boolean"),
        ("GET", "/events?since=-1", None, 400, "since: \"-1\" is not an event sequence number"),
        ("GET", "/events?tail=5", None, 400, "unknown query parameter \"tail\" on /events"),
        ("GET", "/vms?x", None, 400, "query strings are not supported"),
        ("GET", "/vms/..", None, 400, "id: \"..\" is not a valid name"),
        ("GET", "/", None, 404, "no such resource: / (resources: /vms, /vms/{id}, /oom, /oom/trigger, /events, /metrics)"),
        ("GET", "/vms/a/console", None, 404, "no such resource: /vms/a/console"),
        ("PUT", "/vms/a", Some("{}"), 405, "method PUT is not allowed on /vms/a (allowed: GET, PATCH, DELETE)"),
        ("DELETE", "/vms", None, 405, "method DELETE is not allowed on /vms (allowed: GET, POST)"),
        ("GET", "/oom/trigger", None, 405, "(allowed: POST)"),
        ("POST", "/metrics", None, 405, "(allowed: GET)"),
    ];
    for (method, target, body, status, fault) in cases {
        let r = h.send(method, target, body);
        assert_eq!(r.status, status, "{method} {target}: {}", r.text());
        assert!(
            r.fault_message().contains(fault),
            "{method} {target}: {:?} lacks {fault:?}",
            r.fault_message()
        );
        if status == 405 {
            assert!(r.header("Allow").is_some(), "{method} {target}: no Allow");
        }
    }
    // Not JSON at all.
    let mut s = UnixStream::connect(h.client.path()).unwrap();
    s.write_all(b"PATCH /oom HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 415 "), "{out}");
    assert_eq!(h.daemon.calls(), Vec::<String>::new());
}

/// Reads one NDJSON line of a follow stream, failing after `within`.
fn next_event(lines: &mut dyn BufRead, within: Duration) -> Value {
    let t = Instant::now();
    let mut line = String::new();
    let n = lines.read_line(&mut line).unwrap();
    assert!(n > 0, "the stream ended");
    assert!(t.elapsed() < within, "took {:?}", t.elapsed());
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

#[test]
fn follow_streams_history_then_live_events_as_they_happen() {
    let h = harness();
    for i in 0..3 {
        h.daemon.push_event(running(format!("test{i}")));
    }
    let res = h
        .client
        .stream("GET", "/events?since=1&follow=true", None)
        .unwrap();
    assert_eq!(res.status, 200);
    let header = |name: &str| {
        res.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        header("Content-Type").as_deref(),
        Some("application/x-ndjson")
    );
    assert_eq!(header("Transfer-Encoding").as_deref(), Some("chunked"));
    let mut body = res.body;

    // History after seq 1, in order.
    assert_eq!(next_event(&mut body, Duration::from_secs(5))["seq"], 2);
    assert_eq!(next_event(&mut body, Duration::from_secs(5))["seq"], 3);

    // New events arrive one by one while the stream is open, each well
    // before the next is sent.
    for i in 3..6 {
        let sent = h.daemon.push_event(running(format!("live{i}")));
        let got = next_event(&mut body, Duration::from_secs(2));
        assert_eq!(got, serde_json::to_value(&sent).unwrap());
        assert_eq!(serde_json::from_value::<EventRecord>(got).unwrap(), sent);
    }

    // The daemon ends the stream (e.g. it shuts down): a clean chunked end.
    h.daemon.end_streams();
    let mut rest = String::new();
    body.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "");
    assert_eq!(
        h.daemon.calls(),
        ["follow_events 1"],
        "history came from follow_events alone"
    );
}

#[test]
fn follow_notices_a_client_that_went_away_while_idle() {
    let h = harness();
    let res = h.client.stream("GET", "/events?follow", None).unwrap();
    assert_eq!(res.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.daemon.probe_followers(0) != 1 {
        assert!(Instant::now() < deadline, "no follower registered");
        thread::sleep(Duration::from_millis(10));
    }
    drop(res);

    // Nothing is sent; the server must notice the hang-up by itself and
    // drop the receiver within its poll interval.
    thread::sleep(Duration::from_secs(1));
    assert_eq!(h.daemon.probe_followers(1), 0);

    // Its connection slot is free again: the server still answers.
    assert_eq!(h.send("GET", "/vms", None).status, 200);
}

/// Followers hold stream workers, never request workers: with every
/// stream worker taken, requests are still answered at once and one more
/// follower gets a 503 that says why; when a follower leaves, its worker
/// takes the next one.
#[test]
fn followers_cannot_starve_requests_and_beyond_the_limit_get_503() {
    let h = harness_with(Limits {
        workers: 1,
        max_streams: 2,
        ..DaemonApiServer::default_limits()
    });
    let first = h.client.stream("GET", "/events?follow", None).unwrap();
    let second = h.client.stream("GET", "/events?follow", None).unwrap();
    assert_eq!((first.status, second.status), (200, 200));
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.daemon.probe_followers(0) != 2 {
        assert!(Instant::now() < deadline, "the followers did not register");
        thread::sleep(Duration::from_millis(10));
    }

    let t = Instant::now();
    for _ in 0..5 {
        assert_eq!(h.send("GET", "/vms", None).status, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    let third = h.client.request("GET", "/events?follow", None).unwrap();
    assert_eq!(third.status, 503);
    assert_eq!(
        third.fault_message(),
        "too many open streams (limit 2); close one or retry later"
    );
    // Its source was dropped unsent: the daemon has two followers.
    assert_eq!(h.daemon.probe_followers(1), 2);

    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut again = loop {
        let res = h
            .client
            .stream("GET", "/events?since=0&follow", None)
            .unwrap();
        if res.status == 200 {
            break res;
        }
        assert_eq!(res.status, 503);
        assert!(
            Instant::now() < deadline,
            "the freed stream worker was not reused"
        );
        thread::sleep(Duration::from_millis(50));
    };
    let sent = h.daemon.push_event(running("after".into()));
    let got = loop {
        let event = next_event(&mut again.body, Duration::from_secs(5));
        if event["vm"] == "after" {
            break event;
        }
    };
    assert_eq!(got, serde_json::to_value(&sent).unwrap());
    drop(second);
}

#[test]
fn follow_ends_at_shutdown_and_speaks_http_1_0() {
    let mut h = harness();
    // HTTP/1.0: no chunked encoding, the body ends at close.
    let mut s = UnixStream::connect(h.client.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /events?follow=1 HTTP/1.0\r\n\r\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap(); // a half-close is not a hang-up
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.daemon.probe_followers(0) != 1 {
        assert!(Instant::now() < deadline, "no follower registered");
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(300));
    h.daemon.push_event(running("one".into()));
    thread::sleep(Duration::from_millis(200));

    let t = Instant::now();
    h.server.take().unwrap().shutdown();
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(!h.client.path().exists());

    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(!head.contains("chunked"), "{head}");
    assert!(head.contains("Connection: close"), "{head}");
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        serde_json::to_value(FakeDaemon::probe(0)).unwrap()
    );
    assert_eq!(lines.last().unwrap()["vm"], "one");
}

#[test]
fn socket_is_private_and_panics_are_500() {
    let h = harness();
    let meta = std::fs::symlink_metadata(h.client.path()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    struct Panicky;
    impl DaemonBackend for Panicky {
        fn create_vm(&self, _: VmSpec) -> Result<VmView, ApiError> {
            unreachable!()
        }
        fn list_vms(&self) -> Vec<VmView> {
            panic!("list exploded")
        }
        fn get_vm(&self, _: &str) -> Result<VmView, ApiError> {
            unreachable!()
        }
        fn patch_vm(&self, _: &str, _: VmPatch) -> Result<VmView, ApiError> {
            unreachable!()
        }
        fn delete_vm(&self, _: &str) -> Result<(), ApiError> {
            unreachable!()
        }
        fn oom(&self) -> OomView {
            unreachable!()
        }
        fn patch_oom(&self, _: OomPatch) -> Result<OomView, ApiError> {
            unreachable!()
        }
        fn trigger_oom(&self, _: OomTrigger) -> Result<EventRecord, ApiError> {
            unreachable!()
        }
        fn events(&self, _: u64) -> Vec<EventRecord> {
            unreachable!()
        }
        fn follow_events(&self, _: u64) -> std::sync::mpsc::Receiver<EventRecord> {
            unreachable!()
        }
        fn metrics(&self) -> String {
            unreachable!()
        }
    }
    let dir = TempDir::new("daemon-api-panic");
    let server = DaemonApiServer::start(dir.sock(), Arc::new(Panicky)).unwrap();
    let client = Client::new(server.path());
    for _ in 0..2 {
        let r = client.request("GET", "/vms", None).unwrap();
        assert_eq!(
            (r.status, r.fault_message().as_str()),
            (500, "the daemon panicked while handling the request")
        );
    }
}

/// `vmm/api/daemon-openapi.yaml` names every route, body field and error
/// status the server has.
#[test]
fn openapi_document_covers_every_route_field_and_status() {
    let spec = include_str!("../../api/daemon-openapi.yaml");
    for path in [
        "/vms",
        "/vms/{id}",
        "/oom",
        "/oom/trigger",
        "/events",
        "/metrics",
    ] {
        assert!(spec.contains(&format!("\n  {path}:\n")), "{path}");
    }
    let daemon = FakeDaemon::default();
    let view = daemon.create_vm(VmSpec::with_mem(64)).unwrap();
    let full_spec = VmSpec {
        id: Some("a".into()),
        kernel: Some("/k".into()),
        initrd: Some("/i".into()),
        cmdline: Some(String::new()),
        pool: Some("p".into()),
        numa_nodes: Some("0".into()),
        drives: vec![crate::api::DriveConfig {
            drive_id: "d".into(),
            path_on_host: "/d.img".into(),
            is_root_device: true,
            is_read_only: true,
            partuuid: Some("x".into()),
            cache_type: Some("Unsafe".into()),
            io_engine: Some("Sync".into()),
            rate_limiter: Some(serde_json::json!({})),
        }],
        network_interfaces: vec![crate::api::NetworkInterfaceConfig {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("02:00:00:00:00:01".into()),
            rx_rate_limiter: Some(serde_json::Value::Null),
            tx_rate_limiter: Some(serde_json::Value::Null),
        }],
        ..VmSpec::with_mem(64)
    };
    let all_knobs = OomPatch {
        action: Some(OomAction::Kill),
        kill_fastest_grower: Some(true),
        dump_vms: Some(true),
        reclaim_first: Some(true),
        no_progress_ms: Some(1),
        min_kill_interval_ms: Some(1),
        psi_some_threshold_us: Some(1),
        psi_window_us: Some(1),
        host_min_available_permille: Some(1),
    };
    let oom = serde_json::to_value(daemon.oom()).unwrap();
    let bodies = [
        serde_json::to_value(&view).unwrap(),
        serde_json::to_value(&full_spec).unwrap(),
        serde_json::to_value(VmPatch {
            oom_score_adj: Some(0),
            balloon_target_mib: Some(0),
            state: Some(RunState::Paused),
        })
        .unwrap(),
        serde_json::to_value(all_knobs).unwrap(),
        oom.clone(),
        oom["pressure"].clone(),
        oom["pressure"]["pools"][0].clone(),
        serde_json::to_value(OomTrigger {
            dry_run: true,
            pool: Some("p".into()),
            nodes: Some("0".into()),
        })
        .unwrap(),
        oom["event_log"].clone(),
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

/// The text of schema `name` in the OpenAPI document, with the text of the
/// schemas it refers to (recursively): where its fields are described.
fn schema_text(spec: &str, name: &str, seen: &mut Vec<String>) -> String {
    if seen.iter().any(|s| s == name) {
        return String::new();
    }
    seen.push(name.to_string());
    let head = format!("\n    {name}:\n");
    let start = spec
        .find(&head)
        .unwrap_or_else(|| panic!("no schema {name}"));
    let body = &spec[start + head.len()..];
    // Up to the next schema (4 spaces in) or section (2 spaces in).
    let end = body
        .match_indices('\n')
        .map(|(i, _)| i)
        .find(|&i| {
            let rest = &body[i + 1..];
            let indent = rest.len() - rest.trim_start_matches(' ').len();
            matches!(indent, 2 | 4) && !rest.trim().is_empty()
        })
        .unwrap_or(body.len());
    let mut text = body[..end].to_string();
    let refs: Vec<String> = text
        .match_indices("#/components/schemas/")
        .map(|(i, m)| {
            text[i + m.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect()
        })
        .collect();
    for r in refs {
        text.push_str(&schema_text(spec, &r, seen));
    }
    text
}

/// Every kind of event is in the OpenAPI document: in the `Event` oneOf,
/// in its discriminator's mapping, with a schema of its own that fixes
/// `kind` and describes every field an event of the kind can have.
#[test]
fn openapi_document_describes_every_event_kind() {
    let spec = include_str!("../../api/daemon-openapi.yaml");
    let event_schema = schema_text(spec, "Event", &mut vec!["EventHeader".into()]);
    for event in super::events::tests::one_of_each() {
        let kind = event.kind();
        let name: String = kind
            .split('_')
            .map(|w| w[..1].to_uppercase() + &w[1..])
            .chain(["Event".to_string()])
            .collect();
        let target = format!("\"#/components/schemas/{name}\"");
        assert!(
            event_schema.contains(&format!("- $ref: {target}\n")),
            "{kind}: not in the oneOf"
        );
        assert!(
            event_schema.contains(&format!("{kind}: {target}\n")),
            "{kind}: not in the mapping"
        );
        let text = schema_text(spec, &name, &mut Vec::new());
        assert!(
            text.contains(&format!("enum: [{kind}]")),
            "{name}: kind is not fixed"
        );
        let record = EventRecord {
            seq: 1,
            time_ms: 0,
            event,
        };
        let value = serde_json::to_value(&record).unwrap();
        for key in value.as_object().unwrap().keys() {
            assert!(
                text.contains(&format!(" {key}:\n")),
                "{name}: no field {key}"
            );
        }
    }
}
