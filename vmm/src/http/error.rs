//! Errors of an API served by [`super::Server`]: per request
//! ([`ApiError`], answered as an HTTP status and `{"fault_message": "..."}`)
//! and at start-up ([`ServerError`]).

use std::io;
use std::path::PathBuf;

/// A request failed. Each variant maps to one HTTP status
/// ([`ApiError::status`]); its `Display` text is the `fault_message` the
/// client reads, so it says exactly what was wrong.
///
/// Backends return [`BadRequest`](ApiError::BadRequest),
/// [`NotFound`](ApiError::NotFound),
/// [`BalloonNotConfigured`](ApiError::BalloonNotConfigured),
/// [`Conflict`](ApiError::Conflict), [`Internal`](ApiError::Internal) and
/// [`Unavailable`](ApiError::Unavailable); the other variants come from the
/// HTTP layer and the routers, before any backend call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is well-formed HTTP but something in it is invalid:
    /// a body that does not parse or fails validation (serde's message,
    /// naming the field), a missing body, a value out of range.
    #[error("{0}")]
    BadRequest(String),
    /// 404: no resource at this path, whatever the method.
    #[error("no such resource: {path} (resources: {resources})")]
    NoSuchResource {
        /// The path the client asked for.
        path: String,
        /// The resources the API has, for the message.
        resources: &'static str,
    },
    /// 404: the path has the shape of a resource that does not exist, e.g.
    /// `/vms/{id}` for an unknown id. The text says what is missing.
    #[error("{0}")]
    NotFound(String),
    /// 404: a per-VM balloon route was called but the VM has no balloon
    /// device.
    #[error("the VM has no balloon device (configure one with PUT /balloon before InstanceStart)")]
    BalloonNotConfigured,
    /// 405: the resource exists but not with this method.
    #[error("method {method} is not allowed on {path} (allowed: {allowed})")]
    MethodNotAllowed {
        /// The method the client sent.
        method: String,
        /// The resource.
        path: String,
        /// The methods the resource takes, as for the `Allow` header.
        allowed: &'static str,
    },
    /// 408: the client was too slow to send its request.
    #[error("{0}")]
    RequestTimeout(String),
    /// 409: the request conflicts with the state of what it acts on, e.g.
    /// `PUT /balloon` after `InstanceStart`, or a VM id that is taken.
    #[error("{0}")]
    Conflict(String),
    /// 411: the body came without a Content-Length (e.g. chunked).
    #[error("request bodies must have a Content-Length; Transfer-Encoding is not supported")]
    LengthRequired,
    /// 413: the body is larger than the server accepts.
    #[error("request body of {length} bytes is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The Content-Length the client announced.
        length: u64,
        /// The largest body accepted.
        limit: usize,
    },
    /// 415: the body is not JSON.
    #[error("unsupported Content-Type {0:?}: request bodies must be application/json")]
    UnsupportedMediaType(String),
    /// 417: an `Expect` header other than `100-continue`.
    #[error("unsupported expectation {0:?}: only \"100-continue\" is supported")]
    ExpectationFailed(String),
    /// 431: the request line and headers are too long or too many.
    #[error(
        "request head is larger than {max_bytes} bytes or has more than {max_fields} header fields"
    )]
    HeadTooLarge {
        /// The limit on the request line plus headers, in bytes.
        max_bytes: usize,
        /// The limit on the number of header fields.
        max_fields: usize,
    },
    /// 500: the server failed to do what was asked.
    #[error("{0}")]
    Internal(String),
    /// 503: the server cannot do it now (e.g. it is shutting down).
    #[error("{0}")]
    Unavailable(String),
    /// 503: too many API connections are open at once.
    #[error("too many open API connections (limit {0}); retry later")]
    TooManyConnections(usize),
    /// 503: every stream worker is sending a stream (e.g. that many
    /// `GET /events?follow` clients); a stream ends when its client goes.
    #[error("too many open streams (limit {0}); close one or retry later")]
    TooManyStreams(usize),
}

impl ApiError {
    /// The HTTP status code this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::NoSuchResource { .. }
            | ApiError::NotFound(_)
            | ApiError::BalloonNotConfigured => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::RequestTimeout(_) => 408,
            ApiError::Conflict(_) => 409,
            ApiError::LengthRequired => 411,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::ExpectationFailed(_) => 417,
            ApiError::HeadTooLarge { .. } => 431,
            ApiError::Internal(_) => 500,
            ApiError::Unavailable(_)
            | ApiError::TooManyConnections(_)
            | ApiError::TooManyStreams(_) => 503,
        }
    }

    /// The JSON body of the error response: `{"fault_message": "..."}`,
    /// Firecracker's error shape.
    pub fn fault_body(&self) -> String {
        serde_json::json!({ "fault_message": self.to_string() }).to_string()
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process is listening on the socket path.
    #[error("API socket {0} is in use: another process is listening on it")]
    SocketInUse(PathBuf),
    /// The path exists and is not a socket; it is left alone.
    #[error("API socket path {0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// The path does not fit in a Unix socket address or holds a NUL byte.
    #[error("API socket path {0} is unusable: {1}")]
    BadPath(PathBuf, &'static str),
    /// A system call on the socket failed.
    #[error("API socket {path}: {what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}
