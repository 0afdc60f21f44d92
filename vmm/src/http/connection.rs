//! HTTP/1.1 framing: gather one request from a connection with bounded
//! sizes, write one response, whole or streamed.
//!
//! The request line and headers are parsed by `httparse` (hyper's parser);
//! this file adds what a server needs around it: limits, bodies by
//! `Content-Length` only, `Expect: 100-continue`, keep-alive and
//! pipelining, chunked streaming responses. HTTP/1.0 requests are answered
//! and the connection closed.
//!
//! Reading never blocks: the server's reactor thread calls
//! [`Connection::read_available`] when the socket is readable and
//! [`Connection::take_request`] after it, and keeps the deadlines itself.
//! Writing a response blocks, bounded by the socket's write timeout, on a
//! worker thread; the reactor's own short answers (408, 503, parse errors)
//! use [`Connection::respond_now`], which never blocks.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::error::ApiError;
use super::limits::{Limits, MAX_HEADER_FIELDS};
use super::message::{Body, Chunk, ChunkSource, Request, Response};

/// How long a stream waits for its next chunk before it checks again
/// whether the client is still there.
const STREAM_POLL: Duration = Duration::from_millis(100);

/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 4096;

/// What the bytes gathered so far on a connection amount to.
#[derive(Debug)]
pub(crate) enum Progress {
    /// Not a whole request yet; `head_done` once the line and headers are
    /// in and only the body is missing.
    Incomplete { head_done: bool },
    /// A complete request, taken out of the buffer.
    Ready(Request),
    /// The request cannot be read: answer this error, then close (where
    /// the next request would start is unknown).
    Failed(ApiError),
    /// The client went away (a `100 Continue` could not be written).
    Closed,
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
///
/// The socket stays in blocking mode (with the server's write timeout), so
/// that workers write responses with plain blocking writes; reads and the
/// reactor's writes pass `MSG_DONTWAIT` instead.
pub(crate) struct Connection {
    stream: UnixStream,
    buf: Vec<u8>,
    /// Responses written so far (a keep-alive connection that answered
    /// one is closed silently when idle, a fresh one gets a 408).
    answered: usize,
    /// `100 Continue` was sent for the request now in `buf`.
    continued: bool,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Self {
        Connection {
            stream,
            buf: Vec::new(),
            answered: 0,
            continued: false,
        }
    }

    /// The socket, for `poll` and for `shutdown` from another thread.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.stream.as_raw_fd()
    }

    /// Whether bytes of a next request are already here.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Whether a response has been written on this connection.
    pub fn answered_any(&self) -> bool {
        self.answered > 0
    }

