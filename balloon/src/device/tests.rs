//! The device as a driver sees it: real split queues in guest memory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
use virtio_device::{Activation, QueueT, VirtioDevice, VIRTIO_F_VERSION_1};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::test_utils::*;
use crate::*;

const BASE: u64 = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_MUST_TELL_HOST;

fn cfg() -> BalloonConfig {
    BalloonConfig::default()
}

fn with_stats() -> BalloonConfig {
    BalloonConfig {
        stats_polling_interval_s: 5,
        ..cfg()
    }
}

fn with_reporting() -> BalloonConfig {
    BalloonConfig {
        free_page_reporting: true,
        ..cfg()
    }
}

fn recording(cfg: BalloonConfig) -> (Balloon, RecordingReleaser) {
    let rec = RecordingReleaser::default();
    (
        Balloon::with_releaser(cfg, Arc::new(rec.clone())).unwrap(),
        rec,
    )
}

/// Processes the inflate queue and waits for the releases it started, so
/// the releaser has seen them.
fn inflate(dev: &mut Balloon) {
    dev.process_inflate_queue().unwrap();
    dev.wait_for_releases();
}

fn page(pfn: u32) -> u64 {
    u64::from(pfn) << 12
}

fn stat(tag: u16, val: u64) -> Vec<u8> {
    let mut e = tag.to_le_bytes().to_vec();
    e.extend_from_slice(&val.to_le_bytes());
    e
}

#[test]
fn inflate_then_deflate_keeps_the_books() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let (mut dev, rec) = recording(cfg());
    let (irq, _) = activate(&mut dev, &drv, BASE);

    let pfns: Vec<u32> = (FREE_PFN_A..FREE_PFN_A + 10).collect();
    let buf = drv.pfn_buffer(&pfns);
    let head = drv.add_chain(0, &[buf]);
    inflate(&mut dev);
    assert_eq!(drv.used(0), vec![(u32::from(head), 0)]);
    assert_eq!(irq.used(), vec![0]);
    assert_eq!(rec.ranges(), vec![(page(FREE_PFN_A), 10 * 4096)]);
    assert_eq!(dev.inflated_pages(), 10);
    let m = dev.metrics();
    assert_eq!((m.inflate_requests, m.inflate_pages), (1, 10));
    assert_eq!((m.madvise_calls, m.bytes_released), (1, 40960));

    let buf = drv.pfn_buffer(&pfns[..4]);
    drv.add_chain(1, &[buf]);
    let buf = drv.pfn_buffer(&[FREE_PFN_A + 100]);
    drv.add_chain(1, &[buf]);
    dev.process_deflate_queue().unwrap();
    assert_eq!(drv.used(1).len(), 2);
    assert_eq!(irq.used(), vec![0, 1]);
    assert_eq!(dev.inflated_pages(), 6);
    let m = dev.metrics();
    assert_eq!((m.deflate_requests, m.deflate_pages), (2, 5));
    assert_eq!(m.deflate_pages_not_inflated, 1);
    // Deflating releases nothing.
    assert_eq!(rec.ranges().len(), 1);
    assert_eq!(m.rejections.total(), 0);
}

#[test]
fn contiguous_pfns_cost_one_release_and_interleaved_ones_one_each() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let (mut dev, rec) = recording(cfg());
    activate(&mut dev, &drv, BASE);

    // 1024 PFNs filling region C, out of order and with duplicates.
    let mut pfns: Vec<u32> = (PFN_C..PFN_C + 1024).rev().collect();
    pfns.swap(3, 700);
    pfns.extend([PFN_C + 5, PFN_C + 5]);
    let buf = drv.pfn_buffer(&pfns);
    drv.add_chain(0, &[buf]);
    inflate(&mut dev);
    assert_eq!(rec.ranges(), vec![(REGION_C_START, 4 << 20)]);
    assert_eq!(dev.inflated_pages(), 1024);

    rec.clear();
    let every_other: Vec<u32> = (0..100).map(|i| FREE_PFN_A + 2 * i).collect();
    let buf = drv.pfn_buffer(&every_other);
    drv.add_chain(0, &[buf]);
    inflate(&mut dev);
    let got = rec.ranges();
    assert_eq!(got.len(), 100);
    assert!(got
        .iter()
        .zip(&every_other)
        .all(|(r, p)| *r == (page(*p), 4096)));
}

