//! The virtio-vsock device with the tiny guest's polling driver: host →
//! guest through `CONNECT`, guest → host through `<uds_path>_<port>`, the
//! connection bound, credit both ways, clean closes, resets, and a guest
//! that lies, all with real VMs.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_integration_tests::{api, poll_until, require_kvm, socket_path, VmProcess, MIB};

const BOOT: Duration = Duration::from_secs(20);
const LONG: Duration = Duration::from_secs(30);

/// The stream pattern of the tiny guest: the byte at offset `o`.
fn pattern(o: u64) -> u8 {
    (o % 251) as u8
}

fn pattern_bytes(from: u64, n: usize) -> Vec<u8> {
    (0..n as u64).map(|i| pattern(from + i)).collect()
}

/// A VM with a vsock device (CID 3) and an API socket; its files are
/// removed when it is dropped.
struct VsockVm {
    vm: VmProcess,
    uds: PathBuf,
    api: PathBuf,
}

impl VsockVm {
    /// The vsock socket of the VM `name` will start: known before it
    /// starts, so host listeners for guest ports ([`port_path`]) can be
    /// bound before the guest may connect to them.
    fn uds(name: &str) -> PathBuf {
        socket_path(&format!("{name}-v"))
    }

    fn start(name: &str, cmdline: &str) -> VsockVm {
        require_kvm();
        let uds = VsockVm::uds(name);
        let api = socket_path(name);
        let _ = std::fs::remove_file(&uds);
        let _ = std::fs::remove_file(&api);
        let vm = VmProcess::start(&[
            "run",
            "--mem",
            "64M",
            "--api-sock",
            api.to_str().unwrap(),
            "--boot-now",
            "--vsock",
            &format!("cid=3,uds={}", uds.display()),
            "--cmdline",
            cmdline,
        ]);
        let mut v = VsockVm { vm, uds, api };
        v.wait_line("virtio-vsock cid=3", BOOT);
        v
    }

    fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        match self.vm.wait_for(needle, timeout) {
            Some(l) => l.text,
            None => panic!("no line with {needle:?}:\n{}", self.vm.output()),
        }
    }

    fn metrics(&self) -> serde_json::Value {
        let (status, body) = api(&self.api, "GET", "/vsock/metrics", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    fn counter(&self, key: &str) -> u64 {
        let m = self.metrics();
        m.get(key)
            .or_else(|| m["rejections"].get(key))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("no {key} in {m}"))
    }

    /// Waits for the guest's exit and returns its status.
    fn exit_status(&mut self, timeout: Duration) -> Option<i32> {
        let (status, stderr) = self.vm.wait_exit(timeout);
        assert!(
            !stderr.contains("VMM error"),
            "{stderr}\n{}",
            self.vm.output()
        );
        status.code()
    }
}

impl Drop for VsockVm {
    fn drop(&mut self) {
        self.vm.kill();
        let _ = std::fs::remove_file(&self.uds);
        let _ = std::fs::remove_file(&self.api);
    }
}

/// Where the VMM connects a guest connection to host port `port`, for the
/// vsock socket `uds`.
fn port_path(uds: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", uds.display()))
}

/// Connects to guest port `port` through the VMM's socket; `Ok` with the
/// stream after `OK <port>`, `Err` with what came instead.
fn connect_guest(uds: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => break,
            Ok(1) => line.push(b[0]),
            Ok(_) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&line))),
            Err(e) => return Err(e.to_string()),
        }
    }
    let line = String::from_utf8(line).unwrap();
    match line.strip_prefix("OK ") {
        Some(p) if p.parse::<u32>().is_ok() => Ok(s),
        _ => Err(line),
    }
}

/// A host listener whose connections echo everything back (each on a
/// thread) until their guest side shuts down.
struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<usize>,
}

