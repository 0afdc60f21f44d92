//! The tiny Linux guest (resources/linux/: Debian's 6.12 source, tinyconfig
//! plus our fragment, patched for PVM hosts) booted to userspace under
//! `vmm run`: what a user would notice of ACPI, COM1, the Linux balloon
//! driver against our device, and the guest kernel's memcg OOM killer.
//!
//! Slow by nature on PVM hosts (no VMX/SVM): every guest kernel entry runs
//! in KVM's instruction emulator, so /init comes ~25 s after start and a
//! 4 KiB page fault costs milliseconds. The tests keep guest RAM at 64-128
//! MiB and workloads at a few MiB, run one VM at a time (they are CPU-bound
//! on a shared 2-core machine), and print how long each step took.
//!
//! The kernel comes from `resources/linux/build-guest-kernel.sh` (cached in
//! `.cache/linux-guest/`; about 15 minutes when it must be built), the
//! initramfs from `resources/linux/build-initramfs.sh`.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vmm_integration_tests::{
    api, guest_initramfs, guest_kernel, poll_until, require_kvm, socket_path, Line, VmProcess,
    LINUX_CMDLINE, MIB,
};

/// From start to "init: userspace up": ~25 s on an idle PVM host; CI
/// machines are shared.
const BOOT: Duration = Duration::from_secs(180);

/// One Linux VM at a time: each keeps a host core busy while it boots.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct LinuxVm {
    vm: VmProcess,
    started: Instant,
    name: &'static str,
}

impl LinuxVm {
    /// Boots the tiny Linux guest with `args` for `vmm run` and `orders`
    /// for /init appended to [`LINUX_CMDLINE`], and waits for userspace.
    fn boot(name: &'static str, args: &[&str], orders: &str) -> LinuxVm {
        let initrd = guest_initramfs();
        let mut all = vec!["--initrd", initrd.to_str().unwrap()];
        all.extend_from_slice(args);
        Self::boot_with(name, &all, orders)
    }

    /// [`LinuxVm::boot`] with no initramfs unless `args` gives one.
    fn boot_with(name: &'static str, args: &[&str], orders: &str) -> LinuxVm {
        Self::boot_in(name, None, args, orders)
    }

    /// [`LinuxVm::boot_with`], the VMM in network namespace `netns` if
    /// given.
    fn boot_in(name: &'static str, netns: Option<&str>, args: &[&str], orders: &str) -> LinuxVm {
        require_kvm();
        let kernel = guest_kernel();
        let cmdline = format!("{LINUX_CMDLINE} {orders}");
        let mut all = vec![
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--cmdline",
            &cmdline,
        ];
        all.extend_from_slice(args);
        let started = Instant::now();
        let mut vm = LinuxVm {
            vm: match netns {
                Some(ns) => VmProcess::start_in_netns(ns, &all),
                None => VmProcess::start(&all),
            },
            started,
            name,
        };
        let up = vm.expect("init: userspace up", BOOT);
        eprintln!(
            "[{name}] userspace after {:.1} s: {}",
            up.at.as_secs_f64(),
            up.text
        );
        vm
    }

    fn expect(&mut self, needle: &str, timeout: Duration) -> Line {
        match self.vm.wait_for(needle, timeout) {
            Some(line) => line,
            None => panic!(
                "[{}] no line with {needle:?} within {timeout:?}; serial output:\n{}",
                self.name,
                self.vm.output()
            ),
        }
    }

