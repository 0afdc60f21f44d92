//! The daemon's main loop.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Daemon, DaemonConfig};
use crate::daemon_api::{DaemonApiServer, Event};
use crate::host::memcg_events::MemcgEvents;
use crate::host::poll;
use crate::host::psi::{Pressure, PsiTrigger, Stall, TriggerSpec};
use crate::seccomp::{self, ThreadKind};
use crate::vm::stop_signals;

/// The shortest calm tick: the policy's look at the domains that only
/// the tick watches when one of them is close to short.
const TICK: Duration = Duration::from_millis(100);
/// The longest calm tick, with plenty of headroom everywhere.
const CALM_TICK_MAX: Duration = Duration::from_secs(1);
/// How fast memory is assumed to fill, for the calm tick (earlyoom's
/// figure for RAM, 6000 MiB/s).
const FILL_BYTES_PER_S: u64 = 6000 << 20;
/// How often while a domain is under pressure or a pool is full: the
/// policy's steps (a refused charge seen, the reserve lent, balloons
/// followed) then come 10 ms apart, not 100.
const PRESSED_TICK: Duration = Duration::from_millis(10);
/// At most one `psi_pressure` event per this long: a trigger fires every
/// window while the stall lasts.
const PSI_EVENT_EVERY: Duration = Duration::from_secs(1);

/// The policy's PSI trigger (`psi_some_threshold_us` per `psi_window_us`,
/// adapted to what an unprivileged process may ask for) on the host's
/// `/proc/pressure/memory` and on the `memory.pressure` of each cgroup v2
/// pool; where PSI is unavailable, an event says why and the tick alone
/// wakes the daemon.
fn open_psi_triggers(daemon: &Daemon) -> Vec<(Option<String>, PsiTrigger)> {
    let policy = daemon.policy();
    let spec = TriggerSpec {
        stall: Stall::Some,
        threshold: Duration::from_micros(policy.psi_some_threshold_us),
        window: Duration::from_micros(policy.psi_window_us),
    };
    let files = std::iter::once((None, PathBuf::from("/proc/pressure/memory")))
        .chain(daemon.memcg_pressure_files().map(|(p, f)| (Some(p), f)));
    let mut triggers = Vec::new();
    for (pool, file) in files {
        match PsiTrigger::open_adapting(&file, spec) {
            Ok(t) => {
                daemon.events.push(Event::PsiTrigger {
                    pool: pool.clone(),
                    file,
                    trigger: t.spec().to_string(),
                });
                triggers.push((pool, t));
            }
            Err(e) => {
                daemon.events.push(Event::PsiUnavailable {
                    pool,
                    file,
                    error: e.to_string(),
                });
            }
        }
    }
    triggers
}

/// A watcher on each memcg pool's cgroup, so that a pool filling up wakes
/// the supervisor at once; where one cannot be set up, an event says why
/// and the tick alone notices.
fn watch_memcg_pools(daemon: &Daemon) -> Vec<MemcgEvents> {
    let mut watchers = Vec::new();
    for (pool, watcher) in daemon.memcg_watchers() {
        match watcher {
            Ok(w) => watchers.push(w),
            Err(e) => {
                daemon.events.push(Event::MemcgPoolUnwatched {
                    pool,
                    error: e.to_string(),
                });
            }
        }
    }
    watchers
}

/// The exit status of a daemon thread that cannot install its seccomp
/// filter (it ends the daemon rather than run unfiltered).
const FILTER_FAILED: u8 = 1;

