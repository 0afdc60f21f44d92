//! `vmm run --api-sock` driven as Firecracker is: configured over the
//! socket with `curl` exactly as Firecracker's getting-started guide does,
//! booted by `InstanceStart`, paused and resumed, and from a
//! `--config-file`. Real VMs of the embedded tiny guest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmm_integration_tests::{api, poll_until, require_kvm, socket_path, vmm_bin, VmProcess};

const BOOT: Duration = Duration::from_secs(20);

/// A scratch directory under /tmp, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vmm-fc-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// The tiny guest as a kernel file, as an operator would pass a vmlinux.
    fn tiny_guest(&self) -> PathBuf {
        let path = self.0.join("vmlinux");
        let ok = Command::new(vmm_bin())
            .args(["tiny-guest".as_ref(), path.as_os_str()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "vmm tiny-guest failed");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `curl --unix-socket SOCK -i ARGS...`: the status line and the body.
fn curl(sock: &Path, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "30",
            "--unix-socket",
        ])
        .arg(sock)
        .arg("-i")
        .args(args)
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or_default().trim().to_string();
    (status, body.to_string())
}

fn wait_for_socket(sock: &Path) {
    poll_until(BOOT, || sock.exists().then_some(())).expect("no API socket");
}

/// Firecracker's getting-started guide, its curl commands unchanged but
/// for the paths: boot source, machine configuration, InstanceStart. The
/// guest boots and exits; the VMM exits with it.
#[test]
fn firecrackers_getting_started_curl_flow_boots_the_guest() {
    require_kvm();
    let scratch = Scratch::new("guide");
    let kernel_path = scratch.tiny_guest();
    let sock = socket_path("fc-guide");
    let _ = std::fs::remove_file(&sock);
    let mut vm = VmProcess::start(&["run", "--api-sock", sock.to_str().unwrap(), "--id", "guide"]);
    wait_for_socket(&sock);

    let (status, body) = curl(&sock, &["http://localhost/"]);
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.contains(r#""id":"guide","state":"Not started""#),
        "{body}"
    );
    // Nothing boots before InstanceStart.
    assert!(vm
        .wait_for("tiny-guest:", Duration::from_millis(300))
        .is_none());

    let boot_source = format!(
        "{{
        \"kernel_image_path\": \"{}\",
        \"boot_args\": \"console=ttyS0 reboot=k panic=1 pci=off\"
   }}",
        kernel_path.display()
    );
    let (status, body) = curl(
        &sock,
        &[
            "-X",
            "PUT",
            "http://localhost/boot-source",
            "-H",
            "Accept: application/json",
            "-H",
            "Content-Type: application/json",
            "-d",
            &boot_source,
        ],
    );
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 204 No Content", "")
    );
    let (status, body) = curl(
        &sock,
        &[
            "-X",
            "PUT",
            "http://localhost/machine-config",
            "-H",
            "Accept: application/json",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{
      \"vcpu_count\": 2,
      \"mem_size_mib\": 1024
  }",
        ],
    );
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 204 No Content", "")
    );
    // The guide's root file system, a raw image (the tiny guest boots
    // without reading it; the VMM attaches it as vda).
    let rootfs = scratch.0.join("rootfs.ext4");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    let drive = format!(
        "{{
        \"drive_id\": \"rootfs\",
        \"path_on_host\": \"{}\",
        \"is_root_device\": true,
        \"is_read_only\": false
    }}",
        rootfs.display()
    );
    let (status, body) = curl(
        &sock,
        &[
            "-X",
            "PUT",
            "http://localhost/drives/rootfs",
            "-H",
            "Accept: application/json",
            "-H",
            "Content-Type: application/json",
            "-d",
            &drive,
        ],
    );
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 204 No Content", "")
    );
    let (_, config) = curl(&sock, &["http://localhost/vm/config"]);
    assert!(
        config.contains(r#""machine-config":{"vcpu_count":2,"mem_size_mib":1024"#),
        "{config}"
    );
    assert!(
        config.contains(r#""drives":[{"drive_id":"rootfs","path_on_host":"#),
        "{config}"
    );
    let (status, body) = curl(
        &sock,
        &[
            "-X",
            "PUT",
            "http://localhost/actions",
            "-H",
            "Accept: application/json",
            "-H",
            "Content-Type: application/json",
            "-d",
            "{
      \"action_type\": \"InstanceStart\"
   }",
        ],
    );
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 204 No Content", "")
    );

    let (exit, err) = vm.wait_exit(BOOT);
    let out = vm.output();
    assert_eq!(exit.code(), Some(0), "{err}{out}");
    assert!(
        out.contains(
            r#"tiny-guest: cmdline "console=ttyS0 reboot=k panic=1 pci=off root=/dev/vda rw""#
        ),
        "the guest did not get the boot arguments:\n{out}"
    );
    assert!(
        out.contains("memmap 0x100000-0x40000000 type=1"),
        "not 1024 MiB:\n{out}"
    );
    assert!(!sock.exists(), "the socket outlived the VMM");
}

