//! Method + path → a typed [`Call`], then the call → the backend.
//!
//! Parsing is separate from dispatch so that a request reaches the backend
//! only as a [`Call`] that parsed completely: unknown paths, wrong methods,
//! wrong media types and bodies that do not deserialize stop in [`parse`].

use std::sync::Arc;

use serde::Serialize;

use super::backend::VmBackend;
use super::error::ApiError;
use super::instance::{VersionInfo, VmStateUpdate, VMM_VERSION};
use super::types::{
    ActionBody, ActionType, BalloonConfig, BalloonStatsUpdate, BalloonUpdate, DriveConfig,
    NetworkInterfaceConfig, VsockConfig,
};
use super::unsupported;
use super::vm_config::{
    BootSource, LoggerConfig, MachineConfig, MachineConfigUpdate, MetricsConfig,
};
use crate::http::route::{json_body, method_not_allowed, no_body};
use crate::http::{Request, Response};

/// The resources, for the 404 message.
const RESOURCES: &str = "/, /version, /vm, /vm/config, /actions, /boot-source, \
     /machine-config, /logger, /metrics, /balloon, /balloon/statistics, /balloon/metrics, \
     /vsock, /vsock/metrics, /drives/{drive_id}/metrics, /network-interfaces/{iface_id}/metrics";

