//! A daemon for tests: VMs in a table, events in a list, followers fed
//! like the real one feeds them, and a record of every backend call.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Mutex;

use super::events::{DecisionAction, DecisionTrigger, Event, EventRecord, OomDecision};
use super::types::{
    BalloonView, ConstraintKind, OomPatch, OomPolicy, OomTrigger, OomView, PoolView, PressureView,
    VmPatch, VmSpec, VmState, VmView,
};
use super::DaemonBackend;
use crate::http::ApiError;
use crate::oom::select::CandidateRow;

/// The fake daemon.
pub(crate) struct FakeDaemon {
    calls: Mutex<Vec<String>>,
    vms: Mutex<BTreeMap<String, VmView>>,
    policy: Mutex<OomPolicy>,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    events: Vec<EventRecord>,
    followers: Vec<Sender<EventRecord>>,
}

/// The daemon's own defaults.
pub(crate) fn policy() -> OomPolicy {
    crate::daemon_api::OomPolicy::default()
}

/// A made-up badness: half of guest RAM in pages, plus the adj.
fn badness(mem_mib: u32, adj: i16) -> Option<i64> {
    (adj > -1000).then(|| (i64::from(mem_mib) * 128 + i64::from(adj)).max(1))
}

impl Default for FakeDaemon {
    fn default() -> Self {
        FakeDaemon {
            calls: Mutex::default(),
            vms: Mutex::default(),
            policy: Mutex::new(policy()),
            log: Mutex::default(),
        }
    }
}

impl FakeDaemon {
    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    /// The backend calls so far.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    /// Records an event: numbered, kept, sent to every follower still
    /// there (those whose receiver is gone are dropped).
    pub fn push_event(&self, event: Event) -> EventRecord {
        let mut log = self.log.lock().unwrap();
        let record = EventRecord {
            seq: log.events.len() as u64 + 1,
            time_ms: 1_700_000_000_000_u64 + log.events.len() as u64 * 1500,
            event,
        };
        log.events.push(record.clone());
        log.followers.retain(|f| f.send(record.clone()).is_ok());
        record
    }

    /// Sends a probe (seq 0, a `vm_running` of VM `probe<n>`) to the
    /// followers only, and says how many took it: a follower whose client
    /// went away and whose stream the server closed does not.
    pub fn probe_followers(&self, n: u32) -> usize {
        let probe = Self::probe(n);
        let mut log = self.log.lock().unwrap();
        log.followers.retain(|f| f.send(probe.clone()).is_ok());
        log.followers.len()
    }

    /// What [`Self::probe_followers`] sends.
    pub fn probe(n: u32) -> EventRecord {
        EventRecord {
            seq: 0,
            time_ms: 0,
            event: Event::VmRunning {
                vm: format!("probe{n}"),
            },
        }
    }

    /// Drops every follower's sender: their streams end.
    pub fn end_streams(&self) {
        self.log.lock().unwrap().followers.clear();
    }

    fn view(id: &str, n: usize, spec: &VmSpec) -> VmView {
        VmView {
            id: id.to_string(),
            pid: Some(4000 + n as u32),
            state: VmState::Running,
            pool: spec.pool.clone(),
            mem_mib: spec.mem_mib,
            vcpus: spec.vcpus,
            oom_score_adj: spec.oom_score_adj,
            kernel_oom_score_adj: None,
            rss_bytes: (u64::from(spec.mem_mib) << 20) / 2,
            swap_bytes: 0,
            page_tables_bytes: 256 << 10,
            guest_ram_resident_bytes: (u64::from(spec.mem_mib) << 20) / 2 - (4 << 20),
            balloon: spec.balloon.map(|b| BalloonView {
                target_mib: b.amount_mib,
                actual_mib: b.amount_mib,
            }),
            badness: badness(spec.mem_mib, spec.oom_score_adj),
            oom_score: badness(spec.mem_mib, spec.oom_score_adj).map(|b| b as u32 / 64),
            exit: None,
            created_at_ms: 1_700_000_000_000,
            agent: None,
        }
    }
}

impl DaemonBackend for FakeDaemon {
    fn create_vm(&self, spec: VmSpec) -> Result<VmView, ApiError> {
        self.record(format!("create_vm {spec:?}"));
        let mut vms = self.vms.lock().unwrap();
        let n = vms.len() + 1;
        let id = spec.id.clone().unwrap_or_else(|| format!("vm{n}"));
        if vms.contains_key(&id) {
            return Err(ApiError::Conflict(format!("a VM '{id}' already exists")));
        }
        let view = Self::view(&id, n, &spec);
        vms.insert(id.clone(), view.clone());
        drop(vms);
        self.push_event(Event::VmCreated {
            vm: id,
            pid: view.pid,
            mem_mib: spec.mem_mib,
            oom_score_adj: spec.oom_score_adj,
            pool: spec.pool,
            numa_nodes: spec.numa_nodes,
        });
        Ok(view)
    }

    fn list_vms(&self) -> Vec<VmView> {
        self.record("list_vms".into());
        self.vms.lock().unwrap().values().cloned().collect()
    }

