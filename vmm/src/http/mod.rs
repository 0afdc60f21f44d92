//! HTTP/1.1 with JSON bodies on a Unix socket: the server both control
//! APIs run on (the per-VM API, [`crate::api`], and the daemon's,
//! [`crate::daemon_api`]), and a small client for them.
//!
//! An API is a [`Handler`]: it gets one complete, well-framed [`Request`]
//! and gives one [`Response`], whole or streamed (a [`ChunkSource`], sent
//! chunked, e.g. events as they happen). The [`Server`] does the rest the
//! same way for every API:
//!
//! - the socket file (`socket`): mode 0600 before anyone can
//!   connect, a stale one replaced, a live one or a non-socket refused,
//!   removed at shutdown only if it is still ours (the vsock device's host
//!   socket is made the same way);
//! - framing (`connection`): `httparse` for the head, bodies by
//!   `Content-Length` only, `Expect: 100-continue`, keep-alive and
//!   pipelining, HTTP/1.0 answered then closed;
//! - threads (`server`): a reactor that accepts and reads requests
//!   without blocking, a few workers that run the handler, and stream
//!   workers for streamed answers, all started with the server and none
//!   per connection or request;
//! - [`Limits`]: head and body sizes, deadlines for slow and idle clients,
//!   a write timeout, caps on connections, workers and streams;
//! - errors ([`ApiError`]): every failure is a status with
//!   `{"fault_message": "..."}`; a panicking handler is a 500.
//!
//! [`route`] holds what routers share: 405 with `Allow`, strict JSON bodies
//! whose errors name the field, no-body and query-string rules.

pub mod client;
mod connection;
pub mod error;
#[cfg(test)]
pub(crate) mod fuzz;
mod limits;
mod message;
pub mod route;
mod server;
pub(crate) mod socket;

pub use client::{Client, ClientError, ClientResponse, StreamingResponse};
pub use error::{ApiError, ServerError};
pub use limits::{Limits, MAX_HEADER_FIELDS};
pub use message::{
    AfterSent, Body, Chunk, ChunkSource, Request, Response, JSON, NDJSON, PROMETHEUS_TEXT,
};
pub use server::{Handler, Server, ServerConfig};
pub use socket::check_socket_path;
