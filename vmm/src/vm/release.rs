//! The VMM's own release of guest RAM: `madvise(MADV_DONTNEED)` over every
//! guest RAM region, in chunks, on several threads over disjoint ranges.
//!
//! This is the last thing a VM does (the per-VM API's `ReleaseMemory`
//! action, then the VMM exits): it gives the host its memory back without
//! waiting for the process's exit path, which frees guest RAM only after
//! everything else the kernel does at exit. The vCPUs must be stopped
//! first ([`super::vcpu::VcpuThreads::park_all`]) so that they do not fault
//! the memory back in; the parked vCPU threads then do part of the work, so
//! no thread is created here (creating one can fail under the very memory
//! pressure this is for).

use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::memory::GuestRam;
use super::vcpu::{Job, ParkError, VcpuThreads};

/// Bytes per `madvise` call: each call flushes the TLB once (an IPI to
/// every other CPU that runs this process), so calls should be large; but
/// not one call per region, so that the work splits evenly across threads
/// and a 1 GiB region is not one uninterruptible call.
pub const CHUNK: usize = 2 << 20;

/// The host page size the ranges must be aligned to.
const PAGE: usize = 4096;

/// How long the vCPUs may take to leave `KVM_RUN`.
const PARK_TIMEOUT: Duration = Duration::from_secs(1);

/// Why guest RAM could not be released (all of it or some of it).
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot stop the vCPUs: {0}")]
    Park(#[from] ParkError),
    #[error("guest RAM region {index} (host {addr:#x}, {len} bytes) is empty or not page-aligned")]
    Unaligned {
        index: usize,
        addr: usize,
        len: usize,
    },
    #[error(
        "guest RAM region {index} (host {addr:#x}, {len} bytes) wraps around the address space"
    )]
    Wraps {
        index: usize,
        addr: usize,
        len: usize,
    },
    #[error("guest RAM regions {first} and {second} overlap in host memory")]
    Overlap { first: usize, second: usize },
    #[error("madvise(MADV_DONTNEED) of {len} bytes at host {addr:#x} failed")]
    Madvise {
        addr: usize,
        len: usize,
        #[source]
        source: io::Error,
    },
}

/// A piece of guest RAM in the VMM's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostRange {
    pub addr: usize,
    pub len: usize,
}

impl HostRange {
    fn end(&self) -> usize {
        self.addr + self.len
    }
}

/// The host ranges of every guest RAM region, each checked: non-empty,
/// page-aligned, not wrapping, and no two overlapping. vm-memory promises
/// the guest-physical side of this; the host side is checked here because
/// a wrong range would discard memory that is not guest RAM.
pub fn host_ranges(ram: &GuestRam) -> Result<Vec<HostRange>, ReleaseError> {
    let mut ranges = Vec::with_capacity(ram.num_regions());
    for (index, region) in ram.iter().enumerate() {
        let addr = region.as_ptr() as usize;
        let len = region.len() as usize;
        if len == 0 || addr % PAGE != 0 || len % PAGE != 0 {
            return Err(ReleaseError::Unaligned { index, addr, len });
        }
        if addr.checked_add(len).is_none() {
            return Err(ReleaseError::Wraps { index, addr, len });
        }
        ranges.push((index, HostRange { addr, len }));
    }
    let mut sorted = ranges.clone();
    sorted.sort_by_key(|(_, r)| r.addr);
    for pair in sorted.windows(2) {
        if pair[0].1.end() > pair[1].1.addr {
            return Err(ReleaseError::Overlap {
                first: pair[0].0,
                second: pair[1].0,
            });
        }
    }
    Ok(ranges.into_iter().map(|(_, r)| r).collect())
}

/// Splits `ranges` into at most `parts` lists of disjoint sub-ranges with
/// about the same number of bytes each, cut at `chunk` boundaries (from
/// each range's start). Every byte of `ranges` is in exactly one list.
pub fn split(ranges: &[HostRange], parts: usize, chunk: usize) -> Vec<Vec<HostRange>> {
    let total: usize = ranges.iter().map(|r| r.len).sum();
    let parts = parts.max(1);
    let share = total.div_ceil(parts).next_multiple_of(chunk.max(PAGE));
    let mut out: Vec<Vec<HostRange>> = vec![Vec::new()];
    let mut room = share;
    for r in ranges {
        let mut rest = *r;
        while rest.len > 0 {
            if room == 0 {
                out.push(Vec::new());
                room = share;
            }
            let take = rest.len.min(room);
            out.last_mut().expect("out has a list").push(HostRange {
                addr: rest.addr,
                len: take,
            });
            rest = HostRange {
                addr: rest.addr + take,
                len: rest.len - take,
            };
            room -= take;
        }
    }
    out.retain(|l| !l.is_empty());
    out
}

