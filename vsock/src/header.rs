//! The packet header (virtio 1.2, section 5.10.6: `struct
//! virtio_vsock_hdr`), its parsing and the checks every header from the
//! guest must pass.
//!
//! The header is 44 bytes, little endian, packed:
//!
//! | offset | field | |
//! |---:|---|---|
//! | 0 | `src_cid` | le64 |
//! | 8 | `dst_cid` | le64 |
//! | 16 | `src_port` | le32 |
//! | 20 | `dst_port` | le32 |
//! | 24 | `len` | le32, payload bytes after the header |
//! | 28 | `type` | le16, 1 = stream |
//! | 30 | `op` | le16 |
//! | 32 | `flags` | le32, the shutdown flags of `SHUTDOWN` |
//! | 36 | `buf_alloc` | le32, the sender's receive buffer |
//! | 40 | `fwd_cnt` | le32, bytes the sender has consumed |
//!
//! Pure: no I/O, no guest memory. [`Header::check_from_guest`] is the one
//! gate a header from the guest passes before the muxer sees it.

use crate::metrics::RejectReason;

/// Bytes of a header.
pub const HEADER_SIZE: usize = 44;

/// The host's CID (`VMADDR_CID_HOST`): every guest packet must go there.
pub const HOST_CID: u64 = 2;

/// `VIRTIO_VSOCK_TYPE_STREAM`, the only socket type this device supports.
pub const TYPE_STREAM: u16 = 1;

/// `SHUTDOWN` flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `SHUTDOWN` flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// Largest payload a guest packet may carry: Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE` (64 KiB).
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// The operations (`op`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Open a connection.
    Request,
    /// Accept a connection.
    Response,
    /// Reset (refuse or abort) a connection.
    Rst,
    /// The sender stops receiving and/or sending (`flags`).
    Shutdown,
    /// Data.
    Rw,
    /// The sender's `buf_alloc`/`fwd_cnt` changed.
    CreditUpdate,
    /// Please send a `CreditUpdate`.
    CreditRequest,
}

