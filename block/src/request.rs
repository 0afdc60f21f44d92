//! A request's header and the checks that turn a validated chain into a
//! [`Request`] the device may execute (virtio 1.2, section 5.2.6).
//!
//! A chain is: device-readable bytes (the 16-byte header first, then the
//! data of a write), device-writable bytes (the data of a read or of
//! `GET_ID`), and the status byte, the last byte of the last descriptor,
//! which must be device-writable. The header may span descriptors and the
//! data may use any number of them (`VIRTIO_F_VERSION_1` implies any
//! layout), but every readable descriptor comes before every writable one.
//!
//! Everything is checked here, before any I/O: the shape, the type, the
//! data direction for the type, whole sectors, [`MAX_REQUEST_BYTES`], and
//! `sector + sectors <= capacity` without overflow. A [`Refusal`] says
//! why and which status the guest gets, if the chain has a status byte.

use vm_memory::{Address, GuestAddress};

use crate::config::{ID_BYTES, MAX_REQUEST_BYTES, SECTOR_SIZE};
use crate::metrics::RejectReason;
use virtio_device::chain::Chain;

/// Bytes of the request header: `type` le32, `reserved` le32, `sector`
/// le64.
pub const HEADER_SIZE: usize = 16;

/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The request header as the driver wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub request_type: u32,
    pub reserved: u32,
    pub sector: u64,
}

impl Header {
    pub fn from_bytes(b: &[u8; HEADER_SIZE]) -> Header {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&b[8..16]);
        Header {
            request_type: u32_at(0),
            reserved: u32_at(4),
            sector: u64::from_le_bytes(sector),
        }
    }

    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..4].copy_from_slice(&self.request_type.to_le_bytes());
        b[4..8].copy_from_slice(&self.reserved.to_le_bytes());
        b[8..].copy_from_slice(&self.sector.to_le_bytes());
        b
    }
}

/// The shape of a validated chain, from its descriptors' lengths and
/// flags alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Device-readable bytes.
    pub readable: u64,
    /// Device-writable bytes, the status byte included.
    pub writable: u64,
    /// A device-readable descriptor follows a device-writable one.
    pub readable_after_writable: bool,
    /// The status byte: the last byte of the last descriptor, if that
    /// descriptor is device-writable and not empty.
    pub status: Option<GuestAddress>,
}

impl Shape {
    pub(crate) fn of(chain: &Chain) -> Shape {
        let mut s = Shape {
            readable: 0,
            writable: 0,
            readable_after_writable: false,
            status: None,
        };
        for b in &chain.buffers {
            if b.device_writes {
                s.writable += u64::from(b.len);
            } else {
                s.readable += u64::from(b.len);
                s.readable_after_writable |= s.writable > 0;
            }
        }
        s.status = chain
            .buffers
            .last()
            .filter(|b| b.device_writes && b.len > 0)
            // In guest memory: the chain was validated.
            .map(|b| b.addr.unchecked_add(u64::from(b.len) - 1));
        s
    }
}

/// What a checked request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Read `len` bytes at byte `offset` of the image into the chain's
    /// writable data.
    Read {
        offset: u64,
        len: u64,
    },
    /// Write the chain's readable data (after the header), `len` bytes,
    /// at byte `offset` of the image.
    Write {
        offset: u64,
        len: u64,
    },
    Flush,
    /// Write the first `len` bytes of the drive id (at most
    /// [`ID_BYTES`]) into the chain's writable data.
    GetId {
        len: usize,
    },
}

/// A request that passed every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    /// Where the writable data starts, in bytes from the chain's start
    /// (the readable bytes come first).
    pub writable_start: u64,
    pub status: GuestAddress,
}

/// A refused request: why, and the status to write if there is a status
/// byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RejectReason,
    pub status: Option<(GuestAddress, u8)>,
}

/// Checks the chain's shape; on success the caller reads the header (the
/// first [`HEADER_SIZE`] readable bytes) and calls [`check`].
pub fn check_shape(shape: &Shape) -> Result<GuestAddress, Refusal> {
    let ioerr = |reason| Refusal {
        reason,
        status: shape.status.map(|a| (a, VIRTIO_BLK_S_IOERR)),
    };
    if shape.readable_after_writable {
        return Err(ioerr(RejectReason::ReadableAfterWritable));
    }
    let Some(status) = shape.status else {
        return Err(ioerr(RejectReason::NoStatus));
    };
    if shape.readable < HEADER_SIZE as u64 {
        return Err(ioerr(RejectReason::HeaderTooShort));
    }
    Ok(status)
}

/// Checks a request whose shape passed [`check_shape`] against the image
/// (`capacity` sectors, `read_only`).
pub fn check(
    hdr: &Header,
    shape: &Shape,
    status: GuestAddress,
    capacity: u64,
    read_only: bool,
) -> Result<Request, Refusal> {
    let refuse = |reason, code| Refusal {
        reason,
        status: Some((status, code)),
    };
    let ioerr = |reason| refuse(reason, VIRTIO_BLK_S_IOERR);
    // Bytes after the header, and before the status.
    let readable_data = shape.readable - HEADER_SIZE as u64;
    let writable_data = shape.writable - 1;
    let kind = match hdr.request_type {
        VIRTIO_BLK_T_IN => {
            if readable_data != 0 {
                return Err(ioerr(RejectReason::WrongDataDirection));
            }
            let offset = check_range(hdr.sector, writable_data, capacity).map_err(ioerr)?;
            Kind::Read {
                offset,
                len: writable_data,
            }
        }
        VIRTIO_BLK_T_OUT => {
            if writable_data != 0 {
                return Err(ioerr(RejectReason::WrongDataDirection));
            }
            if read_only {
                return Err(ioerr(RejectReason::WriteToReadOnly));
            }
            let offset = check_range(hdr.sector, readable_data, capacity).map_err(ioerr)?;
            Kind::Write {
                offset,
                len: readable_data,
            }
        }
        VIRTIO_BLK_T_FLUSH => {
            if readable_data != 0 || writable_data != 0 {
                return Err(ioerr(RejectReason::WrongDataDirection));
            }
            Kind::Flush
        }
        VIRTIO_BLK_T_GET_ID => {
            if readable_data != 0 {
                return Err(ioerr(RejectReason::WrongDataDirection));
            }
            if writable_data == 0 {
                return Err(ioerr(RejectReason::IdBufferEmpty));
            }
            Kind::GetId {
                len: writable_data.min(ID_BYTES as u64) as usize,
            }
        }
        _ => return Err(refuse(RejectReason::UnsupportedType, VIRTIO_BLK_S_UNSUPP)),
    };
    Ok(Request {
        kind,
        writable_start: shape.readable,
        status,
    })
}

/// `len` bytes from `sector`: whole sectors, within the request bound, and
/// inside the image without overflow. Returns the byte offset.
fn check_range(sector: u64, len: u64, capacity: u64) -> Result<u64, RejectReason> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(RejectReason::PartialSector);
    }
    if len > MAX_REQUEST_BYTES {
        return Err(RejectReason::RequestTooLarge);
    }
    let end = sector
        .checked_add(len / SECTOR_SIZE)
        .ok_or(RejectReason::SectorOutOfRange)?;
    if end > capacity {
        return Err(RejectReason::SectorOutOfRange);
    }
    // sector < end <= capacity = size / 512: cannot overflow (a zero-length
    // request at `capacity` gives the image's size at most).
    Ok(sector * SECTOR_SIZE)
}

#[cfg(test)]
mod tests;