/// `madvise(MADV_DONTNEED)` over `ranges` in calls of at most `chunk`
/// bytes; stops at the first failure. Returns the number of calls.
///
/// The ranges must lie in guest RAM mappings that stay mapped during the
/// call (the caller holds the `GuestRam`) and whose contents nobody needs
/// any more: afterwards they read as zeros.
fn discard(ranges: &[HostRange], chunk: usize) -> Result<u64, ReleaseError> {
    let mut calls = 0;
    for r in ranges {
        let mut off = 0;
        while off < r.len {
            let len = chunk.min(r.len - off);
            let addr = r.addr + off;
            // SAFETY: [addr, addr + len) lies inside a live private
            // anonymous mapping of guest RAM (checked by host_ranges, kept
            // mapped by the caller's GuestRam). MADV_DONTNEED changes no
            // mapping, only drops the pages: nothing in this process holds
            // a Rust reference into guest RAM (vm-memory accesses it with
            // volatile copies), so this is memory-safe; it is the guest's
            // data that goes, which is the point.
            if unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_DONTNEED) } != 0 {
                return Err(ReleaseError::Madvise {
                    addr,
                    len,
                    source: io::Error::last_os_error(),
                });
            }
            calls += 1;
            off += len;
        }
    }
    Ok(calls)
}

/// What a release did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// Bytes covered by `madvise` calls: all of guest RAM.
    pub advised_bytes: u64,
    /// Guest RAM regions.
    pub regions: usize,
    /// Threads that released at once (the caller and parked vCPU threads).
    pub threads: usize,
    /// `madvise` calls made.
    pub calls: u64,
    /// From the first call to the end of the last.
    pub elapsed: Duration,
}

/// Stops a VM for good and releases its RAM, from any thread: what the
/// per-VM API's `ReleaseMemory` action holds.
#[derive(Clone)]
pub struct Releaser {
    ram: GuestRam,
    vcpus: Arc<VcpuThreads>,
    threads: usize,
}

impl Releaser {
    /// Releases `ram` on up to `threads` threads, the vCPU threads of
    /// `vcpus` among them once they are parked.
    pub fn new(ram: GuestRam, vcpus: Arc<VcpuThreads>, threads: usize) -> Self {
        Releaser {
            ram,
            vcpus,
            threads,
        }
    }

    /// Parks every vCPU for good (they never fault guest memory in
    /// again), then releases all of guest RAM; returns the time the vCPUs
    /// took to stop and what the release did. The VM cannot run after
    /// this, whatever the result.
    pub fn stop_and_release(&self) -> Result<(Duration, Released), ReleaseError> {
        let parked_in = self.vcpus.park_all(PARK_TIMEOUT)?;
        let released = release(&self.ram, &self.vcpus, self.threads);
        self.vcpus.close();
        Ok((parked_in, released?))
    }
}

