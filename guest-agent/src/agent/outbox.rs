//! The agent's bounded queue of messages not yet acknowledged, and where
//! the current connection is in sending them.
//!
//! Messages are encoded once, when queued; a reconnect rewinds the send
//! cursor to the oldest unacknowledged message and everything is sent
//! again, in order. Bounds: [`Outbox::capacity`] messages and
//! [`MAX_BYTES`] bytes. When full, the oldest message goes, preferring
//! the oldest that is not about a kill; every drop is counted and the
//! count travels in the next [`crate::protocol::Summary`]. A new summary
//! replaces the previous one still queued (it is only a heartbeat and a
//! snapshot), so a host that is away for hours finds one summary, not
//! thousands.

use std::collections::VecDeque;

use crate::protocol::AgentMessage;

/// Bytes all queued messages may take together.
pub const MAX_BYTES: usize = 256 * 1024;

/// Default number of messages kept.
pub const DEFAULT_CAPACITY: usize = 256;

#[derive(Debug)]
struct Entry {
    seq: u64,
    /// Summary, pressure and memcg events: dropped before kill reports.
    low_priority: bool,
    summary: bool,
    line: Vec<u8>,
}

#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    bytes: usize,
    capacity: usize,
    next_seq: u64,
    /// Highest seq the host acknowledged.
    acked: u64,
    /// Entries before this index were sent on the current connection.
    send_idx: usize,
    /// Bytes of `entries[send_idx]` already sent.
    send_off: usize,
    /// Highest seq ever sent whole, on any connection (acks beyond it are
    /// bogus and clamped).
    sent_seq: u64,
    /// Messages dropped because the queue was full.
    pub dropped: u64,
}

