//! Packets in guest memory: walking a tx or rx chain, reading a tx packet
//! out of a validated chain and writing an rx packet into one.
//!
//! Queue indices are fixed (virtio 1.2, 5.10.2): rx 0, tx 1, event 2.
//! The driver is untrusted: a chain is walked and validated as a whole by
//! [`virtio_device::chain`] (it ends, every descriptor has the direction
//! the queue needs and lies in guest memory) before a byte of it is used,
//! and lengths are taken from the validated chain, never from the header.

use virtio_device::chain::{walk_chain_expecting, BeyondChain, Chain, Direction, Expect};
use virtio_device::GuestRam;
use virtio_queue::DescriptorChain;

use crate::header::{Header, HEADER_SIZE};
use crate::metrics::RejectReason;

/// Walks and validates a chain of the queue the device uses `direction`
/// ([`Direction::DeviceReads`] for tx, [`Direction::DeviceWrites`] for rx):
/// a descriptor the other way is [`RejectReason::WrongDirection`].
pub(crate) fn walk(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    direction: Direction,
) -> Result<Chain, RejectReason> {
    let expect = Expect::nothing().direction(direction, RejectReason::WrongDirection);
    walk_chain_expecting(chain, queue_size, expect)
}

/// A copy past the end of a validated chain. Not reachable: every caller
/// checks the length against the chain first.
fn beyond(_: BeyondChain) -> RejectReason {
    RejectReason::LenBeyondChain
}

/// Reads the header of a validated tx chain; the payload is checked
/// (against `total - HEADER_SIZE`) by the caller.
pub(crate) fn read_header(chain: &Chain, mem: &GuestRam) -> Result<Header, RejectReason> {
    if chain.total() < HEADER_SIZE as u64 {
        return Err(RejectReason::HeaderTooShort);
    }
    let mut bytes = [0u8; HEADER_SIZE];
    chain.read_at(mem, 0, &mut bytes).map_err(beyond)?;
    Ok(Header::from_bytes(&bytes))
}

/// Reads `payload.len()` payload bytes of a validated tx chain, whose
/// header says that many and was checked against the chain.
pub(crate) fn read_payload(
    chain: &Chain,
    mem: &GuestRam,
    payload: &mut [u8],
) -> Result<(), RejectReason> {
    chain
        .read_at(mem, HEADER_SIZE as u64, payload)
        .map_err(beyond)
}

/// Writes a packet (header and payload) into a validated rx chain of at
/// least `HEADER_SIZE + payload.len()` bytes; returns the bytes written.
pub(crate) fn write_packet(
    chain: &Chain,
    mem: &GuestRam,
    hdr: &Header,
    payload: &[u8],
) -> Result<u32, RejectReason> {
    chain.write_at(mem, 0, &hdr.to_bytes()).map_err(beyond)?;
    chain
        .write_at(mem, HEADER_SIZE as u64, payload)
        .map_err(beyond)?;
    Ok((HEADER_SIZE + payload.len()) as u32)
}
