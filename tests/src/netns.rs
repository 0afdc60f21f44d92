//! A network namespace of a test's own, with a TAP in it, removed
//! whatever happens; and ICMP pings on a raw socket there (tests run as
//! root; no `ping` binary is relied on).

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The TAP each namespace has.
pub const TAP: &str = "nettesttap0";
/// The host's address on it (/24).
pub const HOST_IP: &str = "10.0.0.1";
/// The guest's address in the tests.
pub const GUEST_IP: &str = "10.0.0.2";
/// The guest's MAC in the tests.
pub const GUEST_MAC: &str = "02:00:00:0a:00:02";

pub fn ip(args: &[&str]) -> std::process::Output {
    Command::new("ip").args(args).output().expect("run ip")
}

/// A network namespace of the test's own with a TAP `TAP` at
/// `HOST_IP`/24, up. Dropping it deletes the TAP and the namespace.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
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

    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["netns", "exec", &self.0, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    pub fn exec_ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(out.status.success(), "ip {args:?} in {}: {out:?}", self.0);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A UDP socket bound in the namespace: created on a thread that
    /// entered it (`setns` changes only the calling thread).
    pub fn udp_socket(&self) -> UdpSocket {
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
    pub fn icmp_socket(&self) -> OwnedFd {
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
pub fn checksum(b: &[u8]) -> u16 {
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
/// socket, waiting up to 3 s for each reply; checks each reply and returns
/// the round trip times.
pub fn pings(fd: &OwnedFd, n: u16) -> Vec<Duration> {
    (0..n)
        .map(|seq| {
            ping(fd, seq, Duration::from_secs(3)).unwrap_or_else(|| {
                panic!(
                    "no reply to ping {seq}: {}",
                    std::io::Error::last_os_error()
                )
            })
        })
        .collect()
}

/// One ICMP echo request to the guest (56 bytes of data, like `ping`);
/// the round trip time of its checked reply, or `None` when none came
/// within `timeout`. Replies to earlier requests are skipped.
pub fn ping(fd: &OwnedFd, seq: u16, timeout: Duration) -> Option<Duration> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
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
    // The raw socket sees every ICMP packet that arrives: wait for the
    // reply to this request.
    loop {
        let mut buf = [0u8; 2048];
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let got = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if got <= 0 || t0.elapsed() > timeout {
            return None;
        }
        let pkt = &buf[..got as usize];
        let ihl = usize::from(pkt[0] & 0xf) * 4;
        let icmp = &pkt[ihl..];
        if icmp.len() >= 8 && icmp[0] == 0 && icmp[4..8] == req[4..8] {
            let rtt = t0.elapsed();
            assert_eq!(&pkt[12..16], &guest.octets(), "reply from elsewhere");
            assert_eq!(checksum(icmp), 0, "bad ICMP checksum");
            assert_eq!(&icmp[8..], &req[8..], "reply data differs");
            return Some(rtt);
        }
    }
}

/// `avg`, `min`, `median`, `max` of round trip times, in microseconds.
pub fn summary(rtts: &[Duration]) -> String {
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