#[test]
fn a_run_across_two_regions_is_released_per_region() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let (mut dev, rec) = recording(cfg());
    activate(&mut dev, &drv, BASE);
    let pfns: Vec<u32> = (PFN_B - 4..PFN_B + 4).collect();
    let buf = drv.pfn_buffer(&pfns);
    drv.add_chain(0, &[buf]);
    inflate(&mut dev);
    assert_eq!(
        rec.ranges(),
        vec![(page(PFN_B - 4), 4 * 4096), (REGION_B_START, 4 * 4096)]
    );
}

#[test]
fn pfns_outside_ram_are_counted_and_never_released() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let (mut dev, rec) = recording(cfg());
    activate(&mut dev, &drv, BASE);
    let bad = [PFN_HOLE, PFN_C - 1, PFN_END, PFN_END + 1, u32::MAX];
    let buf = drv.pfn_buffer(&bad);
    let all_bad = drv.add_chain(0, &[buf]);
    let mut mixed = bad.to_vec();
    mixed.push(FREE_PFN_A);
    let buf = drv.pfn_buffer(&mixed);
    let some_bad = drv.add_chain(0, &[buf]);
    inflate(&mut dev);
    assert_eq!(
        drv.used(0),
        vec![(u32::from(all_bad), 0), (u32::from(some_bad), 0)]
    );
    assert_eq!(rec.ranges(), vec![(page(FREE_PFN_A), 4096)]);
    assert_eq!(dev.metrics().rejections.pfn_outside_ram, 10);
    assert_eq!(dev.metrics().inflate_pages, 1);
    assert_eq!(dev.inflated_pages(), 1);

    // Deflating them is counted the same way.
    let buf = drv.pfn_buffer(&bad);
    drv.add_chain(1, &[buf]);
    dev.process_deflate_queue().unwrap();
    assert_eq!(dev.metrics().rejections.pfn_outside_ram, 15);
    assert_eq!(dev.metrics().deflate_pages, 0);
}

/// Posts a good one-page inflate request and checks it is honoured.
fn still_works(dev: &mut Balloon, drv: &mut Driver<'_>, rec: &RecordingReleaser, pfn: u32) {
    rec.clear();
    let buf = drv.pfn_buffer(&[pfn]);
    let head = drv.add_chain(0, &[buf]);
    inflate(dev);
    assert_eq!(drv.used(0).last(), Some(&(u32::from(head), 0)));
    assert_eq!(rec.ranges(), vec![(page(pfn), 4096)]);
}

#[test]
fn looping_chains_are_rejected_and_returned() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let (mut dev, rec) = recording(cfg());
    let (irq, _) = activate(&mut dev, &drv, BASE);
    let (addr, len, _) = drv.pfn_buffer(&[FREE_PFN_A]);
    let next = VRING_DESC_F_NEXT;
    // One descriptor pointing at itself, then two pointing at each other.
    let a = drv.next_index(0, 1);
    drv.add_raw_at(0, a, &[raw(addr, len, next, a)]);
    let b = drv.next_index(0, 2);
    drv.add_raw_at(
        0,
        b,
        &[raw(addr, len, next, b + 1), raw(addr, len, next, b)],
    );
    inflate(&mut dev);
    assert_eq!(drv.used(0), vec![(u32::from(a), 0), (u32::from(b), 0)]);
    assert_eq!(irq.used(), vec![0]);
    assert_eq!(dev.metrics().rejections.looping_chain, 2);
    assert!(rec.ranges().is_empty());
    assert_eq!(dev.inflated_pages(), 0);
    still_works(&mut dev, &mut drv, &rec, FREE_PFN_A + 1);
}

#[test]
fn chains_pointing_outside_memory_or_nowhere_are_rejected() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let (mut dev, rec) = recording(cfg());
    activate(&mut dev, &drv, BASE);
    // Buffers in the MMIO hole, past the end, and straddling into the hole.
    drv.add_chain(0, &[(HOLE_START, 4, false)]);
    drv.add_chain(0, &[(MEM_END + 0x1000, 4, false)]);
    drv.add_chain(0, &[(HOLE_START - 4, 8, false)]);
    drv.add_chain(0, &[(u64::MAX - 3, 4, false)]);
    // A chain whose `next` is past the descriptor table.
    let (addr, len, _) = drv.pfn_buffer(&[FREE_PFN_A]);
    let i = drv.next_index(0, 1);
    drv.add_raw_at(0, i, &[raw(addr, len, VRING_DESC_F_NEXT, 999)]);
    // A head outside the descriptor table.
    drv.publish_head(0, 999);
    inflate(&mut dev);
    let r = &dev.metrics().rejections;
    assert_eq!(r.descriptor_outside_memory, 4);
    assert_eq!(r.broken_chain, 1);
    assert_eq!((r.empty_chain, r.bad_head_index), (1, 1));
    // Everything but the unreturnable head went back to the driver.
    assert_eq!(drv.used(0).len(), 5);
    assert!(rec.ranges().is_empty());
    still_works(&mut dev, &mut drv, &rec, FREE_PFN_A + 2);
}

