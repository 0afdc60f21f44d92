//! Issue 9 §4: swap, which the README promises to track ("per-guest RSS
//! and swap") and which no test had ever exercised, as these machines have
//! none. Each test here adds a small swap file for as long as it runs (a
//! real `swapon`, root only), pushes a VM's guest memory into it through
//! the memory cgroup of a daemon's memcg pool (cgroup v1: the pool's
//! `memory.limit_in_bytes` under what the guest touches, swap allowed),
//! and checks what an operator reads: `swap_bytes` in `GET /vms`,
//! `vmm_vm_swap_bytes` in `/metrics`, badness counting swap pages as the
//! kernel's `oom_score` does, `totalpages` = RAM + swap, and the host
//! domain's swap rule (earlyoom's: short only when free swap is short
//! too). The swap file is turned off and deleted whatever the outcome
//! ([`Swap`]'s `Drop`), after the VMs whose pages it holds are gone.
//!
//! The tests share one swap file and run one at a time. A host where
//! swap cannot be added (not root, no cgroup v1 memory controller, a
//! filesystem that cannot hold swap) fails them with the reason.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use vmm_integration_tests::daemon::{events_of, Daemon};
use vmm_integration_tests::{api, poll_until, require_kvm};

const MIB: u64 = 1 << 20;
/// The swap file's size: room for what the tests push out, small enough
/// to leave the shared machine's disk alone.
const SWAP_BYTES: u64 = 192 * MIB;
/// The memcg pool's limit, well under what its guest touches.
const POOL_LIMIT: u64 = 48 * MIB;

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// `/proc/meminfo` field in bytes.
fn meminfo(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/meminfo"))
        * 1024
}

/// `/proc/<pid>/status` field in bytes.
fn status_field(pid: u64, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        * 1024
}

fn status_of(pid: u64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap()
}

/// Runs a command; its error output on failure.
fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The swap files of this file's tests: `/var/tmp` is on the root
/// filesystem here (ext4); `/tmp` may be a tmpfs, which cannot hold swap.
fn swap_path(pid: u32) -> PathBuf {
    PathBuf::from(format!("/var/tmp/swap-vmm-test-{pid}.swap"))
}

/// A swap file in use for as long as this lives; `swapoff` and deleted on
/// drop, whatever the test's outcome. Holding it holds the lock that runs
/// this file's tests one at a time.
struct Swap {
    path: PathBuf,
    _serial: MutexGuard<'static, ()>,
}

static SERIAL: Mutex<()> = Mutex::new(());

impl Swap {
    /// Adds the swap file, after turning off and deleting any that an
    /// earlier run of these tests left behind (killed before its `Drop`).
    fn on() -> Swap {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        remove_stale_swap_files();
        let path = swap_path(std::process::id());
        let swap = Swap {
            path: path.clone(),
            _serial: serial,
        };
        let p = path.to_str().unwrap();
        let size = SWAP_BYTES.to_string();
        if let Err(e) = run("fallocate", &["-l", &size, p])
            .and_then(|()| run("chmod", &["600", p]))
            .and_then(|()| run("mkswap", &[p]))
            .and_then(|()| run("swapon", &[p]))
        {
            panic!(
                "cannot add a {} MiB swap file at {p} (root, and a filesystem that can hold \
                 swap, such as ext4, are needed): {e}",
                SWAP_BYTES >> 20
            );
        }
        assert!(
            std::fs::read_to_string("/proc/swaps").unwrap().contains(p),
            "{p} is not in /proc/swaps after swapon"
        );
        swap
    }

    /// Bytes of our swap file in use, from `/proc/swaps`.
    fn used(&self) -> u64 {
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap();
        swaps
            .lines()
            .find(|l| l.starts_with(self.path.to_str().unwrap()))
            .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok())
            .expect("our swap file is in /proc/swaps")
            * 1024
    }
}

