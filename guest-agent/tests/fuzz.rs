//! Property tests on stable Rust: a seeded generator of garbage and of
//! mutated real input for the kmsg reader + OOM tracker, the /proc parsers,
//! the ack parser and the host's `HostSession`. Properties: no panic, and
//! the memory each holds between calls stays under its bound.
//!
//! The quick run (part of `cargo test`) does 3000 cases per target. A
//! longer run is one command:
//!
//! ```sh
//! GUEST_AGENT_FUZZ_CASES=1000000 cargo test --release -p guest-agent --test fuzz
//! ```
//!
//! `GUEST_AGENT_FUZZ_SEED=N` starts from another seed; a failing case
//! prints its seed and case number.

#![cfg(feature = "agent")]

use guest_agent::agent::kmsg::{parse_record, KmsgReader, READ_BUF};
use guest_agent::agent::oom::{self, OomTracker, MAX_PENDING};
use guest_agent::agent::outbox::Outbox;
use guest_agent::agent::procfs;
use guest_agent::agent::wire;
use guest_agent::host::{Event, HostSession, Limits};
use guest_agent::protocol::{AgentMessage, KmsgLost, Summary};

fn cases() -> u64 {
    std::env::var("GUEST_AGENT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn seed() -> u64 {
    std::env::var("GUEST_AGENT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x005e_ed0f_a9e7)
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, case: u64) -> Rng {
        let mut r = Rng(seed ^ case.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// Pieces that matter to the parsers, spliced in by the mutator.
const TOKENS: &[&str] = &[
    ",",
    ";",
    ":",
    "(",
    ")",
    "=",
    " ",
    "\n",
    "\n ",
    "kB",
    "\\x",
    "\\x0a",
    "\\x5c",
    "c",
    "-",
    "18446744073709551616",
    "-2147483649",
    "99999999999999999999",
    "0x",
    "oom-kill:",
    ",task=",
    ",pid=",
    ",uid=",
    ",oom_memcg=",
    ",global_oom",
    ",task_memcg=",
    "constraint=",
    ",nodemask=",
    ",cpuset=",
    ",mems_allowed=",
    " invoked oom-killer: ",
    "gfp_mask=",
    ", order=",
    ", oom_score_adj=",
    ": Killed process ",
    "Killed process ",
    " total-vm:",
    ") total-vm:",
    "oom_reaper: reaped process ",
    "oom_reaper: unable to reap pid:",
    "), now ",
    "Tasks in ",
    " are going to be killed due to memory.oom.group set",
    "memory: usage ",
    "kB, limit ",
    "kB, failcnt ",
    "CPU: 0 UID: 0 PID: ",
    " Comm: ",
    "Out of memory and no killable processes...",
    "\u{e9}",
    "\u{fffd}",
    "\u{1F600}",
    "\0",
    "{",
    "}",
    "\"",
    "\\",
    "[",
    "]",
    "\"seq\":",
    "\"type\":",
    "\"hello\"",
    "\"ack\":",
    "null",
    "true",
    "1e999",
    "-0",
    "avg10=",
    "total=",
    "some ",
    "full ",
    ".",
    "oom_kill ",
];

fn corpus() -> Vec<Vec<u8>> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
    let mut lines = Vec::new();
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        if f.path().extension().is_some_and(|e| e == "txt") {
            let text = std::fs::read(f.path()).unwrap();
            for l in text.split_inclusive(|&b| b == b'\n') {
                lines.push(l.to_vec());
            }
        }
    }
    lines
}

fn mutate(rng: &mut Rng, corpus: &[Vec<u8>], out: &mut Vec<u8>) {
    out.clear();
    match rng.below(8) {
        // Pure garbage.
        0 => {
            for _ in 0..rng.below(600) {
                out.push(rng.next() as u8);
            }
        }
        // Runs of one byte (long lines, many newlines).
        1 => {
            let b = *rng.pick(&[b'\n', b' ', b'x', b'\\', b',', 0xffu8][..]);
            out.resize(rng.below(3 * READ_BUF), b);
        }
        // Real lines, mutated.
        _ => {
            for _ in 0..1 + rng.below(6) {
                let line: &Vec<u8> = rng.pick(corpus);
                out.extend_from_slice(line);
            }
            for _ in 0..rng.below(10) {
                let at = rng.below(out.len() + 1);
                match rng.below(6) {
                    0 if !out.is_empty() => {
                        let i = rng.below(out.len());
                        out[i] = rng.next() as u8;
                    }
                    1 => {
                        let t = rng.pick(TOKENS).as_bytes().to_vec();
                        out.splice(at..at, t);
                    }
                    2 => {
                        let end = (at + rng.below(40)).min(out.len());
                        out.drain(at..end);
                    }
                    3 => {
                        let end = (at + rng.below(200)).min(out.len());
                        let dup = out[at..end].to_vec();
                        out.splice(at..at, dup);
                    }
                    4 => out.truncate(at),
                    _ => {
                        let digits = format!("{}", rng.next());
                        out.splice(at..at, digits.into_bytes());
                    }
                }
            }
        }
    }
}

/// Splits `buf` into random chunks, as reads would.
fn chunks<'a>(rng: &mut Rng, buf: &'a [u8]) -> Vec<&'a [u8]> {
    let mut v = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let n = 1 + rng.below(rest.len().min(700));
        v.push(&rest[..n]);
        rest = &rest[n..];
    }
    v
}

