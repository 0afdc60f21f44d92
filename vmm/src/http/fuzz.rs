//! Fuzzed clients against the HTTP server both APIs run on.
//!
//! [`requests`] makes what a client could send: pipelined requests built
//! from real shapes (methods, targets, versions, `Content-Length`,
//! `Connection`, `Expect`, `Transfer-Encoding`, bodies), then mutated
//! (bytes flipped, framing tokens spliced in, parts cut, doubled or
//! dropped, heads longer than the limit, too many fields), or plain
//! garbage. `connection::fuzz` feeds it to the framing code in random
//! pieces; the harness here sends it to a real [`Server`] over its socket.
//!
//! The server harness checks that every connection gets exactly the
//! answers the framing says it should (one per complete request up to the
//! first that closes, then one error for a request that cannot be read),
//! each a well-formed HTTP/1.1 response (status line, `Content-Length` or
//! chunked framing that matches the body, errors as
//! `{"fault_message": "..."}`), and then end of file; and that the server
//! still answers a plain request at the end. The server is shared by the
//! cases (that is the point: it must stay up), so `VMM_FUZZ_CASE` replays a
//! case's input against a fresh server only.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use super::connection::Connection;
use super::*;
use crate::fuzz_support::{run_cases, Rng};

const SERVER_CASES: u64 = 2000;

const METHODS: &[&str] = &[
    "GET", "PUT", "PATCH", "POST", "DELETE", "HEAD", "get", "OPTIONS", "G\x01T", "",
];
const TARGETS: &[&str] = &[
    "/vm",
    "/balloon",
    "/balloon/statistics",
    "/stream",
    "/events?since=3&follow",
    "*",
    "/a/../b",
    "/%00%ff",
    "http://localhost/vm",
    "",
    "/\u{e9}",
];
const VERSIONS: &[&str] = &[
    "HTTP/1.1",
    "HTTP/1.1",
    "HTTP/1.0",
    "HTTP/2.0",
    "HTTP/1.1x",
    "http/1.1",
];

/// Framing that matters to the parser, spliced in by the mutator.
const TOKENS: &[&str] = &[
    "\r\n",
    "\r\n\r\n",
    "\n",
    "\r",
    ":",
    " ",
    "\t",
    "Content-Length: ",
    "Content-Length: 5\r\n",
    "Content-Length: 99999999999999999999999\r\n",
    "Content-Length: -1\r\n",
    "Content-Length: 0x10\r\n",
    "Transfer-Encoding: chunked\r\n",
    "Expect: 100-continue\r\n",
    "Expect: 200-ok\r\n",
    "Connection: close\r\n",
    "Connection: keep-alive, Close\r\n",
    "Content-Type: text/plain\r\n",
    "GET /vm HTTP/1.1\r\n",
    "HTTP/1.1",
    "\0",
    "\u{ff}",
    "\u{7f}",
    "{\"amount_mib\": 1}",
];

