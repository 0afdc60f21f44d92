//! The virtio-net device with the tiny guest's polling driver, in real
//! VMs, over a real TAP in a network namespace each test creates (and
//! removes, whatever happens): the host ARPs for the guest and gets its
//! MAC, pings are answered and UDP datagrams come back echoed, the VMM counts both directions,
//! and malformed transmit chains are refused and counted while the VMM
//! keeps serving.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use vmm_integration_tests::netns::{pings, summary, Netns, GUEST_IP, GUEST_MAC, TAP};
use vmm_integration_tests::{api, require_kvm, socket_path, VmProcess};

const BOOT: Duration = Duration::from_secs(30);

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
