//! One timeline of everything the daemon saw and did: VM lifecycle, OOM
//! decisions with their tables, kills with their latencies, as typed
//! [`Event`]s numbered by `seq` ([`EventRecord`]). Events are kept in
//! memory (the most recent [`KEEP`]) for `GET /events`, streamed to
//! followers, and appended to `events.ndjson` in the state directory so
//! they survive the daemon.
//!
//! The file never loses or tears an event silently:
//!
//! - each event is appended whole, one `pwrite` of its line at the end of
//!   the last whole line; a failed or short write is cut back off with
//!   `ftruncate` to that length, so a full disk never leaves half a line
//!   for the next one to be glued to;
//! - an event that could not be written is kept in memory (at most
//!   [`UNWRITTEN_MAX_BYTES`]; beyond that the oldest are dropped, and
//!   counted as lost) and written first, in order, when writing works
//!   again (at the next event, or the supervisor's next tick);
//! - failures are counted ([`EventLog::status`], in `GET /oom` and
//!   `/metrics`), reported on stderr once per failure streak, and
//!   recorded as `event_log_write_failed` / `event_log_recovered` events;
//! - the file is rotated at [`ROTATE_BYTES`] to `events.ndjson.1` (one
//!   old file kept);
//! - a restarted daemon goes on after the highest `seq` in the file (read
//!   from its tail), and a torn last line (a crash mid-write) is cut off;
//! - the file is created 0600 (and narrowed to that if it was wider).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::daemon_api::{Event, EventLogView, EventRecord};

/// Events kept in memory for `GET /events`.
pub const KEEP: usize = 10_000;

/// `events.ndjson` is rotated to `events.ndjson.1` before it would grow
/// past this size; one old file is kept, so the log takes at most twice
/// this on disk.
pub const ROTATE_BYTES: u64 = 64 << 20;

/// Most bytes of events kept in memory while the file cannot be written
/// (a few thousand decisions with their tables); beyond it the oldest are
/// dropped and counted as lost.
pub const UNWRITTEN_MAX_BYTES: usize = 8 << 20;

/// How much of the file's end is read at a time to find the last `seq`.
const TAIL_CHUNK: u64 = 64 << 10;

pub struct EventLog {
    inner: Mutex<Inner>,
}

struct Inner {
    next_seq: u64,
    recent: VecDeque<EventRecord>,
    followers: Vec<Sender<EventRecord>>,
    file: Option<LogFile>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventLog {
    /// A log in memory only.
    pub fn in_memory() -> Self {
        Self::with_file(None, 1)
    }

    /// A log that also appends to `path` (created 0600 if missing),
    /// numbering on after the highest `seq` already there.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::open_rotating_at(path, ROTATE_BYTES)
    }

    fn open_rotating_at(path: &Path, rotate_at: u64) -> io::Result<Self> {
        let (file, last_seq) = LogFile::open(path, rotate_at)?;
        Ok(Self::with_file(Some(file), last_seq + 1))
    }