/// Discards all of guest RAM on `threads` threads at most: the calling
/// thread and up to `threads - 1` parked vCPU threads of `vcpus` (which
/// must all be parked already: see [`VcpuThreads::park_all`]).
///
/// Destroys the guest's memory: call it only when the VM will never run
/// again. Every range is checked first; on a failed call the other
/// threads finish their parts and the first error is returned.
pub fn release(
    ram: &GuestRam,
    vcpus: &VcpuThreads,
    threads: usize,
) -> Result<Released, ReleaseError> {
    let ranges = host_ranges(ram)?;
    let threads = threads.clamp(1, vcpus.parked() + 1);
    let parts = split(&ranges, threads, CHUNK);
    let results: Arc<Mutex<Vec<Result<u64, ReleaseError>>>> = Arc::default();
    let t0 = Instant::now();
    let jobs: Vec<Job> = parts
        .iter()
        .map(|part| {
            let part = part.clone();
            let results = Arc::clone(&results);
            // Holds the regions mapped while the job runs.
            let ram = ram.clone();
            Box::new(move || {
                let r = discard(&part, CHUNK);
                drop(ram);
                results
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(r);
            }) as Job
        })
        .collect();
    vcpus.run_parked(jobs);
    let elapsed = t0.elapsed();
    let results = std::mem::take(&mut *results.lock().unwrap_or_else(PoisonError::into_inner));
    let mut calls = 0;
    for r in results {
        calls += r?;
    }
    Ok(Released {
        advised_bytes: ranges.iter().map(|r| r.len as u64).sum(),
        regions: ranges.len(),
        threads: parts.len(),
        calls,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn r(addr: usize, len: usize) -> HostRange {
        HostRange { addr, len }
    }

    #[test]
    fn split_covers_every_byte_once_at_chunk_boundaries() {
        let ranges = [r(0x1000_0000, 10 * MIB), r(0x4000_0000, 3 * MIB)];
        for parts in 1..6 {
            let out = split(&ranges, parts, 2 * MIB);
            assert!(out.len() <= parts, "{parts}: {out:?}");
            let mut all: Vec<HostRange> = out.concat();
            all.sort_by_key(|x| x.addr);
            let total: usize = all.iter().map(|x| x.len).sum();
            assert_eq!(total, 13 * MIB);
            for pair in all.windows(2) {
                assert!(pair[0].end() <= pair[1].addr, "{parts}: overlap {pair:?}");
            }
            for piece in &all {
                let base = if piece.addr >= 0x4000_0000 {
                    0x4000_0000
                } else {
                    0x1000_0000
                };
                assert_eq!((piece.addr - base) % (2 * MIB), 0, "{parts}: {piece:?}");
            }
        }
        let two = split(&ranges, 2, 2 * MIB);
        let sizes: Vec<usize> = two.iter().map(|l| l.iter().map(|x| x.len).sum()).collect();
        assert_eq!(sizes, [8 * MIB, 5 * MIB]);
    }

    #[test]
    fn every_region_of_a_large_guest_is_checked_and_covered() {
        let ram = super::super::memory::create_guest_ram(4 << 30).unwrap();
        let ranges = host_ranges(&ram).unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges.iter().map(|x| x.len as u64).sum::<u64>(), 4 << 30);
    }

    /// Touched guest RAM is resident before and gone after, read back as
    /// zeros, on two threads (one of them a parked "vCPU" thread).
    #[test]
    fn release_drops_touched_memory() {
        use super::super::vcpu::Park;
        let ram = super::super::memory::create_guest_ram(64 << 20).unwrap();
        let ranges = host_ranges(&ram).unwrap();
        let (addr, len) = (ranges[0].addr, ranges[0].len);
        for off in (0..len).step_by(PAGE) {
            // SAFETY: inside our own fresh guest RAM mapping.
            unsafe { std::ptr::write_volatile((addr + off) as *mut u8, 0xa5) };
        }
        let resident = || {
            let mut vec = vec![0u8; len / PAGE];
            // SAFETY: `vec` has one byte per page of the range.
            let rc = unsafe { libc::mincore(addr as *mut _, len, vec.as_mut_ptr()) };
            assert_eq!(rc, 0);
            vec.iter().filter(|b| *b & 1 != 0).count() * PAGE
        };
        assert_eq!(resident(), len);

        let park = Arc::new(Park::new(Arc::default()));
        let helper = {
            let park = Arc::clone(&park);
            std::thread::spawn(move || park.serve())
        };
        let vcpus = VcpuThreads::new(Vec::new(), park, Default::default());
        while vcpus.parked() == 0 {
            std::thread::yield_now();
        }
        let released = release(&ram, &vcpus, 8).unwrap();
        vcpus.close();
        helper.join().unwrap();
        assert_eq!(released.advised_bytes, 64 << 20);
        assert_eq!(released.threads, 2);
        assert_eq!(released.calls, 32);
        assert_eq!(resident(), 0);
        // SAFETY: as above; the pages read back as fresh zero pages.
        assert_eq!(unsafe { std::ptr::read_volatile(addr as *const u8) }, 0);
    }
}