    /// Reads what the socket holds now, without blocking, into the buffer
    /// (at most `max` bytes in all, a little more than one request can
    /// need: the rest waits in the socket). `Ok(0)` is end of file; a
    /// `WouldBlock` error means nothing was there.
    pub fn read_available(&mut self, max: usize) -> io::Result<usize> {
        if self.buf.len() >= max {
            // Cannot happen for an incomplete request (the limits fail it
            // first); never mistake a full buffer for end of file.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut total = 0;
        while self.buf.len() < max {
            let want = chunk.len().min(max - self.buf.len());
            match recv(&self.stream, &mut chunk[..want]) {
                Ok(0) => return Ok(total),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && total > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Reads and drops what the socket holds now, without blocking; the
    /// byte count, `Ok(0)` at end of file.
    pub fn discard_available(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match recv(&self.stream, &mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    /// Takes the request at the start of the buffer if it is complete.
    /// Sends `100 Continue` (without blocking) once the head of a request
    /// that asks for it is in and its body is not.
    pub fn take_request(&mut self, limits: &Limits) -> Progress {
        let head = match parse_head(&self.buf, limits) {
            Ok(Some(head)) => head,
            Ok(None) if self.buf.len() >= limits.max_head_bytes => {
                return Progress::Failed(head_too_large(limits))
            }
            Ok(None) => return Progress::Incomplete { head_done: false },
            Err(err) => return Progress::Failed(err),
        };
        if head.len > limits.max_head_bytes {
            return Progress::Failed(head_too_large(limits));
        }
        if head.content_length > limits.max_body_bytes as u64 {
            return Progress::Failed(ApiError::PayloadTooLarge {
                length: head.content_length,
                limit: limits.max_body_bytes,
            });
        }
        // Fits in usize: it is at most max_body_bytes.
        let end = head.len + head.content_length as usize;
        if self.buf.len() < end {
            if head.expect_continue && !self.continued {
                if !self.send_now(b"HTTP/1.1 100 Continue\r\n\r\n") {
                    return Progress::Closed;
                }
                self.continued = true;
            }
            return Progress::Incomplete { head_done: true };
        }
        let body = self.buf[head.len..end].to_vec();
        self.buf.drain(..end);
        self.continued = false;
        // HTTP/1.0 gets one request per connection, even with keep-alive.
        let keep_alive = head.http11 && !head.close;
        Progress::Ready(Request {
            method: head.method,
            target: head.target,
            content_type: head.content_type,
            body,
            keep_alive,
            http11: head.http11,
        })
    }

    /// Writes a response; `close` adds `Connection: close` (always there
    /// after a stream). A streamed body is sent chunked to HTTP/1.1 clients
    /// and until close to HTTP/1.0 ones; it ends when its source ends, when
    /// the client goes away (noticed within [`STREAM_POLL`] even while the
    /// source is idle) or when a write blocks past the write timeout.
    pub fn respond(&mut self, response: Response, http11: bool, close: bool) -> io::Result<()> {
        let (out, mut source) = encode(response, http11, close);
        self.answered += 1;
        self.write_raw(&out)?;
        match &mut source {
            Some(source) => self.stream_body(source.as_mut(), http11),
            None => Ok(()),
        }
    }

    /// Writes a whole (non-stream) response with `Connection: close`
    /// without blocking: for the reactor's own answers (408, 503, parse
    /// errors), which are short and go to a socket whose buffer holds at
    /// most earlier answers. Says whether all of it went out; a stream
    /// body is not sent.
    pub fn respond_now(&mut self, response: Response) -> bool {
        let (out, _) = encode(response, true, true);
        self.answered += 1;
        self.send_now(&out)
    }

    /// Stops writing: the client reads the answer, then end of file.
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Sends the chunks of `source` until it ends or the client is gone.
    fn stream_body(&mut self, source: &mut dyn ChunkSource, chunked: bool) -> io::Result<()> {
        loop {
            match source.next_chunk(STREAM_POLL) {
                Chunk::Data(data) if data.is_empty() => {}
                Chunk::Data(data) => {
                    if chunked {
                        let mut framed = format!("{:x}\r\n", data.len()).into_bytes();
                        framed.extend_from_slice(&data);
                        framed.extend_from_slice(b"\r\n");
                        self.write_raw(&framed)?;
                    } else {
                        self.write_raw(&data)?;
                    }
                }
                Chunk::Idle => {
                    if self.peer_gone() {
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                }
                Chunk::End => {
                    return if chunked {
                        self.write_raw(b"0\r\n\r\n")
                    } else {
                        Ok(())
                    };
                }
            }
        }
    }

    /// Whether the client has closed its end (or the server shut this
    /// connection down). A client that only stopped sending (a half-close)
    /// may still be reading, so it is not gone.
    fn peer_gone(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call; a zero timeout never blocks.
        let rc = unsafe { libc::poll(&mut fd, 1, 0) };
        rc > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Writes all of `bytes` if the socket takes them now; never blocks.
    fn send_now(&self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            // SAFETY: `bytes` is a valid buffer for the call; MSG_DONTWAIT
            // never blocks, MSG_NOSIGNAL turns a hang-up into EPIPE.
            let n = unsafe {
                libc::send(
                    self.stream.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n > 0 {
                bytes = &bytes[n as usize..];
            } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            } else {
                return false;
            }
        }
        true
    }
}

/// `recv(MSG_DONTWAIT)` into `buf`.
fn recv(stream: &UnixStream, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the call.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The bytes of a response's head and whole body, and its stream source
/// if it has one.
fn encode(
    response: Response,
    http11: bool,
    close: bool,
) -> (Vec<u8>, Option<Box<dyn ChunkSource>>) {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nServer: vmm\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        // A value from a handler never splits the head.
        let value: String = value.chars().filter(|c| !c.is_control()).collect();
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    let (body, source) = match response.body {
        Body::Empty => (Vec::new(), None),
        Body::Full {
            content_type,
            bytes,
        } => {
            out.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
            (bytes, None)
        }
        Body::Stream {
            content_type,
            source,
        } => {
            out.push_str(&format!("Content-Type: {content_type}\r\n"));
            if http11 {
                out.push_str("Transfer-Encoding: chunked\r\n");
            }
            (Vec::new(), Some(source))
        }
    };
    if close || source.is_some() {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&body);
    (out, source)
}

fn head_too_large(limits: &Limits) -> ApiError {
    ApiError::HeadTooLarge {
        max_bytes: limits.max_head_bytes,
        max_fields: MAX_HEADER_FIELDS,
    }
}

/// Parses the request line and headers at the start of `buf`; `None` while
/// they are incomplete.
fn parse_head(buf: &[u8], limits: &Limits) -> Result<Option<Head>, ApiError> {
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
        201 => "Created",
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
impl Connection {
    /// Puts `bytes` in the buffer, as if read (for the fuzz harnesses).
    pub(crate) fn set_buffer(&mut self, bytes: Vec<u8>) {
        self.buf = bytes;
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<Head>, ApiError> {
        parse_head(raw.as_bytes(), &Limits::default())
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
