//! The guest agents' channel: one listening socket per VM that asked for
//! an agent, where the VMM's vsock device forwards the guest's connection
//! to CID 2 port [`AGENT_PORT`] (Firecracker's hybrid vsock: the VMM
//! connects to `<uds>_<port>`, here `<vm dir>/vsock.sock_1025`).
//!
//! One thread serves every VM: it polls the listeners and the open
//! connections, feeds what arrives into the VM's [`HostSession`] (the
//! protocol's host side, which parses, bounds and dedups), writes the acks
//! back and turns the agent's reports into the daemon's typed events, so
//! in-guest OOM kills join the host's decisions on one timeline.
//!
//! Nothing an agent sends is trusted: lines are bounded by the session,
//! reads by a fixed buffer, a connection that sends garbage costs only its
//! own errors (counted), and a new connection from the VMM replaces the
//! old one (the guest reconnected). What was acknowledged to each agent
//! stream is kept in `<vm dir>/agent.json`, so a restarted daemon takes a
//! resend as duplicates: nothing is reported twice.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use guest_agent::host::{Event as SessionEvent, HostSession, StreamKey};
use guest_agent::protocol::{AgentMessage, Summary};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::events::{now_ms, EventLog};
use crate::daemon_api::events::Event;
use crate::daemon_api::AgentView;
use crate::oom::guest::GuestReport;

/// The vsock port the agent connects to on the host (CID 2).
pub const AGENT_PORT: u32 = guest_agent::protocol::VSOCK_PORT;

/// What one read takes at most; the session bounds a line, this bounds a
/// read.
const READ_BUF: usize = 16 * 1024;

/// How long the thread sleeps when nothing happens (it wakes at once for
/// a new VM, a connection or data).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The file, in the VM's directory, that remembers what was acknowledged.
const STREAMS_FILE: &str = "agent.json";

/// The Unix socket path the VMM's vsock device is given (`uds=`); the
/// agent's listener is this plus `_<port>`.
pub fn vsock_uds(vm_dir: &Path) -> PathBuf {
    vm_dir.join("vsock.sock")
}

/// One VM's agent link.
struct Link {
    dir: PathBuf,
    listener: UnixListener,
    conn: Option<UnixStream>,
    session: HostSession,
    view: AgentView,
    /// The stream of the current connection and the seq acknowledged.
    acked: Option<(StreamKey, u64)>,
    /// Protocol errors on the current connection (one event each
    /// connection, however many).
    errors_this_connection: u64,
}

/// What `agent.json` holds: the last stream and what was acknowledged.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Acked {
    boot_id: String,
    instance: String,
    seq: u64,
}

