//! The host side of the protocol: [`HostSession`] turns the bytes an agent
//! sends into typed events, drops duplicates and says what to acknowledge.
//!
//! One `HostSession` per guest, kept across that guest's connections: the
//! dedup state (the highest seq of each stream) must outlive a connection,
//! while the line buffer must not. Use:
//!
//! ```
//! use guest_agent::host::{Event, HostSession};
//! let mut s = HostSession::new();
//! s.connection_started();
//! let mut events = Vec::new();
//! s.feed(b"{\"type\":\"hello\",\"proto\":1,\"agent\":\"0.1.0\",\"kernel\":\"6.12\",\
//!          \"boot_id\":\"b\",\"instance\":\"i\",\"interval_ms\":5000}\n", &mut events);
//! assert!(matches!(events[0], Event::Hello { .. }));
//! // ... after each read: write s.take_ack() back to the agent, if any.
//! ```
//!
//! Bad input never panics and never grows memory without bound: a line
//! longer than [`Limits::max_line`] is skipped up to its newline with one
//! [`ProtocolError::LineTooLong`]; a line that is not JSON, not a message,
//! or out of order gives one typed error and is skipped; the table of known
//! streams holds at most [`Limits::max_streams`] entries.

use std::collections::VecDeque;

use thiserror::Error;

use crate::protocol::{Ack, AgentMessage, Envelope, Hello, MAX_LINE, PROTOCOL_VERSION};

/// Bounds on what one session holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest line accepted, newline excluded.
    pub max_line: usize,
    /// Streams remembered for dedup (a guest reboot or an agent restart
    /// starts a new one); the least recently used is forgotten first.
    pub max_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line: MAX_LINE,
            max_streams: 8,
        }
    }
}

/// Which agent stream a hello opened: one boot of the guest, one run of
/// the agent.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamKey {
    pub boot_id: String,
    pub instance: String,
}

/// What a line was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A connection's hello. `resumed_at` is the highest seq already held
    /// for this stream when the agent reconnected (`None`: a new stream).
    Hello {
        hello: Hello,
        resumed_at: Option<u64>,
    },
    /// A new message, in order, never seen before on this stream.
    Message { seq: u64, message: AgentMessage },
    /// A resent message the host already holds (dropped; acked again).
    Duplicate { seq: u64 },
    /// A line that was rejected; the session carries on with the next one.
    Error(ProtocolError),
}

/// Why a line was rejected.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("line longer than {limit} bytes")]
    LineTooLong { limit: usize },
    #[error("line is not UTF-8")]
    NotUtf8,
    #[error("not a protocol message: {0}")]
    Malformed(String),
    #[error("message before the hello")]
    NoHello,
    #[error("a second hello on one connection")]
    SecondHello,
    #[error("protocol version {got} not supported (this host speaks {supported})")]
    UnsupportedVersion { got: u32, supported: u32 },
    #[error("bad hello: {0}")]
    BadHello(&'static str),
}

/// Counters for a session's whole life (all connections).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connections: u64,
    pub messages: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub bytes: u64,
}

#[derive(Debug)]
struct Stream {
    key: StreamKey,
    /// Highest seq delivered (0: none yet).
    last_seq: u64,
}

/// The host's protocol state for one guest. See the module docs.
#[derive(Debug)]
pub struct HostSession {
    limits: Limits,
    line: Vec<u8>,
    /// Inside an over-long line: skip up to the next newline.
    skipping: bool,
    /// The stream this connection's hello named (index into `streams`,
    /// which keeps the most recently used last).
    hello: Option<StreamKey>,
    streams: VecDeque<Stream>,
    ack_due: Option<u64>,
    stats: Stats,
}

impl Default for HostSession {
    fn default() -> Self {
        Self::new()
    }
}