#[test]
fn kmsg_reader_and_oom_tracker_never_panic_and_stay_bounded() {
    let corpus = corpus();
    let seed = seed();
    let mut input = Vec::new();
    // One reader and tracker for the whole run: state carried across
    // garbage is what could grow.
    let mut reader = KmsgReader::new();
    let mut tracker = OomTracker::new();
    let mut events = 0u64;
    for case in 0..cases() {
        let mut rng = Rng::new(seed, case);
        mutate(&mut rng, &corpus, &mut input);
        if rng.below(50) == 0 {
            reader.overrun();
        }
        for c in chunks(&mut rng, &input) {
            reader.feed(
                c,
                &mut |rec| tracker.record(rec, &mut |_| events += 1),
                &mut |_| {},
            );
            assert!(reader.buffered() <= READ_BUF, "seed {seed} case {case}");
            let (pending, recent) = tracker.held();
            assert!(pending <= MAX_PENDING, "seed {seed} case {case}");
            assert!(recent <= 32, "seed {seed} case {case}");
        }
        // The line parsers on their own, on the text as a whole.
        let text = String::from_utf8_lossy(&input);
        let _ = oom::parse_invoked(&text);
        let _ = oom::parse_context(&text);
        let _ = oom::parse_killed(&text);
        let _ = oom::parse_reaper(&text);
        let _ = oom::parse_stack_head(&text);
        let _ = oom::parse_memcg_usage(&text);
        let _ = parse_record(&input);
        if let Some(k) = oom::parse_killed(&text) {
            assert!(k.comm.len() <= 64 && k.reason.len() <= 64);
        }
        if let Some(c) = oom::parse_context(&text) {
            for v in [&c.oom_memcg, &c.task_memcg, &c.cpuset, &c.nodemask]
                .into_iter()
                .flatten()
            {
                assert!(v.len() <= guest_agent::protocol::MAX_PATH);
            }
        }
    }
    eprintln!("{} cases, {events} OOM events from mutated logs", cases());
}

#[test]
fn proc_parsers_and_ack_parser_never_panic() {
    let corpus = corpus();
    let seed = seed() ^ 1;
    let mut input = Vec::new();
    for case in 0..cases() {
        let mut rng = Rng::new(seed, case);
        mutate(&mut rng, &corpus, &mut input);
        let _ = procfs::parse_meminfo(&input);
        let _ = procfs::parse_vmstat_oom_kill(&input);
        let _ = procfs::parse_pressure(&input);
        let _ = procfs::parse_memory_events(&input);
        let _ = wire::parse_ack(&input);
    }
}

