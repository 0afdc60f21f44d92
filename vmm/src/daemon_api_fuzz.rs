//! The daemon API's request bodies and routes under fuzzed clients.
//!
//! Its router is private to `daemon_api`, so this harness drives it the
//! two ways the crate offers from outside that module:
//!
//! - the bodies, in process and fast: every body type's valid shape,
//!   mutated (wrong types, numbers out of range, missing and unknown
//!   fields, bad names, paths and node lists, long strings, deep nesting,
//!   broken text) or random, through [`json_body`] and the type's
//!   `validate` exactly as the router uses them, and `PATCH /oom` on to
//!   [`OomPolicy::apply`]; node lists through [`NodeSet`]'s parser;
//! - the whole API over its socket: the same requests, with right and
//!   wrong methods, paths, ids and query strings, to a real
//!   [`DaemonApiServer`] in front of the test daemon
//!   (`daemon_api::fake`).
//!
//! Checked: no panic; a body either parses and validates (and then
//! encodes and parses back to the same value) or fails with a 4xx and a
//! message; over the socket every request gets one well-formed answer,
//! 2xx or 4xx with `{"fault_message": "..."}` (`Allow` on a 405,
//! `Location` on a 201), never a 5xx, and a body that fails in process
//! fails the same way over the socket; the server still answers at the
//! end.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use crate::api::fuzz::{check_error, CONTENT_TYPES};
use crate::daemon_api::fake::{FakeDaemon, TempDir};
use crate::daemon_api::{DaemonApiServer, OomPatch, OomTrigger, VmPatch, VmSpec};
use crate::fuzz_support::json::body;
use crate::fuzz_support::{run_cases, Rng};
use crate::host::numa::NodeSet;
use crate::http::route::{json_body, optional_json_body};
use crate::http::{ApiError, Request};

const BODY_CASES: u64 = 20_000;
const SOCKET_CASES: u64 = 4_000;

/// The body types of the daemon API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Spec,
    Patch,
    Oom,
    Trigger,
}

/// A valid body of `kind`, with a random choice of its optional fields.
fn template(rng: &mut Rng, kind: Kind) -> Value {
    // (field, value, required)
    let fields: Vec<(&str, Value, bool)> = match kind {
        Kind::Spec => vec![
            ("mem_mib", json!(rng.range(8, 512)), true),
            ("id", json!(rng.pick(&["a", "b", "web-1", "Z.9_x"])), false),
            ("kernel", json!("/boot/vmlinux"), false),
            ("initrd", json!("/boot/initrd.img"), false),
            ("cmdline", json!("console=ttyS0 tiny.hold=forever"), false),
            ("vcpus", json!(rng.range(1, 254)), false),
            (
                "oom_score_adj",
                json!(rng.range(0, 2000) as i64 - 1000),
                false,
            ),
            ("pool", json!("batch"), false),
            ("numa_nodes", json!(rng.pick(&["0", "0-1,3"])), false),
            (
                "balloon",
                json!({"amount_mib": rng.below(8), "deflate_on_oom": rng.bool()}),
                false,
            ),
        ],
        Kind::Patch => vec![
            (
                "oom_score_adj",
                json!(rng.range(0, 2000) as i64 - 1000),
                false,
            ),
            ("balloon_target_mib", json!(rng.below(64)), false),
            ("state", json!(rng.pick(&["running", "paused"])), true),
        ],
        Kind::Oom => vec![
            (
                "action",
                json!(rng.pick(&["kill", "pause", "notify"])),
                false,
            ),
            ("kill_fastest_grower", json!(rng.bool()), false),
            ("dump_vms", json!(rng.bool()), true),
            ("reclaim_first", json!(rng.bool()), false),
            ("no_progress_ms", json!(rng.below(3_600_000)), false),
            ("min_kill_interval_ms", json!(rng.below(3_600_000)), false),
            ("psi_some_threshold_us", json!(rng.range(1, 500_000)), false),
            (
                "psi_window_us",
                json!(rng.range(500_000, 10_000_000)),
                false,
            ),
            ("host_min_available_permille", json!(rng.below(1001)), false),
        ],
        Kind::Trigger => vec![
            ("dry_run", json!(rng.bool()), false),
            ("pool", json!("batch"), false),
        ],
    };
    Value::Object(
        fields
            .into_iter()
            .filter(|(_, _, required)| *required || rng.bool())
            .map(|(k, v, _)| (k.to_string(), v))
            .collect(),
    )
}

