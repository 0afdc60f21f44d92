//! Walking a descriptor chain as a whole, and copying bytes between a
//! validated chain and host buffers. Shared by every device.
//!
//! The driver is untrusted: a chain is walked and validated (it ends, every
//! descriptor lies in guest memory, and whatever the device asks of each
//! descriptor in [`Expect`] holds) before a byte of it is used; what the
//! request means is the device's to check afterwards. Each fault is a
//! [`ChainFault`], which a device counts under its own reason (see
//! [`crate::rejections!`]).

use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::GuestRam;

/// What is wrong with a queue or one of its chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainFault {
    /// The available ring is inconsistent (its index ran ahead by more
    /// than the queue holds).
    QueueBroken,
    /// A head index past the queue's size.
    BadHeadIndex,
    /// The used ring could not be written.
    UsedRingError,
    /// A chain without a readable descriptor.
    EmptyChain,
    /// A chain that loops (more descriptors than the queue or the bound).
    LoopingChain,
    /// A `next` into nowhere.
    BrokenChain,
    /// A descriptor not wholly in guest memory.
    DescriptorOutsideMemory,
}

impl ChainFault {
    /// Whether the queue cannot be processed further this round: the
    /// available ring is inconsistent or the used ring cannot be written.
    /// The other faults concern one chain only.
    pub fn stops_queue(self) -> bool {
        matches!(self, ChainFault::QueueBroken | ChainFault::UsedRingError)
    }
}

/// A copy that does not fit the chain: the range runs past its end (or a
/// buffer of a validated chain could not be accessed after all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeyondChain;

/// Descriptors read per chain at most (only indirect tables can make a
/// chain longer than the queue).
const MAX_CHAIN_DESCRIPTORS: usize = 1024;

/// Which way the device uses a buffer (`VRING_DESC_F_WRITE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads it (`VRING_DESC_F_WRITE` clear).
    DeviceReads,
    /// The device writes it (`VRING_DESC_F_WRITE` set).
    DeviceWrites,
}

/// What a device asks of every descriptor of a chain besides lying in
/// guest memory, each with the refusal (the device's own reason) it
/// counts when a descriptor does not comply.
///
/// The walk checks each descriptor in chain order: first its direction,
/// then guest memory, then whether the chain's bytes so far exceed the
/// limit. The first failure is the chain's refusal.
#[derive(Clone, Copy, Debug)]
pub struct Expect<E> {
    direction: Option<(Direction, E)>,
    max_bytes: Option<(u64, E)>,
}

impl<E> Expect<E> {
    /// Nothing beyond a chain that ends and lies in guest memory.
    pub fn nothing() -> Self {
        Expect {
            direction: None,
            max_bytes: None,
        }
    }

    /// Every descriptor has `direction`; one that does not is `refusal`.
    pub fn direction(self, direction: Direction, refusal: E) -> Self {
        Expect {
            direction: Some((direction, refusal)),
            ..self
        }
    }

    /// The chain holds at most `max_bytes`; the descriptor that goes past
    /// is `refusal`.
    pub fn at_most(self, max_bytes: u64, refusal: E) -> Self {
        Expect {
            max_bytes: Some((max_bytes, refusal)),
            ..self
        }
    }
}

/// One buffer of a validated chain: wholly inside guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
    /// `VRING_DESC_F_WRITE`: the device writes it.
    pub device_writes: bool,
}

/// A validated chain: its buffers in order.
#[derive(Debug, Default)]
pub struct Chain {
    pub buffers: Vec<Buffer>,
}

/// Walks a chain and validates it as a whole: it must end (no loop, no
/// `next` into nowhere), and every descriptor must lie in guest memory.
/// `queue_size`: a chain that still has `NEXT` after that many descriptors
/// loops.
pub fn walk_chain(chain: DescriptorChain<&GuestRam>, queue_size: u16) -> Result<Chain, ChainFault> {
    walk_chain_expecting(chain, queue_size, Expect::nothing())
}

/// [`walk_chain`], and every descriptor must also meet `expect`. Faults of
/// the chain itself become `E` through `From<ChainFault>`; a descriptor
/// that does not meet `expect` is the refusal given there.
pub fn walk_chain_expecting<E: From<ChainFault> + Copy>(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    expect: Expect<E>,
) -> Result<Chain, E> {
    let mem = chain.memory();
    let mut descs: Vec<Descriptor> = Vec::new();
    let mut too_long = false;
    // The iterator stops by itself after `queue_size` descriptors (or the
    // indirect table's length), on an out-of-table index and on an
    // unreadable descriptor; it does not say which, hence the checks below.
    for d in chain.clone() {
        if descs.len() == MAX_CHAIN_DESCRIPTORS {
            too_long = true;
            break;
        }
        descs.push(d);
    }
    let last = descs.last().ok_or(ChainFault::EmptyChain)?;
    if too_long || (last.has_next() && descs.len() >= usize::from(queue_size)) {
        return Err(ChainFault::LoopingChain.into());
    }
    if last.has_next() {
        return Err(ChainFault::BrokenChain.into());
    }
    let mut out = Chain {
        buffers: Vec::with_capacity(descs.len()),
    };
    let mut total = 0u64;
    let Expect {
        direction,
        max_bytes,
    } = expect;
    for d in &descs {
        if let Some((want, refusal)) = &direction {
            if d.is_write_only() != (*want == Direction::DeviceWrites) {
                return Err(*refusal);
            }
        }
        let len = usize::try_from(d.len()).map_err(|_| ChainFault::DescriptorOutsideMemory)?;
        if len > 0 && !GuestMemoryBackend::check_range(mem, d.addr(), len) {
            return Err(ChainFault::DescriptorOutsideMemory.into());
        }
        // At most 1024 × 4 GiB: no overflow in u64.
        total += u64::from(d.len());
        if let Some((max, refusal)) = &max_bytes {
            if total > *max {
                return Err(*refusal);
            }
        }
        out.buffers.push(Buffer {
            addr: d.addr(),
            len: d.len(),
            device_writes: d.is_write_only(),
        });
    }
    Ok(out)
}

