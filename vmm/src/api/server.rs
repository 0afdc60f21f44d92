//! The API server: an accept thread on the socket and one short-lived
//! thread per connection (at most [`ApiLimits::max_connections`]), each
//! with deadlines, so a stuck client holds only its own connection and
//! only until its timeout.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::backend::VmBackend;
use super::error::{ApiError, ApiServerError};
use super::http::{ApiLimits, Connection, Incoming, Response};
use super::routes::{self, Call};
use super::socket::{self, SocketFile};

/// How long shutdown waits for connection threads to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// A running API server. [`shutdown`](ApiServer::shutdown) or dropping it
/// stops the server and removes the socket file.
#[derive(Debug)]
pub struct ApiServer {
    socket: SocketFile,
    /// Dropping it wakes the accept thread to stop.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl ApiServer {
    /// Serves the API on a new Unix socket at `path` (mode 0600), with the
    /// default [`ApiLimits`].
    ///
    /// Refuses to start if another process listens on `path` or `path` is
    /// not a socket; a stale socket file is replaced.
    pub fn start(
        path: impl AsRef<Path>,
        backend: Arc<dyn VmBackend>,
    ) -> Result<Self, ApiServerError> {
        Self::start_with_limits(path, backend, ApiLimits::default())
    }

    /// [`start`](ApiServer::start) with explicit limits.
    pub fn start_with_limits(
        path: impl AsRef<Path>,
        backend: Arc<dyn VmBackend>,
        limits: ApiLimits,
    ) -> Result<Self, ApiServerError> {
        let path = path.as_ref();
        let io_err = |what, source| ApiServerError::Io {
            what,
            path: path.to_path_buf(),
            source,
        };
        let (listener, socket) = socket::bind(path)?;
        let (stop, stopped) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => {
                socket.remove();
                return Err(io_err("create the stop channel", e));
            }
        };
        let shared = Arc::new(Shared {
            backend,
            backend_lock: Mutex::new(()),
            limits,
            conns: Mutex::new(Conns::default()),
            conns_closed: Condvar::new(),
        });
        let thread = thread::Builder::new()
            .name("vmm-api".into())
            .spawn(move || accept_loop(&listener, &stopped, &shared));
        match thread {
            Ok(thread) => Ok(ApiServer {
                socket,
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                socket.remove();
                Err(io_err("start the API thread", e))
            }
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        self.socket.path()
    }

    /// Stops accepting, closes open connections (a backend call in
    /// progress finishes first; shutdown waits for it up to one second),
    /// and removes the socket file if it is still ours.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
            self.socket.remove();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the accept thread and the connection threads share.
struct Shared {
    backend: Arc<dyn VmBackend>,
    /// Serialises backend calls.
    backend_lock: Mutex<()>,
    limits: ApiLimits,
    conns: Mutex<Conns>,
    conns_closed: Condvar,
}

/// Open connections, by id, as clones that shutdown can close.
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, UnixStream>,
}

fn accept_loop(listener: &UnixListener, stopped: &UnixStream, shared: &Arc<Shared>) {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stopped.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        for fd in &mut fds {
            fd.revents = 0;
        }
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                eprintln!("vmm api: poll: {err}");
                thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        if fds[1].revents != 0 {
            break;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            // Should not happen to a listening socket; do not spin on it.
            eprintln!("vmm api: the listening socket reports an error");
            thread::sleep(Duration::from_millis(50));
        }
        if fds[0].revents & libc::POLLIN != 0 {
            accept_pending(listener, shared);
        }
    }
    shared.close_all();
}

fn accept_pending(listener: &UnixListener, shared: &Arc<Shared>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => shared.admit(stream),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                ) => {}
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                eprintln!("vmm api: accept: {e}");
                thread::sleep(Duration::from_millis(50));
                return;
            }
        }
    }
}

impl Shared {
    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a thread for a new connection, or answers 503 if there are
    /// too many.
    fn admit(self: &Arc<Self>, stream: UnixStream) {
        if stream.set_nonblocking(false).is_err()
            || stream
                .set_write_timeout(Some(self.limits.write_timeout))
                .is_err()
        {
            return;
        }
        let mut conns = self.conns();
        if conns.open.len() >= self.limits.max_connections {
            drop(conns);
            let err = ApiError::TooManyConnections(self.limits.max_connections);
            // A fresh socket's buffer takes this short answer without blocking.
            let _ = Connection::new(stream).respond(&Response::error(&err), true);
            return;
        }
        let Ok(clone) = stream.try_clone() else {
            return;
        };
        let id = conns.next_id;
        conns.next_id += 1;
        conns.open.insert(id, clone);
        drop(conns);

        let shared = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("vmm-api-conn".into())
            .spawn(move || shared.serve(id, stream));
        if spawned.is_err() {
            self.forget(id);
        }
    }

    /// Serves requests on one connection until it closes.
    fn serve(&self, id: u64, stream: UnixStream) {
        let _registered = Registered { shared: self, id };
        let mut conn = Connection::new(stream);
        loop {
            match conn.next_request(&self.limits) {
                Incoming::Closed => return,
                Incoming::Failed(err) => {
                    if conn.respond(&Response::error(&err), true).is_ok() {
                        conn.close_after_error(&self.limits);
                    }
                    return;
                }
                Incoming::Request(req) => {
                    let response = match routes::parse(&req) {
                        Ok(call) => self.call(call),
                        Err(err) => Response::error(&err),
                    };
                    if conn.respond(&response, !req.keep_alive).is_err() || !req.keep_alive {
                        return;
                    }
                }
            }
        }
    }

    /// One backend call, serialised with all others; a panic in the backend
    /// becomes a 500 (where panics unwind).
    fn call(&self, call: Call) -> Response {
        let _serial = self
            .backend_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match panic::catch_unwind(AssertUnwindSafe(|| routes::dispatch(call, &*self.backend))) {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => Response::error(&err),
            Err(_) => Response::error(&ApiError::Internal(
                "the VMM panicked while handling the request".into(),
            )),
        }
    }

    fn forget(&self, id: u64) {
        self.conns().open.remove(&id);
        self.conns_closed.notify_all();
    }

    /// Closes every open connection and waits a moment for their threads.
    fn close_all(&self) {
        let mut conns = self.conns();
        for stream in conns.open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while !conns.open.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            conns = self
                .conns_closed
                .wait_timeout(conns, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Unregisters a connection when its thread ends, panic or not.
struct Registered<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}