    fn step(&self, what: &str, since: Instant) {
        eprintln!(
            "[{}] {what}: {:.1} s (at {:.1} s)",
            self.name,
            since.elapsed().as_secs_f64(),
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// `key` of a JSON object body as a number.
fn json_u64(body: &str, key: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v.get(key).and_then(serde_json::Value::as_u64)
}

fn balloon_stats(sock: &Path) -> String {
    let (status, body) = api(sock, "GET", "/balloon/statistics", None);
    assert_eq!(status, 200, "{body}");
    body
}

/// The Linux kernel finds the machine through our ACPI tables: COM1 (a
/// PNP0501 device in the DSDT) and the virtio-mmio balloon (LNRO0005) are
/// bound through them, not through the command line, and COM1 carries
/// userspace's output, which needs its interrupt routed through ACPI.
#[test]
fn linux_reaches_userspace_through_our_acpi_tables() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = LinuxVm::boot(
        "acpi",
        &["--mem", "64M", "--balloon", ""],
        "init.devices init.exit=7",
    );
    let cmdline = g.expect("Command line: ", Duration::ZERO);
    assert!(
        !cmdline.text.contains("virtio_mmio.device"),
        "the VMM announced the balloon on the command line: {}",
        cmdline.text
    );
    // Our tables, without checksum complaints; the AML interpreted.
    for needle in [
        "ACPI: RSDP 0x00000000000E0000 000024 (v02 VMMOOM)",
        "ACPI: DSDT 0x00000000000E0",
        "ACPI: 1 ACPI AML tables successfully acquired and loaded",
        "ACPI: Interpreter enabled",
        "ACPI: Using IOAPIC for interrupt routing",
        "pnp: PnP ACPI: found",
    ] {
        g.expect(needle, Duration::ZERO);
    }
    // COM1 bound as a PNP device from the DSDT ("00:0N"), not the legacy
    // platform port ("serial8250").
    let com1 = g.expect("ttyS0 at I/O 0x3f8", Duration::ZERO);
    assert!(com1.text.contains("] 00:0"), "{}", com1.text);
    assert!(com1.text.ends_with("is a 16550A"), "{}", com1.text);
    // What /init found in sysfs.
    let tty = g.expect("init: device ttyS0 -> ", Duration::from_secs(30));
    assert!(tty.text.contains("/00:0"), "{}", tty.text);
    let virtio = g.expect("init: device virtio0 -> ", Duration::from_secs(30));
    assert!(
        virtio
            .text
            .ends_with("devices/platform/LNRO0005:00/virtio0"),
        "not the DSDT's device: {}",
        virtio.text
    );
    let driver = g.expect("init: device virtio0 driver -> ", Duration::from_secs(30));
    assert!(driver.text.ends_with("/virtio_balloon"), "{}", driver.text);
    g.expect(
        "init: device virtio0 virtio id 0x0005",
        Duration::from_secs(30),
    );
    let out = g.vm.output();
    assert!(!out.contains("ACPI BIOS Error"), "{out}");
    assert!(!out.contains("ACPI Error"), "{out}");
    assert!(!out.contains("Incorrect checksum"), "{out}");

    // /init ends the VM with its status on the debug-exit port.
    let (status, stderr) = g.vm.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(7), "{stderr}\n{}", g.vm.output());
    g.step("whole run", g.started);
}

/// Linux's virtio_balloon driver against our device: inflating hands the
/// guest's pages to the host (the VMM's RSS falls, the guest's MemTotal
/// falls), deflating gives them back, and the guest's statistics reach
/// `GET /balloon/statistics`.
#[test]
fn linux_balloon_driver_inflates_deflates_and_reports() {
    const N: u64 = 8;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sock = socket_path("linux-balloon");
    let _ = std::fs::remove_file(&sock);
    // The guest touches 12 MiB and frees it, so the host holds pages the
    // guest has free: what a balloon is for. (A page costs ~1 ms here.)
    let mut g = LinuxVm::boot(
        "balloon",
        &[
            "--mem",
            "128M",
            "--api-sock",
            sock.to_str().unwrap(),
            "--balloon",
            "stats_polling_interval_s=1",
        ],
        "init.touch=12M init.hold",
    );
    let t = Instant::now();
    g.expect("init: touched and freed 12 MiB", Duration::from_secs(120));
    g.step("touch 12 MiB", t);
    g.expect("init: holding", Duration::from_secs(10));

    // Statistics from the guest driver.
    let t = Instant::now();
    let stats = poll_until(Duration::from_secs(30), || {
        let body = balloon_stats(&sock);
        json_u64(&body, "total_memory").map(|_| body)
    })
    .unwrap_or_else(|| panic!("no statistics from the guest:\n{}", g.vm.output()));
    g.step("first statistics", t);
    let total0 = json_u64(&stats, "total_memory").unwrap();
    let free0 = json_u64(&stats, "free_memory").expect("free_memory");
    assert!(
        (100 * MIB..128 * MIB).contains(&total0),
        "MemTotal of a 128 MiB guest: {stats}"
    );
    assert!(free0 >= 2 * N * MIB, "{stats}");
    for key in [
        "available_memory",
        "minor_faults",
        "major_faults",
        "disk_caches",
        "oom_kills",
    ] {
        assert!(json_u64(&stats, key).is_some(), "no {key}: {stats}");
    }

    // Inflate.
    let rss0 = g.vm.rss_bytes();
    let t = Instant::now();
    let (status, body) = api(
        &sock,
        "PATCH",
        "/balloon",
        Some(&format!("{{\"amount_mib\": {N}}}")),
    );
    assert_eq!(status, 204, "{body}");
    poll_until(Duration::from_secs(120), || {
        let (_, body) = api(&sock, "GET", "/balloon", None);
        (json_u64(&body, "actual_mib") == Some(N)).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the balloon never reached {N} MiB: {}\n{}",
            api(&sock, "GET", "/balloon", None).1,
            g.vm.output()
        )
    });
    g.step(&format!("inflate {N} MiB"), t);
    let released = poll_until(Duration::from_secs(10), || {
        let rss = g.vm.rss_bytes();
        (rss + N * MIB * 9 / 10 <= rss0).then_some(rss)
    });
    assert!(
        released.is_some(),
        "VMM RSS {} KiB -> {} KiB after a {N} MiB inflate: less than 90 % released",
        rss0 >> 10,
        g.vm.rss_bytes() >> 10
    );
    eprintln!(
        "[balloon] VMM RSS {} KiB -> {} KiB",
        rss0 >> 10,
        released.unwrap() >> 10
    );
    // The guest lost N MiB (the driver takes the pages from MemTotal when
    // deflate_on_oom is off).
    let shrunk = poll_until(Duration::from_secs(15), || {
        let body = balloon_stats(&sock);
        (json_u64(&body, "total_memory") == Some(total0 - N * MIB)).then_some(body)
    });
    assert!(
        shrunk.is_some(),
        "guest MemTotal not {} after inflating: {}",
        total0 - N * MIB,
        balloon_stats(&sock)
    );

