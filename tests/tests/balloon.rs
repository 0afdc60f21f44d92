//! The virtio-balloon device with the tiny guest's driver: memory the
//! guest gives back leaves the VMM's RSS, and comes back usable.

use std::path::Path;
use std::time::Duration;

use vmm_integration_tests::{api, poll_until, require_kvm, socket_path, VmProcess, MIB};

const BOOT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(10);
const MEM: u64 = 256 * MIB;

/// A 256 MiB guest that touched 128 MiB and freed 96 MiB of it inside.
fn guest_with_free_memory(
    name: &str,
    balloon: &str,
    extra: &str,
) -> (VmProcess, std::path::PathBuf) {
    require_kvm();
    let sock = socket_path(name);
    let _ = std::fs::remove_file(&sock);
    let cmdline = format!("tiny.alloc=128M tiny.free=96M tiny.balloon=on {extra}");
    let mut vm = VmProcess::start(&[
        "run",
        "--mem",
        "256M",
        "--api-sock",
        sock.to_str().unwrap(),
        "--boot-now",
        "--balloon",
        balloon,
        "--cmdline",
        &cmdline,
    ]);
    vm.wait_for("virtio-balloon features", BOOT)
        .unwrap_or_else(|| panic!("the balloon driver did not start:\n{}", vm.output()));
    (vm, sock)
}

fn patch_target(sock: &Path, mib: u32) {
    let (status, body) = api(
        sock,
        "PATCH",
        "/balloon",
        Some(&format!("{{\"amount_mib\": {mib}}}")),
    );
    assert_eq!(status, 204, "{body}");
}

/// `body`'s field `key` (at any depth of one object level, as the API
/// nests `rejections`), as a number.
fn json_u64(body: &str, key: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v.get(key)
        .or_else(|| v.get("rejections").and_then(|r| r.get(key)))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("no {key} in {body}"))
}

