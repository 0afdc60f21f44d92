//! The per-VM API's request parsing under fuzzed clients: every route's
//! valid body, mutated (wrong types, numbers out of range, missing and
//! unknown fields, long strings, deep nesting, broken text) or replaced by
//! random JSON, sent with right and wrong methods, paths, query strings
//! and content types, through [`routes::parse`], the function the server's
//! handler calls.
//!
//! Checked: no panic; the outcome is either a [`Call`] for exactly the
//! route the method and path name, whose body encodes and parses back to
//! the same call, or an [`ApiError`] with a 4xx status and a message, whose
//! answer is `{"fault_message": "..."}`.

use serde_json::{json, Value};

use super::routes::{parse, Call};
use super::*;
use crate::fuzz_support::json::body;
use crate::fuzz_support::{run_cases, Rng};
use crate::http::Request;

const CASES: u64 = 30_000;

/// The routes, with a valid body for those that take one.
fn routes(rng: &mut Rng) -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("GET", "/", None),
        ("GET", "/version", None),
        ("GET", "/vm", None),
        (
            "PATCH",
            "/vm",
            Some(json!({"state": rng.pick(&["Paused", "Resumed"])})),
        ),
        ("GET", "/vm/config", None),
        (
            "PUT",
            "/boot-source",
            Some(json!({
                "kernel_image_path": "/k",
                "initrd_path": "/i",
                "boot_args": "console=ttyS0",
            })),
        ),
        ("GET", "/machine-config", None),
        (
            "PUT",
            "/machine-config",
            Some(json!({
                "vcpu_count": 1 + rng.below(32),
                "mem_size_mib": 8 + rng.below(4096),
                "smt": rng.bool(),
                "track_dirty_pages": rng.bool(),
                "cpu_template": "None",
                "huge_pages": rng.pick(&["None", "2M", "Transparent"]),
            })),
        ),
        (
            "PATCH",
            "/machine-config",
            Some(json!({"mem_size_mib": 8 + rng.below(4096)})),
        ),
        (
            "PUT",
            "/logger",
            Some(json!({"log_path": "/tmp/l", "level": "Info", "show_level": true})),
        ),
        ("PUT", "/metrics", Some(json!({"metrics_path": "/tmp/m"}))),
        (
            "PUT",
            "/actions",
            Some(json!({"action_type": rng.pick(&[
                "InstanceStart",
                "ReleaseMemory",
                "FlushMetrics",
                "SendCtrlAltDel",
            ])})),
        ),
        (
            "PUT",
            "/balloon",
            Some(json!({
                "amount_mib": rng.below(1024),
                "deflate_on_oom": rng.bool(),
                "stats_polling_interval_s": rng.below(60),
                "free_page_reporting": rng.bool(),
            })),
        ),
        (
            "PATCH",
            "/balloon",
            Some(json!({"amount_mib": rng.below(1024)})),
        ),
        ("GET", "/balloon", None),
        ("GET", "/balloon/statistics", None),
        (
            "PATCH",
            "/balloon/statistics",
            Some(json!({"stats_polling_interval_s": rng.below(60)})),
        ),
        ("GET", "/balloon/metrics", None),
        (
            "PUT",
            "/vsock",
            Some(json!({"guest_cid": 3 + rng.below(100), "uds_path": "/tmp/v.sock"})),
        ),
        ("GET", "/vsock", None),
        ("GET", "/vsock/metrics", None),
        ("GET", "/drives/rootfs/metrics", None),
        ("GET", "/network-interfaces/eth0/metrics", None),
        (
            "PUT",
            "/drives/rootfs",
            Some(json!({"drive_id": "rootfs", "path_on_host": "/img",
                "is_root_device": rng.bool(), "is_read_only": rng.bool()})),
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            Some(json!({"iface_id": "eth0", "host_dev_name": "tap0",
                "guest_mac": "02:00:00:00:00:01"})),
        ),
    ]
}

/// The route a call answers.
fn route_of(call: &Call) -> (&'static str, String) {
    match call {
        Call::DriveMetrics(id) => return ("GET", format!("/drives/{id}/metrics")),
        Call::PutDrive(id, _) => return ("PUT", format!("/drives/{id}")),
        Call::NetMetrics(id) => return ("GET", format!("/network-interfaces/{id}/metrics")),
        Call::PutNet(id, _) => return ("PUT", format!("/network-interfaces/{id}")),
        _ => {}
    }
    let (method, path) = match call {
        Call::InstanceInfo => ("GET", "/"),
        Call::Version => ("GET", "/version"),
        Call::VmInfo => ("GET", "/vm"),
        Call::PatchVm(_) => ("PATCH", "/vm"),
        Call::VmConfig => ("GET", "/vm/config"),
        Call::PutBootSource(_) => ("PUT", "/boot-source"),
        Call::MachineConfig => ("GET", "/machine-config"),
        Call::PutMachineConfig(_) => ("PUT", "/machine-config"),
        Call::PatchMachineConfig(_) => ("PATCH", "/machine-config"),
        Call::PutLogger(_) => ("PUT", "/logger"),
        Call::PutMetrics(_) => ("PUT", "/metrics"),
        Call::Start | Call::ReleaseMemory | Call::FlushMetrics => ("PUT", "/actions"),
        Call::PutBalloon(_) => ("PUT", "/balloon"),
        Call::PatchBalloon(_) => ("PATCH", "/balloon"),
        Call::Balloon => ("GET", "/balloon"),
        Call::BalloonStats => ("GET", "/balloon/statistics"),
        Call::PatchBalloonStats(_) => ("PATCH", "/balloon/statistics"),
        Call::BalloonMetrics => ("GET", "/balloon/metrics"),
        Call::PutVsock(_) => ("PUT", "/vsock"),
        Call::Vsock => ("GET", "/vsock"),
        Call::VsockMetrics => ("GET", "/vsock/metrics"),
        Call::DriveMetrics(_) | Call::PutDrive(..) | Call::NetMetrics(_) | Call::PutNet(..) => {
            unreachable!("answered above")
        }
    };
    (method, path.to_string())
}