/// Runs the daemon until SIGTERM or SIGINT; then stops every VM and
/// removes the socket.
///
/// Call it on a thread without a seccomp filter (`main`), after
/// [`seccomp::enable`] unless the daemon runs without filters: it starts
/// the spawner, which must have none, then the filtered threads (control
/// API, guest agents), and filters itself before its first tick.
pub fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    stop_signals::block_stop_signals().context("cannot block SIGTERM/SIGINT")?;
    let socket = cfg.socket.clone();
    let daemon = Arc::new(Daemon::new(cfg)?);
    let server = DaemonApiServer::start(&socket, daemon.clone())
        .with_context(|| format!("cannot serve the control API on {}", socket.display()))?;
    daemon.events.push(Event::DaemonStarted {
        socket: socket.clone(),
        state_dir: daemon.state_dir().to_path_buf(),
        policy: daemon.policy(),
    });
    let agents = {
        let d = daemon.clone();
        std::thread::Builder::new()
            .name("vmmd-agents".into())
            .spawn(move || {
                // Before the first byte from a guest.
                seccomp::apply_or_exit(ThreadKind::DaemonAgents, FILTER_FAILED);
                d.agents
                    .serve(&d.events, &|| d.stopping.load(Ordering::Relaxed))
            })
            .context("cannot start the guest agents' thread")?
    };
    let psi = open_psi_triggers(&daemon);
    let memcg = watch_memcg_pools(&daemon);
    // One poll over every wake-up: PSI triggers (POLLPRI), then the pools'
    // watchers (POLLIN). An entry that fails (a trigger whose cgroup is
    // gone) is disarmed (fd -1: poll skips it).
    let mut fds: Vec<libc::pollfd> = psi
        .iter()
        .map(|(_, t)| poll::pollfd(t.as_raw_fd(), libc::POLLPRI))
        .chain(
            memcg
                .iter()
                .map(|w| poll::pollfd(w.as_raw_fd(), libc::POLLIN)),
        )
        .collect();
    let exits_at = fds.len();
    fds.push(poll::pollfd(daemon.exits_fd(), libc::POLLIN));
    // SIGTERM/SIGINT end the sleep at once (taken by take_pending).
    let stop = stop_signals::pending_fd().context("cannot create a signalfd")?;
    fds.push(poll::pollfd(stop.as_raw_fd(), libc::POLLIN));
    let mut exits_fired = false;
    // Every wake-up is open (PSI triggers, memcg watchers), every thread
    // started (the spawner, unfiltered, in Daemon::new): from here on the
    // supervisor only reads, polls, signals, reaps and writes what it owns.
    seccomp::apply(ThreadKind::DaemonSupervisor)
        .context("cannot filter the supervisor's syscalls")?;
    let mut last_psi_event: Option<Instant> = None;
    let signal = loop {
        if let Some(signal) = stop_signals::take_pending() {
            break signal;
        }
        let exits_handled = daemon.supervise();
        daemon.enforce_limits();
        daemon.events.retry_unwritten();
        // Sleep until the next tick, or until the kernel reports memory
        // stalls (a PSI trigger), a pool filling up, a VMM exiting or a
        // stop signal: that wakes the daemon at once.
        let tick = if daemon.pressed() {
            PRESSED_TICK
        } else {
            calm_tick(daemon.headroom())
        };
        for p in &mut fds {
            p.revents = 0;
        }
        // An exit the supervisor left for later (a VM being created) would
        // keep the level-triggered set readable: it waits for the tick.
        fds[exits_at].fd = if exits_handled == 0 && exits_fired {
            -1
        } else {
            daemon.exits_fd()
        };
        if poll::wait(&mut fds, tick).is_err() {
            std::thread::sleep(tick);
        }
        exits_fired = fds[exits_at].revents & libc::POLLIN != 0;
        for p in fds.iter_mut().filter(|p| poll::failed(p)) {
            p.fd = -1;
        }
        for (i, w) in memcg.iter().enumerate() {
            if fds[psi.len() + i].revents & libc::POLLIN != 0 {
                w.drain();
            }
        }
        let fired: Vec<usize> = (0..psi.len())
            .filter(|&i| fds[i].revents & libc::POLLPRI != 0)
            .collect();
        if !fired.is_empty() && last_psi_event.is_none_or(|t| t.elapsed() >= PSI_EVENT_EVERY) {
            last_psi_event = Some(Instant::now());
            for i in fired {
                let (pool, trigger) = &psi[i];
                let pressure = Pressure::read(trigger.path()).ok();
                daemon.events.push(Event::PsiPressure {
                    pool: pool.clone(),
                    some_avg10: pressure.as_ref().map(|p| p.some.avg10),
                    full_avg10: pressure.as_ref().and_then(|p| p.full).map(|f| f.avg10),
                    trigger: trigger.spec().to_string(),
                });
            }
        }
    };
    daemon.events.push(Event::DaemonStopping { signal });
    server.shutdown();
    daemon.stop_all();
    daemon.stopping.store(true, Ordering::Relaxed);
    daemon.agents.wake();
    let _ = agents.join();
    Ok(())
}

/// earlyoom's adaptive sleep: as long as memory filling at
/// [`FILL_BYTES_PER_S`] takes to use up the least headroom of the domains
/// only the tick watches, between [`TICK`] and [`CALM_TICK_MAX`]. A calm
/// host with 100 idle VMs then costs the daemon one look a second, not
/// ten (issue 11: its cost must not follow the tick rate when nothing
/// changes); kernel events (PSI, memory-cgroup thresholds, VMM exits)
/// still wake it at once.
fn calm_tick(headroom: u64) -> Duration {
    let ms = headroom / (FILL_BYTES_PER_S / 1000);
    Duration::from_millis(ms).clamp(TICK, CALM_TICK_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calm_tick_follows_the_headroom() {
        assert_eq!(calm_tick(0), TICK);
        assert_eq!(calm_tick(300 << 20), TICK);
        assert_eq!(calm_tick(3000 << 20), Duration::from_millis(500));
        assert_eq!(calm_tick(u64::MAX), CALM_TICK_MAX);
    }
}
