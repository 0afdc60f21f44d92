//! The bounds that keep one client from holding or exhausting a server.

use std::time::Duration;

/// The most header fields a request may have.
pub const MAX_HEADER_FIELDS: usize = 32;

/// Limits that keep one client from holding or exhausting the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request line plus headers, in bytes (431 beyond).
    pub max_head_bytes: usize,
    /// Largest request body, in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Time from a request's first byte to its last (408 beyond).
    pub request_timeout: Duration,
    /// How long a connection may wait before its first byte of a request:
    /// a fresh connection gets a 408, an idle keep-alive one is closed.
    pub idle_timeout: Duration,
    /// How long writing a response may block on a client that does not
    /// read (a stream ends there).
    pub write_timeout: Duration,
    /// Connections open at once, idle ones included (503 beyond).
    /// Streaming responses hold theirs until the stream ends or the client
    /// goes away.
    pub max_connections: usize,
    /// Worker threads that run the handler and write answers, all started
    /// with the server (at least 1). Idle and slow clients hold none; a
    /// client that does not read its answer holds one for up to
    /// `write_timeout` per write.
    pub workers: usize,
    /// Streams sent at once (503 beyond), each by its own worker thread
    /// started with the server; 0 for an API without streams. Streams
    /// never take a request worker, so they cannot starve requests.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 8 * 1024,
            max_body_bytes: 16 * 1024,
            request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(5),
            max_connections: 16,
            workers: 2,
            max_streams: 0,
        }
    }
}
