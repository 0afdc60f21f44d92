//! One timeline of everything the daemon saw and did: VM lifecycle, OOM
//! decisions with their tables, kills with their latencies, as typed
//! [`Event`]s numbered by `seq` ([`EventRecord`]). Events are kept in
//! memory (the most recent [`KEEP`]), appended to `events.ndjson` in the
//! state directory so they survive the daemon, and streamed to followers.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::daemon_api::{Event, EventRecord};

/// Events kept in memory for `GET /events`.
pub const KEEP: usize = 10_000;

pub struct EventLog {
    inner: Mutex<Inner>,
}

struct Inner {
    next_seq: u64,
    recent: VecDeque<EventRecord>,
    followers: Vec<Sender<EventRecord>>,
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

    /// Records `event`: numbered, kept, appended to the file, sent to the
    /// followers. Returns the record.
    pub fn push(&self, event: Event) -> EventRecord {
        let mut inner = self.inner();
        let record = EventRecord {
            seq: inner.next_seq,
            time_ms: now_ms(),
            event,
        };
        inner.next_seq += 1;
        if let Some(f) = inner.file.as_mut() {
            // Losing the file copy must not lose the event: it is still
            // in memory and streamed.
            if let Ok(line) = serde_json::to_string(&record) {
                let _ = writeln!(f, "{line}");
            }
        }
        inner.followers.retain(|tx| tx.send(record.clone()).is_ok());
        inner.recent.push_back(record.clone());
        if inner.recent.len() > KEEP {
            inner.recent.pop_front();
        }
        record
    }

    /// Events with `seq > since`, oldest first.
    pub fn since(&self, since: u64) -> Vec<EventRecord> {
        let inner = self.inner();
        inner
            .recent
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }

    /// Events with `seq > since`, then every new one as it happens.
    pub fn follow(&self, since: u64) -> Receiver<EventRecord> {
        let (tx, rx) = mpsc::channel();
        let mut inner = self.inner();
        for e in inner.recent.iter().filter(|e| e.seq > since) {
            let _ = tx.send(e.clone());
        }
        inner.followers.push(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(vm: &str) -> Event {
        Event::VmRunning { vm: vm.into() }
    }

    #[test]
    fn events_are_numbered_kept_and_followed() {
        let log = EventLog::new(None).unwrap();
        log.push(running("a"));
        let rx = log.follow(0);
        log.push(running("b"));
        assert_eq!(log.since(1).len(), 1);
        assert_eq!(rx.recv().unwrap().event, running("a"));
        let b = rx.recv().unwrap();
        assert_eq!((b.kind(), b.seq), ("vm_running", 2));
        drop(rx);
        log.push(running("c"));
        assert!(
            log.inner().followers.is_empty(),
            "a gone follower is dropped"
        );
    }
}
