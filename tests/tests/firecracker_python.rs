//! Issue 12: the unmodified Firecracker client from PyPI
//! (`firecracker-python` 0.0.5, in a venv made by
//! resources/firecracker-python/setup-venv.sh) drives our VMM as it drives
//! Firecracker. The VMM is started with the client's own command line,
//! `firecracker --api-sock <data_path>/<id>/firecracker.socket --id <id>
//! --log-path <file>` (our binary, invoked through a symlink named
//! `firecracker`), inside a network namespace of the test's own with the
//! TAP the client would have made; tests/firecracker_client_flow.py then
//! makes the client's `MicroVM.create()` calls (boot source, root drive,
//! machine config, network interface, vsock, `InstanceStart`) and its
//! `VMMManager` reads state, configuration and IP and pauses and resumes.
//!
//! Not exercised: what `MicroVM.create()` does to the host itself
//! (iptables NAT rules, a Docker-built rootfs, copying the rootfs,
//! spawning `/usr/local/bin/firecracker`); those are not API calls.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use vmm_integration_tests::netns::{ping, pings, summary, Netns, GUEST_IP, HOST_IP, TAP};
use vmm_integration_tests::{
    guest_kernel, repo_root, require_kvm, vmm_bin, VmProcess, LINUX_CMDLINE,
};

/// Where the client keeps a VM's files (`MicroVMConfig.data_path`; its
/// import creates the directory).
const CLIENT_DATA_PATH: &str = "/var/lib/firecracker";

/// The venv's python, made once per test binary.
fn client_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let script = repo_root().join("resources/firecracker-python/setup-venv.sh");
        let out = Command::new(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed (it needs python3-venv and PyPI); see above",
            script.display()
        );
        PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
    })
}

/// One step of tests/firecracker_client_flow.py: its `RESULT` object.
fn client(step: &str, arg: &str) -> Value {
    let out = Command::new(client_python())
        .arg(repo_root().join("tests/firecracker_client_flow.py"))
        .args([step, arg])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "client step {step} failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT from step {step}:\n{stdout}\n{stderr}"));
    serde_json::from_str(line).unwrap()
}

/// A VM as the client launches it: its data directory, a scratch
/// directory, the network namespace and the VMM process. Dropping it
/// kills the VMM by pid and removes the directories and the namespace.
struct ClientVm {
    id: String,
    scratch: PathBuf,
    vm: VmProcess,
    ns: Netns,
}

impl ClientVm {
    fn launch(tag: &str) -> ClientVm {
        require_kvm();
        let id = format!("vmmtest-{tag}-{}", std::process::id());
        let scratch = std::env::temp_dir().join(&id);
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        let data = Path::new(CLIENT_DATA_PATH).join(&id);
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        // The client creates the log file before it starts the binary.
        let log = scratch.join(format!("{id}.log"));
        std::fs::write(&log, "").unwrap();
        let firecracker = scratch.join("firecracker");
        std::os::unix::fs::symlink(vmm_bin(), &firecracker).unwrap();

        let ns = Netns::new(tag);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0])
            .arg(&firecracker)
            .arg("--api-sock")
            .arg(data.join("firecracker.socket"))
            .args(["--id", &id])
            .arg("--log-path")
            .arg(&log);
        ClientVm {
            id,
            scratch,
            vm: VmProcess::spawn(cmd),
            ns,
        }
    }

    /// `MicroVM.create()`'s API calls, with `spec`'s fields on top of the
    /// client's defaults for this VM.
    fn create(&self, mut spec: Value) -> Value {
        let rootfs = self.scratch.join("rootfs.img");
        if !rootfs.exists() {
            std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
        }
        let defaults = json!({
            "id": self.id, "rootfs": rootfs, "vcpus": 1, "mem_mib": 64,
            "ip": GUEST_IP, "gateway": HOST_IP, "name": "fc", "iface": "eth0",
            "tap": TAP, "vsock_uds": self.scratch.join("v.sock"),
        });
        for (k, v) in defaults.as_object().unwrap() {
            spec.as_object_mut()
                .unwrap()
                .entry(k.clone())
                .or_insert(v.clone());
        }
        client("create", &spec.to_string())
    }

    fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        match self.vm.wait_for(needle, timeout) {
            Some(line) => line.text,
            None => panic!(
                "no line with {needle:?} within {timeout:?}; serial output:\n{}",
                self.vm.output()
            ),
        }
    }
}