impl HostSession {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        let limits = Limits {
            max_line: limits.max_line.max(64),
            max_streams: limits.max_streams.max(1),
        };
        HostSession {
            limits,
            line: Vec::new(),
            skipping: false,
            hello: None,
            streams: VecDeque::new(),
            ack_due: None,
            stats: Stats::default(),
        }
    }

    /// A new connection from this guest's agent: forget the partial line
    /// and the hello of the previous one; keep what was delivered.
    pub fn connection_started(&mut self) {
        self.line.clear();
        self.line.shrink_to(self.limits.max_line.min(4096));
        self.skipping = false;
        self.hello = None;
        self.ack_due = None;
        self.stats.connections += 1;
    }

    /// The stream of the current connection, once its hello arrived.
    pub fn stream(&self) -> Option<&StreamKey> {
        self.hello.as_ref()
    }

    /// Highest seq delivered on `key` (0: none), if the stream is known.
    pub fn last_seq(&self, key: &StreamKey) -> Option<u64> {
        self.streams
            .iter()
            .find(|s| &s.key == key)
            .map(|s| s.last_seq)
    }

    /// Seeds the dedup state with a stream the host held before this
    /// session existed (a restarted host process reads what it had
    /// acknowledged from disk): `last_seq` and below are duplicates.
    /// Raises, never lowers, what is known of the stream.
    pub fn remember(&mut self, key: StreamKey, last_seq: u64) {
        if let Some(s) = self.streams.iter_mut().find(|s| s.key == key) {
            s.last_seq = s.last_seq.max(last_seq);
            return;
        }
        if self.streams.len() >= self.limits.max_streams {
            self.streams.pop_front();
        }
        self.streams.push_back(Stream { key, last_seq });
    }

    /// Streams remembered for dedup (at most [`Limits::max_streams`]).
    pub fn known_streams(&self) -> usize {
        self.streams.len()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes held for a partial line (bounded by `max_line`).
    pub fn buffered(&self) -> usize {
        self.line.len()
    }

    /// Takes bytes as read from the connection; appends one event per
    /// complete line to `events` (blank lines are ignored).
    pub fn feed(&mut self, mut bytes: &[u8], events: &mut Vec<Event>) {
        self.stats.bytes += bytes.len() as u64;
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let (part, rest, complete) = match nl {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.skipping {
                if complete {
                    self.skipping = false;
                }
                continue;
            }
            if self.line.len() + part.len() > self.limits.max_line {
                self.line.clear();
                self.stats.errors += 1;
                events.push(Event::Error(ProtocolError::LineTooLong {
                    limit: self.limits.max_line,
                }));
                self.skipping = !complete;
                continue;
            }
            if !complete {
                self.line.extend_from_slice(part);
                continue;
            }
            let ev = if self.line.is_empty() {
                self.handle_line(part)
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(part);
                let ev = self.handle_line(&line);
                line.clear();
                self.line = line;
                ev
            };
            if let Some(ev) = ev {
                if matches!(ev, Event::Error(_)) {
                    self.stats.errors += 1;
                }
                events.push(ev);
            }
        }
    }

    /// The ack to write back now, if one is due: the highest seq held for
    /// the connection's stream, sent once per change (and after a hello
    /// for a known stream).
    pub fn take_ack(&mut self) -> Option<Ack> {
        self.ack_due.take().map(|ack| Ack { ack })
    }

    fn handle_line(&mut self, line: &[u8]) -> Option<Event> {
        let line = trim(line);
        if line.is_empty() {
            return None;
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Some(Event::Error(ProtocolError::NotUtf8));
        };
        // The hello is the only line without a seq; tell them apart without
        // parsing twice in the common case.
        let value: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return Some(Event::Error(malformed(e))),
        };
        let is_hello = value.get("type").and_then(|t| t.as_str()) == Some("hello");
        if is_hello {
            return Some(self.handle_hello(value));
        }
        let envelope: Envelope = match serde_json::from_value(value) {
            Ok(e) => e,
            Err(e) => return Some(Event::Error(malformed(e))),
        };
        let Some(key) = &self.hello else {
            return Some(Event::Error(ProtocolError::NoHello));
        };
        let Some(stream) = self.streams.iter_mut().find(|s| &s.key == key) else {
            // The stream was evicted by other streams of the same session
            // (more than max_streams hellos): start it again.
            return Some(Event::Error(ProtocolError::NoHello));
        };
        let seq = envelope.seq;
        self.ack_due = Some(stream.last_seq.max(seq));
        if seq <= stream.last_seq {
            self.stats.duplicates += 1;
            return Some(Event::Duplicate { seq });
        }
        stream.last_seq = seq;
        self.stats.messages += 1;
        Some(Event::Message {
            seq,
            message: envelope.message,
        })
    }

    fn handle_hello(&mut self, value: serde_json::Value) -> Event {
        if self.hello.is_some() {
            return Event::Error(ProtocolError::SecondHello);
        }
        if value.get("seq").is_some() {
            return Event::Error(ProtocolError::BadHello("a hello has no seq"));
        }
        let hello: Hello = match serde_json::from_value(value) {
            Ok(h) => h,
            Err(e) => return Event::Error(malformed(e)),
        };
        if hello.proto != PROTOCOL_VERSION {
            return Event::Error(ProtocolError::UnsupportedVersion {
                got: hello.proto,
                supported: PROTOCOL_VERSION,
            });
        }
        if hello.boot_id.is_empty() || hello.boot_id.len() > 64 {
            return Event::Error(ProtocolError::BadHello("boot_id must be 1..=64 bytes"));
        }
        if hello.instance.is_empty() || hello.instance.len() > 64 {
            return Event::Error(ProtocolError::BadHello("instance must be 1..=64 bytes"));
        }
        let key = StreamKey {
            boot_id: hello.boot_id.clone(),
            instance: hello.instance.clone(),
        };
        let resumed_at = match self.streams.iter().position(|s| s.key == key) {
            Some(i) => {
                // Most recently used goes last.
                let s = self.streams.remove(i).expect("index from position");
                let last = s.last_seq;
                self.streams.push_back(s);
                Some(last)
            }
            None => {
                if self.streams.len() >= self.limits.max_streams {
                    self.streams.pop_front();
                }
                self.streams.push_back(Stream {
                    key: key.clone(),
                    last_seq: 0,
                });
                None
            }
        };
        if let Some(last) = resumed_at {
            if last > 0 {
                self.ack_due = Some(last);
            }
        }
        self.hello = Some(key);
        Event::Hello { hello, resumed_at }
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

fn malformed(e: serde_json::Error) -> ProtocolError {
    let mut msg = e.to_string();
    if msg.len() > 160 {
        let mut cut = 160;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
    }
    ProtocolError::Malformed(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{KmsgLost, Summary};

    fn hello_line(boot: &str, inst: &str) -> Vec<u8> {
        let h = Hello {
            proto: PROTOCOL_VERSION,
            agent: "0.1.0".into(),
            kernel: "6.12.117".into(),
            boot_id: boot.into(),
            instance: inst.into(),
            interval_ms: 5000,
        };
        let mut v = serde_json::to_vec(&serde_json::json!({
            "type": "hello",
            "proto": h.proto, "agent": h.agent, "kernel": h.kernel,
            "boot_id": h.boot_id, "instance": h.instance, "interval_ms": h.interval_ms,
        }))
        .unwrap();
        v.push(b'\n');
        v
    }

    fn msg_line(seq: u64) -> Vec<u8> {
        let mut v = serde_json::to_vec(&Envelope {
            seq,
            message: AgentMessage::KmsgLost(KmsgLost {
                records: seq,
                resumed_at: 1,
                before_start: false,
            }),
        })
        .unwrap();
        v.push(b'\n');
        v
    }

    fn feed(s: &mut HostSession, b: &[u8]) -> Vec<Event> {
        let mut ev = Vec::new();
        s.feed(b, &mut ev);
        ev
    }

    #[test]
    fn hello_then_messages_then_ack() {
        let mut s = HostSession::new();
        s.connection_started();
        let ev = feed(&mut s, &hello_line("b1", "i1"));
        assert!(matches!(
            &ev[0],
            Event::Hello {
                resumed_at: None,
                ..
            }
        ));
        assert_eq!(s.take_ack(), None);
        let mut both = msg_line(1);
        both.extend(msg_line(2));
        let ev = feed(&mut s, &both);
        assert_eq!(ev.len(), 2);
        assert!(matches!(ev[1], Event::Message { seq: 2, .. }));
        assert_eq!(s.take_ack(), Some(Ack { ack: 2 }));
        assert_eq!(s.take_ack(), None);
    }

    /// A restarted host that remembers what it acknowledged takes a
    /// resend as duplicates and acks at once.
    #[test]
    fn a_remembered_stream_dedups_a_resend_after_a_host_restart() {
        let mut s = HostSession::new();
        let key = StreamKey {
            boot_id: "b1".into(),
            instance: "i1".into(),
        };
        s.remember(key.clone(), 2);
        s.remember(key.clone(), 1);
        assert_eq!(s.last_seq(&key), Some(2), "never lowered");
        s.connection_started();
        let mut resend = hello_line("b1", "i1");
        resend.extend(msg_line(2));
        resend.extend(msg_line(3));
        let ev = feed(&mut s, &resend);
        assert!(matches!(
            ev[0],
            Event::Hello {
                resumed_at: Some(2),
                ..
            }
        ));
        assert_eq!(ev[1], Event::Duplicate { seq: 2 });
        assert!(matches!(ev[2], Event::Message { seq: 3, .. }));
    }

    #[test]
    fn byte_at_a_time() {
        let mut s = HostSession::new();
        s.connection_started();
        let mut all = hello_line("b", "i");
        all.extend(msg_line(1));
        let mut ev = Vec::new();
        for b in &all {
            s.feed(std::slice::from_ref(b), &mut ev);
        }
        assert_eq!(ev.len(), 2);
        assert!(matches!(ev[1], Event::Message { seq: 1, .. }));
    }

    #[test]
    fn message_before_hello_is_rejected() {
        let mut s = HostSession::new();
        s.connection_started();
        let ev = feed(&mut s, &msg_line(1));
        assert_eq!(ev, vec![Event::Error(ProtocolError::NoHello)]);
    }

    #[test]
    fn reconnect_dedups_and_acks_at_once() {
        let mut s = HostSession::new();
        s.connection_started();
        feed(&mut s, &hello_line("b", "i"));
        feed(&mut s, &msg_line(1));
        feed(&mut s, &msg_line(2));
        s.take_ack();
        s.connection_started();
        let ev = feed(&mut s, &hello_line("b", "i"));
        assert!(matches!(
            &ev[0],
            Event::Hello {
                resumed_at: Some(2),
                ..
            }
        ));
        assert_eq!(s.take_ack(), Some(Ack { ack: 2 }));
        let ev = feed(&mut s, &[msg_line(2), msg_line(3)].concat());
        assert_eq!(ev[0], Event::Duplicate { seq: 2 });
        assert!(matches!(ev[1], Event::Message { seq: 3, .. }));
        // A new agent instance in the same boot is a new stream.
        s.connection_started();
        let ev = feed(&mut s, &hello_line("b", "j"));
        assert!(matches!(
            &ev[0],
            Event::Hello {
                resumed_at: None,
                ..
            }
        ));
        let ev = feed(&mut s, &msg_line(1));
        assert!(matches!(ev[0], Event::Message { seq: 1, .. }));
    }

    #[test]
    fn garbage_gives_typed_errors_and_the_session_goes_on() {
        let mut s = HostSession::new();
        s.connection_started();
        feed(&mut s, &hello_line("b", "i"));
        let ev = feed(
            &mut s,
            b"not json\n\xff\xfe\n{\"seq\":1}\n{\"type\":\"hello\"}\n",
        );
        assert!(matches!(ev[0], Event::Error(ProtocolError::Malformed(_))));
        assert_eq!(ev[1], Event::Error(ProtocolError::NotUtf8));
        assert!(matches!(ev[2], Event::Error(ProtocolError::Malformed(_))));
        assert_eq!(ev[3], Event::Error(ProtocolError::SecondHello));
        let ev = feed(&mut s, &msg_line(1));
        assert!(matches!(ev[0], Event::Message { seq: 1, .. }));
        assert_eq!(s.stats().errors, 4);
    }

    #[test]
    fn long_lines_are_skipped_with_bounded_memory() {
        let mut s = HostSession::with_limits(Limits {
            max_line: 300,
            max_streams: 2,
        });
        s.connection_started();
        let ev = feed(&mut s, &hello_line("b", "i"));
        assert!(matches!(ev[0], Event::Hello { .. }));
        let mut ev = Vec::new();
        for _ in 0..1000 {
            s.feed(&[b'x'; 64], &mut ev);
            assert!(s.buffered() <= 300);
        }
        assert_eq!(
            ev,
            vec![Event::Error(ProtocolError::LineTooLong { limit: 300 })]
        );
        // The rest of the long line up to its newline is skipped; the next
        // line is fine.
        let ev = feed(&mut s, &[&b"yyy\n"[..], &msg_line(1)].concat());
        assert!(matches!(ev[0], Event::Message { seq: 1, .. }));
    }

    #[test]
    fn wrong_version_and_bad_hello() {
        let mut s = HostSession::new();
        s.connection_started();
        let line = hello_line("b", "i");
        let text = String::from_utf8(line)
            .unwrap()
            .replace("\"proto\":1", "\"proto\":99");
        let ev = feed(&mut s, text.as_bytes());
        assert_eq!(
            ev[0],
            Event::Error(ProtocolError::UnsupportedVersion {
                got: 99,
                supported: PROTOCOL_VERSION
            })
        );
        let ev = feed(&mut s, &hello_line("", "i"));
        assert!(matches!(ev[0], Event::Error(ProtocolError::BadHello(_))));
    }

    #[test]
    fn streams_table_is_bounded() {
        let mut s = HostSession::with_limits(Limits {
            max_line: 4096,
            max_streams: 3,
        });
        for i in 0..10 {
            s.connection_started();
            feed(&mut s, &hello_line(&format!("boot{i}"), "i"));
            feed(&mut s, &msg_line(1));
        }
        assert_eq!(s.streams.len(), 3);
    }

    #[test]
    fn summary_round_trip() {
        let mut s = HostSession::new();
        s.connection_started();
        feed(&mut s, &hello_line("b", "i"));
        let sum = Summary {
            uptime_ms: 1,
            mem_total_kb: 2,
            psi_some_avg10: Some(1234),
            ..Default::default()
        };
        let mut line = serde_json::to_vec(&Envelope {
            seq: 5,
            message: AgentMessage::Summary(sum.clone()),
        })
        .unwrap();
        line.push(b'\n');
        let ev = feed(&mut s, &line);
        assert_eq!(
            ev[0],
            Event::Message {
                seq: 5,
                message: AgentMessage::Summary(sum)
            }
        );
    }
}
