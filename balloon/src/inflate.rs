//! The inflate and deflate queues: buffers of le32 page frame numbers
//! (4 KiB pages), device-readable.
//!
//! Inflated pages are recorded and released to the host, coalesced: the
//! PFNs are sorted and merged, and each contiguous run costs one release
//! call per guest RAM region it covers. Without `MUST_TELL_HOST` that
//! happens per request, before its buffer is returned; with it, the device
//! gathers a whole round of requests and hands it to the release worker
//! (see [`crate::release_worker`] for when that is allowed). Deflated pages
//! need nothing but bookkeeping: private anonymous memory faults back in as
//! zero pages when the guest touches it again.

use virtio_device::chain::{Buffer, Direction};
use virtio_device::GuestRam;
use virtio_queue::DescriptorChain;
use vm_memory::Bytes;

use crate::ballooned::BalloonedPages;
use crate::metrics::{BalloonMetrics, RejectReason};
use crate::queues::walk;
use crate::release::{pfn_runs, release_ranges, Releaser};
use crate::release_worker::MAX_RELEASE_CALL;

/// Largest PFN buffer accepted: 16384 PFNs (64 MiB of guest memory) per
/// request. Linux sends at most 256 (`VIRTIO_BALLOON_ARRAY_PFNS_MAX`).
pub(crate) const MAX_PFN_BUFFER_BYTES: u64 = 64 * 1024;

/// Reads the PFNs of a validated chain. Every buffer's length must be a
/// multiple of 4 so no PFN straddles two descriptors.
fn read_pfns(mem: &GuestRam, buffers: &[Buffer]) -> Result<Vec<u32>, RejectReason> {
    if buffers.iter().any(|b| b.len % 4 != 0) {
        return Err(RejectReason::LengthNotMultipleOf4);
    }
    let mut pfns = Vec::new();
    for b in buffers {
        let mut bytes = vec![0u8; b.len as usize];
        // The range was checked against guest memory by walk_chain.
        mem.read_slice(&mut bytes, b.addr)
            .map_err(|_| RejectReason::DescriptorOutsideMemory)?;
        pfns.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok(pfns)
}

/// Validates a PFN request and keeps only the PFNs of guest RAM; the others
/// are counted.
fn valid_pfns(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    ballooned: &BalloonedPages,
    metrics: &mut BalloonMetrics,
) -> Option<Vec<u32>> {
    let mem = chain.memory();
    let buffers = walk(
        chain.clone(),
        queue_size,
        Direction::DeviceReads,
        Some(MAX_PFN_BUFFER_BYTES),
    )
    .and_then(|c| read_pfns(mem, &c.buffers));
    let mut pfns = match buffers {
        Ok(p) => p,
        Err(reason) => {
            metrics.reject(reason);
            return None;
        }
    };
    let before = pfns.len();
    pfns.retain(|&pfn| ballooned.is_ram(pfn));
    metrics.reject_n(RejectReason::PfnOutsideRam, (before - pfns.len()) as u64);
    Some(pfns)
}

/// One inflate request: the guest gives these pages up. Its valid PFNs
/// are recorded in `ballooned` and appended to `pfns` (not yet released).
pub(crate) fn record_inflate(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    ballooned: &mut BalloonedPages,
    metrics: &mut BalloonMetrics,
    pfns: &mut Vec<u32>,
) {
    metrics.inflate_requests += 1;
    let Some(valid) = valid_pfns(chain, queue_size, ballooned, metrics) else {
        return;
    };
    metrics.inflate_pages += valid.len() as u64;
    for &pfn in &valid {
        ballooned.insert(pfn);
    }
    pfns.extend(valid);
}

/// One inflate request, handled synchronously: its pages are recorded and
/// released before this returns.
pub(crate) fn handle_inflate(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    ballooned: &mut BalloonedPages,
    releaser: &dyn Releaser,
    metrics: &mut BalloonMetrics,
) {
    let mem = chain.memory();
    let mut pfns = Vec::new();
    record_inflate(chain.clone(), queue_size, ballooned, metrics, &mut pfns);
    // Each run is inside guest RAM page by page, but may cross from one
    // region into the next: release_ranges splits it.
    let runs = pfn_runs(&mut pfns);
    release_ranges(mem, &runs, releaser, MAX_RELEASE_CALL).add_to(metrics);
}

/// One deflate request: the guest takes these pages back. Only bookkeeping.
pub(crate) fn handle_deflate(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    ballooned: &mut BalloonedPages,
    metrics: &mut BalloonMetrics,
) {
    metrics.deflate_requests += 1;
    let Some(pfns) = valid_pfns(chain, queue_size, ballooned, metrics) else {
        return;
    };
    metrics.deflate_pages += pfns.len() as u64;
    for pfn in pfns {
        if ballooned.remove(pfn) == Some(false) {
            metrics.deflate_pages_not_inflated += 1;
        }
    }
}
