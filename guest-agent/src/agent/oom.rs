//! The kernel's OOM lines (Linux 6.12 `mm/oom_kill.c`, `mm/memcontrol.c`)
//! and their merge into one report per kill.
//!
//! What the kernel prints for one kill, in order (everything before the
//! `Killed process` line is rate-limited and may be missing):
//!
//! ```text
//! stress invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0   dump_header
//! CPU: 0 UID: 0 PID: 95 Comm: stress Not tainted 6.12.117 #1                           dump_stack
//! …stack, Mem-Info…
//! memory: usage 8192kB, limit 8192kB, failcnt 52                                       memcg OOM only
//! …Tasks state…
//! oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/t,task_memcg=/t,task=stress,pid=95,uid=0
//! Memory cgroup out of memory: Killed process 95 (stress) total-vm:9000kB, anon-rss:7800kB, file-rss:400kB, shmem-rss:0kB, UID:0 pgtables:56kB oom_score_adj:0
//! Tasks in /t are going to be killed due to memory.oom.group set                      memory.oom.group only
//! …more Killed process lines (group members)…
//! oom_reaper: reaped process 95 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB   ≥ 2 s later, or never
//! ```
//!
//! The `oom-kill:` and `Tasks in` lines are built with `pr_cont`; when
//! printk cannot merge the fragments they arrive as separate records
//! flagged `c`, which are joined here before parsing.

use std::collections::VecDeque;

use crate::protocol::{Invoker, OomKill, OomNoVictim, OomReaped, MAX_PATH};

use super::kmsg::{Record, FACILITY_KERNEL};

/// `<comm> invoked oom-killer: gfp_mask=%#x(%pGg), order=%d, oom_score_adj=%hd`
pub fn parse_invoked(text: &str) -> Option<Invoker> {
    const KEY: &str = " invoked oom-killer: ";
    let at = text.rfind(KEY)?;
    let comm = &text[..at];
    let rest = text[at + KEY.len()..].strip_prefix("gfp_mask=")?;
    let (gfp_mask, gfp_flags, rest) = match rest.find('(') {
        Some(open) if open < rest.find(',').unwrap_or(usize::MAX) => {
            let close = rest.rfind("), order=").or_else(|| rest.rfind(')'))?;
            if close < open {
                return None;
            }
            (&rest[..open], &rest[open + 1..close], &rest[close + 1..])
        }
        _ => {
            let comma = rest.find(',').unwrap_or(rest.len());
            (&rest[..comma], "", &rest[comma..])
        }
    };
    let mut inv = Invoker {
        comm: clip(comm, 64),
        pid: None,
        gfp_mask: clip(gfp_mask, 32),
        gfp_flags: clip(gfp_flags, 256),
        order: 0,
        oom_score_adj: 0,
    };
    let mut seen_order = false;
    for tok in rest.split(',') {
        let tok = tok.trim();
        if let Some(v) = tok.strip_prefix("order=") {
            inv.order = v.parse().ok()?;
            seen_order = true;
        } else if let Some(v) = tok.strip_prefix("oom_score_adj=") {
            inv.oom_score_adj = v.parse().ok()?;
        }
    }
    seen_order.then_some(inv)
}

/// The first line of `dump_stack()`: `CPU: 0 UID: 0 PID: 95 Comm: stress …`
/// (before 6.10 without `UID:`). Returns the pid and the text from the
/// comm on (the comm is `%.20s` and may hold spaces, so the caller matches
/// it against a comm it already knows).
pub fn parse_stack_head(text: &str) -> Option<(i32, &str)> {
    let rest = text.strip_prefix("CPU: ")?;
    let at = rest.find(" PID: ")?;
    let rest = &rest[at + " PID: ".len()..];
    let (pid, rest) = rest.split_once(" Comm: ")?;
    Some((pid.parse().ok()?, rest))
}

/// `memory: usage %llukB, limit %llukB, failcnt %lu` (memcg OOMs).
pub fn parse_memcg_usage(text: &str) -> Option<(u64, u64, u64)> {
    let rest = text.strip_prefix("memory: usage ")?;
    let (usage, rest) = rest.split_once("kB, limit ")?;
    let (limit, failcnt) = rest.split_once("kB, failcnt ")?;
    Some((
        usage.parse().ok()?,
        limit.parse().ok()?,
        failcnt.trim().parse().ok()?,
    ))
}

