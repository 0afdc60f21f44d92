//! One timeline of everything the daemon saw and did: VM lifecycle, OOM
//! decisions with their tables, kills with their latencies. Each event is a
//! JSON object with a monotonically increasing `seq`, a `time_ms` (Unix
//! milliseconds) and a `kind`. Events are kept in memory (the most recent
//! [`KEEP`]), appended to `events.ndjson` in the state directory so they
//! survive the daemon, and streamed to followers.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// Events kept in memory for `GET /events`.
pub const KEEP: usize = 10_000;

pub struct EventLog {
    inner: Mutex<Inner>,
}

struct Inner {
    next_seq: u64,
    recent: VecDeque<Value>,
    followers: Vec<Sender<Value>>,
    file: Option<File>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventLog {
    /// A log that also appends to `file` (created if missing).
    pub fn new(file: Option<&Path>) -> std::io::Result<Self> {
        let file = file
            .map(|p| OpenOptions::new().create(true).append(true).open(p))
            .transpose()?;
        Ok(EventLog {
            inner: Mutex::new(Inner {
                next_seq: 1,
                recent: VecDeque::new(),
                followers: Vec::new(),
                file,
            }),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event of `kind` with the fields of `body` (an object).
    pub fn push(&self, kind: &str, body: Value) -> Value {
        let mut inner = self.inner();
        let mut event = json!({ "seq": inner.next_seq, "time_ms": now_ms(), "kind": kind });
        if let (Some(e), Value::Object(fields)) = (event.as_object_mut(), body) {
            e.extend(fields);
        }
        inner.next_seq += 1;
        if let Some(f) = inner.file.as_mut() {
            // Losing the file copy must not lose the event: it is still
            // in memory and streamed.
            let _ = writeln!(f, "{event}");
        }
        inner.followers.retain(|tx| tx.send(event.clone()).is_ok());
        inner.recent.push_back(event.clone());
        if inner.recent.len() > KEEP {
            inner.recent.pop_front();
        }
        event
    }

    /// Events with `seq > since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<Value> {
        let inner = self.inner();
        inner
            .recent
            .iter()
            .filter(|e| e["seq"].as_u64().unwrap_or(0) > since)
            .cloned()
            .collect()
    }

    /// Events with `seq > since`, then every new one as it happens.
    pub fn follow(&self, since: u64) -> Receiver<Value> {
        let (tx, rx) = mpsc::channel();
        let mut inner = self.inner();
        for e in inner
            .recent
            .iter()
            .filter(|e| e["seq"].as_u64().unwrap_or(0) > since)
        {
            let _ = tx.send(e.clone());
        }
        inner.followers.push(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_kept_and_followed() {
        let log = EventLog::new(None).unwrap();
        log.push("a", json!({"x": 1}));
        let rx = log.follow(0);
        log.push("b", json!({}));
        assert_eq!(log.since(1).len(), 1);
        assert_eq!(rx.recv().unwrap()["kind"], "a");
        let b = rx.recv().unwrap();
        assert_eq!(
            (b["kind"].as_str(), b["seq"].as_u64()),
            (Some("b"), Some(2))
        );
        drop(rx);
        log.push("c", json!({}));
        assert!(
            log.inner().followers.is_empty(),
            "a gone follower is dropped"
        );
    }
}