impl Drop for ClientVm {
    fn drop(&mut self) {
        self.vm.kill();
        let _ = std::fs::remove_dir_all(Path::new(CLIENT_DATA_PATH).join(&self.id));
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

/// What every created VM answers the client, whatever its guest.
fn check_created(r: &Value, id: &str, kernel: &Path, mem_mib: u64) {
    assert_eq!(r["before"]["id"], id, "{r}");
    assert_eq!(r["before"]["state"], "Not started", "{r}");
    // A mistake reaches the client as Firecracker's fault_message.
    let fault = r["fault"].as_str().unwrap_or_default();
    assert!(
        fault.starts_with("API fault: ") && fault.contains("vcpu_count"),
        "{r}"
    );
    assert_eq!(r["state"], "Running", "{r}");
    // VMMManager.get_vmm_ip_addr() reads `ip=` from GET /vm/config.
    assert_eq!(r["ip"], GUEST_IP, "{r}");
    let config = &r["config"];
    assert_eq!(
        config["boot-source"]["kernel_image_path"],
        kernel.to_str().unwrap()
    );
    assert_eq!(config["machine-config"]["mem_size_mib"], mem_mib, "{r}");
    assert_eq!(config["machine-config"]["vcpu_count"], 1, "{r}");
    assert_eq!(config["drives"][0]["drive_id"], "rootfs", "{r}");
    assert_eq!(config["network-interfaces"][0]["iface_id"], "eth0", "{r}");
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], TAP, "{r}");
    assert_eq!(config["vsock"]["guest_cid"], 3, "{r}");
    assert!(r["version"]["firecracker_version"].is_string(), "{r}");
}

/// Pauses, then resumes, through `VMMManager.update_vmm_state()`; the
/// state it reads back follows.
fn pause_and_resume(id: &str, while_paused: impl FnOnce()) {
    let r = client("pause", id);
    assert_eq!(r["said"], format!("Paused VMM {id} successfully"), "{r}");
    assert_eq!(r["state"], "Paused", "{r}");
    while_paused();
    let r = client("resume", id);
    assert_eq!(r["state"], "Running", "{r}");
}

/// The embedded tiny guest, as a kernel file: the whole client flow, and
/// the guest boots with the client's boot arguments plus `root=` from
/// the root drive.
#[test]
fn the_pypi_firecracker_client_configures_boots_and_pauses_a_tiny_guest() {
    let mut vm = ClientVm::launch("fcpy-tiny");
    let kernel = vm.scratch.join("vmlinux");
    let ok = Command::new(vmm_bin())
        .arg("tiny-guest")
        .arg(&kernel)
        .status()
        .unwrap()
        .success();
    assert!(ok, "vmm tiny-guest failed");

    let r = vm.create(json!({"kernel": kernel, "extra_boot_args": "tiny.hold=forever"}));
    check_created(&r, &vm.id, &kernel, 64);
    let cmdline = vm.expect_line("tiny-guest: cmdline", Duration::from_secs(20));
    assert!(
        cmdline.contains(&format!(
            "console=ttyS0 reboot=k pci=off panic=1 ip={GUEST_IP}::{HOST_IP}:255.255.255.0:fc:eth0:on tiny.hold=forever"
        )) && cmdline.contains("root=/dev/vda rw"),
        "{cmdline}"
    );
    pause_and_resume(&vm.id, || {});
    // The VMM honoured --log-path: its messages went to the file, not to
    // the (discarded) standard error the client gives it.
    assert!(vm.scratch.join(format!("{}.log", vm.id)).exists());
}

/// The tiny Linux guest from an ext4 root disk, as the client boots it
/// (no initrd, so the drive is the root device), its network configured
/// from the client's `ip=` argument: the guest answers pings, stops
/// answering while paused, and answers again once resumed.
#[test]
fn the_pypi_firecracker_client_boots_a_linux_guest_that_answers_pings_until_paused() {
    let kernel = guest_kernel();
    let mut vm = ClientVm::launch("fcpy-linux");
    let rootfs = vm.scratch.join("root.ext4");
    let built = Command::new(repo_root().join("resources/linux/build-initramfs.sh"))
        .args(["--ext4", "16M", "--out"])
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );

    let r = vm.create(json!({
        "kernel": kernel, "rootfs": rootfs, "mem_mib": 96,
        "extra_boot_args": format!("{LINUX_CMDLINE} init=/init init.hold"),
    }));
    check_created(&r, &vm.id, &kernel, 96);
    // ~25 s on an idle PVM host; several times that on a loaded one.
    vm.expect_line(
        "EXT4-fs (vda): mounted filesystem",
        Duration::from_secs(400),
    );
    vm.expect_line("IP-Config: Complete", Duration::from_secs(60));
    vm.expect_line("init: userspace up", Duration::from_secs(60));

    let icmp = vm.ns.icmp_socket();
    let rtts = pings(&icmp, 5);
    eprintln!("[fcpy-linux] 5 pings before the pause: {}", summary(&rtts));
    pause_and_resume(&vm.id, || {
        for seq in 100..103 {
            let rtt = ping(&icmp, seq, Duration::from_millis(500));
            assert_eq!(rtt, None, "a paused guest answered ping {seq}");
        }
    });
    let rtts = pings(&icmp, 5);
    eprintln!("[fcpy-linux] 5 pings after the resume: {}", summary(&rtts));
}
