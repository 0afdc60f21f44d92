//! The vnet header (`struct virtio_net_hdr_v1`, virtio 1.2, 5.1.6) that
//! precedes every frame on both queues and on the TAP, and the checks of
//! a frame against it.
//!
//! We offer no offloads, so the only valid transmit header asks for none
//! (flags 0, `gso_type` `NONE`); the header we give the TAP and the guest
//! is always our own, built from scratch, never the other side's bytes.

use crate::config::{MAX_BUFFER_LEN, MIN_FRAME_LEN, VNET_HDR_LEN};
use crate::metrics::RejectReason;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the sender left the checksum to us.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was checked.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;

/// `struct virtio_net_hdr_v1`, little endian on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
    pub num_buffers: u16,
}

impl VnetHeader {
    pub fn from_bytes(b: &[u8; VNET_HDR_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
            num_buffers: u16_at(10),
        }
    }

    pub fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        for (i, v) in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
            self.num_buffers,
        ]
        .into_iter()
        .enumerate()
        {
            b[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    /// The header of a received frame without offloads: `num_buffers` is
    /// 1 (no `VIRTIO_NET_F_MRG_RXBUF`), everything else 0.
    pub fn rx_plain() -> Self {
        VnetHeader {
            num_buffers: 1,
            ..Default::default()
        }
    }

    /// Whether the header asks for an offload (checksum or segmentation).
    /// `hdr_len`, `csum_*` and `gso_size` mean nothing without them.
    pub fn wants_offload(&self) -> bool {
        self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 || self.gso_type != VIRTIO_NET_HDR_GSO_NONE
    }
}

/// Checks a transmit chain of `total` device-readable bytes, whose first
/// [`VNET_HDR_LEN`] bytes are `hdr` (when it has that many).
pub fn check_tx(total: u64, hdr: Option<&VnetHeader>) -> Result<(), RejectReason> {
    if total > MAX_BUFFER_LEN as u64 {
        return Err(RejectReason::TxTooLarge);
    }
    let hdr = match hdr {
        Some(h) if total >= VNET_HDR_LEN as u64 => h,
        _ => return Err(RejectReason::TxHeaderTooShort),
    };
    if total < (VNET_HDR_LEN + MIN_FRAME_LEN) as u64 {
        return Err(RejectReason::TxFrameTooShort);
    }
    // DATA_VALID means nothing on transmit; it is ignored, as Linux does.
    if hdr.wants_offload() {
        return Err(RejectReason::TxOffloadNotNegotiated);
    }
    Ok(())
}

/// What the TAP said about a frame it handed us (`len` bytes read, vnet
/// header included): `Some(frame length)` when it can go to the guest
/// as is. Without offloads negotiated on the TAP the kernel checksums
/// frames itself and never segments, so anything else is a kernel we do
/// not understand: dropped. `DATA_VALID` is dropped from the header we
/// write (the guest did not negotiate `VIRTIO_NET_F_GUEST_CSUM`).
pub fn check_rx_from_tap(buf: &[u8]) -> Option<usize> {
    let hdr: &[u8; VNET_HDR_LEN] = buf.get(..VNET_HDR_LEN)?.try_into().ok()?;
    if VnetHeader::from_bytes(hdr).wants_offload() {
        return None;
    }
    Some(buf.len() - VNET_HDR_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let h = VnetHeader {
            flags: 1,
            gso_type: 3,
            hdr_len: 0x0102,
            gso_size: 0x0304,
            csum_start: 0x0506,
            csum_offset: 0x0708,
            num_buffers: 0x090a,
        };
        let b = h.to_bytes();
        assert_eq!(b, [1, 3, 2, 1, 4, 3, 6, 5, 8, 7, 0x0a, 9]);
        assert_eq!(VnetHeader::from_bytes(&b), h);
        assert_eq!(
            VnetHeader::rx_plain().to_bytes(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        );
    }

    #[test]
    fn transmit_chains_are_bounded_and_plain() {
        let plain = VnetHeader::default();
        assert_eq!(check_tx(12 + 14, Some(&plain)), Ok(()));
        assert_eq!(check_tx(MAX_BUFFER_LEN as u64, Some(&plain)), Ok(()));
        assert_eq!(
            check_tx(MAX_BUFFER_LEN as u64 + 1, Some(&plain)),
            Err(RejectReason::TxTooLarge)
        );
        assert_eq!(check_tx(u64::MAX, None), Err(RejectReason::TxTooLarge));
        assert_eq!(check_tx(11, None), Err(RejectReason::TxHeaderTooShort));
        assert_eq!(check_tx(0, None), Err(RejectReason::TxHeaderTooShort));
        assert_eq!(
            check_tx(12 + 13, Some(&plain)),
            Err(RejectReason::TxFrameTooShort)
        );
        let csum = VnetHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            ..plain
        };
        let gso = VnetHeader {
            gso_type: 1,
            gso_size: 1448,
            ..plain
        };
        for h in [csum, gso] {
            assert_eq!(
                check_tx(100, Some(&h)),
                Err(RejectReason::TxOffloadNotNegotiated)
            );
        }
        let valid = VnetHeader {
            flags: VIRTIO_NET_HDR_F_DATA_VALID,
            hdr_len: 99,
            ..plain
        };
        assert_eq!(check_tx(100, Some(&valid)), Ok(()));
    }

    #[test]
    fn frames_from_the_tap_without_offloads_pass() {
        let mut buf = vec![0u8; 12 + 60];
        assert_eq!(check_rx_from_tap(&buf), Some(60));
        buf[0] = VIRTIO_NET_HDR_F_DATA_VALID;
        assert_eq!(check_rx_from_tap(&buf), Some(60));
        buf[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        assert_eq!(check_rx_from_tap(&buf), None);
        buf[0] = 0;
        buf[1] = 4;
        assert_eq!(check_rx_from_tap(&buf), None);
        assert_eq!(check_rx_from_tap(&buf[..11]), None);
        assert_eq!(check_rx_from_tap(&[0u8; 12]), Some(0));
    }
}
