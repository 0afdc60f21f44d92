//! The ACPI tables of a real VM, as `iasl -d` (acpica-tools) reads them:
//! the balloon and vsock are `LNRO0005` devices in the DSDT when announced
//! over ACPI, and devices are never announced both ways.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use vmm_integration_tests::{require_kvm, VmProcess};

/// Boots the tiny guest with a balloon (and `extra` devices), dumping its
/// ACPI tables; returns the disassembled DSDT and the guest's command-line
/// line.
fn dsdt_and_cmdline(announce: &str, extra: &[&str]) -> (String, String) {
    require_kvm();
    let dir: PathBuf = std::env::temp_dir().join(format!(
        "vmm-acpi-{}-{announce}-{}",
        std::process::id(),
        extra.len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut args = vec![
        "run",
        "--balloon",
        "",
        "--virtio-announce",
        announce,
        "--dump-acpi",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut vm = VmProcess::start(&args);
    let (status, stderr) = vm.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
    let cmdline = vm
        .output()
        .lines()
        .find(|l| l.contains("cmdline"))
        .unwrap()
        .to_string();
    let out = Command::new("iasl")
        .arg("-d")
        .arg(dir.join("DSDT.dat"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run iasl ({e}): apt-get install acpica-tools"));
    let log =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(!log.contains("Error") && !log.contains("checksum"), "{log}");
    let dsl = std::fs::read_to_string(dir.join("DSDT.dsl")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    (dsl, cmdline)
}

#[test]
fn the_balloon_is_an_lnro0005_device_in_the_dsdt() {
    let (dsl, cmdline) = dsdt_and_cmdline("acpi", &[]);
    assert_eq!(dsl.matches("\"LNRO0005\"").count(), 1, "{dsl}");
    assert!(dsl.contains("0xD0000000,         // Address Base"), "{dsl}");
    assert!(
        dsl.contains("0x00001000,         // Address Length"),
        "{dsl}"
    );
    assert!(
        dsl.contains("Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )"),
        "{dsl}"
    );
    assert!(dsl.contains("0x00000005,"), "GSI 5: {dsl}");
    assert!(
        !cmdline.contains("virtio_mmio.device"),
        "announced twice: {cmdline}"
    );
}

#[test]
fn a_command_line_announcement_leaves_the_dsdt_without_it() {
    let (dsl, cmdline) = dsdt_and_cmdline("cmdline", &[]);
    assert!(!dsl.contains("LNRO0005"), "{dsl}");
    assert!(
        cmdline.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{cmdline}"
    );
}

/// vsock takes the next window and GSI after the balloon, announced the
/// same way (a Linux guest's `virtio_mmio` then binds
/// `vmw_vsock_virtio_transport` to it by device id).
#[test]
fn vsock_is_announced_next_to_the_balloon() {
    let uds = std::env::temp_dir().join(format!("vmm-acpi-{}-v.sock", std::process::id()));
    let vsock = format!("cid=3,uds={}", uds.display());
    let (dsl, cmdline) = dsdt_and_cmdline("acpi", &["--vsock", &vsock]);
    assert_eq!(dsl.matches("\"LNRO0005\"").count(), 2, "{dsl}");
    assert!(dsl.contains("0xD0001000,         // Address Base"), "{dsl}");
    assert!(dsl.contains("0x00000006,"), "GSI 6: {dsl}");
    assert!(!cmdline.contains("virtio_mmio.device"), "{cmdline}");
    let (_, cmdline) = dsdt_and_cmdline("cmdline", &["--vsock", &vsock]);
    assert!(
        cmdline.contains("virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6"),
        "{cmdline}"
    );
    assert!(!uds.exists(), "socket removed at exit");
}
