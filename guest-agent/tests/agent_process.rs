//! The real agent binary on the host, in its test mode: a fake /proc, a
//! kernel log in a plain file, a fake cgroup tree, and a Unix socket in
//! place of vsock. What a `HostSession` receives is what the daemon will.

#![cfg(feature = "agent")]

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use guest_agent::host::{Event, HostSession};
use guest_agent::protocol::{AgentMessage, Hello};

struct Fake {
    dir: PathBuf,
}

impl Fake {
    fn new(name: &str) -> Fake {
        let dir = std::env::temp_dir().join(format!("ga-proc-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let w = |p: &str, s: &str| {
            let p = dir.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, s).unwrap();
        };
        w(
            "proc/meminfo",
            "MemTotal:         118000 kB\nMemFree:           61000 kB\nMemAvailable:      64000 kB\nBuffers:               0 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n",
        );
        // One kill more than the log holds: it was lost before the agent
        // started.
        w(
            "proc/vmstat",
            "nr_free_pages 150\npgfault 4102\noom_kill 2\n",
        );
        w(
            "proc/pressure/memory",
            "some avg10=12.34 avg60=3.00 avg300=0.50 total=981000\nfull avg10=5.01 avg60=1.00 avg300=0.10 total=400000\n",
        );
        w(
            "proc/sys/kernel/random/boot_id",
            "3b1c2f7e-6d2a-4c55-9d0e-2f1f1f5d0c42\n",
        );
        w("proc/sys/kernel/osrelease", "6.12.117\n");
        w(
            "cgroup/hog/memory.events",
            "low 0\nhigh 0\nmax 37\noom 1\noom_kill 1\noom_group_kill 0\n",
        );
        w("cgroup/cgroup.controllers", "cpuset cpu io memory pids\n");
        std::fs::create_dir_all(dir.join("cgroup/idle")).unwrap();
        std::fs::copy(data("kmsg-memcg-oom-6.12.txt"), dir.join("kmsg")).unwrap();
        Fake { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(fake: &Fake, sock: &Path) -> Agent {
    let child = Command::new(env!("CARGO_BIN_EXE_guest-agent"))
        .args(["--unix".as_ref(), sock.as_os_str()])
        .args(["--proc-root".as_ref(), fake.path("proc").as_os_str()])
        .args(["--kmsg".as_ref(), fake.path("kmsg").as_os_str()])
        .args(["--cgroup-root".as_ref(), fake.path("cgroup").as_os_str()])
        .args(["--interval-ms", "100", "--psi-trigger", "off", "-v"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Agent(child)
}

struct Host {
    session: HostSession,
    stream: Option<UnixStream>,
    hellos: Vec<(Hello, Option<u64>)>,
    messages: Vec<(u64, AgentMessage)>,
}

impl Host {
    fn accept(&mut self, l: &UnixListener) {
        l.set_nonblocking(true).unwrap();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                    self.session.connection_started();
                    self.stream = Some(s);
                    return;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < end => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("no connection from the agent: {e}"),
            }
        }
    }

    /// Reads and acks until `done` holds for what arrived (10 s at most).
    fn until(&mut self, what: &str, done: impl Fn(&Host) -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !done(self) {
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}: {:#?}",
                self.messages
            );
            let s = self.stream.as_mut().expect("connected");
            let n = match s.read(&mut buf) {
                Ok(0) => panic!("agent closed the connection"),
                Ok(n) => n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(e) => panic!("{e}"),
            };
            let mut ev = Vec::new();
            self.session.feed(&buf[..n], &mut ev);
            for e in ev {
                match e {
                    Event::Hello { hello, resumed_at } => self.hellos.push((hello, resumed_at)),
                    Event::Message { seq, message } => self.messages.push((seq, message)),
                    Event::Duplicate { .. } => {}
                    Event::Error(e) => panic!("protocol error: {e}"),
                }
            }
            if let Some(a) = self.session.take_ack() {
                s.write_all(&a.to_line()).unwrap();
            }
        }
    }

    fn count(&self, f: impl Fn(&AgentMessage) -> bool) -> usize {
        self.messages.iter().filter(|(_, m)| f(m)).count()
    }
}

#[test]
fn the_agent_reports_what_its_fake_guest_shows() {
    let fake = Fake::new("main");
    let sock = fake.path("host.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let _agent = spawn(&fake, &sock);
    let mut host = Host {
        session: HostSession::new(),
        stream: None,
        hellos: Vec::new(),
        messages: Vec::new(),
    };
    host.accept(&listener);

    host.until("the kill, the reaper, the memcg and a summary", |h| {
        h.count(|m| matches!(m, AgentMessage::OomReaped(_))) == 1
            && h.count(|m| matches!(m, AgentMessage::MemcgEvents(_))) >= 1
            && h.count(|m| matches!(m, AgentMessage::KillsUnlogged(_))) == 1
            && h.count(|m| matches!(m, AgentMessage::Summary(_))) >= 1
    });
    let (hello, resumed) = &host.hellos[0];
    assert_eq!(hello.boot_id, "3b1c2f7e-6d2a-4c55-9d0e-2f1f1f5d0c42");
    assert_eq!(hello.kernel, "6.12.117");
    assert_eq!(hello.interval_ms, 100);
    assert_eq!(hello.instance.len(), 16);
    assert_eq!(*resumed, None);

    let find = |h: &Host, f: &dyn Fn(&AgentMessage) -> bool| {
        h.messages
            .iter()
            .find(|(_, m)| f(m))
            .cloned()
            .unwrap_or_else(|| panic!("missing: {:#?}", h.messages))
    };
    let (kill_seq, AgentMessage::OomKill(kill)) =
        find(&host, &|m| matches!(m, AgentMessage::OomKill(_)))
    else {
        unreachable!()
    };
    assert_eq!((kill.pid, kill.comm.as_str()), (42, "hog"));
    assert_eq!(kill.oom_memcg.as_deref(), Some("/hog"));
    assert_eq!(kill.anon_rss_kb, Some(15872));
    assert_eq!(kill.invoker.as_ref().unwrap().gfp_flags, "GFP_KERNEL");
    let (_, AgentMessage::OomReaped(r)) = find(&host, &|m| matches!(m, AgentMessage::OomReaped(_)))
    else {
        unreachable!()
    };
    assert_eq!(
        r.kill_seq,
        Some(kill_seq),
        "the reaper report points at the kill"
    );
    let (_, AgentMessage::KmsgLost(lost)) =
        find(&host, &|m| matches!(m, AgentMessage::KmsgLost(_)))
    else {
        unreachable!()
    };
    assert!(lost.before_start);
    assert_eq!(lost.records, 301);
    let (_, AgentMessage::MemcgEvents(ev)) =
        find(&host, &|m| matches!(m, AgentMessage::MemcgEvents(_)))
    else {
        unreachable!()
    };
    assert_eq!(
        (ev.cgroup.as_str(), ev.oom, ev.oom_kill, ev.max),
        ("/hog", 1, 1, 37)
    );
    let (_, AgentMessage::KillsUnlogged(u)) =
        find(&host, &|m| matches!(m, AgentMessage::KillsUnlogged(_)))
    else {
        unreachable!()
    };
    assert_eq!((u.count, u.vmstat_oom_kill, u.logged), (1, 2, 1));
    let (_, AgentMessage::Summary(s)) = host
        .messages
        .iter()
        .rev()
        .find(|(_, m)| matches!(m, AgentMessage::Summary(_)))
        .cloned()
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(
        (s.mem_total_kb, s.mem_free_kb, s.mem_available_kb),
        (118000, 61000, 64000)
    );
    assert_eq!(
        (s.psi_some_avg10, s.psi_full_avg10),
        (Some(1234), Some(501))
    );
    assert_eq!((s.vmstat_oom_kill, s.kills_logged), (Some(2), 1));
    assert_eq!(s.kmsg_lost, 301);

    // A new kill in the guest: the kernel logs it, counts it, and the
    // cgroup's counters move.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(fake.path("kmsg"))
        .unwrap();
    log.write_all(&std::fs::read(data("kmsg-global-oom-6.12.txt")).unwrap())
        .unwrap();
    std::fs::write(fake.path("proc/vmstat"), "oom_kill 3\n").unwrap();
    std::fs::write(
        fake.path("cgroup/hog/memory.events"),
        "low 0\nhigh 0\nmax 37\noom 2\noom_kill 2\noom_group_kill 0\n",
    )
    .unwrap();
    host.until("the second kill", |h| {
        h.count(|m| matches!(m, AgentMessage::OomKill(k) if k.pid == 57)) == 1
            && h.count(|m| matches!(m, AgentMessage::MemcgEvents(e) if e.oom_kill == 2)) == 1
    });
    let kmsg_lost = host.count(|m| matches!(m, AgentMessage::KmsgLost(_)));
    // 337 -> 410: the appended log starts at a later seq, a gap of 72.
    assert_eq!(kmsg_lost, 2);

    // The host goes away and comes back: the agent reconnects on its own
    // with the same stream, and nothing arrives twice.
    let before = host.messages.len();
    host.stream = None;
    host.accept(&listener);
    host.until("summaries after the reconnect", |h| {
        h.hellos.len() == 2 && h.messages.len() >= before + 2
    });
    assert_eq!(host.hellos[1].0.instance, host.hellos[0].0.instance);
    assert!(host.hellos[1].1.is_some(), "the host knew the stream");
    let seqs: Vec<u64> = host.messages.iter().map(|(s, _)| *s).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, no duplicate: {seqs:?}"
    );
    assert_eq!(host.count(|m| matches!(m, AgentMessage::OomKill(_))), 2);
    assert_eq!(
        host.count(|m| matches!(m, AgentMessage::KillsUnlogged(_))),
        1
    );
}

#[test]
fn the_agent_waits_for_a_host_that_is_not_there_yet() {
    let fake = Fake::new("late");
    let sock = fake.path("host.sock");
    let _agent = spawn(&fake, &sock);
    // Several summaries pass with nobody listening.
    std::thread::sleep(Duration::from_millis(1000));
    let listener = UnixListener::bind(&sock).unwrap();
    let mut host = Host {
        session: HostSession::new(),
        stream: None,
        hellos: Vec::new(),
        messages: Vec::new(),
    };
    host.accept(&listener);
    host.until("the kill made before the host listened", |h| {
        h.count(|m| matches!(m, AgentMessage::OomKill(_))) == 1
            && h.count(|m| matches!(m, AgentMessage::Summary(_))) >= 1
    });
    // The summaries made while nobody listened replaced each other: one
    // arrives, not seven, with a seq that shows the ones it replaced.
    let summaries: Vec<u64> = host
        .messages
        .iter()
        .filter(|(_, m)| matches!(m, AgentMessage::Summary(_)))
        .map(|(s, _)| *s)
        .collect();
    assert!(summaries.len() <= 2, "{summaries:?}");
    let before = host
        .messages
        .iter()
        .filter(|(s, _)| *s < summaries[0])
        .count() as u64;
    assert!(
        summaries[0] > before + 2,
        "no gap, no summary replaced: {:#?}",
        host.messages
    );
}
