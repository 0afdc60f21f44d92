//! The agent's main loop: one thread, one `poll`.
//!
//! Waited for: the kernel log (POLLIN), the PSI trigger (POLLPRI), the host
//! connection, and the tick. On the tick: /proc/meminfo, /proc/vmstat and
//! /proc/pressure/memory, one `pread` each into a fixed buffer on a
//! descriptor opened once; the watched cgroups' `memory.events`; the host's
//! acks; then a summary is queued and sent. Nothing else runs between
//! ticks unless the kernel logs something or pressure rises.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::protocol::{AgentMessage, Hello, KmsgLost, MemcgEvents, Summary, PROTOCOL_VERSION};

use super::cgroups::CgroupWatch;
use super::config::Config;
use super::killcount::KillCount;
use super::kmsg::{KmsgReader, Loss, READ_BUF};
use super::link::Link;
use super::oom::{OomEvent, OomTracker};
use super::outbox::Outbox;
use super::procfs::{parse_meminfo, parse_pressure, parse_vmstat_oom_kill};
use super::sys::{self, now_ms};
use super::wire::hello_line;

/// Room for /proc/vmstat (about 5 KiB on 6.12) and one kmsg record.
const BUF: usize = 16 * 1024;

struct Kmsg {
    file: File,
    /// /dev/kmsg or a FIFO: wait with poll(). A plain file (tests) is read
    /// to its end on every tick instead.
    pollable: bool,
    reader: KmsgReader,
}

pub struct Agent {
    cfg: Config,
    buf: Box<[u8; BUF]>,
    kmsg: Option<Kmsg>,
    meminfo: Option<File>,
    vmstat: Option<File>,
    pressure: Option<File>,
    trigger: Option<File>,
    cgroups: CgroupWatch,
    tracker: OomTracker,
    killcount: KillCount,
    outbox: Outbox,
    link: Link,
    start_ms: u64,
    next_tick: u64,
    ticks: u64,
    /// `kmsg_lost` messages for losses seen in one drain, merged.
    loss: Option<KmsgLost>,
}

fn read_small(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.chars().take(64).collect())
}

impl Agent {
    pub fn new(cfg: Config) -> io::Result<Agent> {
        let now = now_ms();
        let proc = &cfg.proc_root;
        let hello = Hello {
            proto: PROTOCOL_VERSION,
            agent: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: read_small(&proc.join("sys/kernel/osrelease")).unwrap_or_default(),
            boot_id: read_small(&proc.join("sys/kernel/random/boot_id"))
                .unwrap_or_else(|| "unknown".to_owned()),
            instance: sys::random_id(),
            interval_ms: cfg.interval_ms,
        };
        let verbose = cfg.verbose;
        let kmsg = match sys::open(&cfg.kmsg, libc::O_RDONLY | libc::O_NONBLOCK) {
            Ok(file) => Some(Kmsg {
                pollable: sys::is_pollable(&file),
                file,
                reader: KmsgReader::new(),
            }),
            Err(e) => {
                eprintln!(
                    "guest-agent: {}: {e}; OOM kills are only counted",
                    cfg.kmsg.display()
                );
                None
            }
        };
        let ro = |p: &str| sys::open(&proc.join(p), libc::O_RDONLY).ok();
        let pressure = ro("pressure/memory");
        let trigger = match (&cfg.psi_trigger, &pressure) {
            (Some(spec), Some(_)) => open_trigger(&proc.join("pressure/memory"), spec, verbose),
            _ => None,
        };
        let mut cgroups = CgroupWatch::new(cfg.cgroup_root.clone());
        cgroups.rescan();
        let link = Link::new(cfg.target.clone(), hello_line(&hello), verbose);
        Ok(Agent {
            buf: Box::new([0; BUF]),
            kmsg,
            meminfo: ro("meminfo"),
            vmstat: ro("vmstat"),
            pressure,
            trigger,
            cgroups,
            tracker: OomTracker::new(),
            killcount: KillCount::new(),
            outbox: Outbox::new(cfg.queue),
            link,
            start_ms: now,
            next_tick: now,
            ticks: 0,
            loss: None,
            cfg,
        })
    }

