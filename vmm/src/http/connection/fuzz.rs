//! The framing code under a fuzzed client: what [`crate::http::fuzz`]
//! makes is fed through a real socket pair in random pieces, exactly as the
//! reactor feeds it (`read_available` up to the limit, then `take_request`
//! until it needs more), and compared with what the same code makes of
//! the whole input at once.
//!
//! Checked: no panic; the buffer never holds more than the head and body
//! limits together, and never stays full while a request is incomplete
//! (the reactor would wait for bytes it will not read); the requests taken
//! do not depend on how the bytes arrived; each has a body within the
//! limit and exactly as long as announced; a request that cannot be read
//! is a 4xx whose answer is a well-formed response; `100 Continue` is sent
//! at most once per request and is all the client hears meanwhile.

use std::io::{ErrorKind, Read, Write};

use super::*;
use crate::fuzz_support::{run_cases, Rng};
use crate::http::fuzz::{frame_all, limits, requests, shown};

const CASES: u64 = 6000;

/// `100 Continue` as the server sends it.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Feeds `input` in random pieces; the requests taken, and the error if
/// one ended the connection.
fn feed(rng: &mut Rng, input: &[u8], limits: &Limits) -> (Vec<Request>, Option<ApiError>) {
    let (mut client, server) = UnixStream::pair().unwrap();
    client
        .set_write_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut conn = Connection::new(server);
    let max = limits.max_head_bytes + limits.max_body_bytes;
    let mut taken = Vec::new();
    let mut rest = input;
    let mut heard: Vec<u8> = Vec::new();
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len().min(2000) as u64) as usize;
        client.write_all(&rest[..n]).unwrap();
        rest = &rest[n..];
        loop {
            match conn.read_available(max) {
                Ok(0) => panic!("end of file from a client that is there"),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("read: {e}"),
            }
            assert!(conn.buf.len() <= max, "{} bytes buffered", conn.buf.len());
            loop {
                match conn.take_request(limits) {
                    Progress::Ready(req) => {
                        assert!(req.body.len() <= limits.max_body_bytes);
                        assert!(!req.keep_alive || req.http11);
                        taken.push(req);
                    }
                    Progress::Incomplete { .. } => {
                        assert!(
                            conn.buf.len() < max,
                            "an incomplete request fills the buffer ({} bytes)",
                            conn.buf.len()
                        );
                        break;
                    }
                    Progress::Failed(err) => {
                        check_error(&err);
                        return (taken, Some(err));
                    }
                    Progress::Closed => panic!("the client is there"),
                }
            }
        }
        // What the client hears while it sends: only `100 Continue`.
        client.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = client.read(&mut buf) {
            heard.extend(&buf[..n]);
        }
        client.set_nonblocking(false).unwrap();
    }
    assert_eq!(heard.len() % CONTINUE.len(), 0, "{heard:?}");
    assert!(heard.chunks(CONTINUE.len()).all(|c| c == CONTINUE));
    // At most one per request (those taken and the one still waiting).
    assert!(heard.len() / CONTINUE.len() <= taken.len() + 1);
    (taken, None)
}

/// An error the framing answers: a 4xx with a message, which encodes as
/// a well-formed response.
fn check_error(err: &ApiError) {
    let status = err.status();
    assert!(
        matches!(status, 400 | 411 | 413 | 417 | 431),
        "{status}: {err}"
    );
    assert!(!err.to_string().is_empty());
    let (bytes, stream) = encode(Response::error(err), true, true);
    assert!(stream.is_none());
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let head = match resp.parse(&bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!("{other:?}"),
    };
    assert_eq!(resp.code, Some(status));
    let len: usize = resp
        .headers
        .iter()
        .find(|h| h.name == "Content-Length")
        .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
        .unwrap();
    assert_eq!(bytes.len() - head, len);
}

#[test]
fn fuzz_http_framing_in_random_pieces() {
    let mut requests_taken = 0;
    let mut errors = 0;
    run_cases("http_framing", CASES, |rng| {
        let limits = limits(rng);
        let input = requests(rng, &limits);
        let (want, want_err) = frame_all(&input, &limits);
        let (got, got_err) = feed(rng, &input, &limits);
        assert!(got == want, "requests taken from {}", shown(&input));
        match (&got_err, &want_err) {
            (None, None) => {}
            (Some(g), Some(w)) => {
                let (g, w) = (g.status(), w.status());
                // A head over the limit is a 431 when the limit is reached
                // first, and whatever else is wrong with it when its end
                // arrived in the same piece: that depends on the pieces.
                assert!(g == w || g == 431 || w == 431, "{g} vs {w}");
            }
            _ => panic!(
                "in pieces {got_err:?}, at once {want_err:?}: {}",
                shown(&input)
            ),
        }
        requests_taken += got.len();
        errors += usize::from(got_err.is_some());
    });
    eprintln!("fuzz http_framing: {requests_taken} requests taken, {errors} connections failed");
}