    // Deflate: MemTotal back, MemFree back.
    let t = Instant::now();
    let (status, body) = api(&sock, "PATCH", "/balloon", Some("{\"amount_mib\": 0}"));
    assert_eq!(status, 204, "{body}");
    poll_until(Duration::from_secs(120), || {
        let (_, body) = api(&sock, "GET", "/balloon", None);
        (json_u64(&body, "actual_mib") == Some(0)).then_some(())
    })
    .unwrap_or_else(|| panic!("the balloon did not deflate:\n{}", g.vm.output()));
    g.step(&format!("deflate {N} MiB"), t);
    let back = poll_until(Duration::from_secs(15), || {
        let body = balloon_stats(&sock);
        let total = json_u64(&body, "total_memory")?;
        let free = json_u64(&body, "free_memory")?;
        (total == total0 && free + 4 * MIB >= free0).then_some(body)
    });
    assert!(
        back.is_some(),
        "MemTotal/MemFree not back to {total0}/{free0}: {}",
        balloon_stats(&sock)
    );
    g.step("whole run", g.started);
    g.vm.kill();
    let _ = std::fs::remove_file(&sock);
}

/// The guest kernel's memcg OOM killer: /init runs the hog in a child
/// cgroup with memory.max=2M; the guest kernel kills it and says so.
#[test]
fn linux_kills_a_hog_in_a_small_memcg() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = LinuxVm::boot(
        "memcg-oom",
        &["--mem", "64M"],
        "init.oom_hog=16M init.memcg_max=2M init.exit=9",
    );
    let started = g.expect("init: hog pid ", Duration::from_secs(30));
    let t = Instant::now();
    // "init: hog pid 42 touches 16M in memcg hog with memory.max=2M"
    let pid: u32 = started
        .text
        .split_whitespace()
        .nth(3)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {:?}", started.text));
    let constraint = g.expect(
        "oom-kill:constraint=CONSTRAINT_MEMCG",
        Duration::from_secs(120),
    );
    assert!(
        constraint.text.contains(&format!(
            "oom_memcg=/hog,task_memcg=/hog,task=hog,pid={pid},"
        )),
        "{}",
        constraint.text
    );
    let killed = g.expect(
        &format!("Memory cgroup out of memory: Killed process {pid} (hog)"),
        Duration::from_secs(10),
    );
    g.step("hog start to kill", t);
    eprintln!("[memcg-oom] {}", killed.text);
    g.expect(
        &format!("init: hog pid {pid} killed by signal 9"),
        Duration::from_secs(30),
    );
    let events = g.expect("init: memcg hog memory.events:", Duration::from_secs(10));
    assert!(events.text.contains("oom_kill 1"), "{}", events.text);
    let (status, stderr) = g.vm.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(9), "{stderr}\n{}", g.vm.output());
    g.step("whole run", g.started);
}

