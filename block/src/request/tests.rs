//! The request parser on chain shapes as Linux builds them and as a hostile
//! driver might.

use super::*;
use virtio_device::chain::Buffer;

const CAP: u64 = 2048; // sectors: a 1 MiB image

/// A chain of `(len, device_writes)` buffers laid out from 0x1000.
fn chain(bufs: &[(u32, bool)]) -> Chain {
    let mut at = 0x1000u64;
    let buffers = bufs
        .iter()
        .map(|&(len, w)| {
            let b = Buffer {
                addr: GuestAddress(at),
                len,
                device_writes: w,
            };
            at += u64::from(len) + 0x100;
            b
        })
        .collect();
    Chain { buffers }
}

fn hdr(t: u32, sector: u64) -> Header {
    Header {
        request_type: t,
        reserved: 0,
        sector,
    }
}

/// Parses `bufs` with header `h` on a read-write or read-only image.
fn parse(h: Header, bufs: &[(u32, bool)], read_only: bool) -> Result<Request, Refusal> {
    let shape = Shape::of(&chain(bufs));
    let status = check_shape(&shape)?;
    check(&h, &shape, status, CAP, read_only)
}

fn reason(r: Result<Request, Refusal>) -> (RejectReason, Option<u8>) {
    let refusal = r.expect_err("refused");
    (refusal.reason, refusal.status.map(|(_, s)| s))
}

const R: bool = false;
const W: bool = true;

#[test]
fn header_round_trip_is_little_endian() {
    let h = Header {
        request_type: 0x0102_0304,
        reserved: 0x0506_0708,
        sector: 0x1112_1314_1516_1718,
    };
    let b = h.to_bytes();
    assert_eq!(b[0], 0x04);
    assert_eq!(b[8], 0x18);
    assert_eq!(Header::from_bytes(&b), h);
}

#[test]
fn linux_shaped_requests_parse() {
    // Read 4 KiB at sector 8: header, two data segments, status.
    let r = parse(
        hdr(VIRTIO_BLK_T_IN, 8),
        &[(16, R), (2048, W), (2048, W), (1, W)],
        false,
    )
    .unwrap();
    assert_eq!(
        r.kind,
        Kind::Read {
            offset: 4096,
            len: 4096
        }
    );
    assert_eq!(r.writable_start, 16);
    // The status is the last descriptor's byte.
    let c = chain(&[(16, R), (2048, W), (2048, W), (1, W)]);
    assert_eq!(r.status, c.buffers[3].addr);

    let w = parse(
        hdr(VIRTIO_BLK_T_OUT, 0),
        &[(16, R), (512, R), (1, W)],
        false,
    )
    .unwrap();
    assert_eq!(
        w.kind,
        Kind::Write {
            offset: 0,
            len: 512
        }
    );

    let f = parse(hdr(VIRTIO_BLK_T_FLUSH, 0), &[(16, R), (1, W)], false).unwrap();
    assert_eq!(f.kind, Kind::Flush);
    // Flush on a read-only drive is fine: nothing to sync.
    assert!(parse(hdr(VIRTIO_BLK_T_FLUSH, 0), &[(16, R), (1, W)], true).is_ok());

    let id = parse(
        hdr(VIRTIO_BLK_T_GET_ID, 0),
        &[(16, R), (20, W), (1, W)],
        true,
    )
    .unwrap();
    assert_eq!(id.kind, Kind::GetId { len: 20 });
    let id = parse(
        hdr(VIRTIO_BLK_T_GET_ID, 0),
        &[(16, R), (64, W), (1, W)],
        true,
    )
    .unwrap();
    assert_eq!(id.kind, Kind::GetId { len: ID_BYTES });
    let id = parse(
        hdr(VIRTIO_BLK_T_GET_ID, 0),
        &[(16, R), (5, W), (1, W)],
        true,
    )
    .unwrap();
    assert_eq!(id.kind, Kind::GetId { len: 5 });
}

#[test]
fn any_layout_header_and_status_may_share_descriptors() {
    // The header split over two descriptors, the write data in the second.
    let w = parse(
        hdr(VIRTIO_BLK_T_OUT, 1),
        &[(8, R), (8 + 1024, R), (1, W)],
        false,
    )
    .unwrap();
    assert_eq!(
        w.kind,
        Kind::Write {
            offset: 512,
            len: 1024
        }
    );
    // Read data and status in one writable descriptor.
    let r = parse(hdr(VIRTIO_BLK_T_IN, 0), &[(16, R), (513, W)], false).unwrap();
    assert_eq!(
        r.kind,
        Kind::Read {
            offset: 0,
            len: 512
        }
    );
    let c = chain(&[(16, R), (513, W)]);
    assert_eq!(r.status, GuestAddress(c.buffers[1].addr.0 + 512));
}