/// The `oom-kill:` summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Context {
    pub constraint: Option<String>,
    pub nodemask: Option<String>,
    pub cpuset: Option<String>,
    pub mems_allowed: Option<String>,
    pub global_oom: bool,
    pub oom_memcg: Option<String>,
    pub task_memcg: Option<String>,
    pub task: Option<String>,
    pub pid: Option<i32>,
    pub uid: Option<u32>,
}

/// `oom-kill:constraint=%s,nodemask=%*pbl,cpuset=%s,mems_allowed=%*pbl`
/// then `,oom_memcg=<path>` or `,global_oom`, then `,task_memcg=<path>`
/// and `,task=%s,pid=%d,uid=%d`. Node lists contain commas (`0-1,3`), so
/// values run up to the next known key, not the next comma; the fields of
/// the victim at the end are found from the right, since cgroup paths may
/// hold anything.
pub fn parse_context(text: &str) -> Option<Context> {
    let body = text.strip_prefix("oom-kill:")?;
    let mut c = Context::default();
    let mut head = body;
    if let Some(i) = head.rfind(",task=") {
        let tail = &head[i + ",task=".len()..];
        head = &head[..i];
        match tail.rfind(",pid=") {
            Some(j) => {
                c.task = Some(clip(&tail[..j], 64));
                let pu = &tail[j + ",pid=".len()..];
                match pu.split_once(",uid=") {
                    Some((p, u)) => {
                        c.pid = p.parse().ok();
                        c.uid = u.trim().parse().ok();
                    }
                    None => c.pid = pu.trim().parse().ok(),
                }
            }
            None => c.task = Some(clip(tail, 64)),
        }
    }
    if let Some(i) = head.rfind(",task_memcg=") {
        c.task_memcg = Some(clip(&head[i + ",task_memcg=".len()..], MAX_PATH));
        head = &head[..i];
    }
    if let Some(i) = head.rfind(",oom_memcg=") {
        c.oom_memcg = Some(clip(&head[i + ",oom_memcg=".len()..], MAX_PATH));
        head = &head[..i];
    } else if let Some(h) = head.strip_suffix(",global_oom") {
        c.global_oom = true;
        head = h;
    }
    // What is left: constraint=…,nodemask=…,cpuset=…,mems_allowed=…
    const KEYS: [&str; 4] = ["constraint=", ",nodemask=", ",cpuset=", ",mems_allowed="];
    let mut found: Vec<(usize, usize)> = Vec::with_capacity(4);
    let mut from = 0;
    for (k, key) in KEYS.iter().enumerate() {
        if let Some(i) = head[from..].find(key) {
            found.push((k, from + i));
            from += i + key.len();
        }
    }
    for (n, &(k, at)) in found.iter().enumerate() {
        let start = at + KEYS[k].len();
        let end = found.get(n + 1).map_or(head.len(), |&(_, next)| next);
        let value = Some(clip(&head[start..end], MAX_PATH));
        match k {
            0 => c.constraint = value,
            1 => c.nodemask = value,
            2 => c.cpuset = value,
            _ => c.mems_allowed = value,
        }
    }
    Some(c)
}

/// `<reason>: Killed process %d (%s) total-vm:%lukB, anon-rss:%lukB,
/// file-rss:%lukB, shmem-rss:%lukB, UID:%u pgtables:%lukB oom_score_adj:%hd`.
/// Older kernels print fewer counters (and `Killed process` without a
/// reason before 4.x); every counter is looked up by name.
pub fn parse_killed(text: &str) -> Option<OomKill> {
    const KEY: &str = "Killed process ";
    let (reason, rest) = if let Some(rest) = text.strip_prefix(KEY) {
        ("", rest)
    } else {
        let at = text.find(": Killed process ")?;
        (&text[..at], &text[at + 2 + KEY.len()..])
    };
    let (pid, rest) = rest.split_once(" (")?;
    let close = rest.rfind(") total-vm:").or_else(|| rest.rfind(')'))?;
    let mut k = OomKill {
        reason: clip(reason, 64),
        pid: pid.parse().ok()?,
        comm: clip(&rest[..close], 64),
        ..Default::default()
    };
    for tok in rest[close + 1..].split([' ', ',']) {
        let Some((key, v)) = tok.split_once(':') else {
            continue;
        };
        let kb = || v.strip_suffix("kB").and_then(|n| n.parse::<u64>().ok());
        match key {
            "total-vm" => k.total_vm_kb = kb(),
            "anon-rss" => k.anon_rss_kb = kb(),
            "file-rss" => k.file_rss_kb = kb(),
            "shmem-rss" => k.shmem_rss_kb = kb(),
            "pgtables" => k.pgtables_kb = kb(),
            "UID" => k.uid = v.parse().ok(),
            "oom_score_adj" => k.oom_score_adj = v.parse().ok(),
            _ => {}
        }
    }
    Some(k)
}

