//! Host-side configuration (Firecracker's `iface_id`, `host_dev_name`,
//! `guest_mac`), the feature bits, the frame limits and the configuration
//! space (virtio 1.2, sections 5.1.3 and 5.1.4).

use std::fmt;
use std::str::FromStr;

/// `VIRTIO_NET_F_MAC`: the configuration space holds the guest's MAC.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;

/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue's index (device → guest).
pub const RX_QUEUE: usize = 0;
/// The transmit queue's index (guest → device).
pub const TX_QUEUE: usize = 1;

/// Bytes of `struct virtio_net_hdr_v1` (with `num_buffers`): what a modern
/// device and driver put before every frame, and the TAP's vnet header
/// size (`TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 12;
/// The largest Ethernet frame without offloads: a 64 KiB IP packet and
/// its Ethernet header (what the TAP can hand us at MTU 65535 plus 12).
pub const MAX_FRAME_LEN: usize = 65550;
/// The most bytes of one transmit chain or receive frame, vnet header
/// included (Firecracker's `MAX_BUFFER_SIZE`). Longer transmit chains are
/// refused; it is also the size of each of the device's two host buffers.
pub const MAX_BUFFER_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// The shortest frame a TAP accepts: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// Longest interface id (Firecracker's limit for its ids).
pub const MAX_IFACE_ID_LEN: usize = 64;
/// Longest host interface name (`IFNAMSIZ` - 1).
pub const MAX_TAP_NAME_LEN: usize = 15;

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Multicast (group) addresses cannot be a NIC's own.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

/// `aa:bb:cc:dd:ee:ff`, two hex digits per byte.
impl FromStr for MacAddr {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ConfigError::Mac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// The device as the host configures it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Names the interface in the API: 1 to 64 ASCII letters, digits,
    /// `_` or `-`.
    pub iface_id: String,
    /// The TAP device the operator created (`ip tuntap add NAME mode
    /// tap`), in the VMM's network namespace.
    pub host_dev_name: String,
    /// The guest's MAC, offered with `VIRTIO_NET_F_MAC`; without one the
    /// guest picks its own (Linux: a random one).
    pub guest_mac: Option<MacAddr>,
}

/// Why a configuration cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("iface_id {0:?} must be 1 to {MAX_IFACE_ID_LEN} ASCII letters, digits, '_' or '-'")]
    IfaceId(String),
    #[error("host_dev_name {0:?} must be 1 to {MAX_TAP_NAME_LEN} bytes without '/', ':', NUL or whitespace")]
    TapName(String),
    #[error("guest_mac {0:?} is not a MAC address (aa:bb:cc:dd:ee:ff)")]
    Mac(String),
    #[error("guest_mac {0} is a multicast address")]
    MulticastMac(MacAddr),
}

impl NetConfig {
    /// Checks the id, the TAP name (as the kernel does) and the MAC.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let id = &self.iface_id;
        let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        if id.is_empty() || id.len() > MAX_IFACE_ID_LEN || !id.chars().all(ok_char) {
            return Err(ConfigError::IfaceId(id.clone()));
        }
        let tap = &self.host_dev_name;
        let ok_byte = |b: &u8| b.is_ascii_graphic() && *b != b'/' && *b != b':';
        if tap.is_empty()
            || tap.len() > MAX_TAP_NAME_LEN
            || tap == "."
            || tap == ".."
            || !tap.as_bytes().iter().all(ok_byte)
        {
            return Err(ConfigError::TapName(tap.clone()));
        }
        if let Some(mac) = self.guest_mac.filter(MacAddr::is_multicast) {
            return Err(ConfigError::MulticastMac(mac));
        }
        Ok(())
    }
}

/// The configuration space (`struct virtio_net_config`), read-only: `mac`
/// (6 bytes at 0) when [`VIRTIO_NET_F_MAC`] is offered; `status`,
/// `max_virtqueue_pairs` and `mtu` belong to features we do not offer and
/// read as zeros, as does everything past them.
pub(crate) fn read_config(mac: Option<MacAddr>, offset: u64, data: &mut [u8]) {
    let space = mac.map(|m| m.0).unwrap_or_default();
    for (i, b) in data.iter_mut().enumerate() {
        *b = offset
            .checked_add(i as u64)
            .and_then(|o| usize::try_from(o).ok())
            .and_then(|o| space.get(o))
            .copied()
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(id: &str, tap: &str, mac: Option<&str>) -> NetConfig {
        NetConfig {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: mac.map(|m| m.parse().unwrap()),
        }
    }

    #[test]
    fn macs_parse_and_print() {
        let m: MacAddr = "02:AB:cd:00:01:ff".parse().unwrap();
        assert_eq!(m.0, [2, 0xab, 0xcd, 0, 1, 0xff]);
        assert_eq!(m.to_string(), "02:ab:cd:00:01:ff");
        for bad in [
            "",
            "02:ab:cd:00:01",
            "02:ab:cd:00:01:ff:00",
            "2:ab:cd:00:01:ff",
            "02:ab:cd:00:01:fg",
            "02-ab-cd-00-01-ff",
            "+2:ab:cd:00:01:ff",
        ] {
            assert_eq!(
                bad.parse::<MacAddr>(),
                Err(ConfigError::Mac(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_tap_names_and_macs_are_checked() {
        assert_eq!(
            cfg("eth0", "tap0", Some("02:00:00:00:00:01")).validate(),
            Ok(())
        );
        assert_eq!(cfg("eth0", &"t".repeat(15), None).validate(), Ok(()));
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert_eq!(
                cfg(bad, "tap0", None).validate(),
                Err(ConfigError::IfaceId(bad.into()))
            );
        }
        for bad in ["", "a/b", "a:b", "a b", ".", "..", &"t".repeat(16)] {
            assert_eq!(
                cfg("eth0", bad, None).validate(),
                Err(ConfigError::TapName(bad.into())),
                "{bad:?}"
            );
        }
        assert!(matches!(
            cfg("eth0", "tap0", Some("01:00:5e:00:00:01")).validate(),
            Err(ConfigError::MulticastMac(_))
        ));
    }

    #[test]
    fn config_space_is_the_mac_then_zeros() {
        let mac = MacAddr([2, 1, 2, 3, 4, 5]);
        let mut b = [0xaa; 10];
        read_config(Some(mac), 0, &mut b);
        assert_eq!(b, [2, 1, 2, 3, 4, 5, 0, 0, 0, 0]);
        let mut b = [0xaa; 2];
        read_config(Some(mac), 4, &mut b);
        assert_eq!(b, [4, 5]);
        read_config(Some(mac), u64::MAX, &mut b);
        assert_eq!(b, [0, 0]);
        read_config(None, 0, &mut b);
        assert_eq!(b, [0, 0]);
        assert_eq!(MAX_BUFFER_LEN, 65562);
    }
}
