//! The tiny guest is a standard PVH guest: QEMU's microvm machine boots the
//! very ELF that `vmm` embeds (which is also what the benchmarks rely on).

use std::process::Command;

use vmm_integration_tests::{require_kvm, vmm_bin};

#[test]
fn qemu_microvm_boots_the_embedded_tiny_guest() {
    require_kvm();
    let elf = std::env::temp_dir().join(format!("tiny-guest-{}.elf", std::process::id()));
    let status = Command::new(vmm_bin())
        .arg("tiny-guest")
        .arg(&elf)
        .status()
        .unwrap();
    assert!(status.success());
    let out = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm", "-enable-kvm", "-cpu", "kvm64", "-m", "64M"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-serial",
            "stdio",
        ])
        .args([
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel",
        ])
        .arg(&elf)
        .args(["-append", "tiny.touch=32M tiny.exit=5"])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run qemu-system-x86_64 ({e}): apt-get install qemu-system-x86")
        });
    std::fs::remove_file(&elf).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // isa-debug-exit reports (code << 1) | 1.
    assert_eq!(
        out.status.code(),
        Some(11),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("tiny-guest: ready"), "{stdout}");
    assert!(
        stdout.contains("tiny-guest: touched 32 MiB at 0x200000, verified"),
        "{stdout}"
    );
}