/// Parses and validates a `T` as the router does; checks the failure, or
/// that the value round-trips.
fn parse_as<T>(
    req: &Request,
    optional: bool,
    validate: fn(&T) -> Result<(), ApiError>,
) -> Result<T, ApiError>
where
    T: DeserializeOwned + Serialize + Default + PartialEq + std::fmt::Debug,
{
    let parsed = if optional {
        optional_json_body::<T>(req)
    } else {
        json_body::<T>(req)
    };
    let result = parsed.and_then(|v| validate(&v).map(|()| v));
    match &result {
        Ok(v) => {
            let again = Request::new(&req.method, &req.target, &serde_json::to_vec(v).unwrap());
            let back = json_body::<T>(&again).expect("an accepted body encodes and parses back");
            assert_eq!(&back, v);
            validate(&back).expect("and validates again");
        }
        Err(err) => check_error(err),
    }
    result
}

/// What the router makes of a body for `kind`, in process.
fn parse_body(req: &Request, kind: Kind) -> Result<(), ApiError> {
    match kind {
        Kind::Spec => parse_as::<SpecBody>(req, false, |s| s.0.validate()).map(drop),
        Kind::Patch => parse_as::<VmPatch>(req, false, VmPatch::validate).map(drop),
        Kind::Oom => {
            let patch = parse_as::<OomPatch>(req, false, OomPatch::validate)?;
            match crate::daemon_api::fake::policy().apply(&patch) {
                Ok(_) => {}
                Err(err) => check_error(&err),
            }
            Ok(())
        }
        Kind::Trigger => parse_as::<OomTrigger>(req, true, OomTrigger::validate).map(drop),
    }
}

/// `VmSpec` has no `Default` (`mem_mib` is required); the harness needs
/// one for `parse_as`'s bound only.
#[derive(Debug, PartialEq, serde::Deserialize, Serialize)]
#[serde(transparent)]
struct SpecBody(VmSpec);

impl Default for SpecBody {
    fn default() -> Self {
        SpecBody(VmSpec::with_mem(0))
    }
}

fn request(rng: &mut Rng, method: &str, target: &str, body: Vec<u8>) -> Request {
    Request {
        method: method.to_string(),
        target: target.to_string(),
        content_type: rng.pick(CONTENT_TYPES).map(str::to_string),
        body,
        keep_alive: false,
        http11: true,
    }
}

#[test]
fn fuzz_daemon_api_bodies_parse_and_validate_or_fail_with_a_4xx() {
    let mut accepted = 0u64;
    let mut refused = 0u64;
    run_cases("daemon_api_bodies", BODY_CASES, |rng| {
        let kind = rng.pick(&[Kind::Spec, Kind::Patch, Kind::Oom, Kind::Trigger]);
        let valid = template(rng, kind);
        let bytes = if kind == Kind::Trigger && rng.one_in(5) {
            Vec::new()
        } else {
            body(rng, &valid)
        };
        let req = request(rng, "POST", "/x", bytes);
        match parse_body(&req, kind) {
            Ok(()) => accepted += 1,
            Err(_) => refused += 1,
        }
        // Node lists on their own: parse, print, parse back.
        let text = match rng.below(3) {
            0 => String::from_utf8_lossy(&body(rng, &json!("0-1,3"))).into_owned(),
            _ => (0..rng.range(1, 12))
                .map(|_| {
                    rng.pick(&[
                        "0",
                        "1",
                        "3",
                        "1023",
                        "1024",
                        "-",
                        ",",
                        " ",
                        "4294967296",
                        "a",
                    ])
                })
                .collect(),
        };
        if let Ok(set) = text.parse::<NodeSet>() {
            let again: NodeSet = set.to_string().parse().unwrap();
            assert_eq!(again, set, "{text:?}");
        }
    });
    eprintln!("fuzz daemon_api_bodies: {accepted} accepted, {refused} refused");
}

/// One request over a fresh connection; its answers.
fn send(path: &std::path::Path, req: &Request) -> Vec<crate::http::fuzz::Answer> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut out = format!(
        "{} {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        req.method,
        req.target,
        req.body.len()
    )
    .into_bytes();
    if let Some(ct) = &req.content_type {
        out.extend(format!("Content-Type: {ct}\r\n").bytes());
    }
    out.extend(b"\r\n");
    out.extend(&req.body);
    s.write_all(&out).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    crate::http::fuzz::answers(&raw)
}