#[test]
fn malformed_pfn_buffers_are_rejected() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let (mut dev, rec) = recording(cfg());
    activate(&mut dev, &drv, BASE);
    let (addr, _, _) = drv.pfn_buffer(&[FREE_PFN_A, FREE_PFN_A + 1]);
    // Device-writable where the device reads.
    drv.add_chain(0, &[(addr, 8, true)]);
    // A length that cuts a PFN.
    drv.add_chain(0, &[(addr, 6, false)]);
    drv.add_chain(0, &[(addr, 2, false), (addr + 2, 6, false)]);
    // More than 64 KiB of PFNs.
    let big = drv.alloc(64 * 1024 + 4);
    drv.add_chain(0, &[(big, 64 * 1024 + 4, false)]);
    drv.add_chain(0, &[(big, 64 * 1024, false), (big, 4, false)]);
    inflate(&mut dev);
    let r = &dev.metrics().rejections;
    assert_eq!(r.wrong_direction, 1);
    assert_eq!(r.length_not_multiple_of_4, 2);
    assert_eq!(r.buffer_too_large, 2);
    assert_eq!(drv.used(0).len(), 5);
    assert!(rec.ranges().is_empty());

    // A request split over two descriptors at a PFN boundary is fine.
    drv.add_chain(0, &[(addr, 4, false), (addr + 4, 4, false)]);
    inflate(&mut dev);
    assert_eq!(rec.ranges(), vec![(page(FREE_PFN_A), 8192)]);
}

#[test]
fn a_broken_available_ring_stops_the_queue_not_the_device() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let (mut dev, rec) = recording(cfg());
    activate(&mut dev, &drv, BASE);
    drv.set_avail_idx(0, QUEUE_SIZE + 1);
    inflate(&mut dev);
    assert_eq!(dev.metrics().rejections.queue_broken, 1);
    assert!(drv.used(0).is_empty());
    // The other queue still works.
    let buf = drv.pfn_buffer(&[FREE_PFN_A]);
    drv.add_chain(1, &[buf]);
    dev.process_deflate_queue().unwrap();
    assert_eq!(drv.used(1).len(), 1);
    assert!(rec.ranges().is_empty());
}

#[test]
fn inflated_pages_really_read_back_as_zero() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let mut dev = Balloon::new(cfg()).unwrap();
    activate(&mut dev, &drv, BASE);
    let start = GuestAddress(page(PFN_B - 2));
    mem.write_slice(&[0x5a; 5 * 4096], start).unwrap();
    // Four pages over the A/B boundary; the fifth stays.
    let buf = drv.pfn_buffer(&[PFN_B + 1, PFN_B - 2, PFN_B, PFN_B - 1]);
    drv.add_chain(0, &[buf]);
    inflate(&mut dev);
    let mut back = vec![0u8; 5 * 4096];
    mem.read_slice(&mut back, start).unwrap();
    assert!(back[..4 * 4096].iter().all(|&b| b == 0));
    assert!(back[4 * 4096..].iter().all(|&b| b == 0x5a));
    let m = dev.metrics();
    assert_eq!((m.madvise_calls, m.madvise_errors), (2, 0));
    assert_eq!(m.bytes_released, 4 * 4096);
}

