//! Method + path → a typed [`Call`], then the call → the backend.
//!
//! Parsing is separate from dispatch so that a request reaches the backend
//! only as a [`Call`] that parsed and validated completely: unknown paths,
//! wrong methods, query strings where none belong, wrong media types and
//! bodies that do not deserialize or validate stop in [`parse`].

use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use super::backend::DaemonBackend;
use super::events::EventRecord;
use super::types::{validate_name, OomPatch, OomTrigger, VmPatch, VmSpec};
use crate::http::route::{
    json_body, method_not_allowed, no_body, no_query, optional_json_body, query_pairs,
};
use crate::http::{ApiError, Chunk, ChunkSource, Request, Response, NDJSON, PROMETHEUS_TEXT};

/// The resources, for the 404 message.
pub(crate) const RESOURCES: &str = "/vms, /vms/{id}, /oom, /oom/trigger, /events, /metrics";

/// A request that parsed: one backend call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    /// `GET /vms`
    ListVms,
    /// `POST /vms`
    CreateVm(VmSpec),
    /// `GET /vms/{id}`
    GetVm(String),
    /// `PATCH /vms/{id}`
    PatchVm(String, VmPatch),
    /// `DELETE /vms/{id}`
    DeleteVm(String),
    /// `GET /oom`
    Oom,
    /// `PATCH /oom`
    PatchOom(OomPatch),
    /// `POST /oom/trigger`
    TriggerOom(OomTrigger),
    /// `GET /events?since=N[&follow=true]`
    Events {
        /// Events with a `seq` above this.
        since: u64,
        /// Stream new events as they happen.
        follow: bool,
    },
    /// `GET /metrics`
    Metrics,
}

/// The resource a path names.
enum Resource<'p> {
    Vms,
    Vm(&'p str),
    Oom,
    OomTrigger,
    Events,
    Metrics,
}

impl Resource<'_> {
    fn allowed(&self) -> &'static str {
        match self {
            Resource::Vms => "GET, POST",
            Resource::Vm(_) => "GET, PATCH, DELETE",
            Resource::Oom => "GET, PATCH",
            Resource::OomTrigger => "POST",
            Resource::Events | Resource::Metrics => "GET",
        }
    }
}

/// Resolves a request to a call, or the error to answer instead.
pub(crate) fn parse(req: &Request) -> Result<Call, ApiError> {
    let path = req.path();
    let resource = match path {
        "/vms" => Resource::Vms,
        "/oom" => Resource::Oom,
        "/oom/trigger" => Resource::OomTrigger,
        "/events" => Resource::Events,
        "/metrics" => Resource::Metrics,
        _ => match path.strip_prefix("/vms/") {
            Some(id) if !id.is_empty() && !id.contains('/') => Resource::Vm(id),
            _ => {
                return Err(ApiError::NoSuchResource {
                    path: path.to_string(),
                    resources: RESOURCES,
                })
            }
        },
    };
    let method = req.method.as_str();
    if !resource.allowed().split(", ").any(|m| m == method) {
        return Err(method_not_allowed(req, resource.allowed()));
    }
    if !matches!(resource, Resource::Events) {
        no_query(req)?;
    }
    let vm_id = |id: &str| validate_name("id", id).map(|()| id.to_string());
    match (method, resource) {
        ("GET", Resource::Vms) => no_body(req).map(|()| Call::ListVms),
        ("POST", Resource::Vms) => {
            let spec: VmSpec = json_body(req)?;
            spec.validate()?;
            Ok(Call::CreateVm(spec))
        }
        ("GET", Resource::Vm(id)) => {
            no_body(req)?;
            Ok(Call::GetVm(vm_id(id)?))
        }
        ("PATCH", Resource::Vm(id)) => {
            let id = vm_id(id)?;
            let patch: VmPatch = json_body(req)?;
            patch.validate()?;
            Ok(Call::PatchVm(id, patch))
        }
        ("DELETE", Resource::Vm(id)) => {
            no_body(req)?;
            Ok(Call::DeleteVm(vm_id(id)?))
        }
        ("GET", Resource::Oom) => no_body(req).map(|()| Call::Oom),
        ("PATCH", Resource::Oom) => {
            let patch: OomPatch = json_body(req)?;
            patch.validate()?;
            Ok(Call::PatchOom(patch))
        }
        ("POST", Resource::OomTrigger) => {
            let trigger: OomTrigger = optional_json_body(req)?;
            trigger.validate()?;
            Ok(Call::TriggerOom(trigger))
        }
        ("GET", Resource::Events) => {
            no_body(req)?;
            events_query(req)
        }
        ("GET", Resource::Metrics) => no_body(req).map(|()| Call::Metrics),
        // Every allowed method of every resource is matched above.
        (_, resource) => Err(method_not_allowed(req, resource.allowed())),
    }
}

