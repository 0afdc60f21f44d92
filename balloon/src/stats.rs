//! The statistics queue (virtio 1.2, 5.5.6.3).
//!
//! Protocol: the driver posts one device-readable buffer of
//! `{le16 tag, le64 val}` entries (10 bytes each, packed) when it starts.
//! The device parses it and keeps the descriptor. Every polling interval it
//! returns the descriptor (used length 0) and interrupts; the driver then
//! refills the same buffer with fresh values and posts it again.

use std::time::{Duration, Instant};

use virtio_device::chain::Direction;
use virtio_device::queue::ActiveQueue;
use virtio_device::GuestRam;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::Bytes;

use crate::metrics::{BalloonMetrics, RejectReason};
use crate::queues::{walk, MAX_CHAINS_PER_ROUND};

/// Bytes per statistics entry.
pub const STATS_ENTRY_SIZE: usize = 10;
/// Entries read from one statistics buffer; the rest is ignored. Linux 6.12
/// sends 16.
pub const MAX_STATS_ENTRIES: usize = 64;
const MAX_STATS_BYTES: usize = MAX_STATS_ENTRIES * STATS_ENTRY_SIZE;

/// The statistics tags this device knows (Linux `VIRTIO_BALLOON_S_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum StatTag {
    SwapIn = 0,
    SwapOut = 1,
    MajorFaults = 2,
    MinorFaults = 3,
    FreeMemory = 4,
    TotalMemory = 5,
    AvailableMemory = 6,
    DiskCaches = 7,
    HugetlbAllocations = 8,
    HugetlbFailures = 9,
    OomKills = 10,
    AllocStalls = 11,
    AsyncScans = 12,
    DirectScans = 13,
    AsyncReclaims = 14,
    DirectReclaims = 15,
}

impl StatTag {
    /// Every tag, in tag order.
    pub const ALL: [StatTag; 16] = [
        StatTag::SwapIn,
        StatTag::SwapOut,
        StatTag::MajorFaults,
        StatTag::MinorFaults,
        StatTag::FreeMemory,
        StatTag::TotalMemory,
        StatTag::AvailableMemory,
        StatTag::DiskCaches,
        StatTag::HugetlbAllocations,
        StatTag::HugetlbFailures,
        StatTag::OomKills,
        StatTag::AllocStalls,
        StatTag::AsyncScans,
        StatTag::DirectScans,
        StatTag::AsyncReclaims,
        StatTag::DirectReclaims,
    ];

    /// The tag for a raw value; `None` for tags this device does not know.
    pub fn from_raw(tag: u16) -> Option<Self> {
        Self::ALL.get(usize::from(tag)).copied()
    }

    /// The API field name of this statistic.
    pub fn name(self) -> &'static str {
        match self {
            StatTag::SwapIn => "swap_in",
            StatTag::SwapOut => "swap_out",
            StatTag::MajorFaults => "major_faults",
            StatTag::MinorFaults => "minor_faults",
            StatTag::FreeMemory => "free_memory",
            StatTag::TotalMemory => "total_memory",
            StatTag::AvailableMemory => "available_memory",
            StatTag::DiskCaches => "disk_caches",
            StatTag::HugetlbAllocations => "hugetlb_allocations",
            StatTag::HugetlbFailures => "hugetlb_failures",
            StatTag::OomKills => "oom_kills",
            StatTag::AllocStalls => "alloc_stalls",
            StatTag::AsyncScans => "async_scans",
            StatTag::DirectScans => "direct_scans",
            StatTag::AsyncReclaims => "async_reclaims",
            StatTag::DirectReclaims => "direct_reclaims",
        }
    }
}

/// The last statistics buffer the guest sent. A tag absent from that buffer
/// is `None` (the guest kernel may not know it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalloonStats {
    /// Bytes swapped in (tag 0).
    pub swap_in: Option<u64>,
    /// Bytes swapped out (tag 1).
    pub swap_out: Option<u64>,
    /// Major page faults (tag 2).
    pub major_faults: Option<u64>,
    /// Minor page faults (tag 3).
    pub minor_faults: Option<u64>,
    /// Free memory in bytes (tag 4).
    pub free_memory: Option<u64>,
    /// Total memory in bytes (tag 5).
    pub total_memory: Option<u64>,
    /// Available memory in bytes, as `MemAvailable` (tag 6).
    pub available_memory: Option<u64>,
    /// Disk caches in bytes (tag 7).
    pub disk_caches: Option<u64>,
    /// Successful hugetlb page allocations (tag 8).
    pub hugetlb_allocations: Option<u64>,
    /// Failed hugetlb page allocations (tag 9).
    pub hugetlb_failures: Option<u64>,
    /// OOM kills (tag 10, Linux 6.12).
    pub oom_kills: Option<u64>,
    /// Allocation stalls (tag 11).
    pub alloc_stalls: Option<u64>,
    /// Pages scanned by kswapd (tag 12).
    pub async_scans: Option<u64>,
    /// Pages scanned in direct reclaim (tag 13).
    pub direct_scans: Option<u64>,
    /// Pages reclaimed by kswapd (tag 14).
    pub async_reclaims: Option<u64>,
    /// Pages reclaimed in direct reclaim (tag 15).
    pub direct_reclaims: Option<u64>,
    /// When the buffer was parsed.
    pub updated_at: Instant,
}

