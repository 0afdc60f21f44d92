//! The server: an accept thread on the socket and one thread per
//! connection (at most [`Limits::max_connections`]), each with deadlines,
//! so a stuck client holds only its own connection and only until its
//! timeout. What a request means is up to the [`Handler`].

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

use super::connection::{Connection, Incoming};
use super::error::{ApiError, ServerError};
use super::limits::Limits;
use super::message::{Request, Response};
use super::socket::{self, SocketFile};

/// How long shutdown waits for connection threads to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// What an API does with a request: the one thing a [`Server`] needs.
///
/// The server calls it from its connection threads, concurrently, with
/// requests that are complete and framed correctly (everything else is
/// answered by the server: malformed HTTP, oversized heads and bodies,
/// slow clients, too many connections). Routing, bodies and validation
/// are the handler's; [`super::route`] has the helpers. A panic in the
/// handler becomes a 500 where panics unwind.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: &Request) -> Response;
}

/// How a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Bounds on clients.
    pub limits: Limits,
    /// Name of the accept thread; connection threads add `-conn` (Linux
    /// keeps 15 bytes of a thread name, so 10 leave `-conn` visible).
    pub thread_name: &'static str,
    /// Who failed, for the 500 of a panic: "the {who} panicked while
    /// handling the request".
    pub who: &'static str,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            thread_name: "vmm-api",
            who: "server",
        }
    }
}

/// A running server. [`shutdown`](Server::shutdown) or dropping it stops
/// the server and removes the socket file.
#[derive(Debug)]
pub struct Server {
    socket: SocketFile,
    /// Dropping it wakes the accept thread to stop.
    stop: Option<UnixStream>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `handler` on a new Unix socket at `path` (mode 0600).
    ///
    /// Refuses to start if another process listens on `path` or `path` is
    /// not a socket; a stale socket file is replaced.
    pub fn start(
        path: impl AsRef<Path>,
        handler: Arc<dyn Handler>,
        config: ServerConfig,
    ) -> Result<Self, ServerError> {
        let path = path.as_ref();
        let io_err = |what, source| ServerError::Io {
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
            handler,
            config,
            conns: Mutex::new(Conns::default()),
            conns_closed: Condvar::new(),
        });
        let thread = thread::Builder::new()
            .name(config.thread_name.into())
            .spawn(move || accept_loop(&listener, &stopped, &shared));
        match thread {
            Ok(thread) => Ok(Server {
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

    /// Stops accepting, closes open connections (streams end; a handler
    /// call in progress finishes first; shutdown waits for it up to one
    /// second), and removes the socket file if it is still ours.
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

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the accept thread and the connection threads share.
struct Shared {
    handler: Arc<dyn Handler>,
    config: ServerConfig,
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
                eprintln!("{}: poll: {err}", shared.config.thread_name);
                thread::sleep(Duration::from_millis(50));
            }
            continue;
        }
        if fds[1].revents != 0 {
            break;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
            // Should not happen to a listening socket; do not spin on it.
            eprintln!(
                "{}: the listening socket reports an error",
                shared.config.thread_name
            );
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
                eprintln!("{}: accept: {e}", shared.config.thread_name);
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
                .set_write_timeout(Some(self.config.limits.write_timeout))
                .is_err()
        {
            return;
        }
        let mut conns = self.conns();
        if conns.open.len() >= self.config.limits.max_connections {
            drop(conns);
            let err = ApiError::TooManyConnections(self.config.limits.max_connections);
            // A fresh socket's buffer takes this short answer without blocking.
            let _ = Connection::new(stream).respond(Response::error(&err), true, true);
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
            .name(format!("{}-conn", self.config.thread_name))
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
            match conn.next_request(&self.config.limits) {
                Incoming::Closed => return,
                Incoming::Failed(err) => {
                    if conn.respond(Response::error(&err), true, true).is_ok() {
                        conn.close_after_error(&self.config.limits);
                    }
                    return;
                }
                Incoming::Request(req) => {
                    let response = self.handle(&req);
                    let close = !req.keep_alive || response.is_stream();
                    if conn.respond(response, req.http11, close).is_err() || close {
                        return;
                    }
                }
            }
        }
    }

    /// One handler call; a panic becomes a 500 (where panics unwind).
    fn handle(&self, req: &Request) -> Response {
        match panic::catch_unwind(AssertUnwindSafe(|| self.handler.handle(req))) {
            Ok(response) => response,
            Err(_) => Response::error(&ApiError::Internal(format!(
                "the {} panicked while handling the request",
                self.config.who
            ))),
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
