//! The daemon's configuration file (JSON): policy knobs, pool budgets,
//! memory-cgroup pools and the reap method. Unknown keys are refused so a
//! typo is not silently ignored.

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
    memcg_pools: BTreeMap<String, u64>,
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
    for (pool, bytes) in &file.memcg_pools {
        crate::daemon_api::types::validate_name("pool", pool)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::ensure!(*bytes > 0, "memory cgroup limit of pool '{pool}' is 0");
        anyhow::ensure!(
            !file.budgets.contains_key(pool),
            "pool '{pool}' has both a budget and a memory cgroup limit; give it one"
        );
    }
    cfg.budgets = file.budgets;
    cfg.memcg_pools = file.memcg_pools;
    if let Some(reap) = file.reap {
        cfg.reap = reap;
    }
    Ok(())
}
