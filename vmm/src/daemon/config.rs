//! The daemon's configuration file (JSON): policy knobs, pool budgets and
//! the reap method. Unknown keys are refused so a typo is not silently
//! ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::process::ReapMethod;
use super::DaemonConfig;
use crate::daemon_api::OomPatch;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    policy: Option<OomPatch>,
    #[serde(default)]
    budgets: BTreeMap<String, u64>,
    #[serde(default)]
    reap: Option<ReapMethod>,
}

/// Applies the file's settings to `cfg`.
pub fn apply(cfg: &mut DaemonConfig, text: &str) -> anyhow::Result<()> {
    let file: ConfigFile = serde_json::from_str(text)?;
    if let Some(patch) = file.policy {
        cfg.policy = cfg
            .policy
            .apply(&patch)
            .map_err(|e| anyhow::anyhow!("policy: {e}"))?;
    }
    for (pool, bytes) in &file.budgets {
        crate::daemon_api::types::validate_name("pool", pool)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(*bytes > 0, "budget of pool '{pool}' is 0");
    }
    cfg.budgets = file.budgets;
    if let Some(reap) = file.reap {
        cfg.reap = reap;
    }
    Ok(())
}