    /// Runs until `--run-for-ms` is over (forever without it).
    pub fn run(&mut self) -> io::Result<()> {
        // Everything the kernel logged before we started: kills of the boot
        // so far, and whether the ring already lost records.
        self.drain_kmsg();
        loop {
            let now = now_ms();
            if let Some(limit) = self.cfg.run_for_ms {
                if now >= self.start_ms + limit {
                    // One last flush of what is queued.
                    self.link.flush(now, &mut self.outbox);
                    return Ok(());
                }
            }
            if now >= self.next_tick {
                self.tick(now);
                self.next_tick += self.cfg.interval_ms;
                if self.next_tick <= now {
                    // We were away (a paused VM): no burst of catch-up ticks.
                    self.next_tick = now + self.cfg.interval_ms;
                }
            }
            self.link.maintain(now, &mut self.outbox);

            let mut fds = [libc::pollfd {
                fd: -1,
                events: 0,
                revents: 0,
            }; 3];
            if let Some(k) = &self.kmsg {
                if k.pollable {
                    fds[0] = libc::pollfd {
                        fd: std::os::fd::AsRawFd::as_raw_fd(&k.file),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                }
            }
            if let Some(t) = &self.trigger {
                fds[1] = libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(t),
                    events: libc::POLLPRI,
                    revents: 0,
                };
            }
            if let Some(p) = self.link.interest(&self.outbox) {
                fds[2] = p;
            }
            let mut wake = self.next_tick;
            if let Some(d) = self.link.deadline() {
                wake = wake.min(d);
            }
            if let Some(limit) = self.cfg.run_for_ms {
                wake = wake.min(self.start_ms + limit);
            }
            sys::poll(&mut fds, wake.saturating_sub(now))?;
            let now = now_ms();
            if fds[0].revents != 0 {
                if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0
                    && fds[0].revents & libc::POLLIN == 0
                {
                    // Cannot wait on it any more; keep reading on the tick.
                    if let Some(k) = &mut self.kmsg {
                        k.pollable = false;
                    }
                }
                self.drain_kmsg();
            }
            if fds[1].revents != 0 {
                if fds[1].revents & libc::POLLPRI != 0 {
                    self.pressure_event();
                } else {
                    // POLLERR: the trigger is gone; the tick still reads PSI.
                    self.trigger = None;
                }
            }
            if fds[2].revents != 0 {
                self.link.ready(fds[2].revents, now, &mut self.outbox);
            }
            self.link.flush(now, &mut self.outbox);
        }
    }

    fn tick(&mut self, now: u64) {
        self.ticks += 1;
        if !self.kmsg.as_ref().is_some_and(|k| k.pollable) {
            self.drain_kmsg();
        }
        if self.link.is_up() {
            self.link.read_acks(now, &mut self.outbox);
        }
        if self.ticks % self.cfg.cgroup_rescan_ticks == 0 {
            self.cgroups.rescan();
        }
        self.check_cgroups();

        let buf = &mut self.buf[..];
        let mem = self
            .meminfo
            .as_ref()
            .and_then(|f| sys::pread0(f, buf).ok())
            .and_then(|n| parse_meminfo(&buf[..n]))
            .unwrap_or_default();
        let psi = self
            .pressure
            .as_ref()
            .and_then(|f| sys::pread0(f, buf).ok())
            .and_then(|n| parse_pressure(&buf[..n]));
        let oom_kill = self
            .vmstat
            .as_ref()
            .and_then(|f| sys::pread0(f, buf).ok())
            .and_then(|n| parse_vmstat_oom_kill(&buf[..n]));
        if let Some(counter) = oom_kill {
            if let Some(k) = self.killcount.check(counter, self.tracker.kills_logged) {
                if self.cfg.verbose {
                    eprintln!(
                        "guest-agent: {} OOM kill(s) counted by the kernel are not in its log",
                        k.count
                    );
                }
                self.outbox.push(&AgentMessage::KillsUnlogged(k));
            }
        }
        let summary = Summary {
            uptime_ms: now,
            mem_total_kb: mem.total,
            mem_free_kb: mem.free,
            mem_available_kb: mem.available,
            swap_total_kb: mem.swap_total,
            swap_free_kb: mem.swap_free,
            psi_some_avg10: psi.map(|p| p.some.avg10),
            psi_full_avg10: psi.and_then(|p| p.full).map(|f| f.avg10),
            vmstat_oom_kill: oom_kill,
            kills_logged: self.tracker.kills_logged,
            kills_unlogged: self.killcount.unlogged,
            kmsg_lost: self.kmsg.as_ref().map_or(0, |k| k.reader.lost),
            dropped: self.outbox.dropped,
            queued: self.outbox.len() as u32,
        };
        self.outbox.push(&AgentMessage::Summary(summary));
        self.link.flush(now, &mut self.outbox);
    }

    fn check_cgroups(&mut self) {
        let outbox = &mut self.outbox;
        self.cgroups
            .check(&mut self.buf[..], &mut |e: MemcgEvents| {
                outbox.push(&AgentMessage::MemcgEvents(e));
            });
    }

    fn pressure_event(&mut self) {
        let Some(f) = &self.pressure else {
            return;
        };
        let buf = &mut self.buf[..];
        if let Some(p) = sys::pread0(f, buf)
            .ok()
            .and_then(|n| parse_pressure(&buf[..n]))
        {
            self.outbox.push(&AgentMessage::Pressure(p));
        }
    }