#[test]
fn stats_are_parsed_held_and_returned_on_request() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 3);
    let (mut dev, _) = recording(with_stats());
    let (irq, _) = activate(&mut dev, &drv, BASE | VIRTIO_BALLOON_F_STATS_VQ);
    assert_eq!(dev.queue_layout().unwrap().stats, Some(2));
    assert!(dev.stats().is_none());

    let mut bytes = Vec::new();
    for tag in 0..16u16 {
        bytes.extend(stat(tag, 100 + u64::from(tag)));
    }
    bytes.extend(stat(99, 1));
    let addr = drv.buffer(&bytes);
    let head = drv.add_chain(2, &[(addr, bytes.len() as u32, false)]);
    dev.process_stats_queue().unwrap();
    // Held, not returned.
    assert!(drv.used(2).is_empty());
    let s = dev.stats().unwrap();
    for t in StatTag::ALL {
        assert_eq!(s.get(t), Some(100 + t as u64));
    }
    assert_eq!((s.oom_kills, s.alloc_stalls), (Some(110), Some(111)));
    assert_eq!((s.async_scans, s.direct_scans), (Some(112), Some(113)));
    assert_eq!(
        (s.async_reclaims, s.direct_reclaims),
        (Some(114), Some(115))
    );
    assert!(s.age() < Duration::from_secs(5));
    assert_eq!(dev.metrics().stats_unknown_tags, 1);
    assert_eq!(dev.metrics().stats_updates, 1);

    // The polling tick gives it back.
    assert!(dev.request_stats().unwrap());
    assert_eq!(drv.used(2), vec![(u32::from(head), 0)]);
    assert_eq!(irq.used(), vec![2]);
    assert!(!dev.request_stats().unwrap());

    // The driver refills and reposts: fresh values replace the old ones.
    let addr = drv.buffer(&stat(4, 7));
    drv.add_chain(2, &[(addr, 10, false)]);
    dev.process_stats_queue().unwrap();
    let s2 = dev.stats().unwrap();
    assert_eq!(s2.free_memory, Some(7));
    assert_eq!(s2.total_memory, None);
    assert!(s2.updated_at >= s.updated_at);
    assert_eq!(dev.metrics().stats_requests, 1);
}

#[test]
fn stats_buffers_are_bounded() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 3);
    let (mut dev, _) = recording(with_stats());
    activate(&mut dev, &drv, BASE | VIRTIO_BALLOON_F_STATS_VQ);
    // 64 entries are read; tag 5 only appears after them.
    let mut bytes = Vec::new();
    for i in 0..MAX_STATS_ENTRIES as u64 {
        bytes.extend(stat(4, i));
    }
    for _ in 0..100 {
        bytes.extend(stat(5, 1));
    }
    let addr = drv.buffer(&bytes);
    drv.add_chain(2, &[(addr, bytes.len() as u32, false)]);
    dev.process_stats_queue().unwrap();
    let s = dev.stats().unwrap();
    assert_eq!(s.free_memory, Some(MAX_STATS_ENTRIES as u64 - 1));
    assert_eq!(s.total_memory, None);
    assert_eq!(dev.metrics().rejections.stats_truncated, 1);

    // A second buffer while one is held: the first goes back.
    let addr = drv.buffer(&[stat(6, 9), vec![1, 2, 3]].concat());
    drv.add_chain(2, &[(addr, 13, false)]);
    dev.process_stats_queue().unwrap();
    assert_eq!(drv.used(2).len(), 1);
    assert_eq!(dev.stats().unwrap().available_memory, Some(9));
    assert_eq!(dev.metrics().rejections.stats_partial_entry, 1);

    // Wrong direction: rejected and returned at once; the held one stays.
    let addr = drv.buffer(&stat(4, 1));
    drv.add_chain(2, &[(addr, 10, true)]);
    dev.process_stats_queue().unwrap();
    assert_eq!(drv.used(2).len(), 2);
    assert_eq!(dev.metrics().rejections.wrong_direction, 1);
    assert_eq!(dev.stats().unwrap().available_memory, Some(9));
    assert!(dev.request_stats().unwrap());
    assert_eq!(drv.used(2).len(), 3);
}

#[test]
fn the_stats_interval_changes_at_runtime_only_when_enabled_at_creation() {
    let mut off = Balloon::new(cfg()).unwrap();
    assert!(matches!(
        off.set_stats_interval(3),
        Err(BalloonError::StatsNotEnabled)
    ));
    assert_eq!(off.config().stats_polling_interval_s, 0);

    let mem = test_mem();
    let mut drv = Driver::new(&mem, 3);
    let (mut dev, _) = recording(with_stats());
    dev.set_stats_interval(7).unwrap();
    assert_eq!(dev.config().stats_polling_interval_s, 7);
    let (irq, _) = activate(&mut dev, &drv, BASE | VIRTIO_BALLOON_F_STATS_VQ);
    let addr = drv.buffer(&stat(4, 1));
    drv.add_chain(2, &[(addr, 10, false)]);
    dev.process_stats_queue().unwrap();
    // A new interval asks for fresh values at once.
    dev.set_stats_interval(2).unwrap();
    assert_eq!(drv.used(2).len(), 1);
    assert_eq!(irq.used(), vec![2]);
    // 0 pauses polling; the feature stays, so it can come back.
    dev.set_stats_interval(0).unwrap();
    assert!(!dev.stats_timer.is_armed().unwrap());
    assert_eq!(dev.config().stats_polling_interval_s, 0);
    dev.set_stats_interval(4).unwrap();
    assert!(dev.stats_timer.is_armed().unwrap());
    assert_eq!(
        dev.device_features() & VIRTIO_BALLOON_F_STATS_VQ,
        VIRTIO_BALLOON_F_STATS_VQ
    );
}

