//! Whole kernel logs (tests/data, Linux 6.12 formats) through the kmsg
//! reader and the OOM tracker, as the agent runs them.

#![cfg(feature = "agent")]

use guest_agent::agent::killcount::KillCount;
use guest_agent::agent::kmsg::{KmsgReader, Loss};
use guest_agent::agent::oom::{OomEvent, OomTracker};
use guest_agent::protocol::{Invoker, OomKill};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Feeds the file one record per read, like /dev/kmsg does.
fn run(name: &str) -> (Vec<OomEvent>, Vec<Loss>, OomTracker, KmsgReader) {
    let log = data(name);
    let mut reader = KmsgReader::new();
    let mut tracker = OomTracker::new();
    let mut events = Vec::new();
    let mut losses = Vec::new();
    for line in log.split_inclusive(|&b| b == b'\n') {
        reader.feed(
            line,
            &mut |rec| tracker.record(rec, &mut |e| events.push(e)),
            &mut |l| losses.push(l),
        );
    }
    (events, losses, tracker, reader)
}

#[test]
fn memcg_oom_of_the_tiny_guest() {
    let (ev, losses, tracker, _) = run("kmsg-memcg-oom-6.12.txt");
    // The ring had dropped records 0..301 before the agent read it.
    assert_eq!(losses.len(), 1);
    assert!(losses[0].before_start);
    assert_eq!(ev.len(), 2, "{ev:#?}");
    let OomEvent::Kill(k) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(
        **k,
        OomKill {
            kmsg_seq: 335,
            ts_us: 32485988,
            reason: "Memory cgroup out of memory".into(),
            pid: 42,
            comm: "hog".into(),
            uid: Some(0),
            total_vm_kb: Some(17920),
            anon_rss_kb: Some(15872),
            file_rss_kb: Some(140),
            shmem_rss_kb: Some(0),
            pgtables_kb: Some(60),
            oom_score_adj: Some(0),
            constraint: Some("CONSTRAINT_MEMCG".into()),
            nodemask: Some("(null)".into()),
            // No CONFIG_CPUSETS in the tiny guest: the kernel prints
            // neither cpuset= nor mems_allowed=.
            cpuset: None,
            mems_allowed: None,
            global_oom: false,
            oom_memcg: Some("/hog".into()),
            task_memcg: Some("/hog".into()),
            memcg_usage_kb: Some(16384),
            memcg_limit_kb: Some(16384),
            memcg_failcnt: Some(37),
            oom_group: None,
            invoker: Some(Invoker {
                comm: "hog".into(),
                pid: Some(42),
                gfp_mask: "0xcc0".into(),
                gfp_flags: "GFP_KERNEL".into(),
                order: 0,
                oom_score_adj: 0,
            }),
        }
    );
    let OomEvent::Reaped(r) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert_eq!((r.pid, r.reaped, r.anon_rss_kb), (42, true, Some(0)));
    assert_eq!(tracker.kills_logged, 1);
}

#[test]
fn global_oom() {
    let (ev, _, _, reader) = run("kmsg-global-oom-6.12.txt");
    assert_eq!(ev.len(), 1);
    let OomEvent::Kill(k) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(k.reason, "Out of memory");
    assert_eq!(k.constraint.as_deref(), Some("CONSTRAINT_NONE"));
    assert!(k.global_oom);
    assert_eq!(k.oom_memcg, None);
    assert_eq!(k.task_memcg.as_deref(), Some("/"));
    assert_eq!(k.memcg_limit_kb, None, "a global OOM prints no memcg usage");
    assert_eq!(
        (k.pid, k.anon_rss_kb, k.pgtables_kb),
        (57, Some(111044), Some(240))
    );
    let inv = k.invoker.as_ref().unwrap();
    assert_eq!(inv.gfp_flags, "GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO");
    assert_eq!(inv.pid, Some(57));
    assert_eq!(reader.bad_lines, 0);
}