/// Every VM's agent link, and the thread that serves them.
pub struct Agents {
    links: Mutex<BTreeMap<String, Link>>,
    wake: EventFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agents {
    pub fn new() -> std::io::Result<Self> {
        Ok(Agents {
            links: Mutex::new(BTreeMap::new()),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Listens for VM `id`'s agent at `<vm dir>/vsock.sock_<AGENT_PORT>`,
    /// before its VMM starts (the guest may connect early), remembering
    /// what was acknowledged to it before a restart.
    pub fn listen(&self, id: &str, vm_dir: &Path) -> std::io::Result<()> {
        let path = listener_path(vm_dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        let mut session = HostSession::new();
        if let Some(acked) = std::fs::read(vm_dir.join(STREAMS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<Acked>(&b).ok())
        {
            session.remember(
                StreamKey {
                    boot_id: acked.boot_id,
                    instance: acked.instance,
                },
                acked.seq,
            );
        }
        lock(&self.links).insert(
            id.to_string(),
            Link {
                dir: vm_dir.to_path_buf(),
                listener,
                conn: None,
                session,
                view: AgentView::default(),
                acked: None,
                errors_this_connection: 0,
            },
        );
        let _ = self.wake.write(1);
        Ok(())
    }

    /// Wakes the serving thread (to see that it should stop).
    pub fn wake(&self) {
        let _ = self.wake.write(1);
    }

    /// Stops listening for VM `id` (it was deleted or ended).
    pub fn forget(&self, id: &str) {
        if let Some(link) = lock(&self.links).remove(id) {
            let _ = std::fs::remove_file(listener_path(&link.dir));
        }
        let _ = self.wake.write(1);
    }

    /// The agent's state for `GET /vms/{id}`.
    pub fn view(&self, id: &str) -> Option<AgentView> {
        lock(&self.links).get(id).map(|l| l.view.clone())
    }

    /// What each VM's agent reported, for the policy: one lock per tick,
    /// not one per VM.
    pub fn reports(&self) -> BTreeMap<String, GuestReport> {
        lock(&self.links)
            .iter()
            .map(|(id, l)| {
                let report = GuestReport {
                    starved_kills: l.view.starved_oom_kills,
                    psi_some_avg10: l.view.psi_some_avg10,
                };
                (id.clone(), report)
            })
            .collect()
    }

    /// In-guest OOM kills reported so far, per VM, for `/metrics`.
    pub fn oom_kills(&self) -> Vec<(String, u64)> {
        lock(&self.links)
            .iter()
            .map(|(id, l)| (id.clone(), l.view.oom_kills))
            .collect()
    }

    /// Serves every link until `stop` says so; events go to `events`.
    pub fn serve(&self, events: &EventLog, stop: &dyn Fn() -> bool) {
        let mut buf = vec![0u8; READ_BUF];
        while !stop() {
            let mut fds = vec![pollfd(self.wake.as_raw_fd())];
            let mut who: Vec<(String, bool)> = Vec::new();
            for (id, link) in lock(&self.links).iter() {
                fds.push(pollfd(link.listener.as_raw_fd()));
                who.push((id.clone(), false));
                if let Some(c) = &link.conn {
                    fds.push(pollfd(c.as_raw_fd()));
                    who.push((id.clone(), true));
                }
            }
            // SAFETY: `fds` is a valid array of pollfd of that length.
            let n = unsafe {
                libc::poll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    IDLE_POLL.as_millis() as i32,
                )
            };
            if n <= 0 {
                continue;
            }
            if fds[0].revents != 0 {
                let _ = self.wake.read();
            }
            for (fd, (id, is_conn)) in fds[1..].iter().zip(&who) {
                if fd.revents == 0 {
                    continue;
                }
                let mut links = lock(&self.links);
                let Some(link) = links.get_mut(id) else {
                    continue;
                };
                if *is_conn {
                    link.read(id, &mut buf, events);
                } else {
                    link.accept(id, events);
                }
            }
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn listener_path(vm_dir: &Path) -> PathBuf {
    let mut p = vsock_uds(vm_dir).into_os_string();
    p.push(format!("_{AGENT_PORT}"));
    p.into()
}

impl Link {
    /// A connection from the VMM: the guest's agent (re)connected. It
    /// replaces an older one, which the guest has given up on.
    fn accept(&mut self, id: &str, events: &EventLog) {
        let Ok((conn, _)) = self.listener.accept() else {
            return;
        };
        if conn.set_nonblocking(true).is_err() {
            return;
        }
        if self.conn.replace(conn).is_some() {
            self.disconnected(id, "replaced by a new connection", events);
        }
        self.session.connection_started();
        self.errors_this_connection = 0;
    }

    fn read(&mut self, id: &str, buf: &mut [u8], events: &EventLog) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let got = match conn.read(buf) {
            Ok(0) => {
                self.conn = None;
                self.disconnected(id, "the connection closed", events);
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => return,
            Err(e) => {
                self.conn = None;
                self.disconnected(id, &e.to_string(), events);
                return;
            }
        };
        let mut out = Vec::new();
        self.session.feed(&buf[..got], &mut out);
        for ev in out {
            self.on_session_event(id, ev, events);
        }
        if let Some(ack) = self.session.take_ack() {
            // Remembered before it is sent: after a crash between the two
            // the agent resends, and the resend is a duplicate.
            if let Some(key) = self.session.stream().cloned() {
                self.remember_acked(key, ack.ack);
            }
            let line = ack.to_line();
            // An ack is a few bytes into an empty socket buffer; if it does
            // not go, the next one covers it (acks are cumulative).
            if let Some(conn) = self.conn.as_mut() {
                let _ = conn.write(&line);
            }
        }
    }

    fn remember_acked(&mut self, key: StreamKey, seq: u64) {
        if self
            .acked
            .as_ref()
            .is_some_and(|(k, s)| *k == key && *s >= seq)
        {
            return;
        }
        let acked = Acked {
            boot_id: key.boot_id.clone(),
            instance: key.instance.clone(),
            seq,
        };
        let tmp = self.dir.join(format!(".{STREAMS_FILE}.tmp"));
        if let Ok(bytes) = serde_json::to_vec(&acked) {
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, self.dir.join(STREAMS_FILE));
            }
        }
        self.acked = Some((key, seq));
    }

    fn disconnected(&mut self, id: &str, why: &str, events: &EventLog) {
        if self.view.connected {
            self.view.connected = false;
            events.push(Event::GuestAgentDisconnected {
                vm: id.to_string(),
                why: why.to_string(),
            });
        }
    }

    fn on_session_event(&mut self, id: &str, ev: SessionEvent, events: &EventLog) {
        let vm = id.to_string();
        match ev {
            SessionEvent::Hello { hello, resumed_at } => {
                self.view.connected = true;
                self.view.agent = Some(hello.agent.clone());
                self.view.kernel = Some(hello.kernel.clone());
                self.view.boot_id = Some(hello.boot_id.clone());
                events.push(Event::GuestAgentConnected {
                    vm,
                    agent: hello.agent,
                    kernel: hello.kernel,
                    boot_id: hello.boot_id,
                    resumed_at,
                });
            }
            SessionEvent::Message { seq, message } => self.on_message(vm, seq, message, events),
            SessionEvent::Duplicate { .. } => self.view.duplicates += 1,
            SessionEvent::Error(e) => {
                self.view.protocol_errors += 1;
                // One event per connection, not one per bad line: a guest
                // cannot flood the timeline.
                if self.errors_this_connection == 0 {
                    events.push(Event::GuestAgentProtocolError {
                        vm,
                        error: e.to_string(),
                    });
                }
                self.errors_this_connection += 1;
            }
        }
    }

    fn on_message(&mut self, vm: String, agent_seq: u64, message: AgentMessage, events: &EventLog) {
        self.view.last_message_ms = Some(now_ms());
        match message {
            AgentMessage::OomKill(kill) => {
                self.view.oom_kills += 1;
                if kill.global_oom
                    || kill
                        .constraint
                        .as_deref()
                        .is_some_and(|c| c != "CONSTRAINT_MEMCG")
                {
                    self.view.starved_oom_kills += 1;
                }
                events.push(Event::GuestOomKill {
                    vm,
                    agent_seq,
                    kill,
                });
            }
            AgentMessage::OomReaped(reaped) => {
                events.push(Event::GuestOomReaped {
                    vm,
                    agent_seq,
                    reaped,
                });
            }
            AgentMessage::Pressure(pressure) => {
                self.view.psi_some_avg10 = Some(pressure.some.avg10);
                self.view.psi_full_avg10 = pressure.full.map(|f| f.avg10);
                events.push(Event::GuestPressure {
                    vm,
                    agent_seq,
                    pressure,
                });
            }
            AgentMessage::KillsUnlogged(unlogged) => {
                self.view.oom_kills += unlogged.count;
                events.push(Event::GuestKillsUnlogged {
                    vm,
                    agent_seq,
                    unlogged,
                });
            }
            AgentMessage::Summary(summary) => self.on_summary(&summary),
            // Facts for the agent's own counters; not the timeline's.
            AgentMessage::OomNoVictim(_)
            | AgentMessage::KmsgLost(_)
            | AgentMessage::MemcgEvents(_)
            | AgentMessage::Unknown => self.view.other_messages += 1,
        }
    }

    /// The heartbeat: the guest's memory as the agent saw it.
    fn on_summary(&mut self, s: &Summary) {
        let v = &mut self.view;
        v.last_heartbeat_ms = Some(now_ms());
        v.mem_total_kb = Some(s.mem_total_kb);
        v.mem_available_kb = Some(s.mem_available_kb);
        v.psi_some_avg10 = s.psi_some_avg10;
        v.psi_full_avg10 = s.psi_full_avg10;
        v.kmsg_lost = s.kmsg_lost;
        v.dropped = s.dropped;
    }
}