impl Op {
    /// The op with this wire value, if it is one.
    pub fn from_wire(v: u16) -> Option<Op> {
        Some(match v {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }

    /// The wire value.
    pub fn wire(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }
}

/// A header, field by field, as on the wire (`op` and `type` unchecked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le64(b: &[u8; HEADER_SIZE], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn le32(b: &[u8; HEADER_SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn le16(b: &[u8; HEADER_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

impl Header {
    /// Decodes the 44 bytes of a header.
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        Header {
            src_cid: le64(b, 0),
            dst_cid: le64(b, 8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// A stream header from the host (CID 2, `local_port`) to the guest
    /// (`guest_cid`, `peer_port`); `len`, `flags` and the credit fields are
    /// zero.
    pub fn host_to_guest(guest_cid: u64, local_port: u32, peer_port: u32, op: Op) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: TYPE_STREAM,
            op: op.wire(),
            ..Header::default()
        }
    }

    /// The operation, if `op` is a known one.
    pub fn op(&self) -> Option<Op> {
        Op::from_wire(self.op)
    }

    /// The checks every header from the guest passes, in this order (the
    /// first failure is the reason):
    ///
    /// 1. `len` fits the payload bytes the descriptor chain really holds
    ///    after the header (`chain_payload`), and is at most
    ///    [`MAX_PAYLOAD`];
    /// 2. `src_cid` is the guest's own CID and `dst_cid` is the host's;
    /// 3. `type` is stream;
    /// 4. `op` is a known operation;
    /// 5. only `RW` carries a payload (`len` is 0 otherwise), and a
    ///    `SHUTDOWN` names only known flags.
    ///
    /// Returns the operation of a header that passed.
    pub fn check_from_guest(&self, guest_cid: u64, chain_payload: u64) -> Result<Op, RejectReason> {
        if u64::from(self.len) > chain_payload {
            return Err(RejectReason::LenBeyondChain);
        }
        if self.len > MAX_PAYLOAD {
            return Err(RejectReason::PayloadTooLarge);
        }
        if self.src_cid != guest_cid {
            return Err(RejectReason::WrongSrcCid);
        }
        if self.dst_cid != HOST_CID {
            return Err(RejectReason::WrongDstCid);
        }
        if self.type_ != TYPE_STREAM {
            return Err(RejectReason::UnsupportedType);
        }
        let op = self.op().ok_or(RejectReason::UnknownOp)?;
        if op != Op::Rw && self.len != 0 {
            return Err(RejectReason::PayloadOnControlOp);
        }
        if op == Op::Shutdown && self.flags & !SHUTDOWN_BOTH != 0 {
            return Err(RejectReason::BadShutdownFlags);
        }
        Ok(op)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest_rw(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1234,
            dst_port: 1024,
            len,
            type_: TYPE_STREAM,
            op: Op::Rw.wire(),
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 7,
        }
    }

    #[test]
    fn round_trips_with_the_wire_layout() {
        let h = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 0xaabb_ccdd,
            dst_port: 5,
            len: 6,
            type_: 1,
            op: 5,
            flags: 3,
            buf_alloc: 0x1000,
            fwd_cnt: 0xffff_ffff,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[16..20], &[0xdd, 0xcc, 0xbb, 0xaa]);
        assert_eq!(b[28], 1);
        assert_eq!(b[30], 5);
        assert_eq!(&b[40..44], &[0xff; 4]);
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn every_op_round_trips_and_unknown_ones_do_not_parse() {
        for v in 1..=7 {
            assert_eq!(Op::from_wire(v).unwrap().wire(), v);
        }
        for v in [0, 8, 0xffff] {
            assert_eq!(Op::from_wire(v), None);
        }
    }

    #[test]
    fn a_good_guest_header_passes() {
        assert_eq!(guest_rw(100).check_from_guest(3, 100), Ok(Op::Rw));
        // Trailing bytes in the chain beyond `len` are allowed (ignored).
        assert_eq!(guest_rw(100).check_from_guest(3, 4096), Ok(Op::Rw));
        let mut shut = guest_rw(0);
        shut.op = Op::Shutdown.wire();
        shut.flags = SHUTDOWN_BOTH;
        assert_eq!(shut.check_from_guest(3, 0), Ok(Op::Shutdown));
    }

    #[test]
    fn each_lie_has_its_reason() {
        let cases: [(Header, u64, RejectReason); 9] = [
            (guest_rw(101), 100, RejectReason::LenBeyondChain),
            (
                guest_rw(MAX_PAYLOAD + 1),
                u64::MAX,
                RejectReason::PayloadTooLarge,
            ),
            (
                Header {
                    src_cid: 4,
                    ..guest_rw(0)
                },
                0,
                RejectReason::WrongSrcCid,
            ),
            (
                Header {
                    dst_cid: 3,
                    ..guest_rw(0)
                },
                0,
                RejectReason::WrongDstCid,
            ),
            (
                Header {
                    type_: 2,
                    ..guest_rw(0)
                },
                0,
                RejectReason::UnsupportedType,
            ),
            (
                Header {
                    op: 0,
                    ..guest_rw(0)
                },
                0,
                RejectReason::UnknownOp,
            ),
            (
                Header {
                    op: 99,
                    ..guest_rw(0)
                },
                0,
                RejectReason::UnknownOp,
            ),
            (
                Header {
                    op: Op::Request.wire(),
                    ..guest_rw(8)
                },
                8,
                RejectReason::PayloadOnControlOp,
            ),
            (
                Header {
                    op: Op::Shutdown.wire(),
                    flags: 4,
                    ..guest_rw(0)
                },
                0,
                RejectReason::BadShutdownFlags,
            ),
        ];
        for (h, chain, reason) in cases {
            assert_eq!(h.check_from_guest(3, chain), Err(reason), "{h:?}");
        }
    }

    #[test]
    fn host_headers_address_the_guest() {
        let h = Header::host_to_guest(3, 1 << 30, 1024, Op::Request);
        assert_eq!((h.src_cid, h.dst_cid), (HOST_CID, 3));
        assert_eq!((h.src_port, h.dst_port), (1 << 30, 1024));
        assert_eq!(
            (h.type_, h.op(), h.len),
            (TYPE_STREAM, Some(Op::Request), 0)
        );
    }
}
