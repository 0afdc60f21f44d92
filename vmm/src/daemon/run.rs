//! The daemon's main loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{Daemon, DaemonConfig};
use crate::daemon_api::DaemonApiServer;
use crate::oom::psi::{Pressure, PsiTrigger, Stall, TriggerSpec};
use crate::vm::stop_signals;

/// How often the supervisor reaps exits and samples memory.
const TICK: Duration = Duration::from_millis(100);
/// At most one `psi_pressure` event per this long: a trigger fires every
/// window while the stall lasts.
const PSI_EVENT_EVERY: Duration = Duration::from_secs(1);

/// The host-wide PSI trigger of the policy (`psi_some_threshold_us` per
/// `psi_window_us`), adapted to what an unprivileged process may ask for;
/// `None`, with an event saying why, where PSI is unavailable.
fn open_psi_trigger(daemon: &Daemon) -> Option<PsiTrigger> {
    let policy = daemon.policy();
    let spec = TriggerSpec {
        stall: Stall::Some,
        threshold: Duration::from_micros(policy.psi_some_threshold_us),
        window: Duration::from_micros(policy.psi_window_us),
    };
    match PsiTrigger::open_adapting("/proc/pressure/memory", spec) {
        Ok(t) => {
            daemon.events.push(
                "psi_trigger",
                serde_json::json!({ "trigger": t.spec().to_string() }),
            );
            Some(t)
        }
        Err(e) => {
            daemon.events.push(
                "psi_unavailable",
                serde_json::json!({ "error": e.to_string() }),
            );
            None
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT; then stops every VM and
/// removes the socket.
pub fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    stop_signals::block_stop_signals().context("cannot block SIGTERM/SIGINT")?;
    let socket = cfg.socket.clone();
    let daemon = Arc::new(Daemon::new(cfg)?);
    let server = DaemonApiServer::start(&socket, daemon.clone())
        .with_context(|| format!("cannot serve the control API on {}", socket.display()))?;
    daemon.events.push(
        "daemon_started",
        serde_json::json!({ "socket": socket, "state_dir": daemon.state_dir(), "policy": daemon.policy() }),
    );
    let psi = open_psi_trigger(&daemon);
    let mut last_psi_event: Option<Instant> = None;
    let signal = loop {
        if let Some(signal) = stop_signals::take_pending() {
            break signal;
        }
        daemon.supervise();
        daemon.enforce_limits();
        // Sleep until the next tick, or until the kernel reports memory
        // stalls (a PSI trigger): pressure wakes the daemon at once.
        match &psi {
            Some(trigger) => {
                if trigger.wait(TICK).unwrap_or(false)
                    && last_psi_event.is_none_or(|t| t.elapsed() >= PSI_EVENT_EVERY)
                {
                    last_psi_event = Some(Instant::now());
                    let pressure = Pressure::read(trigger.path()).ok();
                    daemon.events.push(
                        "psi_pressure",
                        serde_json::json!({
                            "some_avg10": pressure.as_ref().map(|p| p.some.avg10),
                            "full_avg10": pressure.as_ref().and_then(|p| p.full).map(|f| f.avg10),
                            "trigger": trigger.spec().to_string(),
                        }),
                    );
                }
            }
            None => std::thread::sleep(TICK),
        }
    };
    daemon
        .events
        .push("daemon_stopping", serde_json::json!({ "signal": signal }));
    server.shutdown();
    daemon.stop_all();
    Ok(())
}