impl BalloonStats {
    /// No values, as of `at`.
    pub fn empty(at: Instant) -> Self {
        BalloonStats {
            swap_in: None,
            swap_out: None,
            major_faults: None,
            minor_faults: None,
            free_memory: None,
            total_memory: None,
            available_memory: None,
            disk_caches: None,
            hugetlb_allocations: None,
            hugetlb_failures: None,
            oom_kills: None,
            alloc_stalls: None,
            async_scans: None,
            direct_scans: None,
            async_reclaims: None,
            direct_reclaims: None,
            updated_at: at,
        }
    }

    fn slot(&mut self, tag: StatTag) -> &mut Option<u64> {
        match tag {
            StatTag::SwapIn => &mut self.swap_in,
            StatTag::SwapOut => &mut self.swap_out,
            StatTag::MajorFaults => &mut self.major_faults,
            StatTag::MinorFaults => &mut self.minor_faults,
            StatTag::FreeMemory => &mut self.free_memory,
            StatTag::TotalMemory => &mut self.total_memory,
            StatTag::AvailableMemory => &mut self.available_memory,
            StatTag::DiskCaches => &mut self.disk_caches,
            StatTag::HugetlbAllocations => &mut self.hugetlb_allocations,
            StatTag::HugetlbFailures => &mut self.hugetlb_failures,
            StatTag::OomKills => &mut self.oom_kills,
            StatTag::AllocStalls => &mut self.alloc_stalls,
            StatTag::AsyncScans => &mut self.async_scans,
            StatTag::DirectScans => &mut self.direct_scans,
            StatTag::AsyncReclaims => &mut self.async_reclaims,
            StatTag::DirectReclaims => &mut self.direct_reclaims,
        }
    }

    /// The value of `tag`, if the guest sent it.
    pub fn get(&self, tag: StatTag) -> Option<u64> {
        match tag {
            StatTag::SwapIn => self.swap_in,
            StatTag::SwapOut => self.swap_out,
            StatTag::MajorFaults => self.major_faults,
            StatTag::MinorFaults => self.minor_faults,
            StatTag::FreeMemory => self.free_memory,
            StatTag::TotalMemory => self.total_memory,
            StatTag::AvailableMemory => self.available_memory,
            StatTag::DiskCaches => self.disk_caches,
            StatTag::HugetlbAllocations => self.hugetlb_allocations,
            StatTag::HugetlbFailures => self.hugetlb_failures,
            StatTag::OomKills => self.oom_kills,
            StatTag::AllocStalls => self.alloc_stalls,
            StatTag::AsyncScans => self.async_scans,
            StatTag::DirectScans => self.direct_scans,
            StatTag::AsyncReclaims => self.async_reclaims,
            StatTag::DirectReclaims => self.direct_reclaims,
        }
    }

    /// Every value the guest sent, in tag order.
    pub fn iter(&self) -> impl Iterator<Item = (StatTag, u64)> + '_ {
        StatTag::ALL
            .into_iter()
            .filter_map(|t| self.get(t).map(|v| (t, v)))
    }

    /// Time since the guest sent these values.
    pub fn age(&self) -> Duration {
        self.updated_at.elapsed()
    }
}

/// What parsing a statistics buffer found.
#[derive(Debug)]
pub(crate) struct Parsed {
    pub stats: BalloonStats,
    pub unknown_tags: u64,
    pub partial_entry: bool,
}

/// Parses `bytes` (already bounded) as packed `{le16, le64}` entries. A
/// later entry with the same tag wins; unknown tags are counted and
/// ignored; a trailing partial entry is ignored.
pub(crate) fn parse_stats(bytes: &[u8], at: Instant) -> Parsed {
    let mut stats = BalloonStats::empty(at);
    let mut unknown_tags = 0;
    let entries = bytes.chunks_exact(STATS_ENTRY_SIZE);
    let partial_entry = !entries.remainder().is_empty();
    for e in entries {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let mut val = [0u8; 8];
        val.copy_from_slice(&e[2..]);
        match StatTag::from_raw(tag) {
            Some(t) => *stats.slot(t) = Some(u64::from_le_bytes(val)),
            None => unknown_tags += 1,
        }
    }
    Parsed {
        stats,
        unknown_tags,
        partial_entry,
    }
}