#[test]
fn split_fragments_overrun_and_the_vmstat_cross_check() {
    let (ev, losses, tracker, reader) = run("kmsg-split-overrun-6.12.txt");
    let OomEvent::Kill(k) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(k.oom_memcg.as_deref(), Some("/hog"));
    assert_eq!(k.task_memcg.as_deref(), Some("/hog/inner"));
    assert_eq!(k.memcg_failcnt, Some(80));
    let OomEvent::Reaped(r) = &ev[1] else {
        panic!("{ev:?}")
    };
    assert!(!r.reaped, "unable to reap");
    // 510..=639 were overwritten before they were read.
    assert_eq!(losses.last().unwrap().records, 130);
    assert_eq!(reader.lost, 500 + 130);
    // The kernel counted two kills; the log kept one.
    let mut kc = KillCount::new();
    assert_eq!(kc.check(2, tracker.kills_logged), None);
    let unlogged = kc.check(2, tracker.kills_logged).unwrap();
    assert_eq!((unlogged.count, unlogged.logged), (1, 1));
}

/// The serial logs our tiny Linux guest really printed
/// (`resources/linux/captures/`), turned back into kernel records: each
/// `[seconds] text` line becomes `6,<n>,<µs>,-;text` (the console shows
/// neither the priority nor the sequence number; /init's own lines, which
/// have no timestamp, are not kernel records and are left out).
fn captured(name: &str) -> (Vec<OomEvent>, Vec<Loss>) {
    let path = format!(
        "{}/../resources/linux/captures/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut reader = KmsgReader::new();
    let mut tracker = OomTracker::new();
    let (mut events, mut losses) = (Vec::new(), Vec::new());
    let mut seq = 0u64;
    for line in text.lines() {
        let Some((stamp, msg)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let Ok(secs) = stamp.trim().parse::<f64>() else {
            continue;
        };
        let record = format!("6,{seq},{},-;{msg}\n", (secs * 1e6) as u64);
        seq += 1;
        reader.feed(
            record.as_bytes(),
            &mut |rec| tracker.record(rec, &mut |e| events.push(e)),
            &mut |l| losses.push(l),
        );
    }
    (events, losses)
}

#[test]
fn the_memcg_kill_our_linux_guest_printed() {
    let (ev, losses) = captured("oom-kill-memcg.log");
    assert!(losses.is_empty(), "{losses:?}");
    let kills: Vec<&OomKill> = ev
        .iter()
        .filter_map(|e| match e {
            OomEvent::Kill(k) => Some(&**k),
            _ => None,
        })
        .collect();
    assert_eq!(kills.len(), 1, "{ev:#?}");
    let k = kills[0];
    assert_eq!((k.pid, k.comm.as_str()), (16, "hog"));
    assert_eq!(k.reason, "Memory cgroup out of memory");
    assert_eq!(k.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
    assert_eq!(k.oom_memcg.as_deref(), Some("/hog"));
    assert_eq!(k.task_memcg.as_deref(), Some("/hog"));
    assert_eq!(
        (k.anon_rss_kb, k.shmem_rss_kb, k.pgtables_kb),
        (Some(2004), Some(32), Some(36))
    );
    assert_eq!(k.invoker.as_ref().map(|i| i.comm.as_str()), Some("hog"));
}

#[test]
fn the_global_kill_our_linux_guest_printed() {
    let (ev, _) = captured("oom-kill-global.log");
    let kills: Vec<&OomKill> = ev
        .iter()
        .filter_map(|e| match e {
            OomEvent::Kill(k) => Some(&**k),
            _ => None,
        })
        .collect();
    assert_eq!(kills.len(), 1, "{ev:#?}");
    let k = kills[0];
    assert_eq!((k.pid, k.comm.as_str()), (16, "hog"));
    assert_eq!(k.reason, "Out of memory");
    assert_eq!(k.constraint.as_deref(), Some("CONSTRAINT_NONE"));
    assert!(k.global_oom);
    assert_eq!(k.anon_rss_kb, Some(37492));
    // The reaper's line follows in this capture.
    assert!(
        ev.iter()
            .any(|e| matches!(e, OomEvent::Reaped(r) if r.pid == 16)),
        "{ev:#?}"
    );
}