/// `oom_reaper: reaped process %d (%s), now anon-rss:%lukB, file-rss:%lukB,
/// shmem-rss:%lukB` or `oom_reaper: unable to reap pid:%d (%s)`.
pub fn parse_reaper(text: &str) -> Option<OomReaped> {
    if let Some(rest) = text.strip_prefix("oom_reaper: reaped process ") {
        let (pid, rest) = rest.split_once(" (")?;
        let close = rest.rfind("), now ").or_else(|| rest.rfind(')'))?;
        let mut r = OomReaped {
            pid: pid.parse().ok()?,
            comm: clip(&rest[..close], 64),
            reaped: true,
            ..Default::default()
        };
        for tok in rest[close + 1..].split([' ', ',']) {
            let Some((key, v)) = tok.split_once(':') else {
                continue;
            };
            let kb = v.strip_suffix("kB").and_then(|n| n.parse::<u64>().ok());
            match key {
                "anon-rss" => r.anon_rss_kb = kb,
                "file-rss" => r.file_rss_kb = kb,
                "shmem-rss" => r.shmem_rss_kb = kb,
                _ => {}
            }
        }
        return Some(r);
    }
    let rest = text.strip_prefix("oom_reaper: unable to reap pid:")?;
    let (pid, rest) = rest.split_once(" (")?;
    let comm = rest.strip_suffix(')').unwrap_or(rest);
    Some(OomReaped {
        pid: pid.parse().ok()?,
        comm: clip(comm, 64),
        reaped: false,
        ..Default::default()
    })
}

/// `Tasks in <cgroup> are going to be killed due to memory.oom.group set`
pub fn parse_group(text: &str) -> Option<&str> {
    text.strip_prefix("Tasks in ")?
        .strip_suffix(" are going to be killed due to memory.oom.group set")
}

/// What [`OomTracker`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OomEvent {
    Kill(Box<OomKill>),
    Reaped(OomReaped),
    NoVictim(OomNoVictim),
}

/// One OOM invocation's lines before its kill(s).
#[derive(Debug, Default)]
struct Episode {
    invoker: Option<Invoker>,
    memcg: Option<(u64, u64, u64)>,
    context: Option<Context>,
    group: Option<String>,
    kills: u32,
}

/// A line built from `pr_cont` fragments, parsed once it is complete (at
/// the next record that is not a continuation).
#[derive(Debug)]
struct Pending {
    text: String,
    caller: Option<String>,
}

/// Longest line assembled from continuation fragments.
pub const MAX_PENDING: usize = 4 * MAX_PATH;

/// Merges the kernel's OOM lines into [`OomEvent`]s.
#[derive(Debug, Default)]
pub struct OomTracker {
    episode: Option<Episode>,
    pending: Option<Pending>,
    /// (pid, agent seq of its kill report), newest last.
    recent_kills: VecDeque<(i32, Option<u64>)>,
    /// `Killed process` lines seen.
    pub kills_logged: u64,
}

