//! The per-VM API of `vmm run --api-sock` over a real Unix socket.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_integration_tests::{api, poll_until, require_kvm, socket_path, vmm_bin, VmProcess};

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
        "--boot-now",
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

/// Threads of process `pid`.
fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The API serves many clients at once (60 requests from 12 clients) with
/// the threads the VMM started with: no thread is created per connection (under memory pressure a
/// thread that cannot be created would abort the VMM).
#[test]
fn many_api_clients_are_served_without_new_threads() {
    require_kvm();
    let sock = socket_path("threads");
    let mut vm = VmProcess::start(&[
        "run",
        "--api-sock",
        sock.to_str().unwrap(),
        "--boot-now",
        "--cmdline",
        "tiny.hold=forever",
    ]);
    vm.wait_for("tiny-guest: hold", BOOT)
        .expect("guest did not run");
    std::thread::sleep(Duration::from_millis(100));
    let pid = vm.pid();
    let at_start = thread_count(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, most) = (stop.clone(), most.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                most.fetch_max(thread_count(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    // 12 at a time: below the API's 16 connections, beyond which it
    // answers 503.
    let clients: Vec<_> = (0..12)
        .map(|_| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|_| api(&sock, "GET", "/vm", None).0)
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), [200; 5]);
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!(
        most.load(Ordering::Relaxed),
        at_start,
        "the VMM created threads for connections"
    );
    vm.kill();
    let _ = std::fs::remove_file(&sock);
}

/// A child killed and reaped when dropped, even when a test panics.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `vmm args` with descriptors 3 and up closed, at most `nofile`
/// descriptors, and stderr on a pipe whose reading end is closed: every
/// write to stderr fails (EPIPE), as one can with ENOMEM or ENOSPC.
fn start_starved(args: &[&str], nofile: Option<u64>) -> Reaped {
    let mut cmd = Command::new(vmm_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            if let Some(n) = nofile {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("start vmm");
    drop(child.stderr.take());
    Reaped(child)
}

/// Out of file descriptors, `accept` fails (EMFILE) while clients keep
/// connecting, and stderr cannot be written: the API backs off and
/// serves again once descriptors are free, and the VMM lives on. (The
/// VMM used to report the error with `eprintln!`, which panics when
/// stderr fails, and killed its API thread or, in release builds, itself.)
#[test]
fn running_out_of_descriptors_does_not_kill_the_api() {
    require_kvm();
    let args = |sock: &Path| {
        [
            "run".to_string(),
            "--api-sock".into(),
            sock.to_str().unwrap().into(),
            "--boot-now".into(),
            "--cmdline".into(),
            "tiny.hold=forever".into(),
        ]
    };
    // How many descriptors the VMM needs when it runs.
    let probe_sock = socket_path("fds-probe");
    let probe_args = args(&probe_sock);
    let probe_args: Vec<&str> = probe_args.iter().map(String::as_str).collect();
    let probe = start_starved(&probe_args, None);
    let running = |sock: &Path| {
        poll_until(BOOT, || {
            let body = sock.exists().then(|| api(sock, "GET", "/vm", None).1)?;
            body.contains("\"state\":\"Running\"").then_some(())
        })
        .expect("the VM did not boot")
    };
    running(&probe_sock);
    // The vCPU thread may still be opening what it keeps open.
    std::thread::sleep(Duration::from_millis(300));
    let needed = std::fs::read_dir(format!("/proc/{}/fd", probe.0.id()))
        .unwrap()
        .count() as u64;
    drop(probe);
    let _ = std::fs::remove_file(&probe_sock);

    // Room for two more: the third client is left to accept() with EMFILE.
    let sock = socket_path("fds");
    let vm_args = args(&sock);
    let vm_args: Vec<&str> = vm_args.iter().map(String::as_str).collect();
    let mut vm = start_starved(&vm_args, Some(needed + 2));
    running(&sock);
    // (Connecting fails only once the API is gone.)
    let hogs: Vec<UnixStream> = (0..8)
        .filter_map(|_| UnixStream::connect(&sock).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vm.0.try_wait().unwrap().is_none(),
        "the VMM died when it ran out of descriptors"
    );
    drop(hogs);
    let answered = poll_until(Duration::from_secs(10), || {
        let mut s = UnixStream::connect(&sock).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(b"GET /vm HTTP/1.1\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.starts_with("HTTP/1.1 200 ").then_some(out)
    });
    assert!(
        answered.is_some(),
        "the API did not answer after descriptors were free again"
    );
    assert!(vm.0.try_wait().unwrap().is_none(), "the VMM died");
    drop(vm);
    let _ = std::fs::remove_file(&sock);
}

/// `(size, resident)` of `/proc/<pid>/statm` in bytes; `None` once the
/// process has no address space (exiting, a zombie) or is gone.
fn statm(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let size = fields.next()?? * 4096;
    let resident = fields.next()?? * 4096;
    (size > 0).then_some((size, resident))
}

/// `ReleaseMemory` on a guest that touched 256 MiB: the VMM's resident
/// memory falls by at least 250 MiB while the VMM still runs (its 320 MiB
/// guest RAM mapping still there), the answer says what was released, and
/// the VMM then exits with status 253 and removes its socket.
#[test]
fn release_memory_gives_guest_ram_back_before_the_vmm_exits() {
    require_kvm();
    const MIB: u64 = 1 << 20;
    let sock = socket_path("release");
    let mut vm = VmProcess::start(&[
        "run",
        "--mem",
        "320M",
        "--api-sock",
        sock.to_str().unwrap(),
        "--boot-now",
        "--cmdline",
        "tiny.touch=256M tiny.hold=forever",
    ]);
    vm.wait_for("tiny-guest: hold", BOOT)
        .expect("guest did not run");
    let pid = vm.pid();
    let (_, before) = statm(pid).unwrap();
    assert!(before >= 256 * MIB, "RSS {before} after touching 256 MiB");

    // The lowest RSS seen while the guest RAM mapping still existed, i.e.
    // before the exit path tore the address space down.
    let lowest_alive = std::thread::spawn(move || {
        let mut lowest = u64::MAX;
        while let Some((size, resident)) = statm(pid) {
            if size >= 320 * MIB {
                lowest = lowest.min(resident);
            }
            std::thread::yield_now();
        }
        lowest
    });
    let (status, body) = api(
        &sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "ReleaseMemory"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let field = |k: &str| {
        answer[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k} in {body}"))
    };
    assert!(field("released_bytes") >= 250 * MIB, "{body}");
    assert_eq!(
        field("released_bytes"),
        field("vmm_rss_before_bytes") - field("vmm_rss_after_bytes")
    );
    assert_eq!(field("guest_ram_bytes"), 320 * MIB, "{body}");
    assert_eq!(field("regions"), 1, "{body}");
    assert!((1..=2).contains(&field("threads")), "{body}");
    assert_eq!(field("madvise_calls"), 160, "2 MiB calls: {body}");
    assert!(field("madvise_us") > 0, "{body}");
    assert!(
        field("elapsed_us") >= field("madvise_us") + field("stop_vcpus_us"),
        "{body}"
    );

    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(253), "{stderr}");
    assert!(stderr.contains("guest RAM released on request"), "{stderr}");
    assert!(!sock.exists(), "socket left behind");
    // The poller's last look before the teardown may fall in the middle
    // of the release on a loaded host (it failed by 6 MiB at load 6), so
    // it shows the release under way, not its end: the VMM's own figures
    // above give that.
    let lowest = lowest_alive.join().unwrap();
    assert!(
        lowest <= before - 128 * MIB,
        "RSS never fell by 128 MiB while the VMM was alive: {before} -> {lowest}"
    );
}