/// Valid agent lines to mutate for the host side.
fn hello(boot: &str) -> guest_agent::protocol::Hello {
    guest_agent::protocol::Hello {
        proto: guest_agent::protocol::PROTOCOL_VERSION,
        agent: "0.1.0".into(),
        kernel: "6.12.117".into(),
        boot_id: boot.into(),
        instance: "i".into(),
        interval_ms: 5000,
    }
}

fn agent_lines() -> Vec<Vec<u8>> {
    let mut v = vec![wire::hello_line(&hello("b"))];
    let mut ob = Outbox::new(64);
    ob.push(&AgentMessage::KmsgLost(KmsgLost {
        records: 3,
        resumed_at: 7,
        before_start: false,
    }));
    ob.push(&AgentMessage::Summary(Summary {
        psi_some_avg10: Some(12),
        ..Default::default()
    }));
    for s in ob.pending_slices(64) {
        v.push(s.to_vec());
    }
    for l in corpus() {
        // kmsg lines are garbage to the host: good mutation material too.
        v.push(l);
    }
    v
}

#[test]
fn host_session_never_panics_and_stays_bounded() {
    let lines = agent_lines();
    let seed = seed() ^ 2;
    let limits = Limits {
        max_line: 2048,
        max_streams: 4,
    };
    let mut session = HostSession::with_limits(limits);
    session.connection_started();
    let mut input = Vec::new();
    let mut events = Vec::new();
    let (mut messages, mut dups, mut errors) = (0u64, 0u64, 0u64);
    for case in 0..cases() {
        let mut rng = Rng::new(seed, case);
        if rng.below(100) == 0 {
            session.connection_started();
        }
        // Valid lines (a hello for one of several streams, messages with
        // random seqs), then mutated lines, in random order.
        input.clear();
        if rng.below(3) == 0 {
            let boot = format!("boot{}", rng.below(6));
            input.extend_from_slice(&wire::hello_line(&hello(&boot)));
        }
        for i in 0..rng.below(6) as u64 {
            // New seqs and old ones (resends, out of order).
            let seq = if rng.below(2) == 0 {
                case * 8 + i
            } else {
                rng.below(40) as u64
            };
            let msg = match rng.below(3) {
                0 => AgentMessage::Summary(Summary::default()),
                1 => AgentMessage::KmsgLost(KmsgLost::default()),
                _ => AgentMessage::OomKill(Box::default()),
            };
            input.extend_from_slice(&wire::envelope_line(seq, &msg));
        }
        if rng.below(2) == 0 {
            let mut m = Vec::new();
            mutate(&mut rng, &lines, &mut m);
            let at = rng.below(input.len() + 1);
            input.splice(at..at, m);
        }
        for c in chunks(&mut rng, &input) {
            events.clear();
            session.feed(c, &mut events);
            let newlines = c.iter().filter(|&&b| b == b'\n').count();
            assert!(events.len() <= newlines + 1, "seed {seed} case {case}");
            assert!(
                session.buffered() <= limits.max_line,
                "seed {seed} case {case}"
            );
            assert!(
                session.known_streams() <= limits.max_streams,
                "seed {seed} case {case}"
            );
            for e in &events {
                match e {
                    Event::Message { .. } => messages += 1,
                    Event::Duplicate { .. } => dups += 1,
                    Event::Error(_) => errors += 1,
                    _ => {}
                }
            }
            if let Some(a) = session.take_ack() {
                assert!(wire::parse_ack(&a.to_line()).is_some());
            }
        }
    }
    eprintln!(
        "{} cases: {messages} messages accepted, {dups} duplicates, {errors} lines rejected",
        cases()
    );
}