    fn with_file(file: Option<LogFile>, next_seq: u64) -> Self {
        EventLog {
            inner: Mutex::new(Inner {
                next_seq,
                recent: VecDeque::new(),
                followers: Vec::new(),
                file,
            }),
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `event`: numbered, kept, appended to the file, sent to the
    /// followers. Returns the record.
    pub fn push(&self, event: Event) -> EventRecord {
        let mut inner = self.inner();
        let (record, change) = inner.record(event);
        inner.note(change);
        record
    }

    /// Writes the events kept while the file could not be written, if it
    /// can be now (the supervisor calls this every tick).
    pub fn retry_unwritten(&self) {
        let mut inner = self.inner();
        let Some(file) = inner.file.as_mut() else {
            return;
        };
        if file.unwritten.is_empty() {
            return;
        }
        let change = file.flush();
        inner.note(change);
    }

    /// Whether the file holds every event, for `GET /oom` and `/metrics`.
    pub fn status(&self) -> EventLogView {
        let inner = self.inner();
        inner
            .file
            .as_ref()
            .map_or_else(EventLogView::default, |f| EventLogView {
                write_failures: f.write_failures,
                unwritten: f.unwritten.len() as u64,
                lost: f.lost,
                last_error: f.last_error.clone(),
            })
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

impl Inner {
    fn record(&mut self, event: Event) -> (EventRecord, Change) {
        let record = EventRecord {
            seq: self.next_seq,
            time_ms: now_ms(),
            event,
        };
        self.next_seq += 1;
        let change = match self.file.as_mut() {
            Some(f) => f.append(&record),
            None => Change::None,
        };
        self.followers.retain(|tx| tx.send(record.clone()).is_ok());
        self.recent.push_back(record.clone());
        if self.recent.len() > KEEP {
            self.recent.pop_front();
        }
        (record, change)
    }

    /// Records a change of the file's health as an event. Writing that
    /// event may change it again (the disk full again at once), at most
    /// once: a streak that has begun stays on until a write works.
    fn note(&mut self, mut change: Change) {
        while let Some(file) = self.file.as_ref() {
            let event = match change {
                Change::None => return,
                Change::Failing(error) => Event::EventLogWriteFailed {
                    file: file.path.clone(),
                    error,
                },
                Change::Recovered { written_late, lost } => Event::EventLogRecovered {
                    file: file.path.clone(),
                    written_late,
                    lost,
                },
            };
            change = self.record(event).1;
        }
    }
}

/// How the file's health changed with a write.
#[derive(Debug)]
enum Change {
    None,
    /// The first failure of a streak.
    Failing(String),
    /// The streak is over: every event kept was written.
    Recovered {
        written_late: u64,
        lost: u64,
    },
}

/// `events.ndjson`, written one whole line at a time.
struct LogFile {
    path: PathBuf,
    file: File,
    /// Bytes of whole lines in the file: where the next line goes.
    len: u64,
    /// A write failed and its partial line may still be in the file past
    /// `len` (its `ftruncate` failed too): cut it off before writing on.
    torn: bool,
    rotate_at: u64,
    /// Whether a rotation failure was reported (once until one works).
    rotation_failed: bool,
    /// Lines not written yet, oldest first.
    unwritten: VecDeque<Vec<u8>>,
    unwritten_bytes: usize,
    write_failures: u64,
    lost: u64,
    last_error: Option<String>,
    /// In a failure streak: since the first failure, until every kept
    /// line is written.
    failing: bool,
    streak_written_late: u64,
    streak_lost: u64,
    /// Tests: the most bytes the file may hold (a small disk).
    #[cfg(test)]
    quota: Option<u64>,
}

/// Opens (creating) an event file for reading and writing, mode 0600;
/// narrows a wider mode (older daemons made it 0644).
fn open_private(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// `events.ndjson.1` for `events.ndjson`.
fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

/// Just the number of an event line, whatever its kind.
#[derive(serde::Deserialize)]
struct SeqOnly {
    seq: u64,
}

/// The highest `seq` in the last whole lines of the first `len` bytes of
/// `file`, reading backwards from the end only as far as it takes to find
/// one; `None` if no line has one.
fn last_seq(file: &File, len: u64) -> io::Result<Option<u64>> {
    let mut window = TAIL_CHUNK.min(len);
    while window > 0 {
        let start = len - window;
        let mut buf = vec![0; window as usize];
        file.read_exact_at(&mut buf, start)?;
        // Unless the window starts the file, its first line may be cut.
        let lines = match start {
            0 => &buf[..],
            _ => match buf.iter().position(|&b| b == b'\n') {
                Some(i) => &buf[i + 1..],
                None => &[][..],
            },
        };
        let seq = lines
            .split(|&b| b == b'\n')
            .filter_map(|l| serde_json::from_slice::<SeqOnly>(l).ok())
            .map(|s| s.seq)
            .max();
        if seq.is_some() || start == 0 {
            return Ok(seq);
        }
        window = (window * 2).min(len);
    }
    Ok(None)
}

/// Where the whole lines of `file` (`len` bytes) end: after its last
/// newline, or at its end if the text after that is a whole event (a
/// line that lost only its newline). The rest is a torn line.
fn whole_lines_end(file: &File, len: u64) -> io::Result<(u64, bool)> {
    let mut window = TAIL_CHUNK.min(len);
    loop {
        let start = len - window;
        let mut buf = vec![0; window as usize];
        file.read_exact_at(&mut buf, start)?;
        let newline = buf.iter().rposition(|&b| b == b'\n');
        if newline.is_none() && start > 0 {
            window = (window * 2).min(len);
            continue;
        }
        let end = newline.map_or(0, |i| i + 1);
        let tail = &buf[end..];
        if tail.is_empty() {
            return Ok((len, false));
        }
        if serde_json::from_slice::<SeqOnly>(tail).is_ok() {
            return Ok((len, true));
        }
        return Ok((start + end as u64, false));
    }
}

impl LogFile {
    /// Opens the log at `path`; returns it with the highest `seq` in it
    /// (or in the rotated file before it), 0 if none. A torn last line is
    /// cut off; a whole last event without its newline gets one.
    fn open(path: &Path, rotate_at: u64) -> io::Result<(LogFile, u64)> {
        let file = open_private(path)?;
        let mut len = file.metadata()?.len();
        let (end, needs_newline) = whole_lines_end(&file, len)?;
        if needs_newline {
            file.write_all_at(b"\n", len)?;
            len += 1;
        } else if end < len {
            log::warn!(
                "{}: cutting off a torn last line ({} bytes; the daemon \
                 stopped while writing it)",
                path.display(),
                len - end
            );
            file.set_len(end)?;
            len = end;
        }
        let mut seq = last_seq(&file, len)?;
        if seq.is_none() {
            // Just rotated: the last events are in the old file.
            if let Ok(old) = File::open(rotated(path)) {
                let old_len = old.metadata()?.len();
                seq = last_seq(&old, old_len)?;
            }
        }
        let log = LogFile {
            path: path.to_path_buf(),
            file,
            len,
            torn: false,
            rotate_at,
            rotation_failed: false,
            unwritten: VecDeque::new(),
            unwritten_bytes: 0,
            write_failures: 0,
            lost: 0,
            last_error: None,
            failing: false,
            streak_written_late: 0,
            streak_lost: 0,
            #[cfg(test)]
            quota: None,
        };
        Ok((log, seq.unwrap_or(0)))
    }

    /// Appends `record` after any lines still unwritten.
    fn append(&mut self, record: &EventRecord) -> Change {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            // Typed events always encode; should one not, it stays in
            // memory and the file says nothing rather than something torn.
            Err(_) => return Change::None,
        };
        line.push(b'\n');
        self.unwritten_bytes += line.len();
        self.unwritten.push_back(line);
        let change = self.flush();
        if !self.unwritten.is_empty() {
            // This event is among them: it could not be written now.
            self.write_failures += 1;
        }
        change
    }

    /// Writes the unwritten lines, oldest first, until one fails.
    fn flush(&mut self) -> Change {
        while let Some(line) = self.unwritten.pop_front() {
            if let Err(e) = self.write_line(&line) {
                self.unwritten.push_front(line);
                return self.failed(e);
            }
            self.unwritten_bytes -= line.len();
            if self.failing {
                self.streak_written_late += 1;
            }
        }
        if !self.failing {
            return Change::None;
        }
        self.failing = false;
        self.last_error = None;
        let (written_late, lost) = (self.streak_written_late, self.streak_lost);
        log::warn!(
            "{} is written again: {written_late} events written late{}",
            self.path.display(),
            if lost > 0 {
                format!(", {lost} lost (more than {UNWRITTEN_MAX_BYTES} bytes were waiting)")
            } else {
                String::new()
            }
        );
        Change::Recovered { written_late, lost }
    }

    /// A write failed: keep the lines within bounds, and say so once per
    /// streak.
    fn failed(&mut self, e: io::Error) -> Change {
        while self.unwritten_bytes > UNWRITTEN_MAX_BYTES && self.unwritten.len() > 1 {
            let line = self.unwritten.pop_front().expect("a front line");
            self.unwritten_bytes -= line.len();
            self.lost += 1;
            self.streak_lost += 1;
        }
        let error = e.to_string();
        self.last_error = Some(error.clone());
        if self.failing {
            return Change::None;
        }
        self.failing = true;
        self.streak_written_late = 0;
        self.streak_lost = 0;
        log::warn!(
            "cannot write {}: {error}; keeping events in memory (up to \
             {UNWRITTEN_MAX_BYTES} bytes) until it can be written again",
            self.path.display()
        );
        Change::Failing(error)
    }

    /// Writes one whole line at the end of the whole lines, or nothing.
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        if self.len > 0 && self.len + line.len() as u64 > self.rotate_at {
            self.rotate();
        }
        let result = match self.write_at(line, self.len) {
            Ok(n) if n == line.len() => {
                self.len += n as u64;
                return Ok(());
            }
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "short write: {n} of {} bytes (the disk is full?)",
                    line.len()
                ),
            )),
            Err(e) => Err(e),
        };
        // Whatever part of the line reached the file goes again.
        if self.file.set_len(self.len).is_err() {
            self.torn = true;
        }
        result
    }

