//! The per-VM API server: the generic [`crate::http::Server`] with this
//! API's router in front of the [`VmBackend`].

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use super::backend::VmBackend;
use super::error::ApiServerError;
use super::routes;
use crate::http::{Handler, Limits, Request, Response, Server, ServerConfig};

/// A running per-VM API server. [`shutdown`](ApiServer::shutdown) or
/// dropping it stops the server and removes the socket file.
#[derive(Debug)]
pub struct ApiServer(Server);

impl ApiServer {
    /// Serves the API on a new Unix socket at `path` (mode 0600), with the
    /// default [`Limits`].
    ///
    /// Refuses to start if another process listens on `path` or `path` is
    /// not a socket; a stale socket file is replaced.
    pub fn start(
        path: impl AsRef<Path>,
        backend: Arc<dyn VmBackend>,
    ) -> Result<Self, ApiServerError> {
        Self::start_with_limits(path, backend, Limits::default())
    }

    /// [`start`](ApiServer::start) with explicit limits.
    pub fn start_with_limits(
        path: impl AsRef<Path>,
        backend: Arc<dyn VmBackend>,
        limits: Limits,
    ) -> Result<Self, ApiServerError> {
        let handler = Arc::new(VmHandler {
            backend,
            serial: Mutex::new(()),
        });
        let config = ServerConfig {
            limits,
            thread_name: "vmm-api",
            who: "VMM",
            seccomp: Some(crate::seccomp::ThreadKind::Api),
        };
        Server::start(path, handler, config).map(ApiServer)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Stops accepting, closes open connections (a backend call in
    /// progress finishes first; shutdown waits for it up to one second),
    /// and removes the socket file if it is still ours.
    pub fn shutdown(self) {
        self.0.shutdown();
    }
}

/// Routes requests to the backend, one backend call at a time.
struct VmHandler {
    backend: Arc<dyn VmBackend>,
    /// Serialises backend calls.
    serial: Mutex<()>,
}

impl Handler for VmHandler {
    fn handle(&self, req: &Request) -> Response {
        let call = match routes::parse(req) {
            Ok(call) => call,
            Err(err) => return Response::error(&err),
        };
        let _serial = self.serial.lock().unwrap_or_else(PoisonError::into_inner);
        routes::dispatch(call, &self.backend).unwrap_or_else(|err| Response::error(&err))
    }
}