#[test]
fn fuzz_daemon_api_over_its_socket() {
    let dir = TempDir::new("daemon-api-fuzz");
    let path = dir.sock();
    let mut server: Option<DaemonApiServer> = None;
    let mut by_status = std::collections::BTreeMap::<u16, u64>::new();
    run_cases("daemon_api_socket", SOCKET_CASES, |rng| {
        // A fresh daemon now and then: the test daemon keeps every VM
        // and event it is given.
        if server.is_none() || rng.one_in(300) {
            if let Some(s) = server.take() {
                s.shutdown();
            }
            let fake = Arc::new(FakeDaemon::default());
            server = Some(DaemonApiServer::start(&path, fake).unwrap());
        }
        let id = rng.pick(&["a", "b", "web-1", "Z.9_x", "..", "a%20b", "-x", ""]);
        let (method, target, kind) = match rng.below(10) {
            0 => ("GET", "/vms".to_string(), None),
            1 | 2 => ("POST", "/vms".to_string(), Some(Kind::Spec)),
            3 => ("GET", format!("/vms/{id}"), None),
            4 => ("PATCH", format!("/vms/{id}"), Some(Kind::Patch)),
            5 => ("DELETE", format!("/vms/{id}"), None),
            6 => ("PATCH", "/oom".to_string(), Some(Kind::Oom)),
            7 => ("POST", "/oom/trigger".to_string(), Some(Kind::Trigger)),
            8 => {
                let since = rng.pick(&["0", "3", "-1", "x", "18446744073709551616", ""]);
                ("GET", format!("/events?since={since}"), None)
            }
            _ => (
                rng.pick(&["GET", "GET", "PUT", "get"]),
                rng.pick(&[
                    "/oom",
                    "/metrics",
                    "/",
                    "/vms/a/b",
                    "/oom/",
                    "/events?limit=3",
                ])
                .to_string(),
                None,
            ),
        };
        let mut method = method;
        let mut target = target;
        if rng.one_in(12) {
            method = rng.pick(&["GET", "PUT", "PATCH", "POST", "DELETE", "HEAD"]);
        }
        if rng.one_in(12) {
            target.push_str(rng.pick(&["?", "?x=1", "/"]));
        }
        let bytes = match kind {
            Some(kind) => {
                let valid = template(rng, kind);
                body(rng, &valid)
            }
            None if rng.one_in(6) => body(rng, &json!({})),
            None => Vec::new(),
        };
        let req = request(rng, method, &target, bytes);
        let answers = send(&path, &req);
        assert_eq!(
            answers.len(),
            1,
            "one answer to {} {}",
            req.method,
            req.target
        );
        let a = &answers[0];
        assert!(
            matches!(a.status, 200 | 201 | 204 | 400..=499),
            "{} for {} {}: {}",
            a.status,
            req.method,
            req.target,
            String::from_utf8_lossy(&a.body)
        );
        if a.status == 201 {
            assert!(a
                .headers
                .iter()
                .any(|(n, v)| n == "Location" && v.starts_with("/vms/")));
        }
        // A body that fails in process fails the same way on the route
        // that takes it (when the method, path and media type are right).
        let route_ok = matches!(
            (req.method.as_str(), kind),
            ("POST", Some(Kind::Spec | Kind::Trigger)) | ("PATCH", Some(Kind::Patch | Kind::Oom))
        ) && req.body.len() <= DaemonApiServer::default_limits().max_body_bytes
            && !req.target.contains('?')
            && !req.target.ends_with('/')
            && (kind != Some(Kind::Patch)
                || crate::daemon_api::types::validate_name("id", id).is_ok());
        if let (true, Some(kind)) = (route_ok, kind) {
            if let Err(err) = parse_body(&req, kind) {
                let v: Value = serde_json::from_slice(&a.body).unwrap();
                assert_eq!(
                    (a.status, v["fault_message"].as_str().unwrap()),
                    (err.status(), err.to_string().as_str()),
                    "{} {}",
                    req.method,
                    req.target
                );
            }
        }
        *by_status.entry(a.status).or_default() += 1;
    });
    let server = server.unwrap();
    let answers = send(&path, &Request::new("GET", "/vms", b""));
    assert_eq!(answers[0].status, 200);
    server.shutdown();
    eprintln!("fuzz daemon_api_socket: answers by status {by_status:?}");
}