/// `swapoff` (retried: it fails with ENOMEM while a memory cgroup that
/// has pages in the file is at its limit) and delete.
fn swap_off_and_remove(path: &Path) -> Result<(), String> {
    let p = path.to_str().unwrap();
    let active = || {
        std::fs::read_to_string("/proc/swaps")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(p))
    };
    let mut last = Ok(());
    let off = poll_until(Duration::from_secs(60), || {
        if !active() {
            return Some(());
        }
        last = run("swapoff", &[p]);
        if last.is_err() {
            std::thread::sleep(Duration::from_millis(500));
        }
        (!active()).then_some(())
    });
    if off.is_none() {
        return Err(format!("{p} is still in use as swap: {last:?}"));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {p}: {e}")),
        _ => Ok(()),
    }
}

/// Swap files of runs whose process is gone.
fn remove_stale_swap_files() {
    let Ok(dir) = std::fs::read_dir("/var/tmp") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("swap-vmm-test-")
            .and_then(|n| n.strip_suffix(".swap"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            if let Err(e) = swap_off_and_remove(&entry.path()) {
                eprintln!("a stale swap file stays: {e}");
            }
        }
    }
}

impl Drop for Swap {
    fn drop(&mut self) {
        if let Err(e) = swap_off_and_remove(&self.path) {
            // Not a panic in a drop (it may run while unwinding): said
            // loudly, and the next run removes it.
            eprintln!("SWAP FILE LEFT BEHIND: {e}");
        }
    }
}

/// This process's memory cgroup when the memory controller is a cgroup v1
/// hierarchy here (the daemon, our child, creates its pools below it).
fn own_memcg_v1() -> PathBuf {
    use vmm::host::cgroup::{CgroupVersion, MemoryHierarchy};
    let own = MemoryHierarchy::of_self().expect("no memory cgroup for this process");
    assert_eq!(
        own.version(),
        CgroupVersion::V1,
        "these tests push guest memory into swap through a cgroup v1 memory limit"
    );
    own.own().to_path_buf()
}

/// On drop, kills by pid whatever is left in the cgroup `dir` and removes
/// it: nothing stays behind even if the daemon died first. Dropped before
/// the [`Swap`], so that the pages it holds are freed, not swapped in.
struct CgroupGuard(PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        let _ = poll_until(Duration::from_secs(10), || {
            let procs = std::fs::read_to_string(self.0.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) of a pid read from the pool cgroup, which
                // only this test's daemon puts its VMs in.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            match std::fs::remove_dir(&self.0) {
                Ok(()) => Some(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(()),
                Err(_) => None,
            }
        });
    }
}