/// `since=N` (default 0) and `follow=true|false|1|0` (a bare `follow` is
/// true).
fn events_query(req: &Request) -> Result<Call, ApiError> {
    let mut since = 0;
    let mut follow = false;
    for (name, value) in query_pairs(req, &["since", "follow"])? {
        match name {
            "since" => {
                since = value.parse().map_err(|_| {
                    ApiError::BadRequest(format!(
                        "since: {value:?} is not an event sequence number (a whole number, 0 for all)"
                    ))
                })?;
            }
            _ => {
                follow = match value {
                    "" | "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::BadRequest(format!(
                            "follow: {value:?} is not true or false"
                        )))
                    }
                }
            }
        }
    }
    Ok(Call::Events { since, follow })
}

/// Makes the backend call and builds the response.
pub(crate) fn dispatch(call: Call, backend: &dyn DaemonBackend) -> Result<Response, ApiError> {
    Ok(match call {
        Call::ListVms => Response::json_value(200, &backend.list_vms()),
        Call::CreateVm(spec) => {
            let vm = backend.create_vm(spec)?;
            let location = format!("/vms/{}", vm.id);
            Response::json_value(201, &vm).with_header("Location", location)
        }
        Call::GetVm(id) => Response::json_value(200, &backend.get_vm(&id)?),
        Call::PatchVm(id, patch) => Response::json_value(200, &backend.patch_vm(&id, patch)?),
        Call::DeleteVm(id) => {
            backend.delete_vm(&id)?;
            Response::no_content()
        }
        Call::Oom => Response::json_value(200, &backend.oom()),
        Call::PatchOom(patch) => Response::json_value(200, &backend.patch_oom(patch)?),
        Call::TriggerOom(trigger) => Response::json_value(200, &backend.trigger_oom(trigger)?),
        Call::Events {
            since,
            follow: false,
        } => Response::json_value(200, &backend.events(since)),
        Call::Events {
            since,
            follow: true,
        } => Response::stream(
            NDJSON,
            Box::new(EventStream {
                events: backend.follow_events(since),
            }),
        ),
        Call::Metrics => Response::full(200, PROMETHEUS_TEXT, backend.metrics()),
    })
}

/// Events as NDJSON: one JSON object a line, sent as they arrive (those
/// already waiting go out together).
struct EventStream {
    events: Receiver<EventRecord>,
}

/// Appends `event` and a newline.
fn push_line(out: &mut Vec<u8>, event: &EventRecord) {
    let start = out.len();
    // Typed events always encode; should one not, no half of it is sent.
    match serde_json::to_writer(&mut *out, event) {
        Ok(()) => out.push(b'\n'),
        Err(_) => out.truncate(start),
    }
}

/// The most bytes of waiting events sent in one chunk.
const BATCH_BYTES: usize = 64 * 1024;