impl Outbox {
    pub fn new(capacity: usize) -> Self {
        Outbox {
            entries: VecDeque::new(),
            bytes: 0,
            capacity: capacity.max(2),
            next_seq: 1,
            acked: 0,
            send_idx: 0,
            send_off: 0,
            sent_seq: 0,
            dropped: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of all queued lines.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Highest seq acknowledged by the host.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The seq the next message will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Queues a message; returns its seq.
    pub fn push(&mut self, message: &AgentMessage) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let line = super::wire::envelope_line(seq, message);
        let summary = matches!(message, AgentMessage::Summary(_));
        let low_priority = matches!(
            message,
            AgentMessage::Summary(_) | AgentMessage::Pressure(_) | AgentMessage::MemcgEvents(_)
        );
        if summary {
            if let Some(i) = self.entries.iter().position(|e| e.summary) {
                if self.removable(i) {
                    self.remove(i);
                }
            }
        }
        self.bytes += line.len();
        self.entries.push_back(Entry {
            seq,
            low_priority,
            summary,
            line,
        });
        while self.entries.len() > self.capacity || self.bytes > MAX_BYTES {
            let victim = (0..self.entries.len() - 1)
                .find(|&i| self.entries[i].low_priority && self.removable(i))
                .or_else(|| (0..self.entries.len() - 1).find(|&i| self.removable(i)));
            match victim {
                Some(i) => {
                    self.remove(i);
                    self.dropped += 1;
                }
                None => break,
            }
        }
        seq
    }

    /// An entry may go unless it is half written to the socket.
    fn removable(&self, i: usize) -> bool {
        !(i == self.send_idx && self.send_off > 0)
    }

    fn remove(&mut self, i: usize) {
        if let Some(e) = self.entries.remove(i) {
            self.bytes -= e.line.len();
        }
        if i < self.send_idx {
            self.send_idx -= 1;
        }
    }

    /// The host holds everything up to `seq`. Acks beyond what was ever
    /// sent are clamped (a host cannot hold what it never got). Returns how
    /// many messages were released.
    pub fn ack(&mut self, seq: u64) -> usize {
        self.acked = self.acked.max(seq.min(self.sent_seq));
        let mut n = 0;
        while let Some(e) = self.entries.front() {
            // A message half written on this connection stays until it is
            // whole, or the stream would be cut mid-line.
            if e.seq > self.acked || (self.send_idx == 0 && self.send_off > 0) {
                break;
            }
            let e = self.entries.pop_front().expect("front exists");
            self.bytes -= e.line.len();
            self.send_idx = self.send_idx.saturating_sub(1);
            n += 1;
        }
        n
    }

    /// A new connection: send every unacknowledged message again.
    pub fn rewind(&mut self) {
        self.send_idx = 0;
        self.send_off = 0;
    }

    /// Bytes to write next on this connection, if any.
    pub fn pending(&self) -> Option<&[u8]> {
        self.entries
            .get(self.send_idx)
            .map(|e| &e.line[self.send_off..])
    }

    /// Up to `max` buffers to write next, for one vectored send.
    pub fn pending_slices(&self, max: usize) -> impl Iterator<Item = &[u8]> {
        self.entries
            .range(self.send_idx.min(self.entries.len())..)
            .take(max)
            .enumerate()
            .map(|(i, e)| {
                if i == 0 {
                    &e.line[self.send_off..]
                } else {
                    &e.line[..]
                }
            })
    }

    /// `n` bytes of what [`Outbox::pending`] / [`Outbox::pending_slices`]
    /// offered were written.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(e) = self.entries.get(self.send_idx) else {
                return;
            };
            let left = e.line.len() - self.send_off;
            if n < left {
                self.send_off += n;
                return;
            }
            n -= left;
            self.sent_seq = self.sent_seq.max(e.seq);
            self.send_idx += 1;
            self.send_off = 0;
        }
    }

    /// Messages sent on this connection but not acknowledged yet.
    pub fn in_flight(&self) -> usize {
        self.send_idx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{KmsgLost, OomKill, Summary};

    fn kill(pid: i32) -> AgentMessage {
        AgentMessage::OomKill(Box::new(OomKill {
            pid,
            comm: "x".into(),
            ..Default::default()
        }))
    }

    fn sum(up: u64) -> AgentMessage {
        AgentMessage::Summary(Summary {
            uptime_ms: up,
            ..Default::default()
        })
    }

    fn send_all(o: &mut Outbox) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(p) = o.pending() {
            let n = p.len().min(7); // short writes
            out.extend_from_slice(&p[..n]);
            o.advance(n);
        }
        out
    }

    #[test]
    fn seqs_ack_and_resend() {
        let mut o = Outbox::new(16);
        assert_eq!(o.push(&kill(1)), 1);
        assert_eq!(o.push(&kill(2)), 2);
        let sent = send_all(&mut o);
        assert_eq!(sent.iter().filter(|&&b| b == b'\n').count(), 2);
        assert_eq!(o.ack(1), 1);
        // Reconnect: only seq 2 is sent again.
        o.rewind();
        let again = String::from_utf8(send_all(&mut o)).unwrap();
        assert!(again.starts_with("{\"seq\":2,"));
        assert_eq!(o.ack(2), 1);
        assert!(o.is_empty());
        assert_eq!(o.bytes(), 0);
    }

    #[test]
    fn vectored_writes_cross_entries() {
        let mut o = Outbox::new(16);
        o.push(&kill(1));
        o.push(&kill(2));
        o.push(&kill(3));
        let all: Vec<u8> = o.pending_slices(8).flatten().copied().collect();
        let first = o.pending().unwrap().len();
        o.advance(first + 5);
        let rest: Vec<u8> = o.pending_slices(8).flatten().copied().collect();
        assert_eq!(&all[first + 5..], &rest[..]);
        assert_eq!(o.pending_slices(1).count(), 1);
        o.advance(rest.len());
        assert!(o.pending().is_none());
        assert_eq!(o.in_flight(), 3);
        assert_eq!(o.ack(3), 3);
    }

    #[test]
    fn bogus_acks_are_clamped() {
        let mut o = Outbox::new(16);
        o.push(&kill(1));
        o.push(&kill(2));
        assert_eq!(o.ack(100), 0, "nothing was sent yet");
        let p = o.pending().unwrap().len();
        o.advance(p);
        assert_eq!(o.ack(100), 1);
        assert_eq!(o.len(), 1);
        assert_eq!(o.acked(), 1);
    }

    #[test]
    fn a_new_summary_replaces_the_queued_one() {
        let mut o = Outbox::new(16);
        o.push(&sum(1));
        o.push(&kill(1));
        o.push(&sum(2));
        assert_eq!(o.len(), 2);
        assert_eq!(o.dropped, 0, "a replaced summary is not a drop");
        let text = String::from_utf8(send_all(&mut o)).unwrap();
        assert!(text.contains("\"uptime_ms\":2"));
        assert!(!text.contains("\"uptime_ms\":1"));
    }

    #[test]
    fn full_queue_drops_oldest_low_priority_first_and_counts() {
        let mut o = Outbox::new(4);
        o.push(&kill(1));
        o.push(&AgentMessage::KmsgLost(KmsgLost::default()));
        o.push(&sum(1));
        o.push(&kill(2));
        o.push(&kill(3));
        // The summary (low priority) went first.
        assert_eq!((o.len(), o.dropped), (4, 1));
        o.push(&kill(4));
        // Then the oldest message.
        assert_eq!((o.len(), o.dropped), (4, 2));
        let text = String::from_utf8(send_all(&mut o)).unwrap();
        assert!(!text.contains("\"seq\":1,"));
        assert!(text.contains("\"seq\":6,"));
    }

    #[test]
    fn a_half_written_message_is_never_dropped_or_replaced() {
        let mut o = Outbox::new(2);
        o.push(&sum(1));
        o.advance(3);
        o.push(&sum(2));
        assert_eq!(o.len(), 2);
        o.push(&kill(1));
        // Capacity 2: something had to go, but not the half-sent summary.
        let rest = String::from_utf8(o.pending().unwrap().to_vec()).unwrap();
        assert!(rest.starts_with("eq\":1,"), "{rest}");
    }
}