/// The body that asks for `call` again.
fn body_of(call: &Call) -> Vec<u8> {
    let v = match call {
        Call::Start => json!({"action_type": ActionType::InstanceStart}),
        Call::ReleaseMemory => json!({"action_type": ActionType::ReleaseMemory}),
        Call::FlushMetrics => json!({"action_type": ActionType::FlushMetrics}),
        Call::PatchVm(u) => json!(u),
        Call::PutBootSource(b) => json!(b),
        Call::PutMachineConfig(c) => json!(c),
        Call::PatchMachineConfig(u) => json!(u),
        Call::PutLogger(c) => json!(c),
        Call::PutMetrics(c) => json!(c),
        Call::PutBalloon(c) => json!(c),
        Call::PatchBalloon(u) => json!(u),
        Call::PatchBalloonStats(u) => json!(u),
        Call::PutVsock(c) => json!(c),
        Call::PutDrive(_, c) => json!(c),
        Call::PutNet(_, c) => json!(c),
        _ => return Vec::new(),
    };
    serde_json::to_vec(&v).unwrap()
}

/// An error as the server answers it: a 4xx with a message.
pub(crate) fn check_error(err: &ApiError) {
    let status = err.status();
    assert!((400..500).contains(&status), "{status}: {err}");
    let body: Value = serde_json::from_str(&err.fault_body()).unwrap();
    let msg = body["fault_message"].as_str().unwrap();
    assert!(!msg.trim().is_empty(), "an empty message for {err:?}");
    assert_eq!(msg, err.to_string());
}

pub(crate) const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/json"),
    Some("application/json"),
    None,
    Some("application/json; charset=utf-8"),
    Some("APPLICATION/JSON"),
    Some("text/plain"),
    Some(""),
    Some("application/json-patch+json"),
];

#[test]
fn fuzz_vm_api_requests_parse_or_fail_with_a_4xx() {
    let mut calls = 0u64;
    let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
    run_cases("vm_api", CASES, |rng| {
        let routes = routes(rng);
        let (mut method, mut path, valid) = routes[rng.below(routes.len() as u64) as usize].clone();
        let mut target = path.to_string();
        match rng.below(16) {
            0 => method = rng.pick(&["GET", "PUT", "PATCH", "POST", "DELETE", "get", ""]),
            1 => {
                path = routes[rng.below(routes.len() as u64) as usize].1;
                target = path.to_string();
            }
            2 => target.push_str(rng.pick(&["?", "?x=1", "/", "//", "%20"])),
            3 => {
                target = rng
                    .pick(&[
                        "",
                        "/",
                        "*",
                        "/VM",
                        "/balloon/stats",
                        "/vm/../vm",
                        "/drives/",
                        "/drives//metrics",
                        "/drives/a/b/metrics",
                        "/network-interfaces//metrics",
                        "/network-interfaces/a/b/metrics",
                    ])
                    .into()
            }
            _ => {}
        }
        let bytes = match &valid {
            Some(v) => body(rng, v),
            None if rng.one_in(6) => body(rng, &json!({})),
            None => Vec::new(),
        };
        let req = Request {
            method: method.to_string(),
            target,
            content_type: rng.pick(CONTENT_TYPES).map(str::to_string),
            body: bytes,
            keep_alive: rng.bool(),
            http11: true,
        };
        match parse(&req) {
            Ok(call) => {
                let (m, p) = route_of(&call);
                assert_eq!((m, p.as_str()), (req.method.as_str(), req.target.as_str()));
                let again = Request::new(&req.method, &req.target, &body_of(&call));
                let shown = format!("{call:?}");
                assert_eq!(parse(&again), Ok(call), "{shown} does not round-trip");
                calls += 1;
            }
            Err(err) => {
                check_error(&err);
                *by_status.entry(err.status()).or_default() += 1;
            }
        }
    });
    eprintln!("fuzz vm_api: {calls} calls parsed, errors by status {by_status:?}");
}
