//! `GET /metrics`: the daemon's state in the Prometheus text format
//! (version 0.0.4), written by hand: a handful of gauges and counters do
//! not justify a client library.

use std::fmt::Write;

use super::vms::is_live;
use super::Daemon;
use crate::daemon_api::VmState;
use crate::host::procfs::ProcFs;

/// Label values are quoted; backslash, quote and newline must be escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub fn render(d: &Daemon) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    metric(
        "vmm_vm_rss_bytes",
        "gauge",
        "Resident memory of each VM's VMM process.",
    );
    metric(
        "vmm_vm_swap_bytes",
        "gauge",
        "Swapped-out memory of each VM's VMM process.",
    );
    metric(
        "vmm_vm_oom_score_adj",
        "gauge",
        "The operator's oom_score_adj of each VM.",
    );
    let mut body = String::new();
    let (mut live, mut killed) = (0u64, 0u64);
    d.with_vms(|vms| {
        for vm in vms.values() {
            if vm.state == VmState::Killed {
                killed += 1;
            }
            if !is_live(vm.state) {
                continue;
            }
            live += 1;
            let l = format!(
                "vm=\"{}\",pool=\"{}\"",
                label(&vm.id),
                label(vm.spec.pool.as_deref().unwrap_or(""))
            );
            // As the supervisor last read them: no /proc read per VM.
            let m = vm.counters().unwrap_or_default();
            let _ = writeln!(
                body,
                "vmm_vm_rss_bytes{{{l}}} {}",
                m.rss_anon + m.rss_file + m.rss_shmem
            );
            let _ = writeln!(body, "vmm_vm_swap_bytes{{{l}}} {}", m.swap);
            let _ = writeln!(
                body,
                "vmm_vm_oom_score_adj{{{l}}} {}",
                vm.oom_score_adj.get()
            );
        }
    });
    out.push_str(&body);
    let _ = writeln!(
        out,
        "# HELP vmm_vms Live VMs.\n# TYPE vmm_vms gauge\nvmm_vms {live}"
    );
    let _ = writeln!(
        out,
        "# HELP vmm_oom_kills_total VMs killed by the daemon's OOM decisions.\n# TYPE vmm_oom_kills_total counter\nvmm_oom_kills_total {killed}"
    );
    if let Ok(m) = ProcFs::host().meminfo() {
        let _ = writeln!(
            out,
            "# HELP vmm_host_mem_available_bytes MemAvailable of the host.\n# TYPE vmm_host_mem_available_bytes gauge\nvmm_host_mem_available_bytes {}",
            m.mem_available
        );
    }
    let guest_kills = d.agents.oom_kills();
    if !guest_kills.is_empty() {
        let _ = writeln!(
            out,
            "# HELP vmm_guest_oom_kills_total Processes the guest kernel's OOM killer killed inside each VM, as its agent reported.\n# TYPE vmm_guest_oom_kills_total counter"
        );
        for (vm, kills) in guest_kills {
            let _ = writeln!(
                out,
                "vmm_guest_oom_kills_total{{vm=\"{}\"}} {kills}",
                label(&vm)
            );
        }
    }
    render_stuck(&mut out, &d.stuck_domains());
    d.render_memcg_metrics(&mut out);
    render_event_log(&mut out, &d.events.status());
    out
}

/// Domains whose decisions find no victim (see `GET /oom`'s `stuck`).
fn render_stuck(out: &mut String, stuck: &[crate::daemon_api::StuckDomain]) {
    let _ = writeln!(
        out,
        "# HELP vmm_oom_stuck_domains Domains under pressure whose OOM decisions find no VM to kill.\n\
         # TYPE vmm_oom_stuck_domains gauge\n\
         vmm_oom_stuck_domains {}\n\
         # HELP vmm_oom_stuck_decisions Decisions a stuck domain made without finding a victim.\n\
         # TYPE vmm_oom_stuck_decisions gauge",
        stuck.len()
    );
    for s in stuck {
        let _ = writeln!(
            out,
            "vmm_oom_stuck_decisions{{pool=\"{}\",nodes=\"{}\"}} {}",
            label(s.domain.pool.as_deref().unwrap_or("")),
            label(s.domain.nodes.as_deref().unwrap_or("")),
            s.decisions
        );
    }
}

/// Whether `events.ndjson` holds every event (see [`super::events`]).
fn render_event_log(out: &mut String, log: &crate::daemon_api::EventLogView) {
    let _ = writeln!(
        out,
        "# HELP vmm_daemon_event_write_failures_total Events whose append to events.ndjson failed when they happened (each counted once; kept in memory and written later, or lost).\n\
         # TYPE vmm_daemon_event_write_failures_total counter\n\
         vmm_daemon_event_write_failures_total {}\n\
         # HELP vmm_daemon_events_unwritten Events kept in memory until events.ndjson can be written again.\n\
         # TYPE vmm_daemon_events_unwritten gauge\n\
         vmm_daemon_events_unwritten {}\n\
         # HELP vmm_daemon_events_lost_total Unwritten events dropped because the memory kept for them was full: missing from events.ndjson.\n\
         # TYPE vmm_daemon_events_lost_total counter\n\
         vmm_daemon_events_lost_total {}",
        log.write_failures, log.unwritten, log.lost
    );
}
