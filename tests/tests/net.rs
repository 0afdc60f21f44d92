//! The virtio-net device with the tiny guest's polling driver, in real
//! VMs, over a real TAP in a network namespace each test creates (and
//! removes, whatever happens): the host ARPs for the guest and gets its
//! MAC, pings are answered and UDP datagrams come back echoed, the VMM counts both directions,
//! and malformed transmit chains are refused and counted while the VMM
//! keeps serving.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use vmm_integration_tests::{api, require_kvm, socket_path, VmProcess};

const BOOT: Duration = Duration::from_secs(30);
const TAP: &str = "nettesttap0";
const HOST_IP: &str = "10.0.0.1";
const GUEST_IP: &str = "10.0.0.2";
const GUEST_MAC: &str = "02:00:00:0a:00:02";

fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

/// A network namespace of the test's own with a TAP `TAP` at
/// `HOST_IP`/24, up. Dropping it deletes the TAP and the namespace.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "nettest-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = ip(&["netns", "add", &name]);
        assert!(out.status.success(), "ip netns add: {out:?}");
        let ns = Netns(name);
        for cmd in [
            &["link", "set", "lo", "up"][..],
            &["tuntap", "add", TAP, "mode", "tap"],
            &["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP],
            &["link", "set", TAP, "up"],
        ] {
            ns.exec_ok(cmd);
        }
        ns
    }

    fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["netns", "exec", &self.0, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(out.status.success(), "ip {args:?} in {}: {out:?}", self.0);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A UDP socket bound in the namespace: created on a thread that
    /// entered it (`setns` changes only the calling thread).
    fn udp_socket(&self) -> UdpSocket {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd; it affects only this
            // short-lived thread.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            UdpSocket::bind((HOST_IP, 0)).unwrap()
        })
        .join()
        .unwrap()
    }

    /// A raw ICMP socket in the namespace (the test runs as root; there
    /// is no `ping` binary to rely on).
    fn icmp_socket(&self) -> OwnedFd {
        let path = format!("/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd; it affects only this
            // short-lived thread.
            let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd is a fresh descriptor nobody else owns.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .join()
        .unwrap()
    }
}

/// The Internet checksum (RFC 1071).
fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|p| u32::from(u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Pings the guest `n` times (56 bytes of data, like `ping`) on a raw
/// socket; checks each reply and returns the round trip times.
fn pings(fd: &OwnedFd, n: u16) -> Vec<Duration> {
    let tv = libc::timeval {
        tv_sec: 3,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads a timeval of the given size from `tv`.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    let guest: std::net::Ipv4Addr = GUEST_IP.parse().unwrap();
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(guest).to_be(),
        },
        sin_zero: [0; 8],
    };
    let id = std::process::id() as u16;
    let mut rtts = Vec::new();
    for seq in 0..n {
        let mut req = vec![8, 0, 0, 0];
        req.extend(id.to_be_bytes());
        req.extend(seq.to_be_bytes());
        req.extend((0..56).map(|i| i as u8 ^ seq as u8));
        let sum = checksum(&req);
        req[2..4].copy_from_slice(&sum.to_be_bytes());
        let t0 = Instant::now();
        // SAFETY: sendto reads `req` and a sockaddr_in of the given size.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            sent,
            req.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
        // The raw socket sees every ICMP packet that arrives: wait for
        // the reply to this request.
        loop {
            let mut buf = [0u8; 2048];
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(
                got > 0,
                "no reply to ping {seq}: {}",
                std::io::Error::last_os_error()
            );
            let pkt = &buf[..got as usize];
            let ihl = usize::from(pkt[0] & 0xf) * 4;
            let icmp = &pkt[ihl..];
            if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..8] == req[4..8] {
                rtts.push(t0.elapsed());
                assert_eq!(&pkt[12..16], &guest.octets(), "reply from elsewhere");
                assert_eq!(checksum(icmp), 0, "bad ICMP checksum");
                assert_eq!(&icmp[8..], &req[8..], "reply data differs");
                break;
            }
        }
    }
    rtts
}

/// `avg`, `min`, `median`, `max` of round trip times, in microseconds.
fn summary(rtts: &[Duration]) -> String {
    let mut us: Vec<u128> = rtts.iter().map(|d| d.as_micros()).collect();
    us.sort();
    format!(
        "avg {} us, min {} us, median {} us, max {} us",
        us.iter().sum::<u128>() / us.len() as u128,
        us[0],
        us[us.len() / 2],
        us[us.len() - 1]
    )
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.exec(&["link", "del", TAP]);
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn start(ns: &Netns, cmdline: &str, sock: &std::path::Path) -> VmProcess {
    require_kvm();
    let net = format!("id=eth0,tap={TAP},mac={GUEST_MAC}");
    VmProcess::start_in_netns(
        &ns.0,
        &[
            "run",
            "--mem",
            "64M",
            "--net",
            &net,
            "--api-sock",
            sock.to_str().unwrap(),
            "--boot-now",
            "--cmdline",
            cmdline,
        ],
    )
}

fn line(vm: &mut VmProcess, needle: &str) -> String {
    match vm.wait_for(needle, BOOT) {
        Some(l) => l.text,
        None => panic!("no line with {needle:?}:\n{}", vm.output()),
    }
}

/// Sends `n` datagrams to the guest's echo and checks each comes back;
/// returns the round trip times.
fn udp_round_trips(sock: &UdpSocket, n: usize) -> Vec<Duration> {
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut rtts = Vec::new();
    let mut buf = [0u8; 2048];
    for i in 0..n {
        let msg = format!("tiny echo {i}");
        let t0 = Instant::now();
        sock.send_to(msg.as_bytes(), (GUEST_IP, 7777)).unwrap();
        let (len, from) = sock
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("no echo of datagram {i}: {e}"));
        rtts.push(t0.elapsed());
        assert_eq!(from.to_string(), format!("{GUEST_IP}:7777"));
        assert_eq!(&buf[..len], msg.as_bytes());
    }
    rtts
}