impl ChunkSource for EventStream {
    fn next_chunk(&mut self, wait: Duration) -> Chunk {
        let first = match self.events.recv_timeout(wait) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => return Chunk::Idle,
            Err(RecvTimeoutError::Disconnected) => return Chunk::End,
        };
        let mut out = Vec::new();
        push_line(&mut out, &first);
        while out.len() < BATCH_BYTES {
            match self.events.try_recv() {
                Ok(event) => push_line(&mut out, &event),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        Chunk::Data(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon_api::OomAction;

    fn parsed(method: &str, target: &str, body: &str) -> Result<Call, ApiError> {
        parse(&Request::new(method, target, body.as_bytes()))
    }

    fn fault(method: &str, target: &str, body: &str) -> (u16, String) {
        let err = parsed(method, target, body).unwrap_err();
        (err.status(), err.to_string())
    }

    #[test]
    fn every_route_parses() {
        let cases = [
            ("GET", "/vms", "", Call::ListVms),
            (
                "POST",
                "/vms",
                r#"{"mem_mib": 64, "id": "a"}"#,
                Call::CreateVm(VmSpec {
                    id: Some("a".into()),
                    ..VmSpec::with_mem(64)
                }),
            ),
            ("GET", "/vms/a.b-c_1", "", Call::GetVm("a.b-c_1".into())),
            (
                "PATCH",
                "/vms/a",
                r#"{"oom_score_adj": -1000}"#,
                Call::PatchVm(
                    "a".into(),
                    VmPatch {
                        oom_score_adj: Some(-1000),
                        ..VmPatch::default()
                    },
                ),
            ),
            ("DELETE", "/vms/a", "", Call::DeleteVm("a".into())),
            ("GET", "/oom", "", Call::Oom),
            (
                "PATCH",
                "/oom",
                r#"{"action": "notify"}"#,
                Call::PatchOom(OomPatch {
                    action: Some(OomAction::Notify),
                    ..OomPatch::default()
                }),
            ),
            (
                "POST",
                "/oom/trigger",
                "",
                Call::TriggerOom(OomTrigger::default()),
            ),
            (
                "POST",
                "/oom/trigger",
                r#"{"dry_run": true, "pool": "p"}"#,
                Call::TriggerOom(OomTrigger {
                    dry_run: true,
                    pool: Some("p".into()),
                    nodes: None,
                }),
            ),
            (
                "GET",
                "/events",
                "",
                Call::Events {
                    since: 0,
                    follow: false,
                },
            ),
            (
                "GET",
                "/events?since=42&follow=true",
                "",
                Call::Events {
                    since: 42,
                    follow: true,
                },
            ),
            (
                "GET",
                "/events?follow",
                "",
                Call::Events {
                    since: 0,
                    follow: true,
                },
            ),
            (
                "GET",
                "/events?follow=0&since=1",
                "",
                Call::Events {
                    since: 1,
                    follow: false,
                },
            ),
            ("GET", "/metrics", "", Call::Metrics),
        ];
        for (method, target, body, call) in cases {
            assert_eq!(parsed(method, target, body), Ok(call), "{method} {target}");
        }
    }

    #[test]
    fn bad_requests_name_the_fault() {
        assert_eq!(
            fault("POST", "/vms", r#"{"mem_mib": "x"}"#),
            (
                400,
                r#"mem_mib: invalid type: string "x", expected u32 at line 1 column 15"#.into()
            )
        );
        let (status, msg) = fault("POST", "/vms", r#"{"mem_mib": 64, "memory": 1}"#);
        assert_eq!(status, 400);
        assert!(msg.starts_with("memory: unknown field `memory`"), "{msg}");
        let (status, msg) = fault("POST", "/vms", r#"{"vcpus": 2}"#);
        assert_eq!(status, 400);
        assert!(msg.starts_with("missing field `mem_mib`"), "{msg}");
        assert_eq!(
            fault("POST", "/vms", r#"{"mem_mib": 4}"#),
            (400, "mem_mib: 4 is below the minimum of 8".into())
        );
        let (_, msg) = fault("POST", "/vms", r#"{"mem_mib": 64, "vcpus": 300}"#);
        assert!(
            msg.starts_with("vcpus: invalid value: integer `300`"),
            "{msg}"
        );
        let (_, msg) = fault(
            "POST",
            "/vms",
            r#"{"mem_mib": 64, "balloon": {"amount_mib": 1}}"#,
        );
        assert!(
            msg.starts_with("balloon: missing field `deflate_on_oom`"),
            "{msg}"
        );
        assert_eq!(
            fault("PATCH", "/vms/a", "{}").1,
            "nothing to change: give oom_score_adj, balloon_target_mib and/or state"
        );
        let (_, msg) = fault("PATCH", "/vms/a", r#"{"oom_score_adj": 5000}"#);
        assert!(
            msg.starts_with("oom_score_adj: 5000 is out of range"),
            "{msg}"
        );
        let (_, msg) = fault("PATCH", "/oom", r#"{"action": "panic"}"#);
        assert!(
            msg.starts_with(
                "action: unknown variant `panic`, expected one of `kill`, `pause`, `notify`"
            ),
            "{msg}"
        );
        let (_, msg) = fault("PATCH", "/oom", r#"{"psi_window_us": 1}"#);
        assert!(msg.starts_with("psi_window_us: 1 is out of range"), "{msg}");
        let (_, msg) = fault("POST", "/oom/trigger", r#"{"dryrun": true}"#);
        assert!(msg.starts_with("dryrun: unknown field"), "{msg}");
        let (_, msg) = fault("POST", "/oom/trigger", r#"{"pool": "../x"}"#);
        assert!(
            msg.starts_with("pool: \"../x\" is not a valid name"),
            "{msg}"
        );
        assert_eq!(
            fault("GET", "/vms/a", "{}"),
            (400, "GET /vms/a takes no request body".into())
        );
        assert_eq!(
            fault("GET", "/events?since=x", ""),
            (
                400,
                "since: \"x\" is not an event sequence number (a whole number, 0 for all)".into()
            )
        );
        assert_eq!(
            fault("GET", "/events?follow=yes", "").1,
            "follow: \"yes\" is not true or false"
        );
        assert!(fault("GET", "/events?limit=3", "")
            .1
            .starts_with("unknown query parameter"));
        assert_eq!(
            fault("GET", "/vms?all=1", ""),
            (400, "query strings are not supported: /vms?all=1".into())
        );
        assert!(fault("GET", "/vms/a%20b", "")
            .1
            .starts_with("id: \"a%20b\" is not a valid name"));
    }

    #[test]
    fn wrong_paths_and_methods() {
        for path in ["/", "/vm", "/vms/", "/vms/a/b", "/oom/", "/oom/x", "/event"] {
            let (status, msg) = fault("GET", path, "");
            assert_eq!(status, 404, "{path}");
            assert_eq!(
                msg,
                format!("no such resource: {path} (resources: {RESOURCES})")
            );
        }
        assert_eq!(
            fault("PUT", "/vms", ""),
            (
                405,
                "method PUT is not allowed on /vms (allowed: GET, POST)".into()
            )
        );
        assert_eq!(fault("POST", "/vms/a", "{}").0, 405);
        assert_eq!(fault("DELETE", "/oom", "").0, 405);
        assert_eq!(fault("GET", "/oom/trigger", "").0, 405);
        assert_eq!(fault("POST", "/events", "").0, 405);
        assert_eq!(fault("POST", "/metrics?x", "").0, 405);
        assert_eq!(fault("get", "/vms", "").0, 405);
    }
}
