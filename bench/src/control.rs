//! Talking to a running VMM: our per-VM HTTP/JSON API and QEMU's QMP, both
//! on Unix sockets. A request can be prepared (connected, negotiated) ahead
//! of time so that only the write of the request itself is timed.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long to wait for a socket to appear and for a reply.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `path`, retrying while the server has not created it yet.
fn connect(path: &Path, timeout: Duration) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                return Ok(s);
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot connect to {}", path.display()))
            }
        }
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub struct HttpCall {
    stream: UnixStream,
    request: Vec<u8>,
}

impl HttpCall {
    /// Connects and prepares the request; nothing is sent yet.
    pub fn prepare(sock: &Path, method: &str, path: &str, body: &str) -> anyhow::Result<Self> {
        let stream = connect(sock, IO_TIMEOUT)?;
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nAccept: application/json\r\n"
        );
        if !body.is_empty() {
            request.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body);
        Ok(HttpCall {
            stream,
            request: request.into_bytes(),
        })
    }

    /// Writes the request.
    pub fn send(&mut self) -> anyhow::Result<()> {
        self.stream
            .write_all(&self.request)
            .context("writing an API request")
    }

    /// Reads the whole response; returns the status code and the body.
    pub fn finish(mut self) -> anyhow::Result<(u16, String)> {
        let mut text = String::new();
        self.stream
            .read_to_string(&mut text)
            .context("reading an API response")?;
        parse_http_response(&text)
    }

    /// Prepare, send and finish in one.
    pub fn call(
        sock: &Path,
        method: &str,
        path: &str,
        body: &str,
    ) -> anyhow::Result<(u16, String)> {
        let mut c = Self::prepare(sock, method, path, body)?;
        c.send()?;
        c.finish()
    }
}

fn parse_http_response(text: &str) -> anyhow::Result<(u16, String)> {
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// A QMP session, capabilities negotiated.
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    /// Connects (waiting for QEMU to create the socket), reads the greeting
    /// and negotiates capabilities.
    pub fn connect(sock: &Path) -> anyhow::Result<Qmp> {
        let stream = connect(sock, IO_TIMEOUT)?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut q = Qmp {
            writer: stream,
            reader,
        };
        let greeting = q.read_line()?;
        if !greeting.contains("\"QMP\"") {
            bail!("unexpected QMP greeting {greeting:?}");
        }
        q.send(r#"{"execute":"qmp_capabilities"}"#)?;
        q.reply()?;
        Ok(q)
    }

    /// Writes one command (a JSON object) without waiting for its reply.
    pub fn send(&mut self, json: &str) -> anyhow::Result<()> {
        self.writer
            .write_all(format!("{json}\n").as_bytes())
            .context("writing to QMP")
    }

    /// Reads up to the next reply, skipping events; an error reply fails.
    pub fn reply(&mut self) -> anyhow::Result<String> {
        loop {
            let line = self.read_line()?;
            if line.contains("\"return\"") {
                return Ok(line);
            }
            if line.contains("\"error\"") {
                bail!("QMP error: {line}");
            }
        }
    }

    /// Sends a command and waits for its reply.
    pub fn execute(&mut self, json: &str) -> anyhow::Result<String> {
        self.send(json)?;
        self.reply()
    }

    fn read_line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .context("reading from QMP")?;
        if n == 0 {
            bail!("QMP connection closed");
        }
        Ok(line.trim_end().to_string())
    }
}

/// The balloon's size the per-VM API reports (`GET /balloon`), in pages.
pub fn balloon_actual_pages(body: &str) -> anyhow::Result<u32> {
    let info: vmm::api::BalloonInfo =
        serde_json::from_str(body).with_context(|| format!("GET /balloon reply {body:?}"))?;
    Ok(info.actual_pages)
}

/// A QMP reply: `{"return": ...}`.
#[derive(serde::Deserialize)]
struct QmpReturn<T> {
    #[serde(rename = "return")]
    value: T,
}

/// What QEMU's `query-balloon` answers.
#[derive(serde::Deserialize)]
struct QmpBalloonInfo {
    /// Guest RAM the guest keeps (not the balloon's size), bytes.
    actual: u64,
}

/// The `actual` of a `query-balloon` reply: bytes of guest RAM the guest
/// keeps.
pub fn qmp_balloon_actual(reply: &str) -> anyhow::Result<u64> {
    let r: QmpReturn<QmpBalloonInfo> =
        serde_json::from_str(reply).with_context(|| format!("query-balloon reply {reply:?}"))?;
    Ok(r.value.actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses() {
        assert_eq!(
            parse_http_response("HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").unwrap(),
            (204, String::new())
        );
        let (s, b) = parse_http_response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_str()), (200, "{}"));
        assert!(parse_http_response("garbage").is_err());
    }

    #[test]
    fn balloon_replies() {
        let ours = r#"{"amount_mib": 32, "deflate_on_oom": false, "stats_polling_interval_s": 1,
            "free_page_reporting": true, "target_pages": 8192, "actual_pages": 256,
            "target_mib": 32, "actual_mib": 1}"#;
        assert_eq!(balloon_actual_pages(ours).unwrap(), 256);
        assert!(balloon_actual_pages(r#"{"actual_pages": 3}"#).is_err());
        let qmp = r#"{"return": {"actual": 25165824}}"#;
        assert_eq!(qmp_balloon_actual(qmp).unwrap(), 25_165_824);
        assert!(qmp_balloon_actual(r#"{"error": {"class": "GenericError"}}"#).is_err());
    }
}
