//! What a [`Handler`](super::Handler) gets and gives: one complete
//! [`Request`], one [`Response`] whose body is empty, whole, or a stream.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::error::ApiError;

/// `Content-Type` of JSON bodies.
pub const JSON: &str = "application/json";
/// `Content-Type` of newline-delimited JSON streams (one value a line).
pub const NDJSON: &str = "application/x-ndjson";
/// `Content-Type` of the Prometheus text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, as sent (methods are case-sensitive).
    pub method: String,
    /// The request target, e.g. `/balloon` or `/events?since=3`.
    pub target: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body (empty without `Content-Length`).
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// HTTP/1.1 (else 1.0, which gets no chunked responses).
    pub http11: bool,
}

impl Request {
    /// A request as a router sees it (tests and in-process callers):
    /// HTTP/1.1, `Connection: close`, a JSON content type if there is a body.
    pub fn new(method: &str, target: &str, body: &[u8]) -> Self {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            content_type: (!body.is_empty()).then(|| JSON.to_string()),
            body: body.to_vec(),
            keep_alive: false,
            http11: true,
        }
    }

    /// The target without its query string.
    pub fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(path, _)| path)
    }

    /// The query string after `?`, if there is one (possibly empty).
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }
}

/// Where the next piece of a streamed body comes from.
///
/// The server asks for the next chunk with a short `wait`; between chunks
/// it checks whether the client is still there, so a source that has
/// nothing to say for a long time does not keep a dead connection open.
pub trait ChunkSource: Send {
    /// The next chunk, waiting at most `wait` for it.
    fn next_chunk(&mut self, wait: Duration) -> Chunk;
}

/// What a [`ChunkSource`] gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Bytes to send now (an empty one is skipped).
    Data(Vec<u8>),
    /// Nothing yet; ask again.
    Idle,
    /// The stream is over: finish the response and close.
    End,
}

/// The body of a [`Response`].
pub enum Body {
    /// No body (204, or an empty 200).
    Empty,
    /// A whole body, sent with `Content-Length`.
    Full {
        /// Its `Content-Type`.
        content_type: &'static str,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// A body sent as it is produced (chunked on HTTP/1.1, until close on
    /// HTTP/1.0); the connection closes after it.
    Stream {
        /// Its `Content-Type`.
        content_type: &'static str,
        /// Where the chunks come from.
        source: Box<dyn ChunkSource>,
    },
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => f.write_str("Empty"),
            Body::Full {
                content_type,
                bytes,
            } => f
                .debug_struct("Full")
                .field("content_type", content_type)
                .field("bytes", &String::from_utf8_lossy(bytes))
                .finish(),
            Body::Stream { content_type, .. } => f
                .debug_struct("Stream")
                .field("content_type", content_type)
                .finish_non_exhaustive(),
        }
    }
}

/// A response to write.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra header fields (`Allow`, `Location`, ...); the server adds
    /// `Server`, `Content-Type`, `Content-Length` or `Transfer-Encoding`,
    /// and `Connection`.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
    /// What to do once the response is written (or could not be).
    pub after: Option<AfterSent>,
}

/// Work the server runs once a response has been written to its client
/// (or writing failed), on the thread that wrote it: e.g. ending the
/// process after its last answer, which must not be cut off. It is not
/// run when the server drops the response unsent (a stream refused for
/// lack of stream workers).
pub struct AfterSent(pub Box<dyn FnOnce() + Send>);

impl fmt::Debug for AfterSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AfterSent(..)")
    }
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Response {
            status: 204,
            headers: Vec::new(),
            body: Body::Empty,
            after: None,
        }
    }

    /// `status` with a whole body of `content_type`.
    pub fn full(status: u16, content_type: &'static str, bytes: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: Body::Full {
                content_type,
                bytes: bytes.into(),
            },
            after: None,
        }
    }

    /// 200 with a JSON body, already encoded.
    pub fn json(body: String) -> Self {
        Self::full(200, JSON, body)
    }

    /// `status` with `value` encoded as JSON; a value that cannot be
    /// encoded (a map with non-string keys) becomes a 500.
    pub fn json_value<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self::full(status, JSON, body),
            Err(e) => Self::error(&ApiError::Internal(format!(
                "cannot encode the response: {e}"
            ))),
        }
    }

    /// 200 with a streamed body of `content_type`.
    pub fn stream(content_type: &'static str, source: Box<dyn ChunkSource>) -> Self {
        Response {
            status: 200,
            headers: Vec::new(),
            body: Body::Stream {
                content_type,
                source,
            },
            after: None,
        }
    }

    /// The error's status with `{"fault_message": ...}` (and `Allow` for a
    /// 405).
    pub fn error(err: &ApiError) -> Self {
        let mut response = Self::full(err.status(), JSON, err.fault_body());
        if let ApiError::MethodNotAllowed { allowed, .. } = err {
            response.headers.push(("Allow", (*allowed).to_string()));
        }
        response
    }

    /// Runs `f` once the response has been written (see [`AfterSent`]).
    pub fn after_sent(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.after = Some(AfterSent(Box::new(f)));
        self
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The first header field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The whole body as text (empty for no body or a stream): for tests.
    pub fn body_text(&self) -> String {
        match &self.body {
            Body::Full { bytes, .. } => String::from_utf8_lossy(bytes).into_owned(),
            Body::Empty | Body::Stream { .. } => String::new(),
        }
    }

    /// Whether the body is a stream.
    pub fn is_stream(&self) -> bool {
        matches!(self.body, Body::Stream { .. })
    }
}

impl From<ApiError> for Response {
    fn from(err: ApiError) -> Self {
        Response::error(&err)
    }
}