    /// One `pwrite`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        #[cfg(test)]
        if let Some(quota) = self.quota {
            let room = quota.saturating_sub(offset) as usize;
            if room == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            return self.file.write_at(&buf[..buf.len().min(room)], offset);
        }
        self.file.write_at(buf, offset)
    }

    /// Moves the file to `events.ndjson.1` (replacing an older one) and
    /// starts a new one; on failure, writing goes on in the old file.
    fn rotate(&mut self) {
        let old = rotated(&self.path);
        let result = std::fs::rename(&self.path, &old).and_then(|()| {
            open_private(&self.path).inspect_err(|_| {
                let _ = std::fs::rename(&old, &self.path);
            })
        });
        match result {
            Ok(file) => {
                self.file = file;
                self.len = 0;
                self.rotation_failed = false;
            }
            Err(e) if !self.rotation_failed => {
                self.rotation_failed = true;
                log::warn!(
                    "cannot rotate {} to {}: {e}; it grows on",
                    self.path.display(),
                    old.display()
                );
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon_api::fake::TempDir;

    fn running(vm: &str) -> Event {
        Event::VmRunning { vm: vm.into() }
    }

    /// The file's lines, each parsed; fails on a torn one.
    fn lines(path: &Path) -> Vec<EventRecord> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'), "{text:?}");
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    fn seqs(path: &Path) -> Vec<u64> {
        lines(path).iter().map(|r| r.seq).collect()
    }

    fn set_quota(log: &EventLog, quota: Option<u64>) {
        log.inner().file.as_mut().unwrap().quota = quota;
    }

    #[test]
    fn events_are_numbered_kept_and_followed() {
        let log = EventLog::in_memory();
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
        assert_eq!(log.status(), EventLogView::default());
    }

    #[test]
    fn the_file_is_private_and_holds_every_event() {
        let dir = TempDir::new("events-file");
        let path = dir.0.join("events.ndjson");
        // An older daemon's file, world-readable.
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let log = EventLog::open(&path).unwrap();
        for vm in ["a", "b", "c"] {
            log.push(running(vm));
        }
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let records = lines(&path);
        assert_eq!(records, log.since(0));
        assert_eq!(seqs(&path), [1, 2, 3]);
    }

    /// A full disk: each failed or short write is cut back to the last
    /// whole line, the events wait in memory, counted, and are written in
    /// order when there is room again; the timeline says so.
    #[test]
    fn a_full_disk_tears_and_loses_nothing() {
        let dir = TempDir::new("events-full");
        let path = dir.0.join("events.ndjson");
        let log = EventLog::open(&path).unwrap();
        log.push(running("a"));
        let whole = std::fs::metadata(&path).unwrap().len();
        // Room for a part of the next line only: a short write.
        set_quota(&log, Some(whole + 10));
        for vm in ["b", "c", "d"] {
            log.push(running(vm));
            assert_eq!(std::fs::metadata(&path).unwrap().len(), whole, "cut back");
        }
        assert_eq!(seqs(&path), [1]);
        let status = log.status();
        // b, the event_log_write_failed after it, c, d.
        assert_eq!(
            (status.write_failures, status.unwritten, status.lost),
            (4, 4, 0)
        );
        assert!(
            status
                .last_error
                .as_deref()
                .unwrap()
                .contains("short write"),
            "{status:?}"
        );
        // The first failure is in the timeline (in memory, for now).
        let failed = &log.since(0)[2];
        assert!(
            matches!(&failed.event, Event::EventLogWriteFailed { error, .. } if error.contains("short write")),
            "{failed:?}"
        );
        // Now no room at all: a failed write, not a short one.
        set_quota(&log, Some(whole));
        log.retry_unwritten();
        assert_eq!(log.status().unwritten, 4);
        assert!(log.status().last_error.unwrap().contains("No space left"));

        // Room again: the next tick writes the backlog first, in order.
        set_quota(&log, None);
        log.retry_unwritten();
        assert_eq!(seqs(&path), [1, 2, 3, 4, 5, 6]);
        let recovered = lines(&path).pop().unwrap();
        assert_eq!(
            recovered.event,
            Event::EventLogRecovered {
                file: path.clone(),
                written_late: 4,
                lost: 0
            }
        );
        assert_eq!(
            log.status(),
            EventLogView {
                write_failures: 4,
                unwritten: 0,
                lost: 0,
                last_error: None,
            }
        );
        log.push(running("e"));
        assert_eq!(seqs(&path), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(lines(&path), log.since(0));
    }

    /// Memory for unwritten events is bounded: beyond it the oldest go,
    /// counted as lost; the file still has no torn or repeated line.
    #[test]
    fn unwritten_events_are_bounded_and_the_dropped_counted() {
        let dir = TempDir::new("events-bound");
        let path = dir.0.join("events.ndjson");
        let log = EventLog::open(&path).unwrap();
        set_quota(&log, Some(0));
        let big = "x".repeat(UNWRITTEN_MAX_BYTES / 4);
        for _ in 0..6 {
            log.push(Event::VmExited {
                vm: "a".into(),
                how: big.clone(),
            });
        }
        let status = log.status();
        assert!(status.lost >= 2, "{status:?}");
        assert!(status.unwritten <= 4, "{status:?}");
        set_quota(&log, None);
        log.retry_unwritten();
        let seqs = seqs(&path);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let last = lines(&path).pop().unwrap();
        assert!(
            matches!(last.event, Event::EventLogRecovered { lost, .. } if lost == status.lost),
            "{last:?}"
        );
    }

    #[test]
    fn the_file_rotates_and_keeps_one_old_file() {
        let dir = TempDir::new("events-rotate");
        let path = dir.0.join("events.ndjson");
        let log = EventLog::open_rotating_at(&path, 400).unwrap();
        for i in 0..20 {
            log.push(running(&format!("vm{i}")));
        }
        let (old, new) = (seqs(&rotated(&path)), seqs(&path));
        assert!(std::fs::metadata(&path).unwrap().len() <= 400);
        assert!(std::fs::metadata(rotated(&path)).unwrap().len() <= 400);
        assert_eq!(old.last().unwrap() + 1, new[0], "{old:?} {new:?}");
        assert_eq!(*new.last().unwrap(), 20);
        assert!(!dir.0.join("events.ndjson.2").exists());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Restarted right after a rotation: on after the old file's last.
        drop(log);
        std::fs::write(&path, "").unwrap();
        let log = EventLog::open_rotating_at(&path, 400).unwrap();
        assert_eq!(log.push(running("z")).seq, old.last().unwrap() + 1);
    }

    /// Every daemon thread that records events (the supervisor, the
    /// control API's, the guest agents') can write them under its seccomp
    /// filter: a rotation, a short write cut back, a retry. (A syscall its
    /// allowlist lacks kills this test binary with SIGSYS: loud.)
    #[test]
    fn events_are_written_and_rotated_under_each_daemon_filter() {
        use crate::seccomp::{Filters, ThreadKind};
        let kinds = [
            ThreadKind::DaemonSupervisor,
            ThreadKind::DaemonApi,
            ThreadKind::DaemonAgents,
        ];
        let filters = Filters::compile(&kinds).unwrap();
        for kind in kinds {
            let dir = TempDir::new("events-seccomp");
            let path = dir.0.join("events.ndjson");
            let log = std::sync::Arc::new(EventLog::open_rotating_at(&path, 400).unwrap());
            let program = filters.program(kind).unwrap().clone();
            let writer = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                seccompiler::apply_filter(&program).unwrap();
                for i in 0..20 {
                    writer.push(running(&format!("vm{i}")));
                }
                set_quota(&writer, Some(450));
                writer.push(running("late"));
                set_quota(&writer, None);
                writer.retry_unwritten();
            })
            .join()
            .unwrap();
            let (old, new) = (seqs(&rotated(&path)), seqs(&path));
            assert_eq!(old.last().unwrap() + 1, new[0], "{kind:?}: {old:?} {new:?}");
            assert_eq!(*new.last().unwrap(), 21, "{kind:?}");
        }
    }

    /// A restart numbers on after the highest seq in the file, reading
    /// only its end; a torn last line is cut off, a whole one missing its
    /// newline keeps it.
    #[test]
    fn a_restart_numbers_on_and_cuts_a_torn_tail() {
        let dir = TempDir::new("events-resume");
        let path = dir.0.join("events.ndjson");
        let log = EventLog::open(&path).unwrap();
        for i in 0..3000 {
            // Lines of ~100 bytes: the file is longer than a tail chunk.
            log.push(running(&format!("vm{i}")));
        }
        drop(log);
        let whole = std::fs::read(&path).unwrap();
        assert!(whole.len() as u64 > 2 * TAIL_CHUNK);
        let mut torn = whole.clone();
        torn.extend_from_slice(br#"{"seq":3001,"time_ms":17000"#);
        std::fs::write(&path, &torn).unwrap();
        let log = EventLog::open(&path).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            whole,
            "the torn line is gone"
        );
        assert_eq!(log.push(running("next")).seq, 3001);
        drop(log);
        assert_eq!(*seqs(&path).last().unwrap(), 3001);

        // A last event that lost only its newline is kept.
        let mut text = std::fs::read(&path).unwrap();
        text.pop();
        std::fs::write(&path, &text).unwrap();
        let log = EventLog::open(&path).unwrap();
        assert_eq!(log.push(running("after")).seq, 3002);
        assert_eq!(seqs(&path).len(), 3002);

        // A last line longer than a tail chunk.
        drop(log);
        let log = EventLog::open(&path).unwrap();
        log.push(Event::VmExited {
            vm: "a".into(),
            how: "x".repeat(3 * TAIL_CHUNK as usize),
        });
        drop(log);
        let log = EventLog::open(&path).unwrap();
        assert_eq!(log.push(running("last")).seq, 3004);

        // An empty or garbage-only file starts at 1.
        drop(log);
        std::fs::write(&path, "not json\n").unwrap();
        assert_eq!(EventLog::open(&path).unwrap().push(running("a")).seq, 1);
    }
}