#[test]
fn sectors_are_checked_against_the_image_without_overflow() {
    let read = |sector, len| {
        parse(
            hdr(VIRTIO_BLK_T_IN, sector),
            &[(16, R), (len, W), (1, W)],
            false,
        )
    };
    assert!(read(CAP - 1, 512).is_ok(), "the last sector");
    assert!(read(CAP - 2, 1024).is_ok());
    assert_eq!(
        reason(read(CAP, 512)),
        (RejectReason::SectorOutOfRange, Some(VIRTIO_BLK_S_IOERR))
    );
    assert_eq!(
        reason(read(CAP - 1, 1024)).0,
        RejectReason::SectorOutOfRange
    );
    for sector in [u64::MAX, u64::MAX - 1, u64::MAX / 512, 1 << 55] {
        assert_eq!(reason(read(sector, 512)).0, RejectReason::SectorOutOfRange);
    }
    // Zero-length reads inside the image are harmless.
    assert!(read(CAP, 0).is_ok());
    assert_eq!(reason(read(CAP + 1, 0)).0, RejectReason::SectorOutOfRange);
    let write = |sector| {
        parse(
            hdr(VIRTIO_BLK_T_OUT, sector),
            &[(16, R), (512, R), (1, W)],
            false,
        )
    };
    assert!(write(CAP - 1).is_ok());
    assert_eq!(reason(write(CAP)).0, RejectReason::SectorOutOfRange);
    assert_eq!(reason(write(u64::MAX)).0, RejectReason::SectorOutOfRange);
}

#[test]
fn partial_sectors_and_oversized_requests_are_refused() {
    let read = |len| parse(hdr(VIRTIO_BLK_T_IN, 0), &[(16, R), (len, W), (1, W)], false);
    assert_eq!(
        reason(read(511)),
        (RejectReason::PartialSector, Some(VIRTIO_BLK_S_IOERR))
    );
    assert_eq!(reason(read(513)).0, RejectReason::PartialSector);
    // Over the bound, even on an image large enough.
    let shape = Shape::of(&chain(&[
        (16, R),
        (MAX_REQUEST_BYTES as u32, W),
        (512, W),
        (1, W),
    ]));
    let status = check_shape(&shape).unwrap();
    let r = check(
        &hdr(VIRTIO_BLK_T_IN, 0),
        &shape,
        status,
        u64::MAX / 512,
        false,
    );
    assert_eq!(reason(r).0, RejectReason::RequestTooLarge);
    let shape = Shape::of(&chain(&[(16, R), (MAX_REQUEST_BYTES as u32, W), (1, W)]));
    let status = check_shape(&shape).unwrap();
    assert!(check(
        &hdr(VIRTIO_BLK_T_IN, 0),
        &shape,
        status,
        u64::MAX / 512,
        false
    )
    .is_ok());
}

#[test]
fn shapes_without_header_or_status() {
    assert_eq!(
        reason(parse(hdr(VIRTIO_BLK_T_IN, 0), &[(16, R), (512, W)], false)),
        (RejectReason::PartialSector, Some(VIRTIO_BLK_S_IOERR)),
        "511 data bytes and a status"
    );
    // The last descriptor readable: no status to write.
    assert_eq!(
        reason(parse(hdr(VIRTIO_BLK_T_OUT, 0), &[(16, R), (512, R)], false)),
        (RejectReason::NoStatus, None)
    );
    assert_eq!(
        reason(parse(
            hdr(VIRTIO_BLK_T_IN, 0),
            &[(16, R), (512, W), (0, W)],
            false
        )),
        (RejectReason::NoStatus, None)
    );
    assert_eq!(
        reason(parse(hdr(VIRTIO_BLK_T_IN, 0), &[(15, R), (1, W)], false)),
        (RejectReason::HeaderTooShort, Some(VIRTIO_BLK_S_IOERR))
    );
    assert_eq!(
        reason(parse(hdr(VIRTIO_BLK_T_IN, 0), &[(1, W)], false)),
        (RejectReason::HeaderTooShort, Some(VIRTIO_BLK_S_IOERR))
    );
    assert_eq!(
        reason(parse(
            hdr(VIRTIO_BLK_T_IN, 0),
            &[(512, W), (16, R), (1, W)],
            false
        )),
        (
            RejectReason::ReadableAfterWritable,
            Some(VIRTIO_BLK_S_IOERR)
        )
    );
}

#[test]
fn data_in_the_wrong_direction() {
    let wrong = |t, bufs: &[(u32, bool)]| reason(parse(hdr(t, 0), bufs, false)).0;
    assert_eq!(
        wrong(VIRTIO_BLK_T_IN, &[(16, R), (512, R), (1, W)]),
        RejectReason::WrongDataDirection
    );
    assert_eq!(
        wrong(VIRTIO_BLK_T_OUT, &[(16, R), (512, W), (1, W)]),
        RejectReason::WrongDataDirection
    );
    assert_eq!(
        wrong(VIRTIO_BLK_T_FLUSH, &[(16, R), (512, W), (1, W)]),
        RejectReason::WrongDataDirection
    );
    assert_eq!(
        wrong(VIRTIO_BLK_T_FLUSH, &[(16, R), (512, R), (1, W)]),
        RejectReason::WrongDataDirection
    );
    assert_eq!(
        wrong(VIRTIO_BLK_T_GET_ID, &[(16, R), (1, W)]),
        RejectReason::IdBufferEmpty
    );
}

#[test]
fn read_only_refuses_writes_and_unknown_types_get_unsupp() {
    assert_eq!(
        reason(parse(
            hdr(VIRTIO_BLK_T_OUT, 0),
            &[(16, R), (512, R), (1, W)],
            true
        )),
        (RejectReason::WriteToReadOnly, Some(VIRTIO_BLK_S_IOERR))
    );
    assert!(parse(hdr(VIRTIO_BLK_T_IN, 0), &[(16, R), (512, W), (1, W)], true).is_ok());
    for t in [2, 3, 11, 13, 14, 0x8000_0000, u32::MAX] {
        assert_eq!(
            reason(parse(hdr(t, 0), &[(16, R), (1, W)], false)),
            (RejectReason::UnsupportedType, Some(VIRTIO_BLK_S_UNSUPP)),
            "type {t}"
        );
    }
}