#[test]
fn reported_free_ranges_are_released_coalesced() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 3);
    let (mut dev, rec) = recording(with_reporting());
    let (irq, _) = activate(&mut dev, &drv, BASE | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
    assert_eq!(dev.queue_layout().unwrap().reporting, Some(2));
    let head = drv.add_chain(
        2,
        &[
            (0x20_0000, 0x10_0000, true),
            // Two adjacent ranges over the A/B boundary.
            (REGION_B_START - 0x2000, 0x2000, true),
            (REGION_B_START, 0x1000, true),
            // Unaligned at both ends: only its whole page goes.
            (REGION_C_START + 0x800, 0x2000, true),
            // Less than a page: nothing goes.
            (REGION_C_START + 0x8000, 0x800, true),
        ],
    );
    dev.process_reporting_queue().unwrap();
    assert_eq!(drv.used(2), vec![(u32::from(head), 0)]);
    assert_eq!(irq.used(), vec![2]);
    assert_eq!(
        rec.ranges(),
        vec![
            (0x20_0000, 0x10_0000),
            (REGION_B_START - 0x2000, 0x2000),
            (REGION_B_START, 0x1000),
            (REGION_C_START + 0x1000, 0x1000),
        ]
    );
    let m = dev.metrics();
    assert_eq!((m.report_requests, m.report_ranges), (1, 5));
    assert_eq!(m.report_bytes, 0x10_0000 + 0x2000 + 0x1000 + 0x1000);
    assert_eq!(m.rejections.report_range_unaligned, 2);
}

#[test]
fn bad_reports_are_rejected_and_release_nothing() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 3);
    let (mut dev, rec) = recording(with_reporting());
    activate(&mut dev, &drv, BASE | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
    drv.add_chain(2, &[(0x30_0000, 0x1000, false)]);
    drv.add_chain(2, &[(0x30_0000, 0x1000, true), (HOLE_START, 0x1000, true)]);
    drv.add_chain(2, &[(REGION_C_START, 0x40_1000, true)]);
    dev.process_reporting_queue().unwrap();
    assert_eq!(drv.used(2).len(), 3);
    assert!(rec.ranges().is_empty());
    let r = &dev.metrics().rejections;
    assert_eq!((r.wrong_direction, r.descriptor_outside_memory), (1, 2));
}

#[test]
fn the_reporting_queue_index_depends_on_the_acked_stats_feature() {
    let both = BalloonConfig {
        stats_polling_interval_s: 1,
        free_page_reporting: true,
        ..cfg()
    };
    for (acked, index) in [
        (
            BASE | VIRTIO_BALLOON_F_STATS_VQ | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
            3usize,
        ),
        (BASE | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING, 2),
    ] {
        let mem = test_mem();
        let mut drv = Driver::new(&mem, 4);
        let (mut dev, rec) = recording(both);
        assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE; 4]);
        let (irq, _) = activate(&mut dev, &drv, acked);
        let layout = dev.queue_layout().unwrap();
        assert_eq!(layout.reporting, Some(index));
        assert_eq!(layout.stats.is_some(), index == 3);
        drv.add_chain(index, &[(0x30_0000, 0x1000, true)]);
        dev.process_reporting_queue().unwrap();
        assert_eq!(drv.used(index).len(), 1);
        assert_eq!(irq.used(), vec![index as u16]);
        assert_eq!(rec.ranges(), vec![(0x30_0000, 0x1000)]);
        if index == 2 {
            assert!(matches!(
                dev.process_stats_queue(),
                Err(BalloonError::QueueNotNegotiated(_))
            ));
        }
    }
}