impl EchoServer {
    /// Listens at `path` (bound before this returns) until [`Self::finish`].
    fn start(path: &Path) -> EchoServer {
        let listener = UnixListener::bind(path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut workers = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(false).unwrap();
                            workers.push(std::thread::spawn(move || {
                                let mut r = s.try_clone().unwrap();
                                let mut w = s;
                                let _ = std::io::copy(&mut r, &mut w);
                                let _ = w.shutdown(std::net::Shutdown::Write);
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                let served = workers.len();
                for w in workers {
                    let _ = w.join();
                }
                served
            })
        };
        EchoServer { stop, thread }
    }

    /// Stops listening, waits for the connections to end (their guest
    /// sides must have shut down), and says how many there were.
    fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Reads `n` bytes (or up to EOF) and checks them against the pattern.
fn read_pattern(s: &mut UnixStream, n: usize) -> usize {
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < n {
        let k = s.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        assert_eq!(
            &buf[..k],
            &pattern_bytes(got as u64, k)[..],
            "pattern broken at {got}"
        );
        got += k;
    }
    got
}

#[test]
fn host_to_guest_echo_through_connect_configured_by_the_api() {
    require_kvm();
    let api_sock = socket_path("vs-api");
    let uds = socket_path("vs-api-v");
    let _ = std::fs::remove_file(&api_sock);
    let mut vm = VmProcess::start(&[
        "run",
        "--mem",
        "64M",
        "--api-sock",
        api_sock.to_str().unwrap(),
        "--wait-for-start",
        "--cmdline",
        "tiny.vsock=echo:1024:1,wait:3s",
    ]);
    poll_until(BOOT, || api_sock.exists().then_some(())).expect("no API socket");
    let body = format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, uds.display());
    let (status, reply) = api(&api_sock, "PUT", "/vsock", Some(&body));
    assert_eq!(status, 204, "{reply}");
    let (status, reply) = api(&api_sock, "GET", "/vsock", None);
    assert_eq!(status, 200);
    assert!(reply.contains(r#""activated":false"#), "{reply}");
    let (status, _) = api(
        &api_sock,
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    );
    assert_eq!(status, 204);
    vm.wait_for("vsock echo 1024: listening", BOOT)
        .unwrap_or_else(|| panic!("{}", vm.output()));
    let (status, _) = api(&api_sock, "PUT", "/vsock", Some(&body));
    assert_eq!(status, 409, "configured before boot only");

    let mut s = connect_guest(&uds, 1024).unwrap();
    let data = pattern_bytes(0, 256 * 1024);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    assert_eq!(
        read_pattern(&mut s, usize::MAX),
        256 * 1024,
        "all echoed, then EOF"
    );
    writer.join().unwrap();
    let line = vm
        .wait_for("vsock echo 1024: host port", BOOT)
        .unwrap_or_else(|| panic!("{}", vm.output()));
    assert!(line.text.contains("262144 bytes echoed"), "{}", line.text);
    let (status, reply) = api(&api_sock, "GET", "/vsock", None);
    assert_eq!(status, 200);
    assert!(reply.contains(r#""activated":true"#), "{reply}");
    let (_, m) = api(&api_sock, "GET", "/vsock/metrics", None);
    let m: serde_json::Value = serde_json::from_str(&m).unwrap();
    assert_eq!(m["host_initiated"], 1, "{m}");
    assert_eq!(m["established"], 1, "{m}");
    assert_eq!(m["closed_cleanly"], 1, "{m}");
    assert_eq!(m["tx_bytes"], 262144, "{m}");
    assert_eq!(m["rx_bytes"], 262144, "{m}");
    let rejected: u64 = m["rejections"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(rejected, 0, "{m}");
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(0), "{stderr}\n{}", vm.output());
    assert!(!uds.exists(), "the VMM removes its vsock socket");
    let _ = std::fs::remove_file(&api_sock);
}

#[test]
fn guest_to_host_through_the_port_path_and_clean_close() {
    // Listening before the guest boots: it connects at once.
    let server = EchoServer::start(&port_path(&VsockVm::uds("vs-g2h"), 1025));
    let mut vm = VsockVm::start("vs-g2h", "tiny.vsock=send:1025:256K");
    let line = vm.wait_line("vsock send 1025:", LONG);
    assert!(
        line.contains("sent 262144 bytes")
            && line.contains("received 262144 bytes, echo ok=yes")
            && line.ends_with("close=clean"),
        "{line}"
    );
    assert_eq!(vm.exit_status(BOOT), Some(0), "{}", vm.vm.output());
    assert_eq!(server.finish(), 1);
}

#[test]
fn nobody_listening_means_rst_both_ways() {
    let mut vm = VsockVm::start("vs-rst", "tiny.vsock=send:1026:1K,sink:2048");
    let line = vm.wait_line("vsock send 1026:", BOOT);
    assert_eq!(line, "tiny-guest: vsock send 1026: connection reset");
    vm.wait_line("vsock sink 2048: listening", BOOT);
    // The guest listens on 2048 only.
    let err = connect_guest(&vm.uds, 2049).unwrap_err();
    assert!(err.starts_with("EOF"), "{err}");
    assert_eq!(vm.counter("guest_connects_refused"), 1);
    assert_eq!(vm.counter("refused_by_guest"), 1);
    assert_eq!(vm.counter("connections"), 0);
    // And a bad CONNECT line just closes the stream.
    let mut s = UnixStream::connect(&vm.uds).unwrap();
    s.write_all(b"HELLO 1\n").unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    assert_eq!(vm.counter("host_bad_connect_lines"), 1);
}

/// 70 guest connections to one host port: 64 (the bound) are established
/// and echo, 6 are reset; all close cleanly. Then 70 host connections to
/// the guest: 64 get `OK`, 6 are closed. The VMM's memory with 64 idle
/// connections stays within 1 MiB of its memory with none.
#[test]
fn connections_up_to_and_past_the_bound() {
    let server = EchoServer::start(&port_path(&VsockVm::uds("vs-many"), 1027));
    let mut vm = VsockVm::start(
        "vs-many",
        "tiny.vsock=conns:1027:70,wait:1s,close,echo:1024",
    );
    let line = vm.wait_line("vsock conns 1027:", LONG);
    assert_eq!(
        line,
        "tiny-guest: vsock conns 1027: 70 requested, 64 established, 6 reset, 0 unanswered, 64 echoed"
    );
    let close = vm.wait_line("vsock close:", LONG);
    assert_eq!(
        close,
        "tiny-guest: vsock close: 64 connections, 64 closed cleanly, 0 reset, 0 timed out"
    );
    assert_eq!(vm.counter("connection_limit_refusals"), 6);
    assert_eq!(server.finish(), 64);

    vm.wait_line("vsock echo 1024: listening", BOOT);
    poll_until(Duration::from_secs(5), || {
        (vm.counter("connections") == 0).then_some(())
    })
    .expect("connections left open");
    let idle = vm.vm.anon_rss_bytes();
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..70 {
        match connect_guest(&vm.uds, 1024) {
            Ok(s) => open.push(s),
            Err(e) => {
                assert!(e.starts_with("EOF"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((open.len(), refused), (64, 6));
    assert_eq!(vm.counter("connections"), 64);
    let busy = vm.vm.anon_rss_bytes();
    eprintln!(
        "VMM anonymous RSS: {} KiB with no connection, {} KiB with 64 idle connections",
        idle >> 10,
        busy >> 10
    );
    assert!(busy < idle + MIB, "{idle} -> {busy}");
    // Each still echoes.
    for s in open.iter_mut() {
        s.write_all(&pattern_bytes(0, 100)).unwrap();
    }
    for s in open.iter_mut() {
        assert_eq!(read_pattern(s, 100), 100);
    }
    drop(open);
    poll_until(Duration::from_secs(10), || {
        (vm.counter("connections") == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("connections left open: {}", vm.metrics()));
    assert_eq!(vm.counter("closed_cleanly"), 64 + 64);
}

/// The host stops reading: the guest must stop at the credit it was
/// given (64 KiB buffered in the VMM at most), and go on once the host
/// reads again. The other way round, the device must stop at the guest's
/// 16 KiB credit while the guest consumes nothing.
#[test]
fn credit_exhaustion_both_ways() {
    let listener = UnixListener::bind(port_path(&VsockVm::uds("vs-credit"), 1028)).unwrap();
    let mut vm = VsockVm::start("vs-credit", "tiny.vsock=send:1028:4M,slowsink:1024:1s");
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    vm.wait_line("vsock send 1028: waiting for credit", LONG);
    let m1 = vm.metrics();
    let rss1 = vm.vm.anon_rss_bytes();
    std::thread::sleep(Duration::from_millis(500));
    let m2 = vm.metrics();
    let rss2 = vm.vm.anon_rss_bytes();
    assert_eq!(
        m1["tx_bytes"], m2["tx_bytes"],
        "the guest kept sending: {m2}"
    );
    assert!(m2["buffered_bytes"].as_u64().unwrap() <= 64 * 1024, "{m2}");
    assert!(
        m2["buffer_capacity_bytes"].as_u64().unwrap() <= 64 * 1024,
        "{m2}"
    );
    assert!(rss2 < rss1 + 256 * 1024, "VMM RSS grew {rss1} -> {rss2}");
    assert_eq!(m2["rejections"]["credit_exceeded"], 0, "{m2}");
    // Read it all: the guest goes on and finishes.
    assert_eq!(read_pattern(&mut host, 4 << 20), 4 << 20);
    drop(host);
    let line = vm.wait_line("vsock send 1028: sent", LONG);
    assert!(line.contains("sent 4194304 bytes"), "{line}");
    assert!(!line.contains("credit stalls=0"), "{line}");
    assert_eq!(vm.metrics()["buffered_bytes"], 0);

    vm.wait_line("vsock slowsink 1024: listening", BOOT);
    let mut s = connect_guest(&vm.uds, 1024).unwrap();
    let data = pattern_bytes(0, 1 << 20);
    s.write_all(&data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let line = vm.wait_line("vsock slowsink 1024: received", LONG);
    assert_eq!(
        line,
        "tiny-guest: vsock slowsink 1024: received 1048576 bytes, most held 16384 of 16384, credit respected=yes, pattern ok=yes"
    );
    assert_eq!(vm.exit_status(BOOT), Some(0), "{}", vm.vm.output());
}

/// A guest that lies: each lie is answered as it should be and counted,
/// and the device still carries connections afterwards, both ways.
///
/// Everything the test reads from the VMM (counters, `GET /vm`) it reads
/// while the guest still runs: the guest's last order waits for one host
/// connection, which the test makes only after its reads, and the guest
/// ends the VM once that connection closes. Host listeners are bound
/// before the VM starts, and stay until the test stops them.
#[test]
fn a_lying_guest_gets_rst_and_counters_and_the_vmm_keeps_serving() {
    let cases = [
        ("short-header", "header_too_short"),
        ("len-beyond-chain", "len_beyond_chain"),
        ("wrong-src-cid", "wrong_src_cid"),
        ("wrong-dst-cid", "wrong_dst_cid"),
        ("unknown-op", "unknown_op"),
        ("bad-type", "unsupported_type"),
        ("payload-on-request", "payload_on_control_op"),
        ("desc-outside-memory", "descriptor_outside_memory"),
        ("desc-loop", "looping_chain"),
        ("rx-readonly", "wrong_direction"),
        ("credit-overrun:1030", "credit_exceeded"),
        ("data-after-shutdown:1030", "data_after_shutdown"),
    ];
    let mut orders: Vec<String> = cases.iter().map(|(c, _)| format!("evil:{c}")).collect();
    orders.push("flood:1031:1000".into());
    orders.push("send:1029:64K".into());
    orders.push("echo:1024:1".into());
    // 1030 accepts and never reads; 1029 echoes; nobody at 1031.
    let uds = VsockVm::uds("vs-evil");
    let sink = UnixListener::bind(port_path(&uds, 1030)).unwrap();
    let echo = EchoServer::start(&port_path(&uds, 1029));
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            sink.set_nonblocking(true).unwrap();
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok((s, _)) = sink.accept() {
                    held.push(s);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut vm = VsockVm::start("vs-evil", &format!("tiny.vsock={}", orders.join(",")));
    for (case, counter) in cases {
        let name = case.split(':').next().unwrap();
        let line = vm.wait_line(&format!("vsock evil {name}: answer="), LONG);
        assert!(line.ends_with("ok=yes"), "{line}\n{}", vm.vm.output());
        assert!(vm.counter(counter) >= 1, "{case}: {}", vm.metrics());
    }
    let flood = vm.wait_line("vsock flood 1031:", LONG);
    assert!(
        flood.contains("1000 requests") && flood.contains("0 accepted, 1000 reset, 0 unanswered"),
        "{flood}"
    );
    assert!(vm.counter("guest_connects_refused") >= 1000);
    let send = vm.wait_line("vsock send 1029:", LONG);
    assert!(
        send.contains("sent 65536 bytes") && send.contains("echo ok=yes"),
        "{send}"
    );
    vm.wait_line("vsock echo 1024: listening", LONG);
    let (status, _) = api(&vm.api, "GET", "/vm", None);
    assert_eq!(status, 200);
    // A host-initiated connection still works; closing it ends the guest.
    let mut s = connect_guest(&vm.uds, 1024).unwrap();
    s.write_all(&pattern_bytes(0, 100)).unwrap();
    assert_eq!(read_pattern(&mut s, 100), 100);
    drop(s);
    assert_eq!(vm.exit_status(BOOT), Some(0), "{}", vm.vm.output());
    stop.store(true, Ordering::Relaxed);
    holder.join().unwrap();
    assert_eq!(echo.finish(), 1);
}
