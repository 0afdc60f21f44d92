//! The server: a fixed set of threads, all created by [`Server::start`],
//! none per connection or per request.
//!
//! - The **reactor** accepts connections and gathers requests: it polls
//!   the listening socket and every connection that is waiting for (the
//!   rest of) a request, reads without blocking, keeps the idle and
//!   request deadlines, and answers what it can on its own (408, 503,
//!   malformed requests) without blocking. A slow or idle client costs a
//!   slot in its poll set, never a thread.
//! - [`Limits::workers`] **workers** run the handler on complete requests
//!   and write the answers (each write bounded by the write timeout); a
//!   keep-alive connection then goes back to the reactor.
//! - [`Limits::max_streams`] **stream workers** send streamed bodies
//!   (`GET /events?follow`), each for as long as its stream lasts. A stream
//!   never runs on a request worker, so followers cannot starve ordinary
//!   requests; a stream beyond the limit is answered 503.
//!
//! Why: under memory pressure (a memory cgroup at its limit) creating a
//! thread can fail in ways that abort the process (e.g. its alternate
//! signal stack cannot be mapped), and the old thread-per-connection server
//! took the whole VMM down that way. Likewise error reports here never
//! panic: they are written straight to fd 2 from a stack buffer, and a
//! failed write is ignored ([`crate::logger`]). An `accept` that fails (EMFILE,
//! ENFILE, ENOMEM) takes the listening socket out of the poll set for a
//! back-off that doubles up to [`MAX_ACCEPT_BACKOFF`]; the reactor goes on
//! serving the connections it has.
//!
//! Bounds: at most [`Limits::max_connections`] connections are open
//! (503 beyond); the reactor's tables are allocated at start for that many.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::connection::{Connection, Progress};
use super::error::{ApiError, ServerError};
use super::limits::Limits;
use super::message::{Request, Response};
use super::socket::{self, SocketFile};

/// How long shutdown waits for workers to finish what they are doing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The first back-off after a failed `accept`; it doubles per failure.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The longest back-off after failed `accept`s.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// How long the reactor keeps reading (and dropping) what a client still
/// sends after an error answer, so that a client busy writing its body gets
/// to read the error instead of a broken pipe; and how much.
const DRAIN_TIME: Duration = Duration::from_secs(1);
const DRAIN_BYTES: usize = 1 << 20;

/// What an API does with a request: the one thing a [`Server`] needs.
///
/// The server calls it from its worker threads, concurrently (up to
/// [`Limits::workers`] calls at once), with requests that are complete and
/// framed correctly (everything else is answered by the server: malformed
/// HTTP, oversized heads and bodies, slow clients, too many connections).
/// Routing, bodies and validation are the handler's; [`super::route`] has
/// the helpers. A panic in the handler becomes a 500 where panics unwind.
///
/// A call should be short: while it runs it holds one of the few workers.
/// A response that lasts (a stream) is a [`Response::stream`], which the
/// server hands to a stream worker.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: &Request) -> Response;
}

/// How a [`Server`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Bounds on clients and the number of threads.
    pub limits: Limits,
    /// Name of the reactor thread; workers add `-w`, stream workers `-s`
    /// (Linux keeps 15 bytes of a thread name).
    pub thread_name: &'static str,
    /// Who failed, for the 500 of a panic: "the {who} panicked while
    /// handling the request".
    pub who: &'static str,
    /// The seccomp filter every thread of the server installs first (see
    /// [`crate::seccomp::apply`]); a thread that cannot ends the process
    /// with the status [`crate::vm::exit::status::START_FAILED`].
    pub seccomp: Option<crate::seccomp::ThreadKind>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            limits: Limits::default(),
            thread_name: "vmm-api",
            who: "server",
            seccomp: None,
        }
    }
}

