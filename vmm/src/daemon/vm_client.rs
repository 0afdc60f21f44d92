//! The daemon's calls into a VMM's per-VM API (`vmm run --api-sock`),
//! over the shared [`crate::http::Client`].

use std::path::Path;
use std::time::Duration;

use crate::api::{BalloonStats, BalloonUpdate};
use crate::http::{Client, ClientError};
use crate::seccomp::ThreadKind;

/// A VMM that does not answer within this is treated as unresponsive.
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum VmClientError {
    #[error(transparent)]
    Http(#[from] ClientError),
    #[error("the VMM answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the VMM sent a body that is not JSON")]
    Malformed,
}

/// One request; returns the body of a 2xx answer.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String, VmClientError> {
    request_within(sock, method, path, body, TIMEOUT)
}

/// [`request`] with its own timeout on each read and write.
fn request_within(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<String, VmClientError> {
    let res = Client::new(sock)
        .with_timeout(Some(timeout))
        .request(method, path, body)?;
    if !(200..300).contains(&res.status) {
        return Err(VmClientError::Status {
            status: res.status,
            message: res.fault_message(),
        });
    }
    Ok(res.text())
}

/// `PATCH /balloon {"amount_mib": mib}`.
pub fn set_balloon_target(sock: &Path, mib: u32) -> Result<(), VmClientError> {
    set_balloon_target_within(sock, mib, TIMEOUT)
}

/// [`set_balloon_target`], waiting at most `timeout` for each read and
/// write.
pub fn set_balloon_target_within(
    sock: &Path,
    mib: u32,
    timeout: Duration,
) -> Result<(), VmClientError> {
    let body = serde_json::to_string(&BalloonUpdate { amount_mib: mib })
        .expect("a struct of integers serializes");
    request_within(sock, "PATCH", "/balloon", Some(&body), timeout).map(|_| ())
}

/// `GET /balloon/statistics`, waiting at most `timeout` for each read
/// and write.
pub fn balloon_statistics_within(
    sock: &Path,
    timeout: Duration,
) -> Result<BalloonStats, VmClientError> {
    let body = request_within(sock, "GET", "/balloon/statistics", None, timeout)?;
    serde_json::from_str(&body).map_err(|_| VmClientError::Malformed)
}

/// How many VMMs are asked at once by [`ask_each`].
const PARALLEL: usize = 32;

/// `ask(item)` for every item, [`PARALLEL`] at a time on scoped threads:
/// a VMM that does not answer (stopped behind our back, overloaded)
/// costs one timeout for the whole lot, not one per VM. Answers come
/// back in the order of `items`.
///
/// Each thread narrows its creator's seccomp filter to the asker's (a
/// VMM client, nothing else) before it connects: the answer comes from a
/// VMM, which its guest may have taken over. `ask` must do no more than
/// ask (see [`crate::seccomp::daemon_filters`]).
pub fn ask_each<I: Sync, T: Send>(items: &[I], ask: impl Fn(&I) -> T + Sync) -> Vec<T> {
    let ask = &ask;
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(PARALLEL) {
        std::thread::scope(|s| {
            let asks: Vec<_> = chunk
                .iter()
                .map(|i| {
                    s.spawn(move || {
                        crate::seccomp::apply_or_exit(ThreadKind::DaemonAsker, 1);
                        ask(i)
                    })
                })
                .collect();
            // A panicking ask is a bug here; the others' answers stand.
            out.extend(asks.into_iter().map(|a| a.join().expect("an ask panicked")));
        });
    }
    out
}

/// Whether the VMM's `GET /vm` says its VM runs (false for any error).
pub fn vm_is_running(sock: &Path) -> bool {
    request(sock, "GET", "/vm", None)
        .ok()
        .and_then(|body| serde_json::from_str::<crate::api::VmInfo>(&body).ok())
        .is_some_and(|info| info.state == crate::api::VmState::Running)
}

/// `GET /balloon`, waiting at most `timeout` for each read and write.
pub fn balloon_within(
    sock: &Path,
    timeout: Duration,
) -> Result<crate::api::BalloonInfo, VmClientError> {
    let body = request_within(sock, "GET", "/balloon", None, timeout)?;
    serde_json::from_str(&body).map_err(|_| VmClientError::Malformed)
}

/// `PUT /actions {"action_type": "ReleaseMemory"}`: the VMM stops its
/// vCPUs, releases guest RAM and answers with what it released, then
/// exits. `timeout` bounds the wait for the answer.
pub fn release_memory(
    sock: &Path,
    timeout: Duration,
) -> Result<crate::api::MemoryReleased, VmClientError> {
    let body = request_within(
        sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type":"ReleaseMemory"}"#),
        timeout,
    )?;
    serde_json::from_str(&body).map_err(|_| VmClientError::Malformed)
}
