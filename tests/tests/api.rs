//! The per-VM API of `vmm run --api-sock` over a real Unix socket.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use vmm_integration_tests::{api, poll_until, require_kvm, socket_path, VmProcess};

const BOOT: Duration = Duration::from_secs(20);

#[test]
fn configure_the_balloon_before_boot_then_start() {
    require_kvm();
    let sock = socket_path("prestart");
    let mut vm = VmProcess::start(&[
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--wait-for-start",
        "--cmdline",
        "tiny.hold=forever",
    ]);
    poll_until(BOOT, || sock.exists().then_some(())).expect("no API socket");
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let (status, body) = api(&sock, "GET", "/vm", None);
    assert_eq!(status, 200);
    assert!(body.contains("\"state\":\"NotStarted\""), "{body}");
    // Nothing boots before InstanceStart.
    assert!(vm
        .wait_for("tiny-guest: ready", Duration::from_millis(300))
        .is_none());

    let config = r#"{"amount_mib": 8, "deflate_on_oom": true, "stats_polling_interval_s": 1}"#;
    assert_eq!(api(&sock, "PUT", "/balloon", Some(config)).0, 204);
    // Bad input: a clear 4xx, and nothing changes.
    let (status, body) = api(&sock, "PUT", "/balloon", Some(r#"{"amount_mib": "lots"}"#));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("amount_mib: invalid type"), "{body}");
    let (status, body) = api(
        &sock,
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib": 4096, "deflate_on_oom": false}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("larger than guest RAM"), "{body}");
    let (status, body) = api(&sock, "GET", "/balloon", None);
    assert_eq!(status, 200);
    assert!(
        body.contains("\"amount_mib\":8") && body.contains("\"deflate_on_oom\":true"),
        "{body}"
    );
    assert_eq!(api(&sock, "DELETE", "/vm", None).0, 405);
    assert_eq!(api(&sock, "GET", "/nothing", None).0, 404);

    let start = r#"{"action_type": "InstanceStart"}"#;
    assert_eq!(api(&sock, "PUT", "/actions", Some(start)).0, 204);
    let line = vm
        .wait_for("tiny-guest: cmdline", BOOT)
        .expect("guest did not boot");
    assert!(
        line.text.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{}",
        line.text
    );
    vm.wait_for("tiny-guest: hold", BOOT)
        .expect("guest did not run");

    let (status, body) = api(&sock, "PUT", "/balloon", Some(config));
    assert_eq!(status, 409, "{body}");
    assert_eq!(api(&sock, "PUT", "/actions", Some(start)).0, 409);
    let (_, body) = api(&sock, "GET", "/vm", None);
    assert!(body.contains("\"state\":\"Running\""), "{body}");
    assert!(!body.contains("\"guest_ram_resident_bytes\":0,"), "{body}");
    vm.kill();
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn sigterm_stops_the_vm_and_removes_the_socket() {
    require_kvm();
    let sock = socket_path("sigterm");
    let mut vm = VmProcess::start(&[
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--cmdline",
        "tiny.hold=forever",
    ]);
    vm.wait_for("tiny-guest: hold", BOOT)
        .expect("guest did not run");
    assert!(sock.exists());
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) }, 0);
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by signal 15"), "{stderr}");
    assert!(!sock.exists(), "socket left behind");
}
