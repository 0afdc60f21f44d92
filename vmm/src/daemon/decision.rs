//! The OOM decision: size the domain, score the VMs in it, pick the
//! victim (all under the VM table's lock, so that no VM changes state
//! meanwhile), then report it and act (outside the lock: a kill and its
//! reap take milliseconds to seconds).

use std::path::PathBuf;
use std::time::Instant;

use super::process::{kill_and_reap, Pidfd, Victim};
use super::vms::{is_live, VmRecord};
use super::{lock, Daemon, DaemonError, REAP_TIMEOUT};
use crate::daemon_api::events::{
    Actor, DecisionAction, DecisionTrigger, KillOutcome, OomDecision, OomKill,
};
use crate::daemon_api::{Event, EventRecord, OomAction, RunState, VmState};
use crate::host::memstat::MmCounters;
use crate::host::procfs::ProcFs;
use crate::oom::badness::VmUsage;
use crate::oom::constraint::{constrained_alloc, Constraint};
use crate::oom::select::{select_bad_vm, Candidate, SelectPolicy};

/// A decision made, not yet reported or carried out.
pub(super) struct Selected {
    pub decision: OomDecision,
    /// The victim to kill, already marked `Reaping`: its id, a pidfd of
    /// its VMM, its API socket and its guest RAM in bytes.
    kill: Option<(String, Pidfd, PathBuf, u64)>,
    /// The victim to pause, under the `pause` action.
    pause: Option<String>,
    started: Instant,
}

impl Selected {
    /// Why the decision found no victim, if it found none.
    pub fn no_victim(&self) -> Option<&str> {
        self.decision
            .victim
            .is_none()
            .then_some(self.decision.reason.as_str())
    }
}

impl Daemon {
    /// The OOM decision (`POST /oom/trigger`, and the policy once memory
    /// pressure calls for a kill): size the domain, score the VMs in it,
    /// pick the victim, act. Returns the decision event.
    pub fn oom_decide(
        &self,
        trigger: DecisionTrigger,
        dry_run: bool,
        constraint: Constraint,
    ) -> Result<EventRecord, DaemonError> {
        let selected = self.select_victim(trigger, dry_run, constraint)?;
        Ok(self.carry_out(selected))
    }

    /// Sizes the domain, scores its VMs and picks the victim, marking it
    /// `Reaping` before the table's lock is let go.
    pub(super) fn select_victim(
        &self,
        trigger: DecisionTrigger,
        dry_run: bool,
        constraint: Constraint,
    ) -> Result<Selected, DaemonError> {
        let started = Instant::now();
        let policy = self.policy();
        let mut pause = None;
        let mut vms = lock(&self.vms);
        let live: Vec<&VmRecord> = vms.values().filter(|v| is_live(v.state)).collect();
        let scope = constrained_alloc(&constraint, &ProcFs::host(), self.page_size, &live)?;
        let candidates: Vec<Candidate> = scope
            .eligible
            .iter()
            .filter_map(|vm| {
                let counters = MmCounters::read(Some(vm.pid()?)).ok().flatten()?;
                let mut usage = VmUsage::from_counters(&counters, self.page_size, vm.oom_score_adj);
                usage.being_reaped = vm.state == VmState::Reaping;
                // Paused already: choosing it again frees nothing.
                if vm.state == VmState::Paused {
                    return None;
                }
                Some(Candidate {
                    id: vm.id.clone(),
                    usage,
                    growth_bytes_per_s: vm.growth_bytes_per_s(),
                })
            })
            .collect();
        let selection = select_bad_vm(
            &candidates,
            scope.totalpages,
            SelectPolicy {
                kill_fastest_grower: policy.kill_fastest_grower,
            },
        );
        let victim = selection.victim.map(|i| selection.table[i].id.clone());
        let decision = OomDecision {
            trigger,
            dry_run,
            constraint: constraint.to_string(),
            basis: scope.basis.to_string(),
            totalpages: scope.totalpages,
            victim: victim.clone(),
            action: if dry_run {
                DecisionAction::DryRun
            } else {
                policy.action.into()
            },
            decision_us: started.elapsed().as_micros() as u64,
            table: (policy.dump_vms || dry_run).then_some(selection.table),
            reason: selection.reason,
        };
        let kill = match (&victim, dry_run, policy.action) {
            (Some(id), false, OomAction::Kill) => {
                let vm = vms.get_mut(id).expect("the victim came from the table");
                vm.state = VmState::Reaping;
                let (sock, ram) = (vm.api_sock.clone(), u64::from(vm.spec.mem_mib) << 20);
                vm.pidfd
                    .as_ref()
                    .and_then(|p| p.try_clone().ok())
                    .map(|p| (id.clone(), p, sock, ram))
            }
            (Some(id), false, OomAction::Pause) => {
                pause = Some(id.clone());
                None
            }
            _ => None,
        };
        Ok(Selected {
            decision,
            kill,
            pause,
            started,
        })
    }

    /// Reports the decision, then pauses or kills and reaps its victim.
    /// Returns the decision event.
    pub(super) fn carry_out(&self, selected: Selected) -> EventRecord {
        let Selected {
            decision,
            kill,
            pause,
            started,
        } = selected;
        let decision = self.events.push(Event::OomDecision(decision));
        if let Some(id) = pause {
            if let Err(e) = self.set_run_state(&id, RunState::Paused, Actor::Oom) {
                self.events.push(Event::OomPauseFailed {
                    vm: id,
                    error: e.to_string(),
                });
            }
        }
        let Some((id, pidfd, sock, guest_ram_bytes)) = kill else {
            return decision;
        };
        *lock(&self.last_kill) = Some(Instant::now());
        let kill_started_us = started.elapsed().as_micros() as u64;
        let victim = Victim {
            pidfd: &pidfd,
            api_sock: Some(&sock),
            guest_ram_bytes,
        };
        let kill = match kill_and_reap(&victim, self.cfg.reap, REAP_TIMEOUT) {
            Ok(report) => OomKill {
                vm: id,
                pid: Some(pidfd.pid()),
                outcome: KillOutcome::Reaped {
                    decision_to_freed_us: kill_started_us + report.freed_us,
                    report,
                },
            },
            Err(e) => OomKill {
                vm: id,
                pid: None,
                outcome: KillOutcome::Failed {
                    method: self.cfg.reap,
                    error: e.to_string(),
                },
            },
        };
        self.events.push(Event::OomKill(kill));
        // Reap the zombie now so the VM shows as killed at once.
        if pidfd.wait_exit(REAP_TIMEOUT) {
            self.supervise();
        }
        decision
    }
}