/// A daemon with one memcg pool of [`POOL_LIMIT`] and the `policy` knobs
/// given (JSON fields, or none), and the guard of the pool's cgroup. The
/// pool's name holds "swaptest".
fn daemon_with_pool(name: &str, policy: &str) -> (Daemon, CgroupGuard, String) {
    require_kvm();
    let own = own_memcg_v1();
    let pool = format!("swaptest{}", std::process::id());
    let dir = own.join(format!("vmm-{pool}"));
    let guard = CgroupGuard(dir.clone());
    let d = Daemon::start_with_config(
        name,
        Some(&format!(
            r#"{{"memcg_pools": {{"{pool}": {POOL_LIMIT}}}{}}}"#,
            if policy.is_empty() {
                String::new()
            } else {
                format!(r#", "policy": {{{policy}}}"#)
            }
        )),
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    assert_eq!(read("memory.limit_in_bytes").trim(), POOL_LIMIT.to_string());
    // Swap allowed: no memory+swap limit, and the pool may swap.
    assert_eq!(
        read("memory.memsw.limit_in_bytes").trim(),
        "9223372036854771712"
    );
    assert_ne!(read("memory.swappiness").trim(), "0");
    (d, guard, pool)
}

/// Creates VM `id` in `pool` touching `touch_mib` of its `mem_mib`, and
/// waits until the guest has touched and verified it all.
fn swapping_vm(d: &Daemon, id: &str, pool: &str, mem_mib: u64, touch_mib: u64) -> Value {
    d.create(&format!(
        r#"{{"id": "{id}", "pool": "{pool}", "mem_mib": {mem_mib}, "cmdline": "tiny.touch={touch_mib}M tiny.hold=forever"}}"#
    ));
    let needle = format!("touched {touch_mib} MiB");
    let vm_dir = d.state.join("vms").join(id);
    let read = |f: &str| std::fs::read_to_string(vm_dir.join(f)).unwrap_or_default();
    poll_until(Duration::from_secs(60), || {
        read("console.log").contains(&needle).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{id} never printed {needle:?}: {}\nconsole: {}\nvmm.log: {}\nevents: {}",
            d.vm(id),
            read("console.log"),
            read("vmm.log"),
            events(d)
        )
    });
    d.vm(id)
}

fn events(d: &Daemon) -> Value {
    d.call("GET", "/events?since=0", None).1
}

/// A guest touches twice what its memcg pool may hold: the kernel swaps
/// the rest out rather than failing (swap allowed), the VM keeps running,
/// and the operator sees it: `swap_bytes` in `GET /vms` (with RSS, what
/// the guest touched), the same in `/metrics`, the kernel's own `VmSwap`.
#[test]
fn a_vm_over_its_pool_limit_swaps_and_the_operator_sees_it() {
    let swap = Swap::on();
    let (d, _cgroup, pool) = daemon_with_pool("swap-seen", "");
    let touched = 96;
    let vm = swapping_vm(&d, "swapper", &pool, 128, touched);
    let pid = vm["pid"].as_u64().unwrap();
    // Swapping is not running out of memory: the daemon decides nothing
    // and kills nothing, for longer than it would take to decide
    // (no_progress_ms, 2 s). A vCPU the kernel put to sleep at the limit
    // may have been woken with a loan, taken back by swapping out.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(d.vm("swapper")["state"], "running", "{}", events(&d));
    for kind in ["oom_pressure", "oom_decision", "oom_kill"] {
        assert!(events_of(&d, kind).is_empty(), "{kind}: {}", events(&d));
    }
    let lent = events_of(&d, "memcg_reserve_lent").len();
    assert_eq!(
        events_of(&d, "memcg_reserve_returned").len(),
        lent,
        "every loan back: {}",
        events(&d)
    );
    eprintln!("reserve lent and returned {lent} times");
    let vm = d.vm("swapper");
    let swapped = vm["swap_bytes"].as_u64().unwrap();
    let rss = vm["rss_bytes"].as_u64().unwrap();
    eprintln!(
        "swapper: rss {} KiB, swap {} KiB, guest RAM resident {} KiB; our swap file: {} KiB used",
        rss >> 10,
        swapped >> 10,
        vm["guest_ram_resident_bytes"].as_u64().unwrap() >> 10,
        swap.used() >> 10
    );
    // The pool holds at most its limit (the VMM's own memory included),
    // so at least what the guest touched beyond it is in swap.
    let resident = vm["guest_ram_resident_bytes"].as_u64().unwrap();
    assert!(
        resident <= POOL_LIMIT,
        "guest RAM resident within the pool's limit: {vm} {}",
        status_of(pid)
    );
    assert!(
        swapped >= (touched * MIB).saturating_sub(POOL_LIMIT),
        "the guest touched {touched} MiB in a {} MiB pool: {vm}",
        POOL_LIMIT >> 20
    );
    // RSS + swap is what the guest touched, plus the VMM's own memory
    // and the tiny guest's image (a few MiB).
    assert!(
        rss + swapped >= touched * MIB && rss + swapped <= (touched + 24) * MIB,
        "rss + swap = {} MiB for {touched} MiB touched: {vm}",
        (rss + swapped) >> 20
    );
    // The kernel's own count, and our file holds it.
    let kernel = status_field(pid, "VmSwap");
    assert!(
        kernel.abs_diff(swapped) <= 4 * MIB,
        "VmSwap {kernel} vs swap_bytes {swapped}"
    );
    assert!(swap.used() >= swapped / 2, "{} used", swap.used());

    let (status, metrics) = api(&d.sock, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let line = format!("vmm_vm_swap_bytes{{vm=\"swapper\",pool=\"{pool}\"}} ");
    let metric: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no {line}in {metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        metric.abs_diff(swapped) <= 4 * MIB && metric > 0,
        "/metrics says {metric}, GET /vms {swapped}"
    );

    drop(d);
}

/// Badness counts swapped-out pages, as the kernel's `oom_badness()`
/// does: the decision's table shows the VM's swap pages, its badness is
/// rss + swap + page tables, and its `oom_score` is the kernel's own
/// `/proc/<pid>/oom_score`. The host's `totalpages` is MemTotal +
/// SwapTotal in pages; the pool's, its limit plus the swap it may use.
#[test]
fn badness_and_totalpages_count_swap() {
    let _swap = Swap::on();
    let (d, _cgroup, pool) = daemon_with_pool("swap-badness", "");
    let vm = swapping_vm(&d, "swapper", &pool, 128, 96);
    let pid = vm["pid"].as_u64().unwrap();
    poll_until(Duration::from_secs(10), || {
        (d.vm("swapper")["swap_bytes"].as_u64()? > 32 * MIB).then_some(())
    })
    .unwrap_or_else(|| panic!("no swap seen: {}", d.vm("swapper")));
    let page = page_size();

    let ram_and_swap = || (meminfo("MemTotal") + meminfo("SwapTotal")) / page;
    let before = ram_and_swap();
    let decision = d.trigger(true);
    let after = ram_and_swap();
    assert_eq!(decision["basis"], "host RAM + swap", "{decision}");
    let totalpages = decision["totalpages"].as_u64().unwrap();
    assert!(
        totalpages == before || totalpages == after,
        "totalpages {totalpages}: MemTotal + SwapTotal is {before} pages"
    );
    assert!(
        totalpages >= meminfo("MemTotal") / page + SWAP_BYTES / page - 1,
        "our swap file is counted: {decision}"
    );
    let row = decision["table"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "swapper")
        .unwrap_or_else(|| panic!("{decision}"))
        .clone();
    let n = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("{k}: {row}"));
    let (rss, swap, pgtables) = (n("rss_pages"), n("swap_pages"), n("pgtables_pages"));
    eprintln!("decision row: {row}");
    assert!(swap >= 32 * MIB / page, "{row}");
    assert_eq!(
        row["badness"].as_i64().unwrap(),
        (rss + swap + pgtables) as i64,
        "badness = rss + swap + page tables (adj 0): {row}"
    );
    // The kernel's counters, read now: the VM holds still.
    let kernel_swap = status_field(pid, "VmSwap") / page;
    assert!(
        kernel_swap.abs_diff(swap) <= 256,
        "VmSwap {kernel_swap} pages vs {swap}"
    );
    // The kernel's score of the same process, with the same totalpages:
    // 1000 + badness * 1000 / totalpages, less 1000, as /proc shows it.
    let kernel_score: u64 = std::fs::read_to_string(format!("/proc/{pid}/oom_score"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let ours = n("oom_score");
    eprintln!(
        "badness {} pages, oom_score {ours}, kernel's oom_score {kernel_score}, totalpages {totalpages}",
        row["badness"]
    );
    assert!(
        ours.abs_diff(kernel_score) <= 1,
        "ours {ours} vs the kernel's {kernel_score}: {row}"
    );
    let view = d.vm("swapper");
    assert!(
        view["oom_score"].as_u64().unwrap().abs_diff(kernel_score) <= 1,
        "{view}"
    );
    eprintln!(
        "badness without swap would be {} pages; swap is {:.0} % of it",
        rss + pgtables,
        swap as f64 * 100.0 / (rss + swap + pgtables) as f64
    );

    // The pool: its limit plus the swap it may use (memsw unlimited:
    // all of the host's swap), the kernel's mem_cgroup_get_max().
    let (status, decision) = d.call(
        "POST",
        "/oom/trigger",
        Some(&format!(r#"{{"dry_run": true, "pool": "{pool}"}}"#)),
    );
    assert_eq!(status, 200, "{decision}");
    assert_eq!(
        decision["basis"], "memory cgroup limit (+ its swap)",
        "{decision}"
    );
    let swap_pages = meminfo("SwapTotal") / page;
    assert_eq!(
        decision["totalpages"].as_u64().unwrap(),
        POOL_LIMIT / page + swap_pages,
        "{decision}"
    );
    drop(d);
}

/// The host domain's swap rule, earlyoom's: available memory short is not
/// pressure while free swap is not short too. With the host's threshold
/// at 999 ‰, available memory is always short here; the host stays calm
/// while our fresh swap file is all free, and comes under pressure once a
/// VM's pages fill more than 1 ‰ of the swap. `action: notify`: the
/// daemon reports the host's pressure and kills nothing.
#[test]
fn the_host_is_short_only_once_free_swap_is_short_too() {
    let _swap = Swap::on();
    assert!(
        meminfo("SwapFree") * 1000 >= meminfo("SwapTotal") * 999,
        "another swap user: SwapFree {} of {}",
        meminfo("SwapFree"),
        meminfo("SwapTotal")
    );
    let (d, _cgroup, pool) = daemon_with_pool(
        "swap-host",
        r#""action": "notify", "host_min_available_permille": 999"#,
    );
    let host_pressure = || -> Vec<Value> {
        events_of(&d, "oom_pressure")
            .into_iter()
            .filter(|e| e["constraint"] == "host")
            .collect()
    };
    // A VM of the host domain that does not swap; the host is short of
    // available memory by the threshold, but not of swap.
    d.create(r#"{"id": "calm", "mem_mib": 32, "cmdline": "tiny.hold=forever"}"#);
    let (status, oom) = d.call("GET", "/oom", None);
    assert_eq!(status, 200, "{oom}");
    let total = oom["pressure"]["mem_total_bytes"].as_u64().unwrap();
    let available = oom["pressure"]["mem_available_bytes"].as_u64().unwrap();
    assert!(
        available * 1000 < total * 999,
        "the threshold must make available memory short: {oom}"
    );
    // Longer than no_progress_ms (2 s), after which pressure is reported.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        host_pressure().is_empty(),
        "the host judged short with all swap free: {}",
        events(&d)
    );

    // Fill some swap: now both are short.
    swapping_vm(&d, "swapper", &pool, 128, 96);
    let event =
        poll_until(Duration::from_secs(20), || host_pressure().pop()).unwrap_or_else(|| {
            panic!(
                "no host pressure with SwapFree {} of {}: {}",
                meminfo("SwapFree"),
                meminfo("SwapTotal"),
                events(&d)
            )
        });
    eprintln!("host pressure: {event}");
    let n = |k: &str| event[k].as_u64().unwrap_or_else(|| panic!("{k}: {event}"));
    assert!(
        n("swap_free_bytes") * 1000 < n("swap_total_bytes") * 999,
        "{event}"
    );
    assert!(
        n("mem_available_bytes") < n("min_available_bytes"),
        "{event}"
    );
    // The why says both.
    let why = event["why"].as_str().unwrap();
    assert!(
        why.contains("under the minimum of") && why.contains("MiB swap free"),
        "{why}"
    );
    // Notify only: nobody was killed.
    assert!(events_of(&d, "oom_kill").is_empty(), "{}", events(&d));
    for id in ["calm", "swapper"] {
        assert_eq!(d.vm(id)["state"], "running", "{}", events(&d));
    }
    drop(d);
}
