//! The daemon's client for a VMM's per-VM API (`vmm run --api-sock`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A VMM that does not answer within this is treated as unresponsive.
const TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum VmClientError {
    #[error("cannot talk to the VMM at {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VMM answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the VMM sent a malformed response")]
    Malformed,
}

/// One request; returns the body of a 2xx answer.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String, VmClientError> {
    let io = |source| VmClientError::Io {
        path: sock.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(sock).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).map_err(io)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(io)?;
    let status: u16 = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(VmClientError::Malformed)?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    if !(200..300).contains(&status) {
        return Err(VmClientError::Status { status, body });
    }
    Ok(body)
}

/// `PATCH /balloon {"amount_mib": mib}`.
pub fn set_balloon_target(sock: &Path, mib: u32) -> Result<(), VmClientError> {
    request(
        sock,
        "PATCH",
        "/balloon",
        Some(&format!("{{\"amount_mib\":{mib}}}")),
    )
    .map(|_| ())
}

/// `GET /balloon` as JSON.
pub fn balloon(sock: &Path) -> Result<serde_json::Value, VmClientError> {
    let body = request(sock, "GET", "/balloon", None)?;
    serde_json::from_str(&body).map_err(|_| VmClientError::Malformed)
}