/// One request of a real shape, sometimes with a flaw.
fn request(rng: &mut Rng, limits: &Limits) -> Vec<u8> {
    let method = if rng.one_in(8) {
        rng.pick(METHODS)
    } else {
        rng.pick(&METHODS[..5])
    };
    let target = if rng.one_in(6) {
        rng.pick(TARGETS)
    } else {
        rng.pick(&TARGETS[..5])
    };
    let version = if rng.one_in(10) {
        rng.pick(VERSIONS)
    } else {
        "HTTP/1.1"
    };
    let mut out = format!("{method} {target} {version}\r\nHost: localhost\r\n").into_bytes();
    let body_len = match rng.below(12) {
        0..=3 => 0,
        4..=6 => rng.below(64).min(limits.max_body_bytes as u64) as usize,
        7 => limits.max_body_bytes,
        8 => limits.max_body_bytes + rng.range(1, 16) as usize,
        _ => rng.below(limits.max_body_bytes as u64 + 1) as usize,
    };
    let body: Vec<u8> = if rng.bool() {
        let mut b = format!("{{\"amount_mib\": {}}}", rng.below(100)).into_bytes();
        b.resize(body_len, b' ');
        b
    } else {
        rng.bytes(body_len)
    };
    if body_len > 0 || rng.one_in(4) {
        let declared = match rng.below(20) {
            0 => body_len + rng.range(1, 8) as usize,
            1 => body_len.saturating_sub(rng.range(1, 8) as usize),
            _ => body_len,
        };
        out.extend(format!("Content-Length: {declared}\r\n").bytes());
        if rng.one_in(10) {
            // The same again, or another.
            let again = if rng.bool() { declared } else { declared + 1 };
            out.extend(format!("content-length:{again}\r\n").bytes());
        }
    }
    if rng.bool() {
        out.extend(b"Content-Type: application/json\r\n");
    }
    match rng.below(12) {
        0 => out.extend(b"Connection: close\r\n"),
        1 => out.extend(b"Connection: keep-alive\r\n"),
        2 => out.extend(b"Expect: 100-continue\r\n"),
        3 if rng.one_in(4) => out.extend(b"Transfer-Encoding: chunked\r\n"),
        4 if rng.one_in(4) => {
            // Too many fields, or one too long.
            if rng.bool() {
                for i in 0..MAX_HEADER_FIELDS {
                    out.extend(format!("X-{i}: y\r\n").bytes());
                }
            } else {
                let long = "a".repeat(limits.max_head_bytes);
                out.extend(format!("X-Long: {long}\r\n").bytes());
            }
        }
        _ => {}
    }
    out.extend(b"\r\n");
    out.extend(body);
    out
}

/// What a client sends on one connection: pipelined requests, mutated or
/// not, or garbage.
pub(super) fn requests(rng: &mut Rng, limits: &Limits) -> Vec<u8> {
    let mut out = Vec::new();
    match rng.below(16) {
        0 => {
            let n = rng.below(600) as usize;
            return rng.bytes(n);
        }
        1 => {
            let b = rng.pick(&[b'\n', b'\r', b' ', b'a', 0]);
            out.resize(rng.below(2 * limits.max_head_bytes as u64) as usize, b);
            return out;
        }
        _ => {}
    }
    for _ in 0..rng.range(1, 4) {
        out.extend(request(rng, limits));
    }
    if !rng.one_in(3) {
        return out;
    }
    for _ in 0..rng.range(1, 6) {
        let at = rng.below(out.len() as u64 + 1) as usize;
        match rng.below(6) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len() as u64) as usize;
                out[i] = rng.next() as u8;
            }
            1 => {
                let t = rng.pick(TOKENS).as_bytes().to_vec();
                out.splice(at..at, t);
            }
            2 => {
                let end = (at + rng.below(40) as usize).min(out.len());
                out.drain(at..end);
            }
            3 => {
                let end = (at + rng.below(200) as usize).min(out.len());
                let dup = out[at..end].to_vec();
                out.splice(at..at, dup);
            }
            4 => out.truncate(at),
            _ => {
                let digits = rng.next().to_string();
                out.splice(at..at, digits.into_bytes());
            }
        }
    }
    out
}

/// Random limits, small ones often, so that inputs cross them.
pub(super) fn limits(rng: &mut Rng) -> Limits {
    let mut limits = Limits::default();
    if rng.one_in(3) {
        limits.max_head_bytes = rng.range(32, 2048) as usize;
        limits.max_body_bytes = rng.range(0, 2048) as usize;
    }
    limits
}

/// What the framing makes of `bytes` when it has them all: the requests
/// it takes, then the error it answers if it gets to one.
pub(super) fn frame_all(bytes: &[u8], limits: &Limits) -> (Vec<Request>, Option<ApiError>) {
    let (a, _b) = UnixStream::pair().unwrap();
    let mut conn = Connection::new(a);
    conn.set_buffer(bytes.to_vec());
    let mut taken = Vec::new();
    loop {
        match conn.take_request(limits) {
            connection::Progress::Ready(req) => taken.push(req),
            connection::Progress::Failed(err) => return (taken, Some(err)),
            connection::Progress::Incomplete { .. } | connection::Progress::Closed => {
                return (taken, None)
            }
        }
    }
}

