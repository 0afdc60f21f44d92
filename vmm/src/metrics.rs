//! Metrics lines for `PUT /metrics`: one JSON object per line, written to
//! a file or named pipe every 60 seconds and on `FlushMetrics`, like
//! Firecracker's (whose groups and counters differ: these are ours).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::api::VmInfo;

/// One line of metrics.
#[derive(Debug, Serialize)]
pub struct MetricsLine {
    /// When the line was written, ms since the Unix epoch.
    pub utc_timestamp_ms: u64,
    /// The instance id (`vmm run --id`).
    pub id: String,
    /// As `GET /vm`: state and memory cost.
    pub vm: VmInfo,
    /// As `GET /balloon/metrics`, when the VM has a running balloon.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balloon: Option<balloon::BalloonMetrics>,
    /// As `GET /vsock/metrics`, when the VM has a running vsock device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<vsock::VsockMetrics>,
}

/// Where metrics lines go.
#[derive(Debug)]
pub struct MetricsFile(Mutex<File>);

impl MetricsFile {
    /// Opens `path` for appending, creating a regular file if it is
    /// missing; a named pipe is opened for reading too, so that opening it
    /// does not wait for a reader.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot open {}: {e}", path.display()))
            })?;
        Ok(MetricsFile(Mutex::new(file)))
    }

    /// Appends `line` as one line of JSON, in one write.
    pub fn write_line(&self, line: &MetricsLine) -> io::Result<()> {
        let mut text = serde_json::to_vec(line)?;
        text.push(b'\n');
        let mut file = self.0.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&text)
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