/// A boot that fails is the answer to InstanceStart (400), and the VMM
/// then exits with 250.
#[test]
fn a_kernel_that_cannot_boot_is_instance_starts_400() {
    require_kvm();
    let scratch = Scratch::new("badkernel");
    let kernel = scratch.0.join("vmlinux");
    std::fs::write(&kernel, b"this is not a kernel").unwrap();
    let sock = socket_path("fc-badkernel");
    let _ = std::fs::remove_file(&sock);
    let mut vm = VmProcess::start(&["run", "--api-sock", sock.to_str().unwrap()]);
    wait_for_socket(&sock);
    let body = format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display());
    assert_eq!(api(&sock, "PUT", "/boot-source", Some(&body)).0, 204);
    let (status, body) = api(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.starts_with(r#"{"fault_message":"cannot start the VM: "#),
        "{body}"
    );
    let (exit, out) = vm.wait_exit(BOOT);
    assert_eq!(exit.code(), Some(250), "{out}");
}

/// CPU time (user + system, clock ticks) of the thread called `name`.
fn thread_ticks(pid: u32, name: &str) -> Option<u64> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        // Fields after the command's closing parenthesis; utime and stime
        // are the 14th and 15th of the whole line.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        return Some(f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?);
    }
    None
}

fn ticks_over(pid: u32, d: Duration) -> u64 {
    let t0 = thread_ticks(pid, "vcpu0").expect("no vcpu0 thread");
    std::thread::sleep(d);
    thread_ticks(pid, "vcpu0").expect("no vcpu0 thread") - t0
}