impl OomTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes and entries held between records (bounded: the pending
    /// continuation line by [`MAX_PENDING`], the recent kills by 32).
    pub fn held(&self) -> (usize, usize) {
        (
            self.pending.as_ref().map_or(0, |p| p.text.len()),
            self.recent_kills.len(),
        )
    }

    /// Tells the tracker which agent seq the kill of `pid` was sent as, so
    /// that the reaper's report can point at it.
    pub fn kill_sent(&mut self, pid: i32, seq: u64) {
        if let Some(k) = self.recent_kills.iter_mut().rev().find(|k| k.0 == pid) {
            k.1 = Some(seq);
        }
    }

    /// Takes one kernel log record.
    pub fn record(&mut self, rec: &Record<'_>, out: &mut dyn FnMut(OomEvent)) {
        if rec.facility != FACILITY_KERNEL {
            return;
        }
        if rec.cont {
            if let Some(p) = &mut self.pending {
                let same = match (&p.caller, rec.caller) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
                if same && p.text.len() + rec.text.len() <= MAX_PENDING {
                    p.text.push_str(&rec.text);
                }
            }
            return;
        }
        // A record that is not a continuation completes the pending line.
        self.flush_pending();
        let text: &str = &rec.text;
        if text.starts_with("oom-kill:") || text.starts_with("Tasks in ") {
            self.pending = Some(Pending {
                text: clip(text, MAX_PENDING),
                caller: rec.caller.map(str::to_owned),
            });
            return;
        }
        if let Some(inv) = parse_invoked(text) {
            self.episode = Some(Episode {
                invoker: Some(inv),
                ..Default::default()
            });
            return;
        }
        if let Some(mut kill) = parse_killed(text) {
            self.kills_logged += 1;
            kill.kmsg_seq = rec.seq;
            kill.ts_us = rec.ts_us;
            self.merge(&mut kill);
            if self.recent_kills.len() >= 32 {
                self.recent_kills.pop_front();
            }
            self.recent_kills.push_back((kill.pid, None));
            out(OomEvent::Kill(Box::new(kill)));
            return;
        }
        if let Some(mut r) = parse_reaper(text) {
            r.kmsg_seq = rec.seq;
            r.ts_us = rec.ts_us;
            r.kill_seq = self
                .recent_kills
                .iter()
                .rev()
                .find(|k| k.0 == r.pid)
                .and_then(|k| k.1);
            out(OomEvent::Reaped(r));
            return;
        }
        if text.starts_with("Out of memory and no killable processes") {
            let invoker = self.episode.take().and_then(|e| e.invoker);
            out(OomEvent::NoVictim(OomNoVictim {
                kmsg_seq: rec.seq,
                ts_us: rec.ts_us,
                invoker,
            }));
            return;
        }
        let Some(ep) = &mut self.episode else {
            return;
        };
        if ep.kills > 0 {
            // After the kill(s) of an invocation, anything but more kills
            // of its group ends it: a later kill whose header was
            // rate-limited must not inherit this context.
            self.episode = None;
            return;
        }
        if let Some((pid, comm)) = parse_stack_head(text) {
            if let Some(inv) = &mut ep.invoker {
                if inv.pid.is_none() && comm.starts_with(inv.comm.as_str()) {
                    inv.pid = Some(pid);
                }
            }
        } else if let Some(m) = parse_memcg_usage(text) {
            ep.memcg.get_or_insert(m);
        }
    }

    fn flush_pending(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if let Some(ctx) = parse_context(&p.text) {
            let ep = self.episode.get_or_insert_with(Episode::default);
            ep.context = Some(ctx);
        } else if let Some(group) = parse_group(&p.text) {
            if let Some(ep) = &mut self.episode {
                ep.group = Some(clip(group, MAX_PATH));
            }
        }
    }

    fn merge(&mut self, kill: &mut OomKill) {
        let Some(ep) = &mut self.episode else {
            return;
        };
        // The first kill of an invocation gets its context; further kills
        // only when they are members of a memory.oom.group kill.
        if ep.kills > 0 && ep.group.is_none() {
            self.episode = None;
            return;
        }
        ep.kills += 1;
        kill.invoker = ep.invoker.clone();
        if let Some((usage, limit, failcnt)) = ep.memcg {
            kill.memcg_usage_kb = Some(usage);
            kill.memcg_limit_kb = Some(limit);
            kill.memcg_failcnt = Some(failcnt);
        }
        kill.oom_group = ep.group.clone();
        if let Some(c) = &ep.context {
            kill.constraint = c.constraint.clone();
            kill.nodemask = c.nodemask.clone();
            kill.cpuset = c.cpuset.clone();
            kill.mems_allowed = c.mems_allowed.clone();
            kill.global_oom = c.global_oom;
            kill.oom_memcg = c.oom_memcg.clone();
            // The victim's own fields only where the summary line named
            // this very task (a group member is another task).
            if c.pid == Some(kill.pid) {
                kill.task_memcg = c.task_memcg.clone();
                if kill.uid.is_none() {
                    kill.uid = c.uid;
                }
            }
        }
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    s[..cut].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::kmsg::KmsgReader;

    // Lines in the exact formats of Linux 6.12.117 mm/oom_kill.c and
    // mm/memcontrol.c (see tests/data/ for whole logs).
    const INVOKED: &str =
        "stress invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0, oom_score_adj=0";
    const CONTEXT_MEMCG: &str = "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/oomtest,task_memcg=/oomtest,task=stress,pid=95,uid=0";
    const KILLED_MEMCG: &str = "Memory cgroup out of memory: Killed process 95 (stress) total-vm:9000kB, anon-rss:7800kB, file-rss:400kB, shmem-rss:0kB, UID:0 pgtables:56kB oom_score_adj:0";

    #[test]
    fn invoked_line() {
        let i = parse_invoked(INVOKED).unwrap();
        assert_eq!(i.comm, "stress");
        assert_eq!(i.gfp_mask, "0xcc0");
        assert_eq!(i.gfp_flags, "GFP_KERNEL");
        assert_eq!((i.order, i.oom_score_adj), (0, 0));
        let i = parse_invoked(
            "my prog invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO), order=2, oom_score_adj=-500",
        )
        .unwrap();
        assert_eq!(i.comm, "my prog");
        assert_eq!(i.gfp_flags, "GFP_HIGHUSER_MOVABLE|__GFP_COMP|__GFP_ZERO");
        assert_eq!((i.order, i.oom_score_adj), (2, -500));
        // A page fault OOM (pagefault_out_of_memory): the kernel's %#x
        // prints 0 as "0x0" and %pGg prints no flag names.
        let i = parse_invoked("a invoked oom-killer: gfp_mask=0x0(), order=0, oom_score_adj=0")
            .unwrap();
        assert_eq!((i.gfp_mask.as_str(), i.gfp_flags.as_str()), ("0x0", ""));
        assert!(parse_invoked("a invoked oom-killer: gfp_mask=0x1(X), order=x").is_none());
        assert!(parse_invoked("nothing here").is_none());
    }

    #[test]
    fn stack_head() {
        assert_eq!(
            parse_stack_head("CPU: 0 UID: 0 PID: 95 Comm: stress Not tainted 6.12.117 #1"),
            Some((95, "stress Not tainted 6.12.117 #1"))
        );
        assert_eq!(
            parse_stack_head("CPU: 1 PID: 7 Comm: a b Tainted: G W 6.1.0 #1"),
            Some((7, "a b Tainted: G W 6.1.0 #1"))
        );
    }

    #[test]
    fn memcg_usage_line() {
        assert_eq!(
            parse_memcg_usage("memory: usage 8192kB, limit 8192kB, failcnt 52"),
            Some((8192, 8192, 52))
        );
        assert_eq!(
            parse_memcg_usage("memory+swap: usage 8192kB, limit 9007199254740988kB, failcnt 0"),
            None
        );
    }

    #[test]
    fn context_memcg_and_global() {
        let c = parse_context(CONTEXT_MEMCG).unwrap();
        assert_eq!(c.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
        assert_eq!(c.nodemask.as_deref(), Some("(null)"));
        assert_eq!(c.cpuset.as_deref(), Some("/"));
        assert_eq!(c.mems_allowed.as_deref(), Some("0"));
        assert_eq!(c.oom_memcg.as_deref(), Some("/oomtest"));
        assert_eq!(c.task_memcg.as_deref(), Some("/oomtest"));
        assert_eq!(
            (c.task.as_deref(), c.pid, c.uid),
            (Some("stress"), Some(95), Some(0))
        );
        assert!(!c.global_oom);
        let c = parse_context(
            "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0-1,3,global_oom,task_memcg=/user.slice/a,b,task=x,y,pid=1234,uid=1000",
        )
        .unwrap();
        assert!(c.global_oom);
        assert_eq!(c.oom_memcg, None);
        assert_eq!(c.mems_allowed.as_deref(), Some("0-1,3"));
        assert_eq!(c.task_memcg.as_deref(), Some("/user.slice/a,b"));
        assert_eq!(
            (c.task.as_deref(), c.pid, c.uid),
            (Some("x,y"), Some(1234), Some(1000))
        );
        // Cpuset constraint with a node list.
        let c = parse_context(
            "oom-kill:constraint=CONSTRAINT_CPUSET,nodemask=0-1,cpuset=job1,mems_allowed=1,global_oom,task_memcg=/,task=j,pid=5,uid=0",
        )
        .unwrap();
        assert_eq!(c.nodemask.as_deref(), Some("0-1"));
        assert_eq!(c.cpuset.as_deref(), Some("job1"));
    }

    #[test]
    fn killed_lines_all_prefixes() {
        let k = parse_killed(KILLED_MEMCG).unwrap();
        assert_eq!(k.reason, "Memory cgroup out of memory");
        assert_eq!((k.pid, k.comm.as_str(), k.uid), (95, "stress", Some(0)));
        assert_eq!(k.total_vm_kb, Some(9000));
        assert_eq!(k.anon_rss_kb, Some(7800));
        assert_eq!(k.file_rss_kb, Some(400));
        assert_eq!(k.shmem_rss_kb, Some(0));
        assert_eq!(k.pgtables_kb, Some(56));
        assert_eq!(k.oom_score_adj, Some(0));
        let k = parse_killed("Out of memory (oom_kill_allocating_task): Killed process 7 (a (b) c) total-vm:1kB, anon-rss:2kB, file-rss:3kB, shmem-rss:4kB, UID:1000 pgtables:5kB oom_score_adj:-17").unwrap();
        assert_eq!(k.reason, "Out of memory (oom_kill_allocating_task)");
        assert_eq!(k.comm, "a (b) c");
        assert_eq!((k.uid, k.oom_score_adj), (Some(1000), Some(-17)));
        // Linux 4.x: no reason, fewer counters.
        let k = parse_killed(
            "Killed process 3 (x) total-vm:10kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB",
        )
        .unwrap();
        assert_eq!((k.reason.as_str(), k.pid, k.pgtables_kb), ("", 3, None));
        assert!(
            parse_killed("Out of memory: Kill process 3 (x) score 1 or sacrifice child").is_none()
        );
    }

    #[test]
    fn reaper_lines() {
        let r = parse_reaper(
            "oom_reaper: reaped process 95 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
        )
        .unwrap();
        assert_eq!((r.pid, r.comm.as_str(), r.reaped), (95, "stress", true));
        assert_eq!(r.anon_rss_kb, Some(0));
        let r = parse_reaper("oom_reaper: unable to reap pid:95 (stress)").unwrap();
        assert_eq!((r.pid, r.reaped), (95, false));
    }

    fn run(lines: &[&str]) -> (Vec<OomEvent>, OomTracker) {
        let mut t = OomTracker::new();
        let mut r = KmsgReader::new();
        let mut out = Vec::new();
        let mut log = String::new();
        for l in lines {
            log.push_str(l);
            log.push('\n');
        }
        r.feed(
            log.as_bytes(),
            &mut |rec| t.record(rec, &mut |e| out.push(e)),
            &mut |_| {},
        );
        (out, t)
    }

    #[test]
    fn merges_one_memcg_kill() {
        let (ev, t) = run(&[
            &format!("4,0,100,-;{INVOKED}"),
            "4,1,101,-;CPU: 0 UID: 0 PID: 95 Comm: stress Not tainted 6.12.117 #1",
            "6,2,102,-;memory: usage 8192kB, limit 8192kB, failcnt 52",
            "6,3,103,-;Tasks state (memory values in pages):",
            &format!("6,4,104,-;{CONTEXT_MEMCG}"),
            &format!("3,5,105,-;{KILLED_MEMCG}"),
            "6,6,2200000,-;oom_reaper: reaped process 95 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB",
        ]);
        assert_eq!(ev.len(), 2);
        let OomEvent::Kill(k) = &ev[0] else { panic!() };
        assert_eq!((k.kmsg_seq, k.ts_us), (5, 105));
        assert_eq!(k.constraint.as_deref(), Some("CONSTRAINT_MEMCG"));
        assert_eq!(k.oom_memcg.as_deref(), Some("/oomtest"));
        assert_eq!(k.task_memcg.as_deref(), Some("/oomtest"));
        assert_eq!(k.memcg_limit_kb, Some(8192));
        let inv = k.invoker.as_ref().unwrap();
        assert_eq!((inv.comm.as_str(), inv.pid), ("stress", Some(95)));
        let OomEvent::Reaped(r) = &ev[1] else {
            panic!()
        };
        assert!(r.reaped);
        assert_eq!(t.kills_logged, 1);
    }

    #[test]
    fn split_context_fragments_are_joined() {
        let (ev, _) = run(&[
            &format!("4,0,100,-;{INVOKED}"),
            "6,1,104,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=",
            "6,2,104,c;/",
            "6,3,104,c;,mems_allowed=0,oom_memcg=",
            "6,4,104,c;/oomtest",
            "6,5,104,c;,task_memcg=",
            "6,6,104,c;/oomtest/leaf",
            "6,7,104,c;,task=stress,pid=95,uid=0",
            &format!("3,8,105,-;{KILLED_MEMCG}"),
        ]);
        let OomEvent::Kill(k) = &ev[0] else { panic!() };
        assert_eq!(k.cpuset.as_deref(), Some("/"));
        assert_eq!(k.oom_memcg.as_deref(), Some("/oomtest"));
        assert_eq!(k.task_memcg.as_deref(), Some("/oomtest/leaf"));
    }

    #[test]
    fn rate_limited_kill_does_not_inherit_an_old_context() {
        let (ev, _) = run(&[
            &format!("4,0,100,-;{INVOKED}"),
            &format!("6,1,104,-;{CONTEXT_MEMCG}"),
            &format!("3,2,105,-;{KILLED_MEMCG}"),
            "6,3,200,-;some unrelated line",
            "3,4,300,-;Out of memory: Killed process 96 (other) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
        ]);
        let OomEvent::Kill(k) = &ev[1] else { panic!() };
        assert_eq!(k.pid, 96);
        assert_eq!(k.constraint, None);
        assert_eq!(k.invoker, None);
        // Also without a line in between.
        let (ev, _) = run(&[
            &format!("4,0,100,-;{INVOKED}"),
            &format!("6,1,104,-;{CONTEXT_MEMCG}"),
            &format!("3,2,105,-;{KILLED_MEMCG}"),
            "3,3,300,-;Out of memory: Killed process 96 (other) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:4kB oom_score_adj:0",
        ]);
        let OomEvent::Kill(k) = &ev[1] else { panic!() };
        assert_eq!(k.invoker, None);
    }

    #[test]
    fn group_kill_members_share_the_context() {
        let (ev, t) = run(&[
            &format!("4,0,100,-;{INVOKED}"),
            &format!("6,1,104,-;{CONTEXT_MEMCG}"),
            &format!("3,2,105,-;{KILLED_MEMCG}"),
            "6,3,106,-;Tasks in /oomtest are going to be killed due to memory.oom.group set",
            "3,4,107,-;Memory cgroup out of memory: Killed process 97 (worker) total-vm:100kB, anon-rss:50kB, file-rss:0kB, shmem-rss:0kB, UID:0 pgtables:8kB oom_score_adj:0",
        ]);
        assert_eq!(ev.len(), 2);
        let OomEvent::Kill(k) = &ev[1] else { panic!() };
        assert_eq!(k.oom_group.as_deref(), Some("/oomtest"));
        assert_eq!(k.oom_memcg.as_deref(), Some("/oomtest"));
        assert_eq!(k.task_memcg, None, "the summary line named pid 95, not 97");
        assert_eq!(t.kills_logged, 2);
    }

    #[test]
    fn forged_user_space_lines_are_ignored() {
        // facility 1 (LOG_USER): what `echo … > /dev/kmsg` produces.
        let (ev, t) = run(&[&format!("11,0,100,-;{KILLED_MEMCG}")]);
        assert!(ev.is_empty());
        assert_eq!(t.kills_logged, 0);
    }

    #[test]
    fn reaper_points_at_the_kill_report() {
        let mut t = OomTracker::new();
        let mut out = Vec::new();
        let mut r = KmsgReader::new();
        r.feed(
            format!("3,0,1,-;{KILLED_MEMCG}\n").as_bytes(),
            &mut |rec| t.record(rec, &mut |e| out.push(e)),
            &mut |_| {},
        );
        t.kill_sent(95, 41);
        r.feed(
            b"6,1,2,-;oom_reaper: reaped process 95 (stress), now anon-rss:0kB, file-rss:0kB, shmem-rss:0kB\n",
            &mut |rec| t.record(rec, &mut |e| out.push(e)),
            &mut |_| {},
        );
        let OomEvent::Reaped(r) = &out[1] else {
            panic!()
        };
        assert_eq!(r.kill_seq, Some(41));
    }

    #[test]
    fn no_victim() {
        let (ev, _) = run(&[
            &format!("4,0,100,-;{INVOKED}"),
            "4,1,101,-;Out of memory and no killable processes...",
        ]);
        let OomEvent::NoVictim(n) = &ev[0] else {
            panic!()
        };
        assert_eq!(n.invoker.as_ref().unwrap().comm, "stress");
    }
}