    /// Reads the kernel log until it has nothing more.
    fn drain_kmsg(&mut self) {
        let Some(k) = &mut self.kmsg else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&k.file);
        let mut kills = 0u32;
        let mut unknown_memcg = false;
        let verbose = self.cfg.verbose;
        loop {
            let n = match sys::read(fd, &mut self.buf[..READ_BUF]) {
                Ok(0) => {
                    // End of a plain file, or a FIFO without writer: wait
                    // for the tick.
                    k.pollable = false;
                    break;
                }
                Ok(n) => n,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => break,
                    Some(libc::EINTR) => continue,
                    Some(libc::EPIPE) => {
                        k.reader.overrun();
                        continue;
                    }
                    // A record longer than our buffer (cannot happen with
                    // READ_BUF); it is skipped by the kernel.
                    Some(libc::EINVAL) => continue,
                    _ => {
                        eprintln!("guest-agent: reading {}: {e}", self.cfg.kmsg.display());
                        self.kmsg = None;
                        return;
                    }
                },
            };
            let tracker = &mut self.tracker;
            let outbox = &mut self.outbox;
            let cgroups = &self.cgroups;
            let loss_acc = &mut self.loss;
            k.reader.feed(
                &self.buf[..n],
                &mut |rec| {
                    let mut sent = None;
                    tracker.record(rec, &mut |ev| match ev {
                        OomEvent::Kill(kill) => {
                            kills += 1;
                            for cg in [&kill.oom_memcg, &kill.task_memcg].into_iter().flatten() {
                                if !cgroups.watches(cg) {
                                    unknown_memcg = true;
                                }
                            }
                            let pid = kill.pid;
                            if verbose {
                                eprintln!("guest-agent: OOM kill of {} ({})", kill.pid, kill.comm);
                            }
                            sent = Some((pid, outbox.push(&AgentMessage::OomKill(kill))));
                        }
                        OomEvent::Reaped(r) => {
                            outbox.push(&AgentMessage::OomReaped(r));
                        }
                        OomEvent::NoVictim(n) => {
                            outbox.push(&AgentMessage::OomNoVictim(n));
                        }
                    });
                    if let Some((pid, seq)) = sent {
                        tracker.kill_sent(pid, seq);
                    }
                },
                &mut |l: Loss| {
                    // Merge the gaps of one drain into one message.
                    let acc = loss_acc.get_or_insert(KmsgLost {
                        records: 0,
                        resumed_at: l.resumed_at,
                        before_start: l.before_start,
                    });
                    acc.records += l.records;
                    acc.resumed_at = l.resumed_at;
                },
            );
        }
        if let Some(l) = self.loss.take() {
            if verbose {
                eprintln!("guest-agent: {} kernel log record(s) lost", l.records);
            }
            self.outbox.push(&AgentMessage::KmsgLost(l));
        }
        if kills > 0 {
            // Right after a kill, the cgroups' counters tell what the log
            // may not (group kills, and whether more are coming).
            if unknown_memcg && !self.cgroups.root().as_os_str().is_empty() {
                self.cgroups.rescan();
            }
            self.check_cgroups();
        }
    }
}

/// A PSI trigger (Documentation/accounting/psi.rst): write the spec with
/// its NUL (the kernel overwrites the last byte written with one), then
/// poll for POLLPRI. Without CAP_SYS_RESOURCE the kernel only takes
/// windows in multiples of 2 s: then the window (and the stall, in
/// proportion) is rounded up to one.
fn open_trigger(path: &Path, spec: &str, verbose: bool) -> Option<File> {
    let f = sys::open(path, libc::O_RDWR | libc::O_NONBLOCK).ok()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let write = |spec: &str| {
        let mut bytes = spec.as_bytes().to_vec();
        bytes.push(0);
        sys::write(fd, &bytes)
    };
    let mut result = write(spec);
    if result.as_ref().err().and_then(io::Error::raw_os_error) == Some(libc::EINVAL) {
        if let Some(spec2) = unprivileged_trigger(spec) {
            result = write(&spec2);
        }
    }
    match result {
        Ok(_) => Some(f),
        Err(e) => {
            if verbose {
                eprintln!("guest-agent: PSI trigger {spec:?}: {e}; reading PSI on the tick");
            }
            None
        }
    }
}

/// `some 150000 1000000` -> `some 300000 2000000`; `None` when the window
/// is already a multiple of 2 s.
fn unprivileged_trigger(spec: &str) -> Option<String> {
    const UNIT: u64 = 2_000_000;
    let mut p = spec.split_ascii_whitespace();
    let (kind, stall, window) = (
        p.next()?,
        p.next()?.parse::<u64>().ok()?,
        p.next()?.parse::<u64>().ok()?,
    );
    if window == 0 || window % UNIT == 0 {
        return None;
    }
    let w2 = window.div_ceil(UNIT) * UNIT;
    Some(format!("{kind} {} {w2}", stall * w2 / window))
}

#[cfg(test)]
mod tests {
    use super::unprivileged_trigger;

    #[test]
    fn trigger_windows_for_unprivileged_writers() {
        assert_eq!(
            unprivileged_trigger("some 150000 1000000").as_deref(),
            Some("some 300000 2000000")
        );
        assert_eq!(
            unprivileged_trigger("full 100000 3000000").as_deref(),
            Some("full 133333 4000000")
        );
        assert_eq!(unprivileged_trigger("some 100000 2000000"), None);
    }
}
