//! The daemon behind its control API: [`DaemonBackend`] for [`Daemon`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use super::vm_client::{self, VmClientError};
use super::{Daemon, DaemonError};
use crate::daemon_api::events::{Actor, DecisionTrigger};
use crate::daemon_api::{
    BalloonView, ConstraintKind, DaemonBackend, EventRecord, OomPatch, OomTrigger, OomView,
    PoolView, PressureView, VmPatch, VmSpec, VmState, VmView,
};
use crate::host::procfs::ProcFs;
use crate::host::psi::Pressure;
use crate::http::ApiError;
use crate::oom::badness::{oom_badness, oom_score, VmUsage};
use crate::oom::Constraint;

use super::vms::{is_live, VmRecord};

impl From<DaemonError> for ApiError {
    fn from(e: DaemonError) -> Self {
        match e {
            DaemonError::NoSuchVm(_) => ApiError::NotFound(e.to_string()),
            DaemonError::Exists(_) | DaemonError::NotRunning(_) => {
                ApiError::Conflict(e.to_string())
            }
            DaemonError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            DaemonError::StartFailed { ref how, .. } if how.refused_input() => {
                ApiError::BadRequest(e.to_string())
            }
            // The VM's own API refused what we passed on: the caller's
            // request was at fault, as the VMM says; a VMM that cannot
            // answer (stopped, overloaded) is unavailable, not broken.
            DaemonError::VmApi(VmClientError::Status { status: 409, .. }) => {
                ApiError::Conflict(e.to_string())
            }
            DaemonError::VmApi(VmClientError::Status { status, .. })
                if (400..500).contains(&status) =>
            {
                ApiError::BadRequest(e.to_string())
            }
            DaemonError::VmApi(VmClientError::Http(_)) => ApiError::Unavailable(e.to_string()),
            other => ApiError::Internal(format!("{:#}", anyhow::Error::from(other))),
        }
    }
}

/// How long a view waits for a VMM's balloon answer: a VMM answers in
/// well under a millisecond when it can.
const VIEW_TIMEOUT: Duration = Duration::from_millis(250);

impl Daemon {
    /// The API view of one VM: its memory and badness as the supervisor
    /// last saw them ([`VmRecord::counters`]), its balloon as
    /// [`Self::balloons`] found it.
    fn view(
        &self,
        vm: &mut VmRecord,
        totalpages: u64,
        page_size: u64,
        balloon: Option<BalloonView>,
    ) -> VmView {
        let counters = vm.counters();
        let pid = vm.pid().filter(|_| is_live(vm.state));
        let badness = counters
            .map(|c| VmUsage::from_counters(&c, page_size, vm.oom_score_adj))
            .and_then(|u| oom_badness(&u, totalpages));
        VmView {
            id: vm.id.clone(),
            pid: vm.pid(),
            state: vm.state,
            pool: vm.spec.pool.clone(),
            mem_mib: vm.spec.mem_mib,
            vcpus: vm.spec.vcpus,
            oom_score_adj: vm.oom_score_adj.get(),
            kernel_oom_score_adj: vm.kernel_oom_score_adj,
            rss_bytes: counters.map_or(0, |c| c.rss_anon + c.rss_file + c.rss_shmem),
            swap_bytes: counters.map_or(0, |c| c.swap),
            page_tables_bytes: counters.map_or(0, |c| c.page_tables),
            guest_ram_resident_bytes: vm.guest_ram_resident(),
            balloon,
            badness,
            oom_score: pid.map(|_| oom_score(badness, totalpages)),
            exit: vm.exit.clone(),
            created_at_ms: vm.created_at_ms,
            agent: self.agents.view(&vm.id),
        }
    }

    /// The balloons of the running VMs with one (or of VM `only`), asked
    /// outside the table's lock and all at once: a VMM that does not
    /// answer (stopped behind our back, overloaded) costs one short
    /// timeout for the whole list, not 2 s per VM, and holds up neither
    /// the supervisor nor other callers. Such a VM shows no balloon.
    fn balloons(&self, only: Option<&str>) -> BTreeMap<String, BalloonView> {
        let socks: Vec<(String, PathBuf)> = self.with_vms(|vms| {
            vms.values()
                .filter(|vm| only.is_none_or(|id| vm.id == id))
                // A paused VMM cannot answer.
                .filter(|vm| vm.spec.balloon.is_some() && vm.state == VmState::Running)
                .map(|vm| (vm.id.clone(), vm.api_sock.clone()))
                .collect()
        });
        let answers = vm_client::ask_each(&socks, |(_, sock)| {
            vm_client::balloon_within(sock, VIEW_TIMEOUT).ok()
        });
        socks
            .into_iter()
            .zip(answers)
            .filter_map(|((id, _), b)| {
                let b = b?;
                Some((
                    id,
                    BalloonView {
                        target_mib: b.target_mib,
                        actual_mib: b.actual_mib,
                    },
                ))
            })
            .collect()
    }

    fn host_totalpages(&self) -> u64 {
        ProcFs::host()
            .meminfo()
            .map_or(1, |m| m.totalpages(self.page_size).max(1))
    }
}

/// Resident bytes of the guest-RAM mapping of VMM `pid`: the anonymous
/// mapping of exactly the guest's size (below 3 GiB, guest RAM is one
/// region, its own VMA; see `vm::memory`).
impl DaemonBackend for Daemon {
    fn create_vm(&self, spec: VmSpec) -> Result<VmView, ApiError> {
        let id = Daemon::create_vm(self, spec)?;
        self.get_vm(&id)
    }