#[test]
fn config_space_reads_and_writes() {
    let mut dev = Balloon::new(BalloonConfig {
        amount_mib: 3,
        ..cfg()
    })
    .unwrap();
    let mut b = [0u8; 8];
    dev.read_config(0, &mut b);
    assert_eq!(b, [0, 3, 0, 0, 0, 0, 0, 0]);
    dev.write_config(0, &0xffff_u32.to_le_bytes());
    assert_eq!(dev.target_pages(), 768);
    dev.write_config(4, &500u32.to_le_bytes());
    assert_eq!(dev.actual_pages(), 500);
    let mut four = [0u8; 4];
    dev.read_config(4, &mut four);
    assert_eq!(u32::from_le_bytes(four), 500);
    dev.read_config(8, &mut four);
    assert_eq!(four, [0; 4]);
    assert_eq!(dev.metrics().config_writes_ignored, 4);
    assert_eq!(dev.config().amount_mib, 3);
}

#[test]
fn a_new_target_interrupts_only_an_active_driver() {
    let mem = test_mem();
    let drv = Driver::new(&mem, 2);
    let (mut dev, _) = recording(cfg());
    dev.set_target_mib(2).unwrap();
    assert_eq!(dev.target_pages(), 512);
    let (irq, _) = activate(&mut dev, &drv, BASE);
    assert_eq!(irq.config_changes(), 0);
    dev.set_target_mib(10).unwrap();
    assert_eq!(irq.config_changes(), 1);
    assert_eq!(dev.config().amount_mib, 10);
    let mut b = [0u8; 4];
    dev.read_config(0, &mut b);
    assert_eq!(u32::from_le_bytes(b), 2560);
    assert!(matches!(
        dev.set_target_mib(u32::MAX),
        Err(BalloonError::TargetTooLarge { .. })
    ));
    assert_eq!((dev.target_pages(), irq.config_changes()), (2560, 1));
    assert_eq!(dev.metrics().config_notifications, 1);
}

#[test]
fn activation_checks_features_and_queues() {
    let mem = test_mem();
    let drv = Driver::new(&mem, 3);
    let activation = |dev: &Balloon, acked: u64, ready: &[bool]| Activation {
        mem: mem.clone(),
        acked_features: acked,
        queues: ready
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut q = drv.queue(i);
                q.set_ready(*r);
                q
            })
            .collect(),
        queue_events: (0..dev.queue_max_sizes().len())
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect(),
        interrupt: Arc::new(RecordingInterrupt::default()),
    };
    let mut dev = Balloon::new(with_stats()).unwrap();
    // A feature that was not offered.
    let a = activation(
        &dev,
        BASE | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING,
        &[true; 3],
    );
    assert!(dev.activate(a).is_err());
    // A needed queue left off.
    let a = activation(&dev, BASE | VIRTIO_BALLOON_F_STATS_VQ, &[true, true, false]);
    assert!(dev.activate(a).is_err());
    // Not needed without the stats feature.
    let a = activation(&dev, BASE, &[true, true, false]);
    dev.activate(a).unwrap();
    assert!(dev.is_activated());
    assert_eq!(dev.acked_features(), Some(BASE));
    let a = activation(&dev, BASE, &[true; 3]);
    assert!(dev.activate(a).is_err());

    dev.write_config(4, &9u32.to_le_bytes());
    dev.reset();
    assert!(!dev.is_activated());
    assert_eq!(dev.actual_pages(), 0);
    assert!(matches!(
        dev.process_inflate_queue(),
        Err(BalloonError::NotActivated)
    ));
    assert_eq!((dev.metrics().activations, dev.metrics().resets), (1, 1));
}

