//! The guest's end of `tiny.net=serve`: answers to Ethernet frames, pure
//! functions over byte slices. It answers ARP requests for its IPv4
//! address (with its MAC), ICMP echo requests to it (echo replies) and
//! UDP datagrams to it (the same payload back to the sender's port);
//! anything else gets no answer.
//!
//! Every length and offset comes from the frame, which the host network
//! wrote: all are checked against the frame's length before use, and an
//! answer is built only if it fits `out`.
//!
//! This file depends on nothing else in the guest, so its tests run on
//! the host: `rustc --edition 2021 --test netproto.rs -o /tmp/t && /tmp/t`.

/// What a frame was, for the guest's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Arp,
    Icmp,
    Udp,
    /// Not for us, or not something we answer.
    Other,
}

const ETH_HLEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_UDP: u8 = 17;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// The Internet checksum (RFC 1071) of `b`.
pub fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in b.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds into `out` the answer to `frame` (an Ethernet frame, no vnet
/// header) from a host at `mac`/`ip`; returns what the frame was and the
/// answer's length (0: no answer).
pub fn answer(frame: &[u8], mac: [u8; 6], ip: [u8; 4], out: &mut [u8]) -> (Kind, usize) {
    if frame.len() < ETH_HLEN {
        return (Kind::Other, 0);
    }
    match be16(frame, 12) {
        ETHERTYPE_ARP => (Kind::Arp, arp(frame, mac, ip, out)),
        ETHERTYPE_IPV4 => ipv4(frame, mac, ip, out),
        _ => (Kind::Other, 0),
    }
}

/// An ARP request (Ethernet, IPv4) for `ip`: the reply, 42 bytes.
fn arp(frame: &[u8], mac: [u8; 6], ip: [u8; 4], out: &mut [u8]) -> usize {
    let a = &frame[ETH_HLEN..];
    // htype 1, ptype IPv4, hlen 6, plen 4, op 1 (request).
    if a.len() < 28 || a[..8] != [0, 1, 8, 0, 6, 4, 0, 1] || a[24..28] != ip {
        return 0;
    }
    if out.len() < ETH_HLEN + 28 {
        return 0;
    }
    let (sender_mac, sender_ip) = (&a[8..14], &a[14..18]);
    out[..6].copy_from_slice(sender_mac);
    out[6..12].copy_from_slice(&mac);
    put16(out, 12, ETHERTYPE_ARP);
    let r = &mut out[ETH_HLEN..ETH_HLEN + 28];
    r[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    r[8..14].copy_from_slice(&mac);
    r[14..18].copy_from_slice(&ip);
    r[18..24].copy_from_slice(sender_mac);
    r[24..28].copy_from_slice(sender_ip);
    ETH_HLEN + 28
}

/// An IPv4 packet to `ip`: the ICMP echo reply or the UDP echo.
fn ipv4(frame: &[u8], mac: [u8; 6], ip: [u8; 4], out: &mut [u8]) -> (Kind, usize) {
    let p = &frame[ETH_HLEN..];
    if p.len() < 20 || p[0] >> 4 != 4 {
        return (Kind::Other, 0);
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let total = usize::from(be16(p, 2));
    // Fragments (MF set or an offset) are not answered.
    let fragment = be16(p, 6) & 0x3fff != 0;
    if ihl < 20 || total < ihl || total > p.len() || fragment || p[16..20] != ip {
        return (Kind::Other, 0);
    }
    if checksum(&p[..ihl]) != 0 {
        return (Kind::Other, 0);
    }
    let (proto, payload) = (p[9], &p[ihl..total]);
    let kind = match proto {
        IPPROTO_ICMP if payload.len() >= 8 && payload[0] == 8 && checksum(payload) == 0 => {
            Kind::Icmp
        }
        IPPROTO_UDP if payload.len() >= 8 && usize::from(be16(payload, 4)) == payload.len() => {
            Kind::Udp
        }
        _ => return (Kind::Other, 0),
    };
    // Our answer: a 20-byte IP header (options dropped), the same payload
    // with its header changed.
    let len = ETH_HLEN + 20 + payload.len();
    if out.len() < len {
        return (kind, 0);
    }
    out[..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&mac);
    put16(out, 12, ETHERTYPE_IPV4);
    let h = &mut out[ETH_HLEN..ETH_HLEN + 20];
    h[0] = 0x45;
    h[1] = 0;
    put16(h, 2, (20 + payload.len()) as u16);
    h[4..6].copy_from_slice(&p[4..6]);
    put16(h, 6, 0x4000); // don't fragment
    h[8] = 64;
    h[9] = proto;
    put16(h, 10, 0);
    h[12..16].copy_from_slice(&ip);
    h[16..20].copy_from_slice(&p[12..16]);
    let sum = checksum(h);
    put16(h, 10, sum);
    let body = &mut out[ETH_HLEN + 20..len];
    body.copy_from_slice(payload);
    match kind {
        Kind::Icmp => {
            body[0] = 0; // echo reply
            put16(body, 2, 0);
            let sum = checksum(body);
            put16(body, 2, sum);
        }
        _ => {
            // Ports swapped; no checksum (allowed over IPv4).
            body[..2].copy_from_slice(&payload[2..4]);
            body[2..4].copy_from_slice(&payload[..2]);
            put16(body, 6, 0);
        }
    }
    (kind, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const IP: [u8; 4] = [10, 0, 0, 2];
    const HOST_MAC: [u8; 6] = [0xaa, 1, 2, 3, 4, 5];
    const HOST_IP: [u8; 4] = [10, 0, 0, 1];

    fn eth(dst: [u8; 6], ethertype: u16, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(dst);
        f.extend(HOST_MAC);
        f.extend(ethertype.to_be_bytes());
        f.extend(body);
        f
    }

    fn ip(proto: u8, dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0];
        h.extend(((20 + payload.len()) as u16).to_be_bytes());
        h.extend([0x12, 0x34, 0, 0, 64, proto, 0, 0]);
        h.extend(HOST_IP);
        h.extend(dst);
        let sum = checksum(&h);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
        h.extend(payload);
        h
    }

    fn arp_request(target: [u8; 4]) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
        a.extend(HOST_MAC);
        a.extend(HOST_IP);
        a.extend([0; 6]);
        a.extend(target);
        eth([0xff; 6], ETHERTYPE_ARP, &a)
    }

    #[test]
    fn arp_requests_for_our_address_get_our_mac() {
        let mut out = [0u8; 1514];
        let (k, n) = answer(&arp_request(IP), MAC, IP, &mut out);
        assert_eq!((k, n), (Kind::Arp, 42));
        assert_eq!(&out[..6], &HOST_MAC);
        assert_eq!(&out[6..12], &MAC);
        assert_eq!(&out[14 + 6..14 + 8], &[0, 2]);
        assert_eq!(&out[14 + 8..14 + 14], &MAC);
        assert_eq!(&out[14 + 14..14 + 18], &IP);
        assert_eq!(&out[14 + 24..14 + 28], &HOST_IP);
        assert_eq!(answer(&arp_request([10, 0, 0, 3]), MAC, IP, &mut out).1, 0);
        assert_eq!(answer(&arp_request(IP)[..30], MAC, IP, &mut out).1, 0);
        assert_eq!(answer(&arp_request(IP), MAC, IP, &mut out[..41]).1, 0);
    }

    #[test]
    fn udp_is_echoed_to_the_sender() {
        let mut udp = vec![0x30, 0x39, 0x13, 0x88, 0, 13, 0xab, 0xcd];
        udp.extend(b"hello");
        let f = eth(MAC, ETHERTYPE_IPV4, &ip(IPPROTO_UDP, IP, &udp));
        let mut out = [0u8; 1514];
        let (k, n) = answer(&f, MAC, IP, &mut out);
        assert_eq!((k, n), (Kind::Udp, 14 + 20 + 13));
        let h = &out[14..34];
        assert_eq!(checksum(h), 0);
        assert_eq!((&h[12..16], &h[16..20]), (&IP[..], &HOST_IP[..]));
        assert_eq!(&out[34..42], &[0x13, 0x88, 0x30, 0x39, 0, 13, 0, 0]);
        assert_eq!(&out[42..n], b"hello");
        // Not to us, a bad length or a bad header checksum: no answer.
        let other = eth(MAC, ETHERTYPE_IPV4, &ip(IPPROTO_UDP, [10, 0, 0, 9], &udp));
        assert_eq!(answer(&other, MAC, IP, &mut out).1, 0);
        let mut bad = f.clone();
        bad[14 + 20 + 5] = 200;
        assert_eq!(answer(&bad, MAC, IP, &mut out).1, 0);
        let mut bad = f.clone();
        bad[14 + 8] = 1;
        assert_eq!(answer(&bad, MAC, IP, &mut out).1, 0);
        assert_eq!(answer(&f[..40], MAC, IP, &mut out).1, 0);
    }

    #[test]
    fn pings_are_answered() {
        let mut icmp = vec![8, 0, 0, 0, 0, 7, 0, 1];
        icmp.extend(0..56u8);
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let f = eth(MAC, ETHERTYPE_IPV4, &ip(IPPROTO_ICMP, IP, &icmp));
        let mut out = [0u8; 1514];
        let (k, n) = answer(&f, MAC, IP, &mut out);
        assert_eq!((k, n), (Kind::Icmp, 14 + 20 + 64));
        assert_eq!(out[34], 0);
        assert_eq!(checksum(&out[34..n]), 0);
        assert_eq!(&out[38..n], &icmp[4..]);
        let mut bad = f.clone();
        bad[40] ^= 1;
        assert_eq!(answer(&bad, MAC, IP, &mut out).1, 0);
    }

    #[test]
    fn garbage_gets_no_answer() {
        let mut out = [0u8; 1514];
        for len in 0..80 {
            let f: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            assert_eq!(answer(&f, MAC, IP, &mut out).1, 0);
        }
        let mut f = eth(MAC, ETHERTYPE_IPV4, &[0x4f; 40]);
        assert_eq!(answer(&f, MAC, IP, &mut out).1, 0);
        f[14] = 0x41;
        assert_eq!(answer(&f, MAC, IP, &mut out).1, 0);
    }
}