/// Reads a statistics chain: device-readable buffers, of which at most
/// [`MAX_STATS_ENTRIES`] entries are read.
fn read_stats(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    metrics: &mut BalloonMetrics,
) -> Option<BalloonStats> {
    let mem = chain.memory();
    // No byte limit on the walk: only the first MAX_STATS_BYTES are read.
    let buffers = match walk(chain.clone(), queue_size, Direction::DeviceReads, None) {
        Ok(c) => c.buffers,
        Err(reason) => {
            metrics.reject(reason);
            return None;
        }
    };
    let mut bytes = Vec::with_capacity(MAX_STATS_BYTES);
    let mut truncated = false;
    for b in &buffers {
        let room = MAX_STATS_BYTES - bytes.len();
        let take = (b.len as usize).min(room);
        if take < b.len as usize {
            truncated = true;
        }
        let at = bytes.len();
        bytes.resize(at + take, 0);
        if mem.read_slice(&mut bytes[at..], b.addr).is_err() {
            metrics.reject(RejectReason::DescriptorOutsideMemory);
            return None;
        }
        if truncated {
            break;
        }
    }
    if truncated {
        metrics.reject(RejectReason::StatsTruncated);
    }
    let parsed = parse_stats(&bytes, Instant::now());
    if parsed.partial_entry && !truncated {
        metrics.reject(RejectReason::StatsPartialEntry);
    }
    metrics.stats_unknown_tags += parsed.unknown_tags;
    metrics.stats_updates += 1;
    Some(parsed.stats)
}

/// Takes the statistics buffers the driver posted (normally one): each
/// valid one is parsed into `last` and held in `held`, giving back the one
/// held before; an invalid one is given back at once and changes nothing.
/// Returns whether chains may be left for another round.
pub(crate) fn take_stats_buffers(
    q: &mut ActiveQueue,
    mem: &GuestRam,
    held: &mut Option<u16>,
    last: &mut Option<BalloonStats>,
    metrics: &mut BalloonMetrics,
) -> bool {
    for _ in 0..MAX_CHAINS_PER_ROUND {
        let chain = match q.next_chain(mem) {
            Ok(Some(chain)) => chain,
            Ok(None) => return false,
            Err(fault) => {
                metrics.reject(fault.into());
                return false;
            }
        };
        let head = chain.head_index();
        let size = q.queue.size();
        // A valid chain has a head inside the table (walk_chain saw it).
        let (give_back, stats) = match read_stats(chain, size, metrics) {
            Some(s) if head < size => (held.replace(head), Some(s)),
            _ => (Some(head), None),
        };
        if stats.is_some() {
            *last = stats;
        }
        if let Some(h) = give_back {
            if !q.give_back(mem, h, 0, metrics) {
                return false;
            }
        }
    }
    true
}

/// The polling tick's work: gives the held buffer back so the driver
/// refills it. Returns whether one was held.
pub(crate) fn give_back_stats_buffer(
    q: &mut ActiveQueue,
    mem: &GuestRam,
    held: &mut Option<u16>,
    metrics: &mut BalloonMetrics,
) -> bool {
    let Some(head) = held.take() else {
        return false;
    };
    match q.return_chain(mem, head, 0) {
        Ok(()) => metrics.stats_requests += 1,
        Err(fault) => metrics.reject(fault.into()),
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, val: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&val.to_le_bytes());
        e
    }

    #[test]
    fn all_sixteen_tags_parse_and_unknown_ones_are_ignored() {
        let mut buf = Vec::new();
        for tag in 0..16u16 {
            buf.extend(entry(tag, 1000 + u64::from(tag)));
        }
        buf.extend(entry(16, 7));
        buf.extend(entry(0xffff, 7));
        let p = parse_stats(&buf, Instant::now());
        assert_eq!(p.unknown_tags, 2);
        assert!(!p.partial_entry);
        for t in StatTag::ALL {
            assert_eq!(p.stats.get(t), Some(1000 + t as u64), "{}", t.name());
        }
        assert_eq!(p.stats.oom_kills, Some(1010));
        assert_eq!(p.stats.direct_reclaims, Some(1015));
        assert_eq!(p.stats.iter().count(), 16);
    }

    #[test]
    fn missing_tags_are_none_and_last_duplicate_wins() {
        let mut buf = entry(4, 1);
        buf.extend(entry(4, 2));
        buf.extend([1, 2, 3]);
        let p = parse_stats(&buf, Instant::now());
        assert_eq!(p.stats.free_memory, Some(2));
        assert_eq!(p.stats.total_memory, None);
        assert!(p.partial_entry);
        assert_eq!(
            p.stats.iter().collect::<Vec<_>>(),
            vec![(StatTag::FreeMemory, 2)]
        );
    }

    #[test]
    fn tags_round_trip() {
        for (i, t) in StatTag::ALL.iter().enumerate() {
            assert_eq!(StatTag::from_raw(i as u16), Some(*t));
        }
        assert_eq!(StatTag::from_raw(16), None);
    }
}