    fn get_vm(&self, id: &str) -> Result<VmView, ApiError> {
        self.record(format!("get_vm {id}"));
        self.vms
            .lock()
            .unwrap()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::NotFound(format!("no VM '{id}'")))
    }

    fn patch_vm(&self, id: &str, patch: VmPatch) -> Result<VmView, ApiError> {
        self.record(format!("patch_vm {id} {patch:?}"));
        let mut vms = self.vms.lock().unwrap();
        let vm = vms
            .get_mut(id)
            .ok_or_else(|| ApiError::NotFound(format!("no VM '{id}'")))?;
        if let Some(target) = patch.balloon_target_mib {
            let balloon = vm
                .balloon
                .as_mut()
                .ok_or_else(|| ApiError::Conflict(format!("VM '{id}' has no balloon")))?;
            balloon.target_mib = target;
        }
        if let Some(adj) = patch.oom_score_adj {
            vm.oom_score_adj = adj;
            vm.badness = badness(vm.mem_mib, adj);
            vm.oom_score = vm.badness.map(|b| b as u32 / 64);
        }
        Ok(vm.clone())
    }

    fn delete_vm(&self, id: &str) -> Result<(), ApiError> {
        self.record(format!("delete_vm {id}"));
        self.vms
            .lock()
            .unwrap()
            .remove(id)
            .map(drop)
            .ok_or_else(|| ApiError::NotFound(format!("no VM '{id}'")))
    }

    fn oom(&self) -> OomView {
        self.record("oom".into());
        OomView {
            policy: *self.policy.lock().unwrap(),
            pressure: PressureView {
                mem_available_bytes: 20 << 30,
                mem_total_bytes: 24 << 30,
                swap_free_bytes: 0,
                psi_some_avg10: 1.25,
                psi_full_avg10: 0.5,
                pools: vec![PoolView {
                    name: "batch".into(),
                    constraint: ConstraintKind::Budget,
                    limit_bytes: Some(512 << 20),
                    usage_bytes: 300 << 20,
                    vms: 2,
                }],
            },
            event_log: Default::default(),
            stuck: Vec::new(),
        }
    }

    fn patch_oom(&self, patch: OomPatch) -> Result<OomView, ApiError> {
        self.record(format!("patch_oom {patch:?}"));
        let next = self.policy.lock().unwrap().apply(&patch)?;
        *self.policy.lock().unwrap() = next;
        Ok(self.oom())
    }

    fn trigger_oom(&self, req: OomTrigger) -> Result<EventRecord, ApiError> {
        self.record(format!("trigger_oom {req:?}"));
        if let Some(pool) = &req.pool {
            if pool != "batch" {
                return Err(ApiError::BadRequest(format!(
                    "pool '{pool}' has no budget configured"
                )));
            }
        }
        let vms = self.vms.lock().unwrap();
        let table: Vec<CandidateRow> = vms
            .values()
            .map(|vm| CandidateRow {
                id: vm.id.clone(),
                rss_pages: vm.rss_bytes / 4096,
                swap_pages: 0,
                pgtables_pages: vm.page_tables_bytes / 4096,
                oom_score_adj: vm.oom_score_adj,
                badness: vm.badness,
                oom_score: vm.oom_score.unwrap_or(0),
                growth_bytes_per_s: 0,
            })
            .collect();
        let victim = vms
            .values()
            .filter(|vm| vm.badness.is_some())
            .max_by_key(|vm| vm.badness)
            .map(|vm| (vm.id.clone(), vm.badness.unwrap_or(0), vm.oom_score));
        drop(vms);
        let reason = match &victim {
            Some((_, badness, score)) => format!(
                "highest badness: {badness} pages (oom_score {})",
                score.unwrap_or(0)
            ),
            None => "no eligible VM: every candidate has oom_score_adj -1000 or none exists".into(),
        };
        Ok(self.push_event(Event::OomDecision(OomDecision {
            trigger: DecisionTrigger::Manual,
            dry_run: req.dry_run,
            constraint: match &req.pool {
                Some(p) => format!("CONSTRAINT_BUDGET (pool {p}, 512 MiB)"),
                None => "CONSTRAINT_NONE (host)".into(),
            },
            basis: "host RAM + swap".into(),
            totalpages: 6_291_456,
            victim: victim.map(|v| v.0),
            reason,
            action: if req.dry_run {
                DecisionAction::DryRun
            } else {
                DecisionAction::Kill
            },
            decision_us: 87,
            table: Some(table),
        })))
    }

    fn events(&self, since: u64) -> Vec<EventRecord> {
        self.record(format!("events {since}"));
        let log = self.log.lock().unwrap();
        log.events
            .iter()
            .filter(|e| e.seq > since)
            .cloned()
            .collect()
    }

    fn follow_events(&self, since: u64) -> Receiver<EventRecord> {
        self.record(format!("follow_events {since}"));
        let (tx, rx) = mpsc::channel();
        let mut log = self.log.lock().unwrap();
        for event in log.events.iter().filter(|e| e.seq > since) {
            let _ = tx.send(event.clone());
        }
        log.followers.push(tx);
        rx
    }

    fn metrics(&self) -> String {
        self.record("metrics".into());
        format!(
            "# HELP vmm_vms VMs by state.\n# TYPE vmm_vms gauge\nvmm_vms{{state=\"running\"}} {}\n",
            self.vms.lock().unwrap().len()
        )
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmm-{what}-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn sock(&self) -> std::path::PathBuf {
        self.0.join("daemon.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
