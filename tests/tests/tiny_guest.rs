//! The embedded tiny guest booted by `vmm run` on real KVM.

use std::time::Duration;

use vmm_integration_tests::{require_kvm, VmProcess, MIB};

const BOOT: Duration = Duration::from_secs(20);

#[test]
fn run_without_arguments_boots_the_tiny_guest_and_exits_0() {
    require_kvm();
    let mut vm = VmProcess::start(&["run"]);
    let ready = vm
        .wait_for("tiny-guest: ready", BOOT)
        .unwrap_or_else(|| panic!("no ready line:\n{}", vm.output()));
    // The default guest has 128 MiB; the memmap it read says so.
    assert!(
        ready.text.contains("mem=133823488 "),
        "128 MiB minus the 384 KiB legacy hole: {}",
        ready.text
    );
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}\n{}", vm.output());
    assert!(vm.output().contains("tiny-guest: exit 0"));
}

#[test]
fn guest_exit_code_becomes_the_process_status() {
    require_kvm();
    let mut vm = VmProcess::start(&["run", "--mem", "32M", "--cmdline", "tiny.exit=42"]);
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(42), "stderr: {stderr}\n{}", vm.output());
}

/// The initrd reaches the guest byte for byte, page-aligned at the top of
/// low RAM, across the VMM's 8 MiB read chunks (issue 9: it is read
/// straight into guest memory, never into a host buffer).
#[test]
fn initrd_arrives_intact_at_the_top_of_ram() {
    require_kvm();
    let size: usize = 20 * MIB as usize + 12345;
    let mut bytes = Vec::with_capacity(size);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while bytes.len() < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.push(x as u8);
    }
    let fnv = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let path = std::env::temp_dir().join(format!("vmm-initrd-{}", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let mut vm = VmProcess::start(&["run", "--mem", "64M", "--initrd", path.to_str().unwrap()]);
    let (status, stderr) = vm.wait_exit(BOOT);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}\n{}", vm.output());
    let addr = (64 * MIB - size as u64) & !0xfff;
    let want = format!("tiny-guest: module 0 at {addr:#x} size {size} fnv1a64={fnv:#018x}");
    assert!(vm.output().contains(&want), "want {want}:\n{}", vm.output());
}

#[test]
fn guest_sees_exactly_our_memory_map() {
    require_kvm();
    let mut vm = VmProcess::start(&["run", "--mem", "64M"]);
    vm.wait_exit(BOOT);
    let out = vm.output();
    let memmap: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("tiny-guest: memmap"))
        .collect();
    assert_eq!(
        memmap,
        [
            "tiny-guest: memmap 0x0-0x9fc00 type=1",
            "tiny-guest: memmap 0xe0000-0x100000 type=2",
            "tiny-guest: memmap 0x100000-0x4000000 type=1",
        ],
        "{out}"
    );
    assert!(
        out.contains("ready mem=66714624 "),
        "RAM = 64 MiB minus the legacy hole:\n{out}"
    );
}

#[test]
fn touching_64_mib_raises_vmm_rss_by_64_mib() {
    require_kvm();
    // (anonymous RSS of the VMM, RSS of its guest-RAM mapping, output)
    let measure = |cmdline: &str| {
        let mut vm = VmProcess::start(&["run", "--mem", "128M", "--cmdline", cmdline]);
        vm.wait_for("tiny-guest: hold", BOOT)
            .unwrap_or_else(|| panic!("guest did not reach its hold:\n{}", vm.output()));
        let sample = (vm.anon_rss_bytes(), vm.guest_ram_rss_bytes(128 * MIB));
        vm.kill();
        (sample, vm.output())
    };
    let ((idle_anon, idle_ram), _) = measure("tiny.hold=forever");
    let ((touched_anon, touched_ram), out) = measure("tiny.touch=64M tiny.hold=forever");
    assert!(out.contains("touched 64 MiB"), "{out}");
    // Guest RAM: exactly the 64 MiB the guest touched, page for page.
    assert!(
        touched_ram >= idle_ram + 64 * MIB,
        "guest RAM rss {idle_ram} -> {touched_ram}"
    );
    // The whole VMM: the same, give or take a page of its own stack, whose
    // depth differs between runs (measured: 852 or 856 KiB idle).
    assert!(
        touched_anon + 16 * 1024 >= idle_anon + 64 * MIB,
        "anonymous RSS idle {} KiB, after touching 64 MiB {} KiB",
        idle_anon >> 10,
        touched_anon >> 10
    );
}

