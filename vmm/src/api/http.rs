//! HTTP/1.1 framing for the API: read one request from a connection with
//! bounded sizes and deadlines, write one response.
//!
//! The request line and headers are parsed by `httparse` (hyper's parser);
//! this file adds what a server needs around it: limits, timeouts, bodies
//! by `Content-Length` only, `Expect: 100-continue`, keep-alive and
//! pipelining. HTTP/1.0 requests are answered and the connection closed.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::error::ApiError;

/// The most header fields a request may have.
pub const MAX_HEADER_FIELDS: usize = 32;

/// Limits that keep one client from holding or exhausting the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest request line plus headers, in bytes (431 beyond).
    pub max_head_bytes: usize,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Time from a request's first byte to its last (408 beyond).
    pub request_timeout: Duration,
    /// How long a connection may wait before its first byte of a request:
    /// a fresh connection gets a 408, an idle keep-alive one is closed.
    pub idle_timeout: Duration,
    /// How long writing a response may block on a client that does not read.
    pub write_timeout: Duration,
    /// Connections served at once (503 beyond).
    pub max_connections: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_head_bytes: 8 * 1024,
            max_body_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            max_connections: 16,
        }
    }
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The request target, e.g. `/balloon`.
    pub target: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// What reading from a connection gave.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A complete request.
    Request(Request),
    /// The client went away, or an idle keep-alive connection timed out:
    /// close without answering.
    Closed,
    /// The request cannot be read: answer this error, then close (where
    /// the next request would start is unknown).
    Failed(ApiError),
}

/// A response to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body; `None` for 204.
    pub body: Option<String>,
    /// `Allow` header, for 405.
    pub allow: Option<&'static str>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Response {
            status: 204,
            body: None,
            allow: None,
        }
    }

    /// 200 with a JSON body.
    pub fn json(body: String) -> Self {
        Response {
            status: 200,
            body: Some(body),
            allow: None,
        }
    }

    /// The error's status with `{"fault_message": ...}`.
    pub fn error(err: &ApiError) -> Self {
        let allow = match err {
            ApiError::MethodNotAllowed { allowed, .. } => Some(*allowed),
            _ => None,
        };
        Response {
            status: err.status(),
            body: Some(err.fault_body()),
            allow,
        }
    }
}

/// The parsed request line and the headers the server acts on.
struct Head {
    len: usize,
    method: String,
    target: String,
    http11: bool,
    content_length: u64,
    content_type: Option<String>,
    close: bool,
    expect_continue: bool,
}