/// A running server. [`shutdown`](Server::shutdown) or dropping it stops
/// the server and removes the socket file.
pub struct Server {
    socket: SocketFile,
    /// Dropping it wakes the reactor to stop.
    stop: Option<UnixStream>,
    reactor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Server {
    /// Serves `handler` on a new Unix socket at `path` (mode 0600), with
    /// all of its threads started here.
    ///
    /// Refuses to start if another process listens on `path` or `path` is
    /// not a socket; a stale socket file is replaced. If a thread cannot
    /// be started, the ones already running are stopped and the socket is
    /// removed.
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
        let fail = |what, e| {
            socket.remove();
            Err(io_err(what, e))
        };
        let (stop, stopped) = match UnixStream::pair() {
            Ok(pair) => pair,
            Err(e) => return fail("create the stop channel", e),
        };
        let wake = match EventFd::new(EFD_NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => return fail("create the wake-up eventfd", e),
        };
        let shared = Arc::new(Shared::new(handler, config, wake));
        let mut server = Server {
            socket,
            stop: Some(stop),
            reactor: None,
            workers: Vec::new(),
            shared: Arc::clone(&shared),
        };
        let limits = &shared.limits;
        let spawn = |suffix: &str, body: fn(&Shared)| {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("{}{suffix}", config.thread_name))
                .spawn(move || {
                    // Counted down however the worker ends.
                    let _alive = Alive(&shared.workers_alive);
                    apply_filter(config.seccomp);
                    body(&shared);
                })
        };
        for (count, suffix, body) in [
            (limits.workers, "-w", Shared::work as fn(&Shared)),
            (limits.max_streams, "-s", Shared::stream_work as fn(&Shared)),
        ] {
            for _ in 0..count {
                shared.workers_alive.add(1);
                match spawn(suffix, body) {
                    Ok(handle) => server.workers.push(handle),
                    Err(e) => {
                        shared.workers_alive.add(-1);
                        server.stop();
                        return Err(io_err("start an API worker thread", e));
                    }
                }
            }
        }
        let reactor_shared = Arc::clone(&shared);
        match thread::Builder::new()
            .name(config.thread_name.into())
            .spawn(move || {
                apply_filter(config.seccomp);
                Reactor::new(listener, stopped, reactor_shared).run()
            }) {
            Ok(handle) => server.reactor = Some(handle),
            Err(e) => {
                server.stop();
                return Err(io_err("start the API thread", e));
            }
        }
        Ok(server)
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
        match self.reactor.take() {
            Some(reactor) => {
                let _ = reactor.join();
            }
            // Stopped before the reactor ran (a failed start): do its part.
            None => self.shared.stop_workers(),
        }
        // Workers still busy after the grace period (a handler call that
        // does not return) are left to end on their own: they hold only
        // the shared state, not the socket.
        if self.shared.workers_alive.wait_zero(SHUTDOWN_GRACE) {
            for worker in self.workers.drain(..) {
                let _ = worker.join();
            }
        }
        self.workers.clear();
        self.socket.remove();
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("path", &self.socket.path())
            .field("threads", &(self.workers.len() + 1))
            .finish_non_exhaustive()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.stop();
        }
    }
}

/// Installs the server's seccomp filter on the calling thread, if any.
fn apply_filter(kind: Option<crate::seccomp::ThreadKind>) {
    if let Some(kind) = kind {
        crate::seccomp::apply_or_exit(kind, crate::vm::exit::status::START_FAILED);
    }
}

/// A counter with a condition variable, for "wait until it is zero".
struct Counter {
    n: Mutex<isize>,
    zero: Condvar,
}

impl Counter {
    fn new() -> Self {
        Counter {
            n: Mutex::new(0),
            zero: Condvar::new(),
        }
    }

    fn add(&self, delta: isize) {
        let mut n = lock(&self.n);
        *n += delta;
        if *n <= 0 {
            self.zero.notify_all();
        }
    }