#[test]
fn a_pattern_verified_across_the_whole_guest() {
    require_kvm();
    let mut vm = VmProcess::start(&[
        "run",
        "--mem",
        "256M",
        "--cmdline",
        "tiny.touch=200M tiny.exit=7",
    ]);
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(7), "stderr: {stderr}\n{}", vm.output());
    assert!(vm.output().contains("touched 200 MiB"), "{}", vm.output());
}

#[test]
fn touching_more_than_the_guest_has_is_reported_by_the_guest() {
    require_kvm();
    let mut vm = VmProcess::start(&["run", "--mem", "32M", "--cmdline", "tiny.touch=64M"]);
    let (status, _) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(3), "{}", vm.output());
}

#[test]
fn boots_with_several_vcpus() {
    require_kvm();
    let mut vm = VmProcess::start(&[
        "run",
        "--vcpus",
        "4",
        "--mem",
        "32M",
        "--cmdline",
        "tiny.touch=8M",
    ]);
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(0), "stderr: {stderr}\n{}", vm.output());
}

#[test]
fn serial_output_can_go_to_a_file() {
    require_kvm();
    let path = std::env::temp_dir().join(format!("vmm-serial-{}.log", std::process::id()));
    let mut vm = VmProcess::start(&[
        "run",
        "--mem",
        "32M",
        "--serial-out",
        path.to_str().unwrap(),
    ]);
    let (status, _) = vm.wait_exit(BOOT);
    let log = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(log.starts_with("tiny-guest: ready"), "{log}");
    assert!(log.contains("tiny-guest: exit 0"), "{log}");
    assert_eq!(
        vm.output(),
        "",
        "nothing on stdout when serial goes to a file"
    );
}

/// `--numa-nodes 0`: guest RAM carries an `MPOL_BIND` policy to node 0,
/// and the pages the guest touched are on it (`/proc/<pid>/numa_maps`).
#[test]
fn numa_nodes_binds_guest_ram() {
    require_kvm();
    let mut vm = VmProcess::start(&[
        "run",
        "--mem",
        "64M",
        "--numa-nodes",
        "0",
        "--cmdline",
        "tiny.touch=16M tiny.hold=forever",
    ]);
    vm.wait_for("tiny-guest: hold", BOOT)
        .unwrap_or_else(|| panic!("no hold line:\n{}", vm.output()));
    let maps = std::fs::read_to_string(format!("/proc/{}/numa_maps", vm.pid())).unwrap();
    vm.kill();
    let bound: Vec<&str> = maps.lines().filter(|l| l.contains(" bind:0 ")).collect();
    assert_eq!(bound.len(), 1, "one guest RAM region, bound: {maps}");
    // At least the 16 MiB touched, all of it on node 0.
    let n0: u64 = bound[0]
        .split_whitespace()
        .find_map(|f| f.strip_prefix("N0="))
        .unwrap_or_else(|| panic!("{}", bound[0]))
        .parse()
        .unwrap();
    assert!(n0 >= 4096, "{}", bound[0]);
}

/// The in-kernel PIT is KVM's `kvm-pit/<pid>` kernel thread: the tiny
/// guest, which never uses it, starts without one (milliseconds saved at
/// start-up, issue 11); `--pit on` gives it one.
#[test]
fn the_tiny_guest_has_a_pit_only_when_asked() {
    require_kvm();
    // Kernel threads named for a VMM's pid.
    let pit_threads = |pid: u32| -> usize {
        let name = format!("kvm-pit/{pid}");
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == name)
            .count()
    };
    for (args, want) in [(&[][..], 0), (&["--pit", "on"][..], 1)] {
        let mut all = vec!["run", "--mem", "32M", "--cmdline", "tiny.hold=forever"];
        all.extend_from_slice(args);
        let mut vm = VmProcess::start(&all);
        vm.wait_for("tiny-guest: ready", BOOT)
            .unwrap_or_else(|| panic!("no ready line:\n{}", vm.output()));
        assert_eq!(pit_threads(vm.pid()), want, "vmm {args:?}");
        vm.kill();
    }
}