/// A request that parsed: one backend call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Call {
    /// `GET /`
    InstanceInfo,
    /// `GET /version`
    Version,
    /// `GET /vm`
    VmInfo,
    /// `PATCH /vm`
    PatchVm(VmStateUpdate),
    /// `GET /vm/config`
    VmConfig,
    /// `PUT /boot-source`
    PutBootSource(BootSource),
    /// `GET /machine-config`
    MachineConfig,
    /// `PUT /machine-config`
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /logger`
    PutLogger(LoggerConfig),
    /// `PUT /metrics`
    PutMetrics(MetricsConfig),
    /// `PUT /actions {"action_type": "InstanceStart"}`
    Start,
    /// `PUT /actions {"action_type": "FlushMetrics"}`
    FlushMetrics,
    /// `PUT /actions {"action_type": "ReleaseMemory"}`
    ReleaseMemory,
    /// `PUT /balloon`
    PutBalloon(BalloonConfig),
    /// `PATCH /balloon`
    PatchBalloon(BalloonUpdate),
    /// `GET /balloon`
    Balloon,
    /// `GET /balloon/statistics`
    BalloonStats,
    /// `PATCH /balloon/statistics`
    PatchBalloonStats(BalloonStatsUpdate),
    /// `GET /balloon/metrics`
    BalloonMetrics,
    /// `PUT /vsock`
    PutVsock(VsockConfig),
    /// `GET /vsock`
    Vsock,
    /// `GET /vsock/metrics`
    VsockMetrics,
    /// `PUT /drives/{drive_id}`
    PutDrive(String, DriveConfig),
    /// `GET /drives/{drive_id}/metrics`
    DriveMetrics(String),
    /// `PUT /network-interfaces/{iface_id}`
    PutNet(String, NetworkInterfaceConfig),
    /// `GET /network-interfaces/{iface_id}/metrics`
    NetMetrics(String),
}

/// Resolves a request to a call, or the error to answer instead.
pub(crate) fn parse(req: &Request) -> Result<Call, ApiError> {
    let path = req.target.as_str();
    if path.contains('?') {
        return Err(ApiError::BadRequest(format!(
            "query strings are not supported: {path}"
        )));
    }
    if let Some(rest) = path.strip_prefix("/drives/") {
        return parse_drive_route(req, rest);
    }
    if let Some(call) = parse_net_route(req, path) {
        return call;
    }
    let allowed = match path {
        "/" | "/version" | "/vm/config" => "GET",
        "/vm" => "GET, PATCH",
        "/machine-config" => "GET, PUT, PATCH",
        "/boot-source" | "/logger" | "/metrics" => "PUT",
        "/actions" => "PUT",
        "/balloon" => "GET, PUT, PATCH",
        "/balloon/statistics" => "GET, PATCH",
        "/balloon/metrics" => "GET",
        "/vsock" => "GET, PUT",
        "/vsock/metrics" => "GET",
        _ => {
            if let Some(err) = unsupported::refuse(path) {
                return Err(err);
            }
            return Err(ApiError::NoSuchResource {
                path: path.to_string(),
                resources: RESOURCES,
            });
        }
    };
    match (req.method.as_str(), path) {
        ("GET", "/") => no_body(req).map(|()| Call::InstanceInfo),
        ("GET", "/version") => no_body(req).map(|()| Call::Version),
        ("GET", "/vm") => no_body(req).map(|()| Call::VmInfo),
        ("PATCH", "/vm") => json_body(req).map(Call::PatchVm),
        ("GET", "/vm/config") => no_body(req).map(|()| Call::VmConfig),
        ("PUT", "/boot-source") => json_body(req).map(Call::PutBootSource),
        ("GET", "/machine-config") => no_body(req).map(|()| Call::MachineConfig),
        ("PUT", "/machine-config") => json_body(req).map(Call::PutMachineConfig),
        ("PATCH", "/machine-config") => {
            let update: MachineConfigUpdate = json_body(req)?;
            if update.is_empty() {
                return Err(ApiError::BadRequest(
                    "PATCH /machine-config needs at least one field to change".into(),
                ));
            }
            Ok(Call::PatchMachineConfig(update))
        }
        ("PUT", "/logger") => json_body(req).map(Call::PutLogger),
        ("PUT", "/metrics") => json_body(req).map(Call::PutMetrics),
        ("PUT", "/actions") => match json_body::<ActionBody>(req)?.action_type {
            ActionType::InstanceStart => Ok(Call::Start),
            ActionType::FlushMetrics => Ok(Call::FlushMetrics),
            ActionType::ReleaseMemory => Ok(Call::ReleaseMemory),
            ActionType::SendCtrlAltDel => Err(ApiError::BadRequest(
                "action_type: SendCtrlAltDel is not supported by this VMM \
                 (its i8042 has no keyboard)"
                    .into(),
            )),
        },
        ("PUT", "/balloon") => json_body(req).map(Call::PutBalloon),
        ("PATCH", "/balloon") => json_body(req).map(Call::PatchBalloon),
        ("GET", "/balloon") => no_body(req).map(|()| Call::Balloon),
        ("GET", "/balloon/statistics") => no_body(req).map(|()| Call::BalloonStats),
        ("PATCH", "/balloon/statistics") => json_body(req).map(Call::PatchBalloonStats),
        ("GET", "/balloon/metrics") => no_body(req).map(|()| Call::BalloonMetrics),
        ("PUT", "/vsock") => json_body(req).map(Call::PutVsock),
        ("GET", "/vsock") => no_body(req).map(|()| Call::Vsock),
        ("GET", "/vsock/metrics") => no_body(req).map(|()| Call::VsockMetrics),
        _ => Err(method_not_allowed(req, allowed)),
    }
}

/// `/drives/{drive_id}` and `/drives/{drive_id}/metrics`. The id is
/// checked by the backend (an unknown one is a 404 there).
fn parse_drive_route(req: &Request, rest: &str) -> Result<Call, ApiError> {
    match rest.split_once('/') {
        Some((id, "metrics")) if !id.is_empty() => match req.method.as_str() {
            "GET" => no_body(req).map(|()| Call::DriveMetrics(id.to_string())),
            _ => Err(method_not_allowed(req, "GET")),
        },
        None if !rest.is_empty() => match req.method.as_str() {
            "PUT" => json_body(req).map(|c| Call::PutDrive(rest.to_string(), c)),
            "PATCH" => Err(ApiError::BadRequest(format!(
                "{}: updating a drive after boot is not supported by this VMM",
                req.path()
            ))),
            _ => Err(method_not_allowed(req, "PUT")),
        },
        _ => Err(ApiError::NoSuchResource {
            path: req.target.clone(),
            resources: RESOURCES,
        }),
    }
}

/// `/network-interfaces/{iface_id}` and its `/metrics`, or `None` for
/// any other path. The id is checked by the backend (an unknown one is a
/// 404 there).
fn parse_net_route(req: &Request, path: &str) -> Option<Result<Call, ApiError>> {
    let rest = path.strip_prefix("/network-interfaces/")?;
    if let Some(id) = rest
        .strip_suffix("/metrics")
        .filter(|id| !id.is_empty() && !id.contains('/'))
    {
        return Some(match req.method.as_str() {
            "GET" => no_body(req).map(|()| Call::NetMetrics(id.to_string())),
            _ => Err(method_not_allowed(req, "GET")),
        });
    }
    if rest.is_empty() || rest.contains('/') {
        return None;
    }
    Some(match req.method.as_str() {
        "PUT" => json_body(req).map(|c| Call::PutNet(rest.to_string(), c)),
        "PATCH" => Err(ApiError::BadRequest(format!(
            "{path}: rate limiters are not supported by this VMM, so an interface has \
             nothing to update after boot"
        ))),
        _ => Err(method_not_allowed(req, "PUT")),
    })
}

/// Makes the backend call and builds the response.
pub(crate) fn dispatch(call: Call, backend: &Arc<dyn VmBackend>) -> Result<Response, ApiError> {
    match call {
        Call::InstanceInfo => json(&backend.instance_info()),
        Call::Version => json(&VersionInfo {
            firecracker_version: VMM_VERSION.into(),
        }),
        Call::VmInfo => json(&backend.vm_info()),
        Call::PatchVm(update) => backend.patch_vm(update).map(|()| Response::no_content()),
        Call::VmConfig => json(&backend.vm_config()),
        Call::PutBootSource(source) => backend
            .put_boot_source(source)
            .map(|()| Response::no_content()),
        Call::MachineConfig => json(&backend.machine_config()),
        Call::PutMachineConfig(config) => backend
            .put_machine_config(config)
            .map(|()| Response::no_content()),
        Call::PatchMachineConfig(update) => backend
            .patch_machine_config(update)
            .map(|()| Response::no_content()),
        Call::PutLogger(config) => backend.put_logger(config).map(|()| Response::no_content()),
        Call::PutMetrics(config) => backend.put_metrics(config).map(|()| Response::no_content()),
        Call::FlushMetrics => backend.flush_metrics().map(|()| Response::no_content()),
        Call::Start => {
            // The answer waits for the boot; the VMM must not end (a guest
            // that exits at once) before the client has it.
            let response = match backend.start() {
                Ok(()) => Response::no_content(),
                // Nothing started: no answer is awaited.
                Err(err @ ApiError::Conflict(_)) => return Err(err),
                Err(err) => Response::error(&err),
            };
            let backend = Arc::clone(backend);
            Ok(response.after_sent(move || backend.start_answered()))
        }
        Call::ReleaseMemory => {
            let response = match backend.release_memory() {
                // Nothing was done: the VM goes on.
                Err(err @ ApiError::Conflict(_)) => return Err(err),
                Ok(released) => json(&released).unwrap_or_else(|e| Response::error(&e)),
                Err(err) => Response::error(&err),
            };
            let backend = Arc::clone(backend);
            Ok(response.after_sent(move || backend.end_after_release()))
        }
        Call::PutBalloon(config) => backend.put_balloon(config).map(|()| Response::no_content()),
        Call::PatchBalloon(update) => backend
            .patch_balloon(update)
            .map(|()| Response::no_content()),
        Call::Balloon => json(&backend.balloon()?),
        Call::BalloonStats => json(&backend.balloon_stats()?),
        Call::BalloonMetrics => json(&backend.balloon_metrics()?),
        Call::PatchBalloonStats(update) => backend
            .patch_balloon_stats(update)
            .map(|()| Response::no_content()),
        Call::PutVsock(config) => backend.put_vsock(config).map(|()| Response::no_content()),
        Call::Vsock => json(&backend.vsock()?),
        Call::VsockMetrics => json(&backend.vsock_metrics()?),
        Call::PutDrive(id, config) => backend
            .put_drive(&id, config)
            .map(|()| Response::no_content()),
        Call::DriveMetrics(id) => json(&backend.drive_metrics(&id)?),
        Call::PutNet(id, config) => backend
            .put_net(&id, config)
            .map(|()| Response::no_content()),
        Call::NetMetrics(id) => json(&backend.net_metrics(&id)?),
    }
}

fn json<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    serde_json::to_string(value)
        .map(Response::json)
        .map_err(|e| ApiError::Internal(format!("cannot encode the response: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, body: &str) -> Request {
        let mut req = Request::new(method, target, body.as_bytes());
        req.content_type = Some("application/json".into());
        req
    }

    fn fault(method: &str, target: &str, body: &str) -> (u16, String) {
        let err = parse(&request(method, target, body)).unwrap_err();
        (err.status(), err.to_string())
    }

    #[test]
    fn every_route_parses() {
        let cases = [
            ("GET", "/vm", "", Call::VmInfo),
            (
                "PUT",
                "/actions",
                r#"{"action_type":"InstanceStart"}"#,
                Call::Start,
            ),
            (
                "PUT",
                "/actions",
                r#"{"action_type":"ReleaseMemory"}"#,
                Call::ReleaseMemory,
            ),
            (
                "PUT",
                "/balloon",
                r#"{"amount_mib":64,"deflate_on_oom":true}"#,
                Call::PutBalloon(BalloonConfig {
                    amount_mib: 64,
                    deflate_on_oom: true,
                    stats_polling_interval_s: 0,
                    free_page_reporting: false,
                }),
            ),
            (
                "PATCH",
                "/balloon",
                r#"{"amount_mib":3}"#,
                Call::PatchBalloon(BalloonUpdate { amount_mib: 3 }),
            ),
            ("GET", "/balloon", "", Call::Balloon),
            ("GET", "/balloon/statistics", "", Call::BalloonStats),
            (
                "PATCH",
                "/balloon/statistics",
                r#"{"stats_polling_interval_s":5}"#,
                Call::PatchBalloonStats(BalloonStatsUpdate {
                    stats_polling_interval_s: 5,
                }),
            ),
            (
                "PUT",
                "/vsock",
                r#"{"guest_cid":3,"uds_path":"/tmp/v.sock"}"#,
                Call::PutVsock(VsockConfig {
                    guest_cid: 3,
                    uds_path: "/tmp/v.sock".into(),
                    vsock_id: None,
                }),
            ),
            (
                "PUT",
                "/vsock",
                r#"{"vsock_id":"vsock0","guest_cid":4,"uds_path":"v"}"#,
                Call::PutVsock(VsockConfig {
                    guest_cid: 4,
                    uds_path: "v".into(),
                    vsock_id: Some("vsock0".into()),
                }),
            ),
            ("GET", "/vsock", "", Call::Vsock),
            ("GET", "/vsock/metrics", "", Call::VsockMetrics),
            (
                "GET",
                "/drives/rootfs/metrics",
                "",
                Call::DriveMetrics("rootfs".into()),
            ),
            (
                "GET",
                "/network-interfaces/eth0/metrics",
                "",
                Call::NetMetrics("eth0".into()),
            ),
        ];
        for (method, target, body, call) in cases {
            assert_eq!(
                parse(&request(method, target, body)),
                Ok(call),
                "{method} {target}"
            );
        }
    }

    #[test]
    fn bad_bodies_name_the_fault() {
        assert_eq!(
            fault(
                "PUT",
                "/balloon",
                r#"{"amount_mib":"x","deflate_on_oom":true}"#
            ),
            (
                400,
                r#"amount_mib: invalid type: string "x", expected u32 at line 1 column 17"#.into()
            )
        );
        let (status, msg) = fault(
            "PUT",
            "/balloon",
            r#"{"amount_mib":1,"deflate_on_oom":true,"bogus":1}"#,
        );
        assert_eq!(status, 400);
        assert!(
            msg.starts_with("bogus: unknown field `bogus`, expected one of"),
            "{msg}"
        );
        let (status, msg) = fault("PUT", "/balloon", r#"{"amount_mib":1}"#);
        assert_eq!(status, 400);
        assert!(msg.starts_with("missing field `deflate_on_oom`"), "{msg}");
        let (status, msg) = fault("PATCH", "/balloon", r#"{"amount_mib":-1}"#);
        assert_eq!(status, 400);
        assert!(
            msg.starts_with("amount_mib: invalid value: integer `-1`"),
            "{msg}"
        );
        let (status, msg) = fault(
            "PATCH",
            "/balloon/statistics",
            r#"{"stats_polling_interval_s":70000}"#,
        );
        assert_eq!(status, 400);
        assert!(
            msg.starts_with("stats_polling_interval_s: invalid value"),
            "{msg}"
        );
        let (status, msg) = fault("PUT", "/actions", r#"{"action_type":"Reboot"}"#);
        assert_eq!(status, 400);
        assert!(
            msg.starts_with("action_type: unknown variant `Reboot`, expected one of"),
            "{msg}"
        );
        let (status, msg) = fault("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
        assert_eq!(status, 400);
        assert!(msg.contains("SendCtrlAltDel is not supported"), "{msg}");
        let (status, msg) = fault("PUT", "/vsock", r#"{"guest_cid":-3,"uds_path":"v"}"#);
        assert_eq!(status, 400);
        assert!(msg.starts_with("guest_cid: invalid value"), "{msg}");
        let (status, msg) = fault("PUT", "/vsock", r#"{"guest_cid":3}"#);
        assert_eq!(status, 400);
        assert!(msg.starts_with("missing field `uds_path`"), "{msg}");
        let (status, msg) = fault("PATCH", "/balloon", r#"{"amount_mib":1} {}"#);
        assert_eq!(status, 400);
        assert!(msg.starts_with("trailing characters"), "{msg}");
        assert_eq!(
            fault("PATCH", "/balloon", "  "),
            (400, "PATCH /balloon needs a JSON request body".into())
        );
        assert_eq!(
            fault("PATCH", "/balloon", "[1]"),
            (400, "the request body must be a JSON object".into())
        );
        assert_eq!(
            fault("GET", "/vm", "{}"),
            (400, "GET /vm takes no request body".into())
        );
    }

    #[test]
    fn wrong_paths_methods_and_media_types() {
        assert_eq!(fault("GET", "/nope", "").0, 404);
        assert_eq!(fault("GET", "/balloon/", "").0, 404);
        assert_eq!(fault("GET", "/vm?x=1", "").0, 400);
        assert_eq!(
            fault("DELETE", "/balloon", ""),
            (
                405,
                "method DELETE is not allowed on /balloon (allowed: GET, PUT, PATCH)".into()
            )
        );
        assert_eq!(fault("get", "/vm", "").0, 405);
        assert_eq!(
            fault("PATCH", "/vsock", "{}"),
            (
                405,
                "method PATCH is not allowed on /vsock (allowed: GET, PUT)".into()
            )
        );
        let mut req = request("PATCH", "/balloon", r#"{"amount_mib":1}"#);
        req.content_type = Some("application/x-www-form-urlencoded".into());
        assert_eq!(parse(&req).unwrap_err().status(), 415);
        req.content_type = Some("application/json; charset=utf-8".into());
        assert!(parse(&req).is_ok());
        req.content_type = None;
        assert!(parse(&req).is_ok());
    }
}