impl Chain {
    /// Total bytes of the chain's buffers (at most 1024 × 4 GiB: no
    /// overflow in u64).
    pub fn total(&self) -> u64 {
        self.buffers.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Copies `out.len()` bytes starting `offset` bytes into the chain.
    /// The chain was validated, so only a range past its end fails.
    pub fn read_at(&self, mem: &GuestRam, offset: u64, out: &mut [u8]) -> Result<(), BeyondChain> {
        self.visit(offset, out.len(), |addr, range| {
            mem.read_slice(&mut out[range], addr).is_ok()
        })
    }

    /// Copies `data` into the chain starting `offset` bytes into it.
    pub fn write_at(&self, mem: &GuestRam, offset: u64, data: &[u8]) -> Result<(), BeyondChain> {
        self.visit(offset, data.len(), |addr, range| {
            mem.write_slice(&data[range], addr).is_ok()
        })
    }

    /// Calls `f(guest address, range of the caller's bytes)` for each
    /// piece of `[offset, offset + len)` in chain order.
    fn visit(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(GuestAddress, std::ops::Range<usize>) -> bool,
    ) -> Result<(), BeyondChain> {
        let end = offset.checked_add(len as u64).ok_or(BeyondChain)?;
        if end > self.total() {
            return Err(BeyondChain);
        }
        let mut skip = offset;
        let mut done = 0usize;
        for b in &self.buffers {
            if done == len {
                break;
            }
            let blen = u64::from(b.len);
            if skip >= blen {
                skip -= blen;
                continue;
            }
            let n = ((blen - skip) as usize).min(len - done);
            if !f(b.addr.unchecked_add(skip), done..done + n) {
                return Err(BeyondChain);
            }
            done += n;
            skip = 0;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::QueueOwnedT;

    use super::*;
    use crate::{Queue, QueueT};

    const MEM_END: u64 = 0x10_0000;
    const BUF: u64 = 0x8_0000;
    const OUTSIDE: u64 = MEM_END + 0x1000;

    /// A device's reasons: a chain fault, or one of its expectations.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Refusal {
        Fault(ChainFault),
        WrongWay,
        TooBig,
    }

    impl From<ChainFault> for Refusal {
        fn from(f: ChainFault) -> Self {
            Refusal::Fault(f)
        }
    }

    /// Walks the chain of `descs` (address, length, device writes),
    /// linked in order, expecting device-readable descriptors of at most
    /// 100 bytes in all.
    fn walk(descs: &[(u64, u32, bool)]) -> Result<Chain, Refusal> {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap();
        let mock = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, writes))| {
                let mut flags = if writes { VRING_DESC_F_WRITE } else { 0 };
                if i + 1 < descs.len() {
                    flags |= VRING_DESC_F_NEXT;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, i as u16 + 1))
            })
            .collect();
        mock.add_desc_chains(&raw, 0).unwrap();
        let mut q: Queue = mock.create_queue().unwrap();
        let chain = q.iter(&mem).unwrap().next().unwrap();
        let expect = Expect::nothing()
            .direction(Direction::DeviceReads, Refusal::WrongWay)
            .at_most(100, Refusal::TooBig);
        walk_chain_expecting(chain, q.size(), expect)
    }

    #[test]
    fn a_chain_with_several_faults_is_refused_for_the_first_descriptor_that_has_one() {
        let outside = Refusal::Fault(ChainFault::DescriptorOutsideMemory);
        // Per descriptor: direction, then memory, then the running total.
        assert_eq!(walk(&[(OUTSIDE, 8, true)]).err(), Some(Refusal::WrongWay));
        assert_eq!(walk(&[(OUTSIDE, 200, false)]).err(), Some(outside));
        // Across descriptors: the first one with a fault decides.
        assert_eq!(
            walk(&[(BUF, 8, true), (OUTSIDE, 8, false)]).err(),
            Some(Refusal::WrongWay)
        );
        assert_eq!(
            walk(&[(OUTSIDE, 8, false), (BUF, 8, true)]).err(),
            Some(outside)
        );
        assert_eq!(
            walk(&[(BUF, 60, false), (BUF, 60, false), (OUTSIDE, 8, true)]).err(),
            Some(Refusal::TooBig)
        );
        let c = walk(&[(BUF, 60, false), (BUF + 60, 40, false)]).unwrap();
        assert_eq!((c.buffers.len(), c.total()), (2, 100));
    }

    #[test]
    fn copies_stay_inside_the_chain() {
        let c = Chain {
            buffers: vec![
                Buffer {
                    addr: GuestAddress(BUF),
                    len: 4,
                    device_writes: true,
                },
                Buffer {
                    addr: GuestAddress(BUF + 0x100),
                    len: 4,
                    device_writes: true,
                },
            ],
        };
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), MEM_END as usize)]).unwrap();
        c.write_at(&mem, 2, &[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 8];
        c.read_at(&mem, 0, &mut out).unwrap();
        assert_eq!(out, [0, 0, 1, 2, 3, 4, 0, 0]);
        assert_eq!(c.read_at(&mem, 5, &mut out[..4]), Err(BeyondChain));
        assert_eq!(c.write_at(&mem, u64::MAX, &[1]), Err(BeyondChain));
    }
}