fn metrics(sock: &std::path::Path) -> serde_json::Value {
    let (status, body) = api(sock, "GET", "/network-interfaces/eth0/metrics", None);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn the_host_gets_the_guests_mac_by_arp_its_pings_answered_and_udp_echoed() {
    let ns = Netns::new("echo");
    let sock = socket_path("net-echo");
    let _ = std::fs::remove_file(&sock);
    let mut vm = start(&ns, "tiny.net=ip:10.0.0.2,serve:10s", &sock);
    let ready = line(&mut vm, "virtio-net mac=");
    assert!(
        ready.contains(&format!("mac={GUEST_MAC} features offered=0x100000020")),
        "{ready}"
    );
    line(&mut vm, "net serve 10.0.0.2");
    let udp = ns.udp_socket();
    let rtts = udp_round_trips(&udp, 100);
    let ping_rtts = pings(&ns.icmp_socket(), 100);
    // The ARP reply put the guest's MAC in the host's neighbour table.
    let neigh = ns.exec_ok(&["neigh", "show", GUEST_IP, "dev", TAP]);
    assert!(neigh.contains(&format!("lladdr {GUEST_MAC}")), "{neigh}");
    let m = metrics(&sock);
    // At least 1 ARP reply, 100 UDP and 100 ICMP echoes out, as many in
    // (IPv6 router solicitations may add some).
    assert!(m["tx_packets"].as_u64().unwrap() >= 201, "{m}");
    assert!(m["rx_packets"].as_u64().unwrap() >= 201, "{m}");
    assert!(
        m["tx_bytes"].as_u64().unwrap() >= 100 * (14 + 20 + 8 + 11),
        "{m}"
    );
    assert_eq!(
        m["rejections"]
            .as_object()
            .unwrap()
            .values()
            .filter(|v| *v != 0)
            .count(),
        0,
        "{m}"
    );
    assert_eq!(m["rx_bad_frames"], 0, "{m}");
    let (status, body) = api(&sock, "GET", "/network-interfaces/nope/metrics", None);
    assert_eq!(status, 404, "{body}");
    let served = line(&mut vm, "net served:");
    assert!(
        served.contains(" icmp=100 udp=100 ") && served.contains(" arp="),
        "{served}"
    );
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(0), "{stderr}\n{}", vm.output());
    eprintln!("udp echo, 100 datagrams: {}", summary(&rtts));
    eprintln!("ping, 100 echo requests: {}", summary(&ping_rtts));
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn malformed_transmit_chains_are_counted_and_the_vmm_keeps_serving() {
    let ns = Netns::new("evil");
    let sock = socket_path("net-evil");
    let _ = std::fs::remove_file(&sock);
    let mut vm = start(
        &ns,
        "tiny.net=evil-long,evil-bad-desc,ip:10.0.0.2,serve:5s",
        &sock,
    );
    assert_eq!(
        line(&mut vm, "net evil-long:"),
        "tiny-guest: net evil-long: 43 descriptors, 66048 bytes, returned used=0"
    );
    assert_eq!(
        line(&mut vm, "net evil-bad-desc:"),
        "tiny-guest: net evil-bad-desc: returned used=0"
    );
    line(&mut vm, "net serve 10.0.0.2");
    let m = metrics(&sock);
    assert_eq!(m["rejections"]["tx_too_large"], 1, "{m}");
    assert_eq!(m["rejections"]["descriptor_outside_memory"], 1, "{m}");
    assert_eq!(m["tx_chains"], 2, "{m}");
    assert_eq!(m["tx_packets"], 0, "{m}");
    // The device still moves frames both ways.
    let udp = ns.udp_socket();
    udp_round_trips(&udp, 3);
    let m = metrics(&sock);
    assert!(m["tx_packets"].as_u64().unwrap() >= 4, "{m}");
    assert_eq!(m["rejections"]["tx_too_large"], 1, "{m}");
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(0), "{stderr}\n{}", vm.output());
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn a_tap_that_does_not_exist_stops_the_start_and_is_not_created() {
    require_kvm();
    let ns = Netns::new("none");
    let mut vm = VmProcess::start_in_netns(&ns.0, &["run", "--net", "id=eth0,tap=nettestgone0"]);
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(250), "{stderr}");
    assert!(stderr.contains("nettestgone0"), "{stderr}");
    let links = ns.exec_ok(&["link", "show"]);
    assert!(!links.contains("nettestgone0"), "{links}");
}