/// The start of `input`, for a failure message.
pub(super) fn shown(input: &[u8]) -> String {
    let cut = &input[..input.len().min(400)];
    format!("{:?} ({} bytes)", String::from_utf8_lossy(cut), input.len())
}

/// Answers everything with 200 and what it got; `/stream` with a short
/// stream.
struct Echo;

impl Handler for Echo {
    fn handle(&self, req: &Request) -> Response {
        if req.path() == "/stream" {
            struct Two(u8);
            impl ChunkSource for Two {
                fn next_chunk(&mut self, _: Duration) -> Chunk {
                    self.0 += 1;
                    match self.0 {
                        1 => Chunk::Data(b"{\"n\":1}\n".to_vec()),
                        2 => Chunk::Idle,
                        3 => Chunk::Data(b"{\"n\":2}\n".to_vec()),
                        _ => Chunk::End,
                    }
                }
            }
            return Response::stream(NDJSON, Box::new(Two(0)));
        }
        Response::json_value(
            200,
            &serde_json::json!({
                "method": req.method, "target": req.target, "len": req.body.len(),
            }),
        )
    }
}

/// One response read off a client's socket.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Splits what a client read into responses, checking each is well
/// formed; interim `100 Continue` answers are skipped.
pub(crate) fn answers(mut raw: &[u8]) -> Vec<Answer> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let head = match resp.parse(raw) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "not an HTTP response ({other:?}): {:?}",
                String::from_utf8_lossy(raw)
            ),
        };
        assert_eq!(resp.version, Some(1), "HTTP/1.1 responses only");
        let status = resp.code.unwrap();
        assert!(!resp.reason.unwrap_or("").is_empty(), "a reason phrase");
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        raw = &raw[head..];
        if status == 100 {
            continue;
        }
        assert_eq!(header("server").as_deref(), Some("vmm"));
        let body = if let Some(len) = header("content-length") {
            let len: usize = len.parse().expect("a decimal Content-Length");
            assert!(raw.len() >= len, "body shorter than Content-Length");
            let (body, rest) = raw.split_at(len);
            raw = rest;
            body.to_vec()
        } else if header("transfer-encoding").as_deref() == Some("chunked") {
            let mut body = Vec::new();
            loop {
                let line_end = raw
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("chunk size");
                let size =
                    usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap(), 16)
                        .expect("hex chunk size");
                raw = &raw[line_end + 2..];
                body.extend(&raw[..size]);
                assert_eq!(&raw[size..size + 2], b"\r\n");
                raw = &raw[size + 2..];
                if size == 0 {
                    break;
                }
            }
            body
        } else if status == 204 {
            Vec::new()
        } else {
            // A stream to an HTTP/1.0 client: until end of file.
            std::mem::take(&mut raw).to_vec()
        };
        if status >= 400 {
            let v: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error body");
            let msg = v["fault_message"].as_str().expect("fault_message");
            assert!(!msg.is_empty());
            if status == 405 {
                assert!(header("allow").is_some());
            }
        }
        let headers = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        out.push(Answer {
            status,
            headers,
            body,
        });
    }
    out
}

/// Sends `input` in random pieces on a fresh connection, half-closes, and
/// reads until end of file.
fn exchange(rng: &mut Rng, path: &std::path::Path, input: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut rest = input;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len().min(3000) as u64) as usize;
        // The server may have answered an error and closed: then writes
        // fail, and what it said is still there to read.
        if s.write_all(&rest[..n]).is_err() {
            break;
        }
        rest = &rest[n..];
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => {}
        // A reset after an error answer the client did not read in time.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("reading the answers: {e} (after {} bytes)", raw.len()),
    }
    raw
}