    fn list_vms(&self) -> Vec<VmView> {
        let total = self.host_totalpages();
        let balloons = self.balloons(None);
        self.with_vms(|vms| {
            vms.values_mut()
                .map(|vm| self.view(vm, total, self.page_size, balloons.get(&vm.id).copied()))
                .collect()
        })
    }

    fn get_vm(&self, id: &str) -> Result<VmView, ApiError> {
        let total = self.host_totalpages();
        let balloons = self.balloons(Some(id));
        self.with_vms(|vms| {
            vms.get_mut(id).map(|vm| {
                // One VM: its counters are read now.
                vm.observe(true, self.page_size);
                self.view(vm, total, self.page_size, balloons.get(id).copied())
            })
        })
        .ok_or_else(|| DaemonError::NoSuchVm(id.into()).into())
    }

    /// All or nothing: the whole patch is checked against the VM first;
    /// then the one step that can still fail for reasons outside our
    /// control, the VMM's own balloon API, goes first, so that a refusal
    /// there leaves the adj and the run state as they were.
    fn patch_vm(&self, id: &str, patch: VmPatch) -> Result<VmView, ApiError> {
        self.with_vms(|vms| check_patch(vms.get(id), id, &patch))?;
        if let Some(mib) = patch.balloon_target_mib {
            self.set_balloon_target(id, mib)?;
        }
        if let Some(adj) = patch.oom_score_adj {
            self.set_oom_score_adj(id, adj)?;
        }
        if let Some(state) = patch.state {
            self.set_run_state(id, state, Actor::Operator)?;
        }
        self.get_vm(id)
    }

    fn delete_vm(&self, id: &str) -> Result<(), ApiError> {
        Ok(Daemon::delete_vm(self, id)?)
    }

    fn oom(&self) -> OomView {
        let meminfo = ProcFs::host().meminfo().ok();
        let psi = Pressure::read(Path::new("/proc/pressure/memory")).ok();
        let pools = self.with_vms(|vms| {
            let mut pools: std::collections::BTreeMap<String, PoolView> =
                std::collections::BTreeMap::new();
            for vm in vms.values().filter(|v| is_live(v.state)) {
                let Some(name) = vm.spec.pool.clone() else {
                    continue;
                };
                let budget = self.budgets().get(&name).copied();
                let pool = pools.entry(name.clone()).or_insert(PoolView {
                    name,
                    constraint: if budget.is_some() {
                        ConstraintKind::Budget
                    } else {
                        ConstraintKind::Host
                    },
                    limit_bytes: budget,
                    usage_bytes: 0,
                    vms: 0,
                });
                pool.usage_bytes += vm.usage_bytes();
                pool.vms += 1;
            }
            self.memcg_pool_views(&mut pools);
            pools.into_values().collect()
        });
        OomView {
            policy: self.policy(),
            pressure: PressureView {
                mem_available_bytes: meminfo.map_or(0, |m| m.mem_available),
                mem_total_bytes: meminfo.map_or(0, |m| m.mem_total),
                swap_free_bytes: meminfo.map_or(0, |m| m.swap_free),
                psi_some_avg10: psi.as_ref().map_or(0.0, |p| p.some.avg10),
                psi_full_avg10: psi.as_ref().and_then(|p| p.full).map_or(0.0, |f| f.avg10),
                pools,
            },
            event_log: self.events.status(),
            stuck: self.stuck_domains(),
        }
    }

    fn patch_oom(&self, patch: OomPatch) -> Result<OomView, ApiError> {
        let next = self.policy().apply(&patch)?;
        self.set_policy(next);
        Ok(self.oom())
    }

    fn trigger_oom(&self, req: OomTrigger) -> Result<EventRecord, ApiError> {
        let constraint = match (&req.pool, &req.nodes) {
            (Some(pool), _) => self.pool_constraint(pool)?,
            (None, Some(nodes)) => {
                let nodes = nodes
                    .parse()
                    .map_err(|e| DaemonError::Invalid(format!("nodes: {e}")))?;
                crate::host::numa::check_nodes(&nodes, &ProcFs::host())
                    .map_err(|e| DaemonError::Invalid(format!("nodes: {e}")))?;
                Constraint::nodes(nodes).map_err(DaemonError::Constraint)?
            }
            (None, None) => Constraint::Host,
        };
        Ok(self.oom_decide(DecisionTrigger::Manual, req.dry_run, constraint)?)
    }

    fn events(&self, since: u64) -> Vec<EventRecord> {
        self.events.since(since)
    }

    fn follow_events(&self, since: u64) -> Receiver<EventRecord> {
        self.events.follow(since)
    }

    fn metrics(&self) -> String {
        super::metrics::render(self)
    }
}

/// Whether `patch` can be applied to `vm` as it is now; the error names
/// the first field at fault.
fn check_patch(vm: Option<&VmRecord>, id: &str, patch: &VmPatch) -> Result<(), DaemonError> {
    let vm = vm.ok_or_else(|| DaemonError::NoSuchVm(id.into()))?;
    if let Some(mib) = patch.balloon_target_mib {
        if vm.spec.balloon.is_none() {
            return Err(DaemonError::Invalid(format!(
                "balloon_target_mib: VM '{id}' has no balloon (create it with \"balloon\")"
            )));
        }
        if mib > vm.spec.mem_mib {
            return Err(DaemonError::Invalid(format!(
                "balloon_target_mib: {mib} is more than VM '{id}' has ({} MiB)",
                vm.spec.mem_mib
            )));
        }
        if vm.state != VmState::Running {
            return Err(DaemonError::NotRunning(id.into()));
        }
    }
    if patch.state.is_some() && !is_live(vm.state) {
        return Err(DaemonError::NotRunning(id.into()));
    }
    Ok(())
}