#[test]
fn the_event_loop_drives_queues_the_timer_and_resets() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 3);
    let rec = RecordingReleaser::default();
    let dev = Arc::new(Mutex::new(
        Balloon::with_releaser(with_stats(), Arc::new(rec.clone())).unwrap(),
    ));
    let mut em = EventManager::<Arc<Mutex<Balloon>>>::new().unwrap();
    em.add_subscriber(dev.clone());

    // Linux posts its statistics buffer and kicks before DRIVER_OK.
    let addr = drv.buffer(&stat(4, 42));
    drv.add_chain(2, &[(addr, 10, false)]);
    let buf = drv.pfn_buffer(&[FREE_PFN_A]);
    drv.add_chain(0, &[buf]);
    let (irq, events) = activate(
        &mut dev.lock().unwrap(),
        &drv,
        BASE | VIRTIO_BALLOON_F_STATS_VQ,
    );
    events[2].write(1).unwrap();
    em.run_with_timeout(1000).unwrap();
    assert_eq!(drv.used(0).len(), 1);
    assert_eq!(dev.lock().unwrap().stats().unwrap().free_memory, Some(42));

    // A queue notification.
    let buf = drv.pfn_buffer(&[FREE_PFN_A + 1]);
    drv.add_chain(0, &[buf]);
    events[0].write(1).unwrap();
    em.run_with_timeout(1000).unwrap();
    dev.lock().unwrap().wait_for_releases();
    assert_eq!(drv.used(0).len(), 2);
    assert_eq!(rec.ranges().len(), 2);

    // A polling tick returns the statistics buffer.
    dev.lock()
        .unwrap()
        .arm_stats_timer(Duration::from_millis(10))
        .unwrap();
    while drv.used(2).is_empty() {
        em.run_with_timeout(1000).unwrap();
    }
    assert!(irq.used().contains(&2));
    assert_eq!(dev.lock().unwrap().metrics().stats_requests, 1);

    // After a reset the old eventfds are dropped from the loop.
    dev.lock().unwrap().reset();
    em.run_with_timeout(1000).unwrap();
    events[0].write(1).unwrap();
    assert_eq!(em.run_with_timeout(50).unwrap(), 0);
    let d = dev.lock().unwrap();
    assert!(d.registrations.retired() == 0);
    assert_eq!(d.metrics().event_errors, 0);
}

/// How long a test waits to see that something blocked does not return.
const STILL_BLOCKED: Duration = Duration::from_millis(30);

#[test]
fn with_must_tell_host_inflate_buffers_come_back_before_their_release() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let gate = GatedReleaser::closed();
    let mut dev = Balloon::with_releaser(cfg(), Arc::new(gate.clone())).unwrap();
    let (irq, _) = activate(&mut dev, &drv, BASE);
    let buf = drv.pfn_buffer(&[FREE_PFN_A, FREE_PFN_A + 1]);
    let head = drv.add_chain(0, &[buf]);
    // Returns although the releaser is blocked.
    dev.process_inflate_queue().unwrap();
    assert_eq!(drv.used(0), vec![(u32::from(head), 0)]);
    assert_eq!(irq.used(), vec![0]);
    assert_eq!(dev.inflated_pages(), 2);
    gate.wait_until_blocked();
    assert!(gate.released().is_empty());
    gate.open();
    dev.wait_for_releases();
    assert_eq!(gate.released(), vec![(page(FREE_PFN_A), 2 * 4096)]);
    let m = dev.metrics();
    assert_eq!(m.deferred_releases, 1);
    assert_eq!((m.madvise_calls, m.bytes_released), (1, 2 * 4096));
}

#[test]
fn without_must_tell_host_inflate_buffers_come_back_after_their_release() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let gate = GatedReleaser::closed();
    let mut dev = Balloon::with_releaser(cfg(), Arc::new(gate.clone())).unwrap();
    let (irq, _) = activate(&mut dev, &drv, VIRTIO_F_VERSION_1);
    let buf = drv.pfn_buffer(&[FREE_PFN_A]);
    drv.add_chain(0, &[buf]);
    std::thread::scope(|s| {
        let inflating = s.spawn(|| dev.process_inflate_queue().unwrap());
        gate.wait_until_blocked();
        std::thread::sleep(STILL_BLOCKED);
        assert!(!inflating.is_finished());
        assert!(irq.used().is_empty(), "returned before the release");
        gate.open();
        inflating.join().unwrap();
    });
    assert_eq!(drv.used(0).len(), 1);
    assert_eq!(gate.released(), vec![(page(FREE_PFN_A), 4096)]);
    assert_eq!(dev.metrics().deferred_releases, 0);
}