    /// Waits up to `grace` for zero; whether it got there.
    fn wait_zero(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let mut n = lock(&self.n);
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .zero
                .wait_timeout(n, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// Counts a worker out when it ends, by return or by panic.
struct Alive<'a>(&'a Counter);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The open connections, by slot: their sockets, so that shutdown can
/// close every one of them, wherever it is.
///
/// Invariant: a slot holds a descriptor only while the [`Tracked`]
/// connection that owns it is alive; the slot is cleared (under the lock)
/// before the descriptor is closed, so a descriptor read under the lock is
/// never a reused number.
struct Registry {
    slots: Mutex<Vec<Option<RawFd>>>,
    empty: Condvar,
}

impl Registry {
    fn new(max: usize) -> Self {
        Registry {
            slots: Mutex::new(vec![None; max]),
            empty: Condvar::new(),
        }
    }

    /// A free slot for `fd`, if fewer than the maximum are open.
    fn admit(&self, fd: RawFd) -> Option<usize> {
        let mut slots = lock(&self.slots);
        let slot = slots.iter().position(Option::is_none)?;
        slots[slot] = Some(fd);
        Some(slot)
    }

    fn release(&self, slot: usize) {
        let mut slots = lock(&self.slots);
        slots[slot] = None;
        if slots.iter().all(Option::is_none) {
            self.empty.notify_all();
        }
    }

    /// Shuts every open connection down (both ways): blocked reads and
    /// writes on them fail, streams notice the hang-up.
    fn shutdown_all(&self) {
        for fd in lock(&self.slots).iter().flatten() {
            // SAFETY: the descriptor is open (see the invariant), and
            // shutdown changes no memory.
            unsafe { libc::shutdown(*fd, libc::SHUT_RDWR) };
        }
    }

    /// Waits up to `grace` until no connection is open.
    fn wait_empty(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut slots = lock(&self.slots);
        while slots.iter().any(Option::is_some) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            slots = self
                .empty
                .wait_timeout(slots, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A connection holding a registry slot; dropping it frees the slot, then
/// closes the socket.
struct Tracked {
    conn: Connection,
    slot: usize,
    registry: Arc<Registry>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Before `conn` (and its descriptor) is dropped: see Registry.
        self.registry.release(self.slot);
    }
}

/// A complete request for a worker.
struct Job {
    conn: Tracked,
    req: Request,
}

/// A stream for a stream worker: the handler's response, not yet written.
struct StreamJob {
    conn: Tracked,
    response: Response,
    http11: bool,
}

/// The queue of the stream workers, and how many streams they are sending.
struct Streams {
    queue: VecDeque<StreamJob>,
    busy: usize,
}

/// What the reactor and the workers share.
struct Shared {
    handler: Arc<dyn Handler>,
    limits: Limits,
    who: &'static str,
    thread_name: &'static str,
    stopping: AtomicBool,
    registry: Arc<Registry>,
    /// Complete requests, in arrival order.
    jobs: Mutex<VecDeque<Job>>,
    jobs_ready: Condvar,
    streams: Mutex<Streams>,
    streams_ready: Condvar,
    /// Keep-alive connections that workers hand back to the reactor.
    returned: Mutex<Vec<Tracked>>,
    /// Written when `returned` gains a connection.
    wake: EventFd,
    workers_alive: Counter,
}

impl Shared {
    fn new(handler: Arc<dyn Handler>, config: ServerConfig, wake: EventFd) -> Self {
        let mut limits = config.limits;
        limits.max_connections = limits.max_connections.max(1);
        limits.workers = limits.workers.max(1);
        let max = limits.max_connections;
        Shared {
            handler,
            limits,
            who: config.who,
            thread_name: config.thread_name,
            stopping: AtomicBool::new(false),
            registry: Arc::new(Registry::new(max)),
            jobs: Mutex::new(VecDeque::with_capacity(max)),
            jobs_ready: Condvar::new(),
            streams: Mutex::new(Streams {
                queue: VecDeque::with_capacity(limits.max_streams),
                busy: 0,
            }),
            streams_ready: Condvar::new(),
            returned: Mutex::new(Vec::with_capacity(max)),
            wake,
            workers_alive: Counter::new(),
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Tells every worker to stop and drops the work not yet started.
    fn stop_workers(&self) {
        self.stopping.store(true, Ordering::Release);
        let jobs: Vec<Job> = lock(&self.jobs).drain(..).collect();
        let streams: Vec<StreamJob> = lock(&self.streams).queue.drain(..).collect();
        let returned: Vec<Tracked> = lock(&self.returned).drain(..).collect();
        drop((jobs, streams, returned));
        self.jobs_ready.notify_all();
        self.streams_ready.notify_all();
    }

    /// A request worker: complete requests in, answers out.
    fn work(&self) {
        loop {
            let job = {
                let mut jobs = lock(&self.jobs);
                loop {
                    if self.stopping() {
                        return;
                    }
                    if let Some(job) = jobs.pop_front() {
                        break job;
                    }
                    jobs = self
                        .jobs_ready
                        .wait(jobs)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            self.serve(job);
        }
    }

    /// Answers one request; a keep-alive connection goes back to the
    /// reactor, a stream to a stream worker.
    fn serve(&self, job: Job) {
        let Job { mut conn, req } = job;
        let mut response = self.handle(&req);
        if response.is_stream() {
            self.start_stream(conn, response, req.http11);
            return;
        }
        let after = response.after.take();
        let close = !req.keep_alive;
        let written = conn.conn.respond(response, req.http11, close);
        if let Some(after) = after {
            // The answer is in the socket (or the client is gone): closing
            // first means a client reading to end of file is not kept
            // waiting by what comes next (e.g. the end of the process).
            drop(conn);
            (after.0)();
            return;
        }
        if written.is_err() || close {
            return;
        }
        {
            let mut returned = lock(&self.returned);
            // Checked under the lock that stop_workers() drains under, so
            // nothing is handed back after the drain.
            if self.stopping() {
                return;
            }
            returned.push(conn);
        }
        // A full counter (2^64 - 2 wake-ups unread) only means the reactor
        // is already woken.
        let _ = self.wake.write(1);
    }

    /// Queues a stream for a stream worker, or answers 503 when all of
    /// them are taken.
    fn start_stream(&self, mut conn: Tracked, response: Response, http11: bool) {
        let max = self.limits.max_streams;
        {
            let mut streams = lock(&self.streams);
            if !self.stopping() && streams.busy + streams.queue.len() < max {
                streams.queue.push_back(StreamJob {
                    conn,
                    response,
                    http11,
                });
                drop(streams);
                self.streams_ready.notify_one();
                return;
            }
        }
        // The handler's stream source is dropped unread: its producer sees
        // the follower gone.
        drop(response);
        let _ = conn.conn.respond(
            Response::error(&ApiError::TooManyStreams(max)),
            http11,
            true,
        );
    }

    /// A stream worker: sends one stream at a time, to its end.
    fn stream_work(&self) {
        loop {
            let job = {
                let mut streams = lock(&self.streams);
                loop {
                    if self.stopping() {
                        return;
                    }
                    if let Some(job) = streams.queue.pop_front() {
                        streams.busy += 1;
                        break job;
                    }
                    streams = self
                        .streams_ready
                        .wait(streams)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            let StreamJob {
                mut conn,
                mut response,
                http11,
            } = job;
            let after = response.after.take();
            let _ = conn.conn.respond(response, http11, true);
            // The stream is over: its slot is free before the client can
            // see its end of file, so a client that starts another stream
            // at once is not refused for the one it has just finished.
            lock(&self.streams).busy -= 1;
            drop(conn);
            if let Some(after) = after {
                (after.0)();
            }
        }
    }

    /// One handler call; a panic becomes a 500 (where panics unwind).
    fn handle(&self, req: &Request) -> Response {
        match panic::catch_unwind(AssertUnwindSafe(|| self.handler.handle(req))) {
            Ok(response) => response,
            Err(_) => Response::error(&ApiError::Internal(format!(
                "the {} panicked while handling the request",
                self.who
            ))),
        }
    }
}

/// A connection the reactor holds: waiting for (the rest of) a request,
/// or draining after an error answer.
struct Parked {
    conn: Tracked,
    state: ParkState,
    deadline: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ParkState {
    /// Waiting for a request; `head_done` once only its body is missing,
    /// `started` once its first byte is here.
    Reading { started: bool, head_done: bool },
    /// An error was answered; what the client still sends is dropped.
    Draining { drained: usize },
}

/// What the reactor does with a parked connection after an event.
enum Next {
    Keep,
    Close,
}

/// The reactor thread's state.
struct Reactor {
    listener: UnixListener,
    stopped: UnixStream,
    shared: Arc<Shared>,
    parked: Vec<Parked>,
    fds: Vec<libc::pollfd>,
    /// After a failed `accept`: the listener is not polled until then.
    accept_paused_until: Option<Instant>,
    accept_backoff: Duration,
    /// Failed `accept`s not reported yet, and when the last report was.
    accept_failures: u64,
    accept_reported: Option<Instant>,
    /// Connections refused for their peer's uid (see
    /// [`socket::peer_is_trusted`]).
    refused_peers: u64,
}

/// Accept failures are reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Fixed positions in the poll set; parked connections follow.
const STOP: usize = 0;
const WAKE: usize = 1;
const LISTENER: usize = 2;
const FIRST_CONN: usize = 3;

impl Reactor {
    fn new(listener: UnixListener, stopped: UnixStream, shared: Arc<Shared>) -> Self {
        let max = shared.limits.max_connections;
        Reactor {
            listener,
            stopped,
            parked: Vec::with_capacity(max),
            fds: Vec::with_capacity(max + FIRST_CONN),
            shared,
            accept_paused_until: None,
            accept_backoff: MIN_ACCEPT_BACKOFF,
            accept_failures: 0,
            accept_reported: None,
            refused_peers: 0,
        }
    }

    fn run(mut self) {
        loop {
            let now = Instant::now();
            self.expire(now);
            if self.accept_paused_until.is_some_and(|t| t <= now) {
                self.accept_paused_until = None;
            }
            self.fill_poll_set();
            let timeout = self.poll_timeout(now);
            // SAFETY: `fds` is a valid array of pollfd of that length.
            let rc = unsafe { libc::poll(self.fds.as_mut_ptr(), self.fds.len() as _, timeout) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    report(
                        self.shared.thread_name,
                        "poll failed",
                        1,
                        err.raw_os_error(),
                    );
                    thread::sleep(MIN_ACCEPT_BACKOFF);
                }
                continue;
            }
            if self.fds[STOP].revents != 0 {
                break;
            }
            if self.fds[WAKE].revents != 0 {
                let _ = self.shared.wake.read();
                let back: Vec<Tracked> = lock(&self.shared.returned).drain(..).collect();
                for conn in back {
                    self.park(conn);
                }
            }
            let listener_events = self.fds[LISTENER].revents;
            // Events of the parked connections, newest last; park() during
            // this pass appends beyond the polled range.
            let polled = self.fds.len() - FIRST_CONN;
            for i in (0..polled.min(self.parked.len())).rev() {
                let revents = self.fds[FIRST_CONN + i].revents;
                if revents != 0 && matches!(self.on_ready(i), Next::Close) {
                    self.parked.swap_remove(i);
                }
            }
            if listener_events & (libc::POLLERR | libc::POLLNVAL) != 0 {
                // Should not happen to a listening socket; do not spin on it.
                report(
                    self.shared.thread_name,
                    "the listening socket reports an error",
                    1,
                    None,
                );
                self.pause_accepting();
            } else if listener_events & libc::POLLIN != 0 {
                self.accept_pending();
            }
        }
        self.shared.stop_workers();
        self.parked.clear();
        self.shared.registry.shutdown_all();
        self.shared.registry.wait_empty(SHUTDOWN_GRACE);
    }

    fn fill_poll_set(&mut self) {
        let pollfd = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        self.fds.clear();
        self.fds.push(pollfd(self.stopped.as_raw_fd()));
        self.fds.push(pollfd(self.shared.wake.as_raw_fd()));
        // A negative descriptor is skipped by poll: accepting is paused.
        let listener = if self.accept_paused_until.is_some() {
            -1
        } else {
            self.listener.as_raw_fd()
        };
        self.fds.push(pollfd(listener));
        for p in &self.parked {
            self.fds.push(pollfd(p.conn.conn.raw_fd()));
        }
    }

    /// Milliseconds until the nearest deadline (or the end of an accept
    /// back-off); -1 for none.
    fn poll_timeout(&self, now: Instant) -> libc::c_int {
        let nearest = self
            .parked
            .iter()
            .map(|p| p.deadline)
            .chain(self.accept_paused_until)
            .min();
        match nearest {
            None => -1,
            // Rounded up, so that the deadline has passed when poll returns.
            Some(t) => {
                let left = t.saturating_duration_since(now);
                (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as libc::c_int
            }
        }
    }

    /// Accepts every pending connection.
    fn accept_pending(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    self.accept_backoff = MIN_ACCEPT_BACKOFF;
                    if socket::peer_is_trusted(&stream) {
                        self.admit(stream);
                    } else {
                        // Closed unanswered: a stranger learns nothing.
                        self.refused_peers += 1;
                        report(
                            self.shared.thread_name,
                            "refused a connection from another user; refusals so far",
                            self.refused_peers,
                            None,
                        );
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of descriptors or memory: the connection waits in
                    // the backlog; retry after a back-off, do not spin.
                    self.accept_failures += 1;
                    let now = Instant::now();
                    if self
                        .accept_reported
                        .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY)
                    {
                        report(
                            self.shared.thread_name,
                            "accept failed (backing off); failures since the last report",
                            self.accept_failures,
                            e.raw_os_error(),
                        );
                        self.accept_failures = 0;
                        self.accept_reported = Some(now);
                    }
                    self.pause_accepting();
                    return;
                }
            }
        }
    }

    fn pause_accepting(&mut self) {
        self.accept_paused_until = Some(Instant::now() + self.accept_backoff);
        self.accept_backoff = (self.accept_backoff * 2).min(MAX_ACCEPT_BACKOFF);
    }

    /// Takes a new connection in, or answers 503 if too many are open.
    fn admit(&mut self, stream: UnixStream) {
        let limits = &self.shared.limits;
        // The accepted socket is blocking (accept4 without SOCK_NONBLOCK);
        // reads pass MSG_DONTWAIT, worker writes block up to the timeout.
        if stream.set_nonblocking(false).is_err()
            || stream
                .set_write_timeout(Some(limits.write_timeout))
                .is_err()
        {
            return;
        }
        let mut conn = Connection::new(stream);
        let Some(slot) = self.shared.registry.admit(conn.raw_fd()) else {
            let err = ApiError::TooManyConnections(limits.max_connections);
            // A fresh socket's buffer takes this short answer at once.
            conn.respond_now(Response::error(&err));
            return;
        };
        self.park(Tracked {
            conn,
            slot,
            registry: Arc::clone(&self.shared.registry),
        });
    }

    /// Holds a connection until its next request is complete; one whose
    /// buffer already holds it (pipelining) goes on at once.
    fn park(&mut self, conn: Tracked) {
        let now = Instant::now();
        let started = conn.conn.has_buffered();
        let limits = &self.shared.limits;
        let deadline = now
            + if started {
                limits.request_timeout
            } else {
                limits.idle_timeout
            };
        self.parked.push(Parked {
            conn,
            state: ParkState::Reading {
                started,
                head_done: false,
            },
            deadline,
        });
        if started {
            let i = self.parked.len() - 1;
            if matches!(self.progress(i), Next::Close) {
                self.parked.swap_remove(i);
            }
        }
    }

    /// The socket of parked connection `i` is readable (or hung up).
    fn on_ready(&mut self, i: usize) -> Next {
        let limits = self.shared.limits;
        let p = &mut self.parked[i];
        match p.state {
            ParkState::Draining { drained } => match p.conn.conn.discard_available() {
                Ok(n) if n > 0 && drained + n < DRAIN_BYTES => {
                    p.state = ParkState::Draining {
                        drained: drained + n,
                    };
                    Next::Keep
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Next::Keep,
                _ => Next::Close,
            },
            ParkState::Reading { started, .. } => {
                let max = limits.max_head_bytes + limits.max_body_bytes;
                match p.conn.conn.read_available(max) {
                    Ok(0) => Next::Close,
                    Ok(_) => {
                        if !started {
                            p.deadline = Instant::now() + limits.request_timeout;
                            p.state = ParkState::Reading {
                                started: true,
                                head_done: false,
                            };
                        }
                        self.progress(i)
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Next::Keep,
                    Err(_) => Next::Close,
                }
            }
        }
    }

    /// Looks at what parked connection `i` has gathered: a complete
    /// request goes to a worker, a bad one gets its error.
    fn progress(&mut self, i: usize) -> Next {
        let limits = self.shared.limits;
        let p = &mut self.parked[i];
        match p.conn.conn.take_request(&limits) {
            Progress::Incomplete { head_done } => {
                p.state = ParkState::Reading {
                    started: true,
                    head_done,
                };
                Next::Keep
            }
            Progress::Closed => Next::Close,
            Progress::Failed(err) => {
                if p.conn.conn.respond_now(Response::error(&err)) {
                    p.conn.conn.shutdown_write();
                    p.state = ParkState::Draining { drained: 0 };
                    p.deadline = Instant::now() + limits.request_timeout.min(DRAIN_TIME);
                    Next::Keep
                } else {
                    Next::Close
                }
            }
            Progress::Ready(req) => {
                let last = self.parked.len() - 1;
                self.parked.swap(i, last);
                let conn = self.parked.pop().expect("the connection is parked").conn;
                lock(&self.shared.jobs).push_back(Job { conn, req });
                self.shared.jobs_ready.notify_one();
                // Already taken out: the caller must not remove slot `i`,
                // which now holds the connection that was last.
                Next::Keep
            }
        }
    }

    /// Ends what has waited past its deadline: a fresh connection that
    /// sent nothing, and a request that did not complete, get a 408; an
    /// idle keep-alive connection and a finished drain are closed.
    fn expire(&mut self, now: Instant) {
        let limits = self.shared.limits;
        let mut i = 0;
        while i < self.parked.len() {
            let p = &mut self.parked[i];
            if p.deadline > now {
                i += 1;
                continue;
            }
            let err = match p.state {
                ParkState::Draining { .. } => None,
                ParkState::Reading { started: false, .. } if p.conn.conn.answered_any() => None,
                ParkState::Reading { started: false, .. } => {
                    Some(ApiError::RequestTimeout(format!(
                        "no request arrived within {} ms of connecting",
                        limits.idle_timeout.as_millis()
                    )))
                }
                ParkState::Reading { head_done, .. } => Some(ApiError::RequestTimeout(format!(
                    "the request {} did not arrive within {} ms",
                    if head_done {
                        "body"
                    } else {
                        "line and headers"
                    },
                    limits.request_timeout.as_millis()
                ))),
            };
            if let Some(err) = err {
                if p.conn.conn.respond_now(Response::error(&err)) {
                    p.conn.conn.shutdown_write();
                    if p.conn.conn.has_buffered() {
                        // The client was still sending: let it finish.
                        p.state = ParkState::Draining { drained: 0 };
                        p.deadline = now + limits.request_timeout.min(DRAIN_TIME);
                        i += 1;
                        continue;
                    }
                }
            }
            self.parked.swap_remove(i);
        }
    }
}

/// Writes `<thread>: <what>: <count>, errno <n>` to stderr without
/// allocating and without ever failing: a full or broken stderr loses the
/// line.
fn report(thread: &str, what: &str, count: u64, errno: Option<i32>) {
    let mut line = crate::logger::LineBuf::new();
    let errno = errno.unwrap_or(0);
    let _ = std::fmt::Write::write_fmt(
        &mut line,
        format_args!("{thread}: {what}: {count}, errno {errno}\n"),
    );
    line.emit();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Client;
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicUsize;

    /// Answers every request after a short pause, so that calls overlap.
    struct Slow;

    impl Handler for Slow {
        fn handle(&self, req: &Request) -> Response {
            thread::sleep(Duration::from_millis(2));
            Response::json(format!("{{\"target\":{:?}}}", req.target))
        }
    }

    /// Threads of this process whose name starts with `prefix`.
    fn threads_named(prefix: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with(prefix))
            .count()
    }

    fn temp_sock(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("vmm-http-{}-{name}.sock", std::process::id()))
    }

    /// Found by the fuzzed clients (`http::fuzz`): a stream's slot was
    /// freed only after its connection was closed and its `after_sent`
    /// work had run, so a client that saw the end of one stream and asked
    /// for the next at once could get a 503 "too many open streams".
    #[test]
    fn a_finished_stream_frees_its_slot_before_its_client_sees_the_end() {
        struct OneChunk(bool);
        impl crate::http::ChunkSource for OneChunk {
            fn next_chunk(&mut self, _: Duration) -> crate::http::Chunk {
                if std::mem::replace(&mut self.0, true) {
                    crate::http::Chunk::End
                } else {
                    crate::http::Chunk::Data(b"x\n".to_vec())
                }
            }
        }
        struct Streams;
        impl Handler for Streams {
            fn handle(&self, _: &Request) -> Response {
                // Work after the answer keeps the stream worker busy.
                Response::stream(crate::http::NDJSON, Box::new(OneChunk(false)))
                    .after_sent(|| thread::sleep(Duration::from_millis(200)))
            }
        }
        let path = temp_sock("stream-slot");
        let config = ServerConfig {
            limits: Limits {
                max_streams: 1,
                ..Limits::default()
            },
            thread_name: "slottest",
            who: "test",
            seccomp: None,
        };
        let server = Server::start(&path, Arc::new(Streams), config).unwrap();
        for _ in 0..2 {
            let mut s = UnixStream::connect(&path).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /events HTTP/1.1\r\n\r\n").unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        }
        server.shutdown();
    }

    /// 40 clients at once, each with 5 keep-alive requests, next to 10
    /// idle connections: every request is answered, by the threads that
    /// existed before the first client came (the reactor and 2 workers),
    /// and no thread is ever created for a connection.
    #[test]
    fn many_connections_are_served_by_the_threads_started_with_the_server() {
        const NAME: &str = "pooltest";
        let path = temp_sock("pool");
        let config = ServerConfig {
            limits: Limits {
                max_connections: 64,
                workers: 2,
                max_streams: 0,
                ..Limits::default()
            },
            thread_name: NAME,
            who: "test",
            seccomp: None,
        };
        let server = Server::start(&path, Arc::new(Slow), config).unwrap();
        // A new thread names itself once it runs.
        thread::sleep(Duration::from_millis(100));
        let at_start = threads_named(NAME);

        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let sampler = {
            let (stop, most) = (Arc::clone(&stop), Arc::clone(&most));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    most.fetch_max(threads_named(NAME), Ordering::Relaxed);
                    thread::sleep(Duration::from_millis(1));
                }
            })
        };
        let idle: Vec<UnixStream> = (0..10)
            .map(|_| UnixStream::connect(&path).unwrap())
            .collect();
        let clients: Vec<_> = (0..40)
            .map(|c| {
                let path = path.clone();
                thread::spawn(move || {
                    let mut s = UnixStream::connect(&path).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    let mut raw = Vec::new();
                    for r in 0..5 {
                        let close = if r == 4 { "Connection: close\r\n" } else { "" };
                        write!(s, "GET /c{c}/r{r} HTTP/1.1\r\nHost: x\r\n{close}\r\n").unwrap();
                    }
                    s.read_to_end(&mut raw).unwrap();
                    String::from_utf8(raw).unwrap()
                })
            })
            .collect();
        for (c, client) in clients.into_iter().enumerate() {
            let text = client.join().unwrap();
            assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 5, "{text}");
            for r in 0..5 {
                assert!(text.contains(&format!("\"/c{c}/r{r}\"")), "{text}");
            }
        }
        // Requests from another client are still answered with the idle
        // connections open.
        let r = Client::new(&path).request("GET", "/last", None).unwrap();
        assert_eq!(r.status, 200);
        stop.store(true, Ordering::Relaxed);
        sampler.join().unwrap();
        assert_eq!(
            most.load(Ordering::Relaxed),
            at_start,
            "threads were created per connection"
        );
        assert_eq!(at_start, 3, "the reactor and 2 workers");
        drop(idle);
        server.shutdown();
        assert_eq!(threads_named(NAME), 0, "the server's threads outlived it");
    }
}
