//! The daemon's main loop.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{Daemon, DaemonConfig};
use crate::daemon_api::DaemonApiServer;
use crate::vm::stop_signals;

/// How often the supervisor reaps exits and samples memory.
const TICK: Duration = Duration::from_millis(100);

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
    let signal = loop {
        if let Some(signal) = stop_signals::take_pending() {
            break signal;
        }
        daemon.supervise();
        daemon.enforce_budgets();
        std::thread::sleep(TICK);
    };
    daemon
        .events
        .push("daemon_stopping", serde_json::json!({ "signal": signal }));
    server.shutdown();
    daemon.stop_all();
    Ok(())
}