#[test]
fn a_deflate_is_never_returned_before_earlier_inflates_are_released() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let gate = GatedReleaser::closed();
    let mut dev = Balloon::with_releaser(cfg(), Arc::new(gate.clone())).unwrap();
    let (irq, _) = activate(&mut dev, &drv, BASE);
    let pfns: Vec<u32> = (PFN_C..PFN_C + 8).collect();
    let buf = drv.pfn_buffer(&pfns);
    drv.add_chain(0, &[buf]);
    dev.process_inflate_queue().unwrap();
    gate.wait_until_blocked();
    // The driver takes half of them back at once.
    let buf = drv.pfn_buffer(&pfns[..4]);
    drv.add_chain(1, &[buf]);
    std::thread::scope(|s| {
        let deflating = s.spawn(|| dev.process_deflate_queue().unwrap());
        std::thread::sleep(STILL_BLOCKED);
        assert!(!deflating.is_finished());
        assert!(
            !irq.used().contains(&1),
            "deflate returned before the release"
        );
        gate.open();
        deflating.join().unwrap();
    });
    assert_eq!(gate.released(), vec![(REGION_C_START, 8 * 4096)]);
    assert_eq!(drv.used(1).len(), 1);
    assert_eq!(irq.used(), vec![0, 1]);
    assert_eq!(dev.inflated_pages(), 4);
    assert_eq!(dev.metrics().release_waits, 1);
}

#[test]
fn a_report_is_never_returned_before_earlier_inflates_are_released() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 3);
    let gate = GatedReleaser::closed();
    let mut dev = Balloon::with_releaser(with_reporting(), Arc::new(gate.clone())).unwrap();
    let (irq, _) = activate(&mut dev, &drv, BASE | VIRTIO_BALLOON_F_FREE_PAGE_REPORTING);
    let buf = drv.pfn_buffer(&[FREE_PFN_A]);
    drv.add_chain(0, &[buf]);
    dev.process_inflate_queue().unwrap();
    gate.wait_until_blocked();
    drv.add_chain(2, &[(REGION_C_START, 0x2000, true)]);
    std::thread::scope(|s| {
        let reporting = s.spawn(|| dev.process_reporting_queue().unwrap());
        std::thread::sleep(STILL_BLOCKED);
        assert!(!reporting.is_finished());
        assert!(!irq.used().contains(&2), "report returned early");
        gate.open();
        reporting.join().unwrap();
    });
    // The inflate first, then the report, released before its return.
    assert_eq!(
        gate.released(),
        vec![(page(FREE_PFN_A), 4096), (REGION_C_START, 0x2000)]
    );
    assert_eq!(drv.used(2).len(), 1);
    let m = dev.metrics();
    assert_eq!((m.release_waits, m.report_bytes), (1, 0x2000));
    assert_eq!(m.bytes_released, 0x3000);
}

#[test]
fn a_reset_waits_for_pending_releases_and_keeps_their_counts() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let gate = GatedReleaser::closed();
    let mut dev = Balloon::with_releaser(cfg(), Arc::new(gate.clone())).unwrap();
    activate(&mut dev, &drv, BASE);
    let buf = drv.pfn_buffer(&[FREE_PFN_A, FREE_PFN_A + 2]);
    drv.add_chain(0, &[buf]);
    dev.process_inflate_queue().unwrap();
    gate.wait_until_blocked();
    std::thread::scope(|s| {
        let resetting = s.spawn(|| dev.reset());
        std::thread::sleep(STILL_BLOCKED);
        assert!(!resetting.is_finished(), "reset before the release ended");
        gate.open();
        resetting.join().unwrap();
    });
    assert_eq!(
        gate.released(),
        vec![(page(FREE_PFN_A), 4096), (page(FREE_PFN_A + 2), 4096)]
    );
    assert!(!dev.is_activated());
    let m = dev.metrics();
    assert_eq!((m.resets, m.release_waits), (1, 1));
    assert_eq!((m.madvise_calls, m.bytes_released), (2, 2 * 4096));
}

#[test]
fn rounds_of_inflate_requests_are_released_coalesced() {
    let mem = test_mem();
    let mut drv = Driver::new(&mem, 2);
    let (mut dev, rec) = recording(cfg());
    activate(&mut dev, &drv, BASE);
    // Four 1 MiB buffers of region C, posted together, the last first.
    for i in (0..4).rev() {
        let pfns: Vec<u32> = (PFN_C + 256 * i..PFN_C + 256 * (i + 1)).collect();
        let buf = drv.pfn_buffer(&pfns);
        drv.add_chain(0, &[buf]);
    }
    inflate(&mut dev);
    assert_eq!(drv.used(0).len(), 4);
    assert_eq!(rec.ranges(), vec![(REGION_C_START, 4 << 20)]);
    let m = dev.metrics();
    assert_eq!((m.inflate_requests, m.deferred_releases), (4, 1));
    assert_eq!(m.madvise_calls, 1);
}