/// Issue 12: Linux's virtio_blk driver against our device, as a root
/// disk. An ext4 image built by `build-initramfs.sh --ext4` (mkfs.ext4
/// -d) with a file the host put there; the kernel mounts it as / from
/// `root=/dev/vda rw` (added by `--drive ...,root=true`, as Firecracker's
/// is_root_device does), /init reads the host's file and writes its own,
/// fsynced; after the VM exits the host finds it in the image.
#[test]
fn linux_boots_from_an_ext4_root_disk_and_its_writes_reach_the_image() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile_dir("rootfs");
    let image = dir.join("root.ext4");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../resources/linux/build-initramfs.sh"
    );
    let built = std::process::Command::new(script)
        .args(["--ext4", "16M", "--out"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let seed = dir.join("seed");
    std::fs::write(&seed, "hello from the host\n").unwrap();
    debugfs(&image, &format!("write {} /seed", seed.display()), true);

    let drive = format!("id=rootfs,path={},root=true", image.display());
    let mut g = LinuxVm::boot_with(
        "ext4-root",
        &["--mem", "96M", "--drive", &drive],
        "init=/init init.cat=/seed init.write=/hello init.exit=7",
    );
    let cmdline = g.expect("Command line: ", Duration::ZERO);
    assert!(
        cmdline.text.contains("root=/dev/vda rw"),
        "{}",
        cmdline.text
    );
    g.expect(
        "virtio_blk virtio0: [vda] 32768 512-byte logical blocks",
        Duration::ZERO,
    );
    g.expect("EXT4-fs (vda): mounted filesystem", Duration::ZERO);
    g.expect(
        "init: cat /seed: hello from the host",
        Duration::from_secs(60),
    );
    g.expect("init: wrote /hello and synced it", Duration::from_secs(60));
    let (status, stderr) = g.vm.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(7), "{stderr}\n{}", g.vm.output());
    g.step("whole run", g.started);

    let written = debugfs(&image, "cat /hello", false);
    assert!(written.starts_with("written by the guest "), "{written:?}");
    // The file system is clean: the guest synced, and no request tore it.
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory for one test's files.
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vmm-linux-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs one `debugfs` request on `image` (`-w`: read-write); its stdout.
fn debugfs(image: &Path, request: &str, write: bool) -> String {
    let mut cmd = std::process::Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    let out = cmd.args(["-R", request]).arg(image).output().unwrap();
    assert!(
        out.status.success(),
        "debugfs {request}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 12: Linux's virtio_net driver against our device, over a TAP in
/// a network namespace of the test's own. The kernel configures eth0
/// from `ip=` (no userspace tools) and answers the host's pings itself.
#[test]
fn linux_answers_pings_over_our_virtio_net_and_a_tap() {
    use vmm_integration_tests::netns::{pings, summary, Netns, GUEST_IP, GUEST_MAC, HOST_IP, TAP};
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let ns = Netns::new("linux");
    let initrd = guest_initramfs();
    let net = format!("id=eth0,tap={TAP},mac={GUEST_MAC}");
    let orders = format!("ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off init.hold");
    let mut g = LinuxVm::boot_in(
        "net",
        Some(&ns.0),
        &[
            "--mem",
            "96M",
            "--initrd",
            initrd.to_str().unwrap(),
            "--net",
            &net,
        ],
        &orders,
    );
    let config = g.expect("IP-Config: Complete", Duration::ZERO);
    g.expect(
        &format!("device=eth0, hwaddr={GUEST_MAC}, ipaddr={GUEST_IP}, mask=255.255.255.0"),
        Duration::ZERO,
    );
    let t = Instant::now();
    let rtts = pings(&ns.icmp_socket(), 20);
    eprintln!(
        "[net] {} at {:.1} s; 20 pings answered by the guest kernel in {:.1} s: {}",
        config.text,
        config.at.as_secs_f64(),
        t.elapsed().as_secs_f64(),
        summary(&rtts)
    );
    g.vm.kill();
}
