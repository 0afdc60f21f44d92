//! The agent's queue and connection against the host's `HostSession`, over
//! Unix stream sockets standing in for vsock: send, drop the connection
//! mid-way (mid-line, before or after acks), reconnect, resend; every
//! message must arrive exactly once, in order.

#![cfg(feature = "agent")]

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use guest_agent::agent::link::Link;
use guest_agent::agent::outbox::Outbox;
use guest_agent::agent::sys::{self, now_ms, Target};
use guest_agent::agent::wire::hello_line;
use guest_agent::host::{Event, HostSession};
use guest_agent::protocol::{AgentMessage, Hello, OomKill, Summary, PROTOCOL_VERSION};

fn sock_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("ga-rt-{name}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

fn hello() -> Vec<u8> {
    hello_line(&Hello {
        proto: PROTOCOL_VERSION,
        agent: "test".into(),
        kernel: "6.12.117".into(),
        boot_id: "3b1c2f7e-0000-4000-8000-000000000001".into(),
        instance: "00000000000000aa".into(),
        interval_ms: 5000,
    })
}

fn kill(pid: i32) -> AgentMessage {
    AgentMessage::OomKill(Box::new(OomKill {
        pid,
        comm: format!("task{pid}"),
        reason: "Out of memory".into(),
        anon_rss_kb: Some(1000 + pid as u64),
        ..Default::default()
    }))
}

/// Lets the agent side run for `ms`: connect, send, read acks.
fn drive(link: &mut Link, ob: &mut Outbox, ms: u64) {
    let end = now_ms() + ms;
    loop {
        let now = now_ms();
        link.maintain(now, ob);
        link.flush(now, ob);
        match link.interest(ob) {
            Some(p) => {
                let mut fds = [libc::pollfd {
                    events: p.events | libc::POLLIN,
                    ..p
                }];
                sys::poll(&mut fds, 2).unwrap();
                link.ready(fds[0].revents, now_ms(), ob);
            }
            None => std::thread::sleep(std::time::Duration::from_millis(2)),
        }
        if now_ms() >= end {
            return;
        }
    }
}

/// The host side of one connection.
struct Host {
    stream: UnixStream,
}

impl Host {
    fn accept(l: &UnixListener, session: &mut HostSession) -> Host {
        let (stream, _) = l.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        session.connection_started();
        Host { stream }
    }

    /// Reads at most `limit` bytes of what is there; returns new seqs.
    fn read(&mut self, session: &mut HostSession, limit: usize, seen: &mut Vec<u64>) -> usize {
        let mut buf = vec![0u8; limit.max(1)];
        let mut total = 0;
        while total < limit {
            match self.stream.read(&mut buf[..limit - total]) {
                Ok(0) => break,
                Ok(n) => {
                    let mut ev = Vec::new();
                    session.feed(&buf[..n], &mut ev);
                    for e in ev {
                        match e {
                            Event::Message { seq, .. } => seen.push(seq),
                            Event::Duplicate { .. } | Event::Hello { .. } => {}
                            Event::Error(e) => panic!("protocol error: {e}"),
                        }
                    }
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        total
    }

    fn ack(&mut self, session: &mut HostSession) {
        if let Some(a) = session.take_ack() {
            self.stream.write_all(&a.to_line()).unwrap();
        }
    }
}

fn assert_exactly_once(seen: &[u64], expected: impl IntoIterator<Item = u64>) {
    let expected: Vec<u64> = expected.into_iter().collect();
    assert_eq!(seen, &expected[..], "every message once, in order");
}

#[test]
fn drop_mid_line_reconnect_resend_no_loss_no_duplicate() {
    let path = sock_path("midline");
    let listener = UnixListener::bind(&path).unwrap();
    let mut session = HostSession::new();
    let mut seen = Vec::new();
    let mut ob = Outbox::new(1000);
    let mut link = Link::new(Target::Unix(path.clone()), hello(), false).with_backoff(5, 20);

    for pid in 1..=50 {
        ob.push(&kill(pid));
    }
    drive(&mut link, &mut ob, 20);
    assert!(link.is_up());
    let mut host = Host::accept(&listener, &mut session);
    // Read part of what was sent, cutting a line in two; ack that part.
    host.read(&mut session, 3001, &mut seen);
    let got_first = seen.len() as u64;
    assert!(got_first > 3 && got_first < 50, "{got_first}");
    host.ack(&mut session);
    drive(&mut link, &mut ob, 20);
    assert_eq!(ob.acked(), got_first);
    // The host goes away with the rest unread (and a half line buffered).
    drop(host);
    drive(&mut link, &mut ob, 20);
    for pid in 51..=70 {
        ob.push(&kill(pid));
    }
    // Reconnect after the back-off; everything unacked is sent again.
    drive(&mut link, &mut ob, 60);
    assert_eq!(link.connects, 2);
    let mut host = Host::accept(&listener, &mut session);
    for _ in 0..50 {
        host.read(&mut session, 1 << 20, &mut seen);
        host.ack(&mut session);
        drive(&mut link, &mut ob, 5);
        if seen.len() == 70 && ob.is_empty() {
            break;
        }
    }
    assert_exactly_once(&seen, 1..=70);
    assert!(ob.is_empty(), "everything acknowledged");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn lost_ack_means_resend_and_host_dedups() {
    let path = sock_path("lostack");
    let listener = UnixListener::bind(&path).unwrap();
    let mut session = HostSession::new();
    let mut seen = Vec::new();
    let mut ob = Outbox::new(1000);
    let mut link = Link::new(Target::Unix(path.clone()), hello(), false).with_backoff(5, 20);
    for pid in 1..=10 {
        ob.push(&kill(pid));
    }
    drive(&mut link, &mut ob, 20);
    let mut host = Host::accept(&listener, &mut session);
    host.read(&mut session, 1 << 20, &mut seen);
    assert_eq!(seen.len(), 10);
    // The host got everything but dies before acking.
    drop(host);
    drive(&mut link, &mut ob, 60);
    let mut host = Host::accept(&listener, &mut session);
    let before = session.stats().duplicates;
    for _ in 0..20 {
        host.read(&mut session, 1 << 20, &mut seen);
        host.ack(&mut session);
        drive(&mut link, &mut ob, 5);
    }
    assert_exactly_once(&seen, 1..=10);
    // The host acked 10 at the hello (it knew the stream), so the agent may
    // have dropped them before resending; whatever was resent was deduped.
    assert!(session.stats().duplicates >= before);
    assert!(ob.is_empty());
    let _ = std::fs::remove_file(&path);
}

#[test]
fn no_listener_then_listener_appears() {
    let path = sock_path("late");
    let mut ob = Outbox::new(100);
    let mut link = Link::new(Target::Unix(path.clone()), hello(), false).with_backoff(5, 10);
    ob.push(&kill(1));
    drive(&mut link, &mut ob, 30);
    assert!(!link.is_up());
    let listener = UnixListener::bind(&path).unwrap();
    drive(&mut link, &mut ob, 30);
    assert!(link.is_up());
    let mut session = HostSession::new();
    let mut seen = Vec::new();
    let mut host = Host::accept(&listener, &mut session);
    host.read(&mut session, 1 << 20, &mut seen);
    assert_eq!(seen, vec![1]);
    let _ = std::fs::remove_file(&path);
}

/// A tiny deterministic PRNG (xorshift64*), so that the cases are the same
/// on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Random interleavings of pushes, partial reads, acks and drops; with
/// summaries, which replace each other (gaps), and a queue small enough
/// to drop. Whatever the host receives is in order, never twice, and
/// every kill not counted as dropped arrives.
#[test]
fn random_drops_and_resends() {
    for case in 0..8u64 {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (case + 1));
        let path = sock_path(&format!("rand{case}"));
        let listener = UnixListener::bind(&path).unwrap();
        let mut session = HostSession::new();
        let mut seen = Vec::new();
        let mut ob = Outbox::new(40);
        let mut link = Link::new(Target::Unix(path.clone()), hello(), false).with_backoff(2, 8);
        let mut kills = BTreeSet::new();
        let mut host: Option<Host> = None;
        for _ in 0..30 {
            for _ in 0..rng.below(8) {
                if rng.below(4) == 0 {
                    ob.push(&AgentMessage::Summary(Summary::default()));
                } else {
                    let s = ob.next_seq();
                    kills.insert(ob.push(&kill(s as i32)));
                }
            }
            drive(&mut link, &mut ob, 3);
            if host.is_none() && link.is_up() {
                host = Some(Host::accept(&listener, &mut session));
            }
            if let Some(h) = &mut host {
                h.read(&mut session, rng.below(2000) as usize, &mut seen);
                if rng.below(2) == 0 {
                    h.ack(&mut session);
                }
                if rng.below(5) == 0 {
                    host = None;
                }
            }
        }
        // Calm down: a host that reads and acks everything.
        for _ in 0..200 {
            drive(&mut link, &mut ob, 3);
            if host.is_none() && link.is_up() {
                host = Some(Host::accept(&listener, &mut session));
            }
            if let Some(h) = &mut host {
                h.read(&mut session, 1 << 20, &mut seen);
                h.ack(&mut session);
            }
            if ob.is_empty() {
                break;
            }
        }
        eprintln!(
            "case {case}: connects {} dropped {} seen {} dups {} kills {}",
            link.connects,
            ob.dropped,
            seen.len(),
            session.stats().duplicates,
            kills.len()
        );
        assert!(ob.is_empty(), "case {case}: queue drained");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "case {case}: in order, no duplicate"
        );
        let delivered: BTreeSet<u64> = seen.iter().copied().collect();
        let missing = kills.iter().filter(|s| !delivered.contains(s)).count() as u64;
        assert!(
            missing <= ob.dropped,
            "case {case}: {missing} messages missing but only {} dropped",
            ob.dropped
        );
        let _ = std::fs::remove_file(&path);
    }
}