/// The statuses the server must answer `input` with.
fn expected(input: &[u8], limits: &Limits) -> Vec<u16> {
    let (taken, err) = frame_all(input, limits);
    let mut statuses = Vec::new();
    for req in &taken {
        statuses.push(200);
        if !req.keep_alive || req.path() == "/stream" {
            return statuses;
        }
    }
    if let Some(err) = err {
        statuses.push(err.status());
    }
    statuses
}

fn start(limits: Limits, n: u64) -> (Server, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("vmm-http-fuzz-{}-{n}.sock", std::process::id()));
    let config = ServerConfig {
        limits,
        thread_name: "fuzz-http",
        who: "fuzz",
        seccomp: None,
    };
    let server = Server::start(&path, Arc::new(Echo), config).unwrap();
    (server, path)
}

#[test]
fn fuzz_http_server_answers_or_closes_every_connection() {
    let mut server: Option<(Server, std::path::PathBuf, Limits)> = None;
    // Clients that sent part of a request (or nothing) and wait: they hold
    // connections while the others are served.
    let mut idle: Vec<UnixStream> = Vec::new();
    let mut n = 0u64;
    let mut answered = 0u64;
    let mut errors = 0u64;
    run_cases("http_server", SERVER_CASES, |rng| {
        // A new server with other limits now and then (and for a replay).
        if server.is_none() || rng.one_in(100) {
            idle.clear();
            if let Some((s, _, _)) = server.take() {
                s.shutdown();
            }
            let mut limits = limits(rng);
            // Room for the idle clients and for connections that answered
            // an error and still drain what their client sent (they hold a
            // slot for a moment after the client saw the end).
            limits.max_connections = 16;
            limits.workers = 2;
            limits.max_streams = 1;
            // Generous: the client never makes the server wait, and a
            // loaded machine must not turn into a 408.
            limits.request_timeout = Duration::from_secs(60);
            limits.idle_timeout = Duration::from_secs(60);
            n += 1;
            let (s, path) = start(limits, n);
            server = Some((s, path, limits));
        }
        let (_, path, limits) = server.as_ref().unwrap();
        if rng.one_in(20) {
            if idle.len() < 2 {
                let mut s = UnixStream::connect(path).unwrap();
                // Never a whole head: a waiting client must not hold the
                // one stream worker, which would make others' 503s right.
                let part = requests(rng, limits);
                let head_end = part
                    .windows(2)
                    .position(|w| w == b"\n\n" || w == b"\n\r")
                    .unwrap_or(part.len());
                let cut = rng.below(head_end as u64 + 1) as usize;
                let _ = s.write_all(&part[..cut]);
                idle.push(s);
            } else {
                idle.remove(0);
            }
        }
        let input = requests(rng, limits);
        let raw = exchange(rng, path, &input);
        let got = answers(&raw);
        let want = expected(&input, limits);
        let got_statuses: Vec<u16> = got.iter().map(|a| a.status).collect();
        // A head over the limit is a 431 when the limit is reached first,
        // and whatever else is wrong with it when its end arrived in the
        // same piece: that depends on the pieces.
        let same = got_statuses.len() == want.len()
            && got_statuses
                .iter()
                .zip(&want)
                .all(|(g, w)| g == w || *g == 431 || *w == 431);
        assert!(
            same,
            "answers {got_statuses:?} ({}), expected {want:?} for {}",
            got.iter()
                .filter(|a| a.status >= 500)
                .map(|a| String::from_utf8_lossy(&a.body).into_owned())
                .collect::<Vec<_>>()
                .join(", "),
            shown(&input)
        );
        for a in &got {
            if a.status == 200 && !a.body.starts_with(b"{\"n\"") {
                let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
                assert!(v["len"].as_u64().unwrap() <= limits.max_body_bytes as u64);
            }
        }
        answered += got.len() as u64;
        errors += got.iter().filter(|a| a.status >= 400).count() as u64;
    });
    // Still up, and still answering.
    drop(idle);
    let (server, path, _) = server.unwrap();
    let r = Client::new(&path).request("GET", "/vm", None).unwrap();
    assert_eq!(r.status, 200);
    server.shutdown();
    eprintln!("fuzz http_server: {answered} answers, {errors} of them errors");
}
