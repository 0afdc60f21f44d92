//! The daemon's API server: the generic [`crate::http::Server`] with this
//! API's router in front of the [`DaemonBackend`].

use std::path::Path;
use std::sync::Arc;

use super::backend::DaemonBackend;
use super::routes;
use crate::http::{Handler, Limits, Request, Response, Server, ServerConfig, ServerError};

/// A running daemon API server. [`shutdown`](DaemonApiServer::shutdown)
/// or dropping it stops the server (followers' streams end) and removes
/// the socket file.
#[derive(Debug)]
pub struct DaemonApiServer(Server);

impl DaemonApiServer {
    /// The default limits: those of [`Limits::default`], with room for 64
    /// connections, 4 request workers and 16 event streams at once (each
    /// `events --follow` holds a connection and a stream worker; the 17th
    /// gets a 503 while requests go on being answered).
    pub fn default_limits() -> Limits {
        Limits {
            max_connections: 64,
            workers: 4,
            max_streams: 16,
            ..Limits::default()
        }
    }

    /// Serves the API on a new Unix socket at `path` (mode 0600), with
    /// [`default_limits`](Self::default_limits).
    ///
    /// Refuses to start if another process listens on `path` or `path` is
    /// not a socket; a stale socket file is replaced.
    pub fn start(
        path: impl AsRef<Path>,
        backend: Arc<dyn DaemonBackend>,
    ) -> Result<Self, ServerError> {
        Self::start_with_limits(path, backend, Self::default_limits())
    }

    /// [`start`](DaemonApiServer::start) with explicit limits.
    pub fn start_with_limits(
        path: impl AsRef<Path>,
        backend: Arc<dyn DaemonBackend>,
        limits: Limits,
    ) -> Result<Self, ServerError> {
        let config = ServerConfig {
            limits,
            thread_name: "vmm-daemon",
            who: "daemon",
            seccomp: Some(crate::seccomp::ThreadKind::DaemonApi),
        };
        Server::start(path, Arc::new(DaemonHandler { backend }), config).map(DaemonApiServer)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Stops accepting, closes open connections and streams, and removes
    /// the socket file if it is still ours.
    pub fn shutdown(self) {
        self.0.shutdown();
    }
}

/// Routes requests to the backend; calls run concurrently.
struct DaemonHandler {
    backend: Arc<dyn DaemonBackend>,
}

impl Handler for DaemonHandler {
    fn handle(&self, req: &Request) -> Response {
        routes::parse(req)
            .and_then(|call| routes::dispatch(call, &*self.backend))
            .unwrap_or_else(|err| Response::error(&err))
    }
}