/// A client connection and the bytes read from it but not yet used.
pub(crate) struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
    answered: usize,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Self {
        Connection {
            stream,
            buf: Vec::new(),
            answered: 0,
        }
    }

    /// Reads the next request, waiting at most `idle_timeout` for it to
    /// begin and `request_timeout` for it to complete.
    pub fn next_request(&mut self, limits: &ApiLimits) -> Incoming {
        if self.buf.is_empty() {
            match self.fill(Instant::now() + limits.idle_timeout) {
                Ok(0) => return Incoming::Closed,
                Ok(_) => {}
                Err(e) if is_timeout(&e) && self.answered == 0 => {
                    return Incoming::Failed(ApiError::RequestTimeout(format!(
                        "no request arrived within {} ms of connecting",
                        limits.idle_timeout.as_millis()
                    )))
                }
                Err(_) => return Incoming::Closed,
            }
        }
        let deadline = Instant::now() + limits.request_timeout;
        let timed_out = |what: &str| {
            Incoming::Failed(ApiError::RequestTimeout(format!(
                "the request {what} did not arrive within {} ms",
                limits.request_timeout.as_millis()
            )))
        };

        let head = loop {
            match parse_head(&self.buf, limits) {
                Ok(Some(head)) => break head,
                Ok(None) if self.buf.len() >= limits.max_head_bytes => {
                    return Incoming::Failed(head_too_large(limits))
                }
                Ok(None) => {}
                Err(err) => return Incoming::Failed(err),
            }
            match self.fill(deadline) {
                Ok(0) => return Incoming::Closed,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return timed_out("line and headers"),
                Err(_) => return Incoming::Closed,
            }
        };
        if head.len > limits.max_head_bytes {
            return Incoming::Failed(head_too_large(limits));
        }
        if head.content_length > limits.max_body_bytes as u64 {
            return Incoming::Failed(ApiError::PayloadTooLarge {
                length: head.content_length,
                limit: limits.max_body_bytes,
            });
        }
        // Fits in usize: it is at most max_body_bytes.
        let end = head.len + head.content_length as usize;
        if head.expect_continue
            && self.buf.len() < end
            && self.write_raw(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return Incoming::Closed;
        }
        while self.buf.len() < end {
            match self.fill(deadline) {
                Ok(0) => return Incoming::Closed,
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return timed_out("body"),
                Err(_) => return Incoming::Closed,
            }
        }

        let body = self.buf[head.len..end].to_vec();
        self.buf.drain(..end);
        // HTTP/1.0 gets one request per connection, even with keep-alive.
        let keep_alive = head.http11 && !head.close;
        Incoming::Request(Request {
            method: head.method,
            target: head.target,
            content_type: head.content_type,
            body,
            keep_alive,
        })
    }

    /// Writes a response; `close` adds `Connection: close`.
    pub fn respond(&mut self, response: &Response, close: bool) -> io::Result<()> {
        self.answered += 1;
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nServer: vmm\r\n",
            response.status,
            reason(response.status)
        );
        if let Some(allow) = response.allow {
            out.push_str(&format!("Allow: {allow}\r\n"));
        }
        if let Some(body) = &response.body {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        if let Some(body) = &response.body {
            out.push_str(body);
        }
        self.write_raw(out.as_bytes())
    }

    /// After an error response on a request that was not read to its end:
    /// stop writing, and read and drop what the client is still sending
    /// (bounded in bytes and time), so that a client busy writing its body
    /// gets to read the error instead of a broken pipe.
    pub fn close_after_error(self, limits: &ApiLimits) {
        const DRAIN_BYTES: usize = 1 << 20;
        let _ = self.stream.shutdown(Shutdown::Write);
        let deadline = Instant::now() + limits.request_timeout.min(Duration::from_secs(1));
        let mut drained = 0;
        let mut chunk = [0u8; 4096];
        let mut stream = self.stream;
        while drained < DRAIN_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => drained += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads what is there (at least one byte) before `deadline`.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let mut chunk = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn head_too_large(limits: &ApiLimits) -> ApiError {
    ApiError::HeadTooLarge {
        max_bytes: limits.max_head_bytes,
        max_fields: MAX_HEADER_FIELDS,
    }
}

/// Parses the request line and headers at the start of `buf`; `None` while
/// they are incomplete.
fn parse_head(buf: &[u8], limits: &ApiLimits) -> Result<Option<Head>, ApiError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(head_too_large(limits)),
        Err(e) => return Err(ApiError::BadRequest(format!("malformed HTTP request: {e}"))),
    };
    // A complete parse fills in method, path and version.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(ApiError::BadRequest("malformed HTTP request line".into()));
    };
    let mut head = Head {
        len,
        method: method.to_string(),
        target: target.to_string(),
        http11: version == 1,
        content_length: 0,
        content_type: None,
        close: false,
        expect_continue: false,
    };
    let mut content_length: Option<u64> = None;
    for field in req.headers.iter() {
        let value = String::from_utf8_lossy(field.value);
        let value = value.trim();
        let name = field.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = parse_content_length(value)?;
            if content_length.is_some_and(|m| m != n) {
                return Err(ApiError::BadRequest(
                    "conflicting Content-Length headers".into(),
                ));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::LengthRequired);
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            head.close |= value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"));
        } else if name.eq_ignore_ascii_case("expect") {
            if !value.eq_ignore_ascii_case("100-continue") {
                return Err(ApiError::ExpectationFailed(value.to_string()));
            }
            head.expect_continue = true;
        }
    }
    head.content_length = content_length.unwrap_or(0);
    Ok(Some(head))
}

fn parse_content_length(value: &str) -> Result<u64, ApiError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::BadRequest(format!(
            "invalid Content-Length {value:?}: expected a decimal number of bytes"
        )));
    }
    // All digits: the only failure left is overflow, which is too large.
    Ok(value.parse().unwrap_or(u64::MAX))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<Head>, ApiError> {
        parse_head(raw.as_bytes(), &ApiLimits::default())
    }

    #[test]
    fn parses_a_complete_head_and_waits_for_a_partial_one() {
        let h = head("PUT /balloon HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{")
            .unwrap()
            .unwrap();
        assert_eq!((h.method.as_str(), h.target.as_str()), ("PUT", "/balloon"));
        assert_eq!(h.content_length, 12);
        assert_eq!(h.content_type.as_deref(), Some("application/json"));
        assert!(h.http11 && !h.close);
        assert!(head("GET /vm HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn rejects_bad_framing() {
        let status = |raw: &str| head(raw).err().map(|e| e.status());
        assert_eq!(
            status("GET /vm HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("GET /vm HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            status("PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(411)
        );
        assert_eq!(
            status("PUT /vm HTTP/1.1\r\nExpect: magic\r\n\r\n"),
            Some(417)
        );
        assert_eq!(status("\x00\x01\x02 garbage\r\n\r\n"), Some(400));
        assert_eq!(status("GET /vm HTTP/2.0\r\n\r\n"), Some(400));
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        assert_eq!(
            status(&format!("GET /vm HTTP/1.1\r\n{many}\r\n")),
            Some(431)
        );
    }

    #[test]
    fn huge_content_length_is_not_an_overflow() {
        let h = head("PUT /vm HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.content_length, u64::MAX);
    }
}