#[test]
fn a_96_mib_target_gives_back_90_mib_and_deflating_makes_it_usable_again() {
    let (mut vm, sock) = guest_with_free_memory(
        "inflate",
        "",
        "tiny.report-every=0 tiny.balloon-log=settled",
    );
    assert!(
        vm.guest_ram_rss_bytes(MEM) >= 128 * MIB,
        "the guest touched 128 MiB"
    );
    let before = vm.rss_bytes();

    patch_target(&sock, 96);
    let settled = vm
        .wait_for("balloon settled actual=24576 ", SETTLE)
        .unwrap_or_else(|| panic!("inflate did not settle:\n{}", vm.output()));
    // Three rounds of 32 MiB, not one line each (`tiny.balloon-log=settled`).
    assert!(settled.text.ends_with(" in 3 rounds"), "{}", settled.text);
    assert!(!vm.output().contains("balloon target="), "{}", vm.output());
    let after = poll_until(SETTLE, || {
        Some(vm.rss_bytes()).filter(|rss| rss + 90 * MIB <= before)
    });
    assert!(
        after.is_some(),
        "VMM RSS {} MiB -> {} MiB, not down by 90 MiB",
        before / MIB,
        vm.rss_bytes() / MIB
    );
    let guest_ram_after = vm.guest_ram_rss_bytes(MEM);
    let (_, info) = api(&sock, "GET", "/balloon", None);
    assert_eq!(json_u64(&info, "actual_mib"), 96, "{info}");

    // Deflate: the guest gets its pages back, finds them zeroed (the host
    // really dropped them) and can use them again.
    patch_target(&sock, 0);
    let line = vm
        .wait_for("deflated 24576 pages, re-touched", SETTLE)
        .unwrap_or_else(|| panic!("no deflate:\n{}", vm.output()));
    assert!(line.text.ends_with("zeros=yes"), "{}", line.text);
    assert!(vm.guest_ram_rss_bytes(MEM) >= guest_ram_after + 90 * MIB);
    let (_, metrics) = api(&sock, "GET", "/balloon/metrics", None);
    assert_eq!(json_u64(&metrics, "inflate_pages"), 24576, "{metrics}");
    // Coalesced: far fewer madvise calls than pages.
    assert!(json_u64(&metrics, "madvise_calls") < 100, "{metrics}");
    vm.kill();
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn free_page_reporting_alone_lowers_rss() {
    let (mut vm, sock) =
        guest_with_free_memory("fpr", "free_page_reporting=true", "tiny.report-every=300");
    let before = vm.guest_ram_rss_bytes(MEM);
    let line = vm
        .wait_for("tiny-guest: reported", SETTLE)
        .unwrap_or_else(|| panic!("nothing reported:\n{}", vm.output()));
    assert!(line.text.contains("MiB"), "{}", line.text);
    let dropped = poll_until(SETTLE, || {
        let now = vm.guest_ram_rss_bytes(MEM);
        (now + 90 * MIB <= before).then_some(now)
    });
    assert!(
        dropped.is_some(),
        "guest RAM rss stayed at {} MiB",
        vm.guest_ram_rss_bytes(MEM) / MIB
    );
    let (_, info) = api(&sock, "GET", "/balloon", None);
    assert_eq!(
        json_u64(&info, "actual_pages"),
        0,
        "no inflation involved: {info}"
    );
    vm.kill();
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn the_guest_statistics_reach_the_api() {
    let (_vm, sock) =
        guest_with_free_memory("stats", "stats_polling_interval_s=1", "tiny.report-every=0");
    let body = poll_until(SETTLE, || {
        let (status, body) = api(&sock, "GET", "/balloon/statistics", None);
        assert_eq!(status, 200, "{body}");
        body.contains("free_memory").then_some(body)
    })
    .expect("no statistics within 10 s");
    // The guest reports its whole RAM and at least the 96 MiB it freed.
    assert_eq!(json_u64(&body, "total_memory"), 268_041_216, "{body}");
    assert!(json_u64(&body, "free_memory") >= 96 * MIB, "{body}");
    let _ = std::fs::remove_file(&sock);
}

/// A guest that lies to the device: each case must be refused and
/// counted, leave the VMM running and the guest's memory intact, and the
/// device must still work afterwards.
#[test]
fn a_malicious_guest_cannot_hurt_the_vmm_or_its_own_memory() {
    let cases = [
        ("pfn-outside-ram", "pfn_outside_ram"),
        ("pfn-in-mmio-hole", "pfn_outside_ram"),
        ("desc-loop", ""),
        ("desc-outside-memory", ""),
        ("oversized-stats", ""),
        ("unknown-stats-tag", ""),
    ];
    for (case, counter) in cases {
        let (mut vm, sock) = guest_with_free_memory(
            case,
            "stats_polling_interval_s=1",
            &format!("tiny.evil={case} tiny.report-every=0"),
        );
        let done = vm
            .wait_for(&format!("evil {case} done"), SETTLE)
            .unwrap_or_else(|| panic!("{case}: no verdict:\n{}", vm.output()));
        assert!(
            done.text.ends_with("own memory intact=yes"),
            "{case}: {}",
            done.text
        );
        let (_, metrics) = api(&sock, "GET", "/balloon/metrics", None);
        if !counter.is_empty() {
            assert!(
                json_u64(&metrics, counter) > 0,
                "{case}: not counted: {metrics}"
            );
        }
        // Still serving: a real inflate works after the attack.
        patch_target(&sock, 16);
        vm.wait_for("balloon settled actual=4096 ", SETTLE)
            .unwrap_or_else(|| panic!("{case}: device dead after the attack:\n{}", vm.output()));
        // The default `tiny.balloon-log=rounds` prints every round.
        assert!(
            vm.output().contains("balloon target=4096 actual=4096"),
            "{case}: {}",
            vm.output()
        );
        let (status, _) = api(&sock, "GET", "/vm", None);
        assert_eq!(status, 200, "{case}: VMM API gone");
        vm.kill();
        let _ = std::fs::remove_file(&sock);
    }
}