/// `PATCH /vm` stops the guest and lets it run on; `GET /` says which.
/// An idle tiny guest sleeps in the idle port and uses no CPU either way,
/// so what shows the pause is that the guest does not follow a balloon
/// change until it is resumed.
#[test]
fn pause_stops_the_vcpus_and_resume_runs_them_again() {
    require_kvm();
    let sock = socket_path("fc-pause");
    let _ = std::fs::remove_file(&sock);
    let mut vm = VmProcess::start(&[
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--balloon",
        "amount_mib=0",
        "--cmdline",
        "tiny.alloc=8M tiny.balloon=on tiny.report-every=0 tiny.balloon-log=settled",
    ]);
    wait_for_socket(&sock);
    let (status, body) = api(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#));
    assert_eq!(status, 400, "pausing a VM that never started: {body}");
    assert_eq!(
        api(
            &sock,
            "PUT",
            "/actions",
            Some(r#"{"action_type": "InstanceStart"}"#)
        )
        .0,
        204
    );
    vm.wait_for("tiny-guest: virtio-balloon features", BOOT)
        .expect("guest did not run");
    let state = |sock: &Path| api(sock, "GET", "/", None).1;
    let target = |sock: &Path, mib: u32| {
        let body = format!(r#"{{"amount_mib": {mib}}}"#);
        assert_eq!(api(sock, "PATCH", "/balloon", Some(&body)).0, 204);
    };
    assert!(state(&sock).contains(r#""state":"Running""#));
    target(&sock, 1);
    vm.wait_for("tiny-guest: balloon settled actual=256 ", BOOT)
        .unwrap_or_else(|| panic!("a running guest did not follow:\n{}", vm.output()));

    let t = Instant::now();
    assert_eq!(
        api(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    // The guest sleeps in the idle port, in no KVM_RUN a kick could end:
    // the pause must wake it, not wait out its sleep (up to 1 s).
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "pausing took {:?}",
        t.elapsed()
    );
    assert!(state(&sock).contains(r#""state":"Paused""#));
    assert!(api(&sock, "GET", "/vm", None)
        .1
        .contains(r#""state":"Paused""#));
    target(&sock, 2);
    let period = Duration::from_millis(500);
    let paused = ticks_over(vm.pid(), period);
    assert!(
        paused <= 1,
        "a paused vCPU used {paused} ticks in {period:?}"
    );
    let out = vm.output();
    assert!(
        !out.contains("tiny-guest: balloon settled actual=512 "),
        "a paused guest followed a balloon change:\n{out}"
    );
    // Pausing twice is no error (Firecracker's answer too).
    assert_eq!(
        api(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );

    assert_eq!(
        api(&sock, "PATCH", "/vm", Some(r#"{"state": "Resumed"}"#)).0,
        204
    );
    assert!(state(&sock).contains(r#""state":"Running""#));
    vm.wait_for("tiny-guest: balloon settled actual=512 ", BOOT)
        .unwrap_or_else(|| panic!("a resumed guest did not follow:\n{}", vm.output()));

    // A paused VM still stops on SIGTERM.
    assert_eq!(
        api(&sock, "PATCH", "/vm", Some(r#"{"state": "Paused"}"#)).0,
        204
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) };
    let (exit, out) = vm.wait_exit(BOOT);
    assert_eq!(exit.code(), Some(143), "{out}");
}

/// `--config-file` in Firecracker's layout boots without the API; its
/// logger takes the VMM's messages and its metrics file gets a line.
#[test]
fn a_config_file_boots_without_the_api() {
    require_kvm();
    let scratch = Scratch::new("config");
    let kernel = scratch.tiny_guest();
    let log = scratch.0.join("vmm.log");
    let metrics = scratch.0.join("metrics.json");
    let file = scratch.0.join("vm.json");
    let config = format!(
        r#"{{
  "boot-source": {{"kernel_image_path": "{}", "boot_args": "tiny.touch=32M tiny.exit=9"}},
  "drives": [],
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64, "smt": false, "track_dirty_pages": false}},
  "network-interfaces": [],
  "logger": {{"log_path": "{}", "level": "Info"}},
  "metrics": {{"metrics_path": "{}"}}
}}"#,
        kernel.display(),
        log.display(),
        metrics.display()
    );
    std::fs::write(&file, config).unwrap();
    let mut vm = VmProcess::start(&["run", "--config-file", file.to_str().unwrap()]);
    let (exit, err) = vm.wait_exit(BOOT);
    let out = vm.output();
    assert_eq!(exit.code(), Some(9), "{err}{out}");
    assert!(out.contains("tiny-guest: touched 32 MiB"), "{out}");
    assert!(
        out.contains("memmap 0x100000-0x4000000 type=1"),
        "not 64 MiB:\n{out}"
    );
    assert!(metrics.exists(), "PUT /metrics did not create its file");

    // Drives are `--drive`'s: an image that does not open stops the boot,
    // named.
    std::fs::write(&file, r#"{"drives": [{"drive_id": "rootfs", "path_on_host": "/nonexistent/r.ext4", "is_root_device": true, "is_read_only": false}]}"#).unwrap();
    let mut vm = VmProcess::start(&["run", "--config-file", file.to_str().unwrap()]);
    let (exit, out) = vm.wait_exit(BOOT);
    assert_eq!(exit.code(), Some(250), "{out}");
    assert!(out.contains(r#"drive "rootfs""#), "{out}");
    // An interface over a TAP that does not exist stops the start, named.
    std::fs::write(
        &file,
        r#"{"network-interfaces": [{"iface_id": "eth0", "host_dev_name": "nettestnotap"}]}"#,
    )
    .unwrap();
    let mut vm = VmProcess::start(&["run", "--config-file", file.to_str().unwrap()]);
    let (exit, out) = vm.wait_exit(BOOT);
    assert_eq!(exit.code(), Some(250), "{out}");
    assert!(out.contains("nettestnotap"), "{out}");
    // A section we cannot use is refused by name, and nothing boots.
    std::fs::write(&file, r#"{"mmds-config": {"version": "V2"}}"#).unwrap();
    let mut vm = VmProcess::start(&["run", "--config-file", file.to_str().unwrap()]);
    let (exit, out) = vm.wait_exit(BOOT);
    assert_eq!(exit.code(), Some(250), "{out}");
    assert!(
        out.contains("mmds-config: unknown field `mmds-config`"),
        "{out}"
    );
    // --config-file replaces the options that describe the VM.
    let mut vm = VmProcess::start(&[
        "run",
        "--config-file",
        file.to_str().unwrap(),
        "--mem",
        "64M",
    ]);
    let (exit, out) = vm.wait_exit(BOOT);
    assert_eq!(exit.code(), Some(250), "{out}");
    assert!(out.contains("cannot be used with"), "{out}");
}

/// `--log-path` and `PUT /logger` take the VMM's own messages (its
/// standard error).
#[test]
fn the_log_path_gets_the_vmms_messages() {
    require_kvm();
    let scratch = Scratch::new("log");
    let log = scratch.0.join("vmm.log");
    let sock = socket_path("fc-log");
    for via_api in [false, true] {
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&sock);
        let mut args = vec!["run", "--cmdline", "tiny.hold=forever"];
        if via_api {
            args.extend(["--api-sock", sock.to_str().unwrap()]);
        } else {
            args.extend(["--log-path", log.to_str().unwrap()]);
        }
        let mut vm = VmProcess::start(&args);
        if via_api {
            wait_for_socket(&sock);
            let body = format!(r#"{{"log_path": "{}", "level": "Warning"}}"#, log.display());
            assert_eq!(api(&sock, "PUT", "/logger", Some(&body)).0, 204);
            let start = r#"{"action_type": "InstanceStart"}"#;
            assert_eq!(api(&sock, "PUT", "/actions", Some(start)).0, 204);
        }
        vm.wait_for("tiny-guest: hold forever", BOOT)
            .expect("guest did not run");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(vm.pid() as i32, libc::SIGTERM) };
        let (exit, out) = vm.wait_exit(BOOT);
        assert_eq!(exit.code(), Some(143), "{out}");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains("vmm: stopped by signal 15"),
            "api {via_api}: {text:?}"
        );
        assert!(!out.contains("stopped by signal"), "also on stderr: {out}");
    }
}
