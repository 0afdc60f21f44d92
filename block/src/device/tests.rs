//! The device against a driver on real split queues in guest memory and a
//! real image file: what a guest sees (data, status bytes, used lengths,
//! interrupts) and what the host sees (the file, the counters).

use super::*;
use crate::request::{
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use crate::test_utils::*;
use vmm_sys_util::eventfd::EventFd;

const IMAGE: usize = 1 << 20;
const SECTORS: u64 = (IMAGE / 512) as u64;

fn device(image: &TempImage, read_only: bool) -> Block {
    Block::new(config(image, read_only)).unwrap()
}

#[test]
fn features_config_space_and_a_bad_image() {
    let img = TempImage::new("feat", IMAGE + 100);
    let rw = device(&img, false);
    assert_eq!(rw.device_type(), 2);
    assert_eq!(rw.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_eq!(rw.device_features(), OFFERED_FEATURES_RW);
    assert_eq!(rw.device_features() & VIRTIO_BLK_F_RO, 0);
    // A partial last sector is not part of the disk.
    assert_eq!(rw.capacity_sectors(), SECTORS);
    let mut cap = [0u8; 8];
    rw.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), SECTORS);
    let ro = device(&img, true);
    assert_ne!(ro.device_features() & VIRTIO_BLK_F_RO, 0);

    let missing = BlockConfig {
        path: "/nonexistent/blk-missing.img".into(),
        ..config(&img, false)
    };
    let err = Block::new(missing).unwrap_err().to_string();
    assert!(err.contains("blk-missing.img"), "{err}");
    let bad_id = BlockConfig {
        drive_id: "no spaces".into(),
        ..config(&img, false)
    };
    assert!(matches!(Block::new(bad_id), Err(BlockError::Config(_))));
}

#[test]
fn reads_return_the_image_and_writes_reach_it() {
    let img = TempImage::new("rw", IMAGE);
    let mut dev = device(&img, false);
    let mem = test_mem();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES_RW);

    // Read sectors 3..5 in two segments.
    let h = d.header(VIRTIO_BLK_T_IN, 3);
    let (a, b) = (d.data(512, 0, true), d.data(512, 0, true));
    let s = d.status();
    let read = d.post(&[h, a, b, s]);
    // Write sectors 10..12 from one segment.
    let h = d.header(VIRTIO_BLK_T_OUT, 10);
    let data = d.data(1024, 0xab, false);
    let s2 = d.status();
    let write = d.post(&[h, data, s2]);
    let h = d.header(VIRTIO_BLK_T_FLUSH, 0);
    let s3 = d.status();
    let flush = d.post(&[h, s3]);
    dev.process_queue();

    assert_eq!(
        d.used(),
        vec![
            (u32::from(read), 1025),
            (u32::from(write), 1),
            (u32::from(flush), 1)
        ]
    );
    assert_eq!(
        [d.status_of(s), d.status_of(s2), d.status_of(s3)],
        [0, 0, 0]
    );
    let want: Vec<u8> = (3 * 512..5 * 512).map(pattern).collect();
    assert_eq!([d.read_bytes(a), d.read_bytes(b)].concat(), want);
    let file = img.contents();
    assert!(file[10 * 512..12 * 512].iter().all(|&x| x == 0xab));
    assert_eq!(file[12 * 512], pattern(12 * 512), "nothing past the write");
    assert_eq!(file[10 * 512 - 1], pattern(10 * 512 - 1));
    assert_eq!(d.interrupt.used(), vec![0]);

    let m = dev.metrics();
    assert_eq!((m.read_ops, m.read_bytes), (1, 1024));
    assert_eq!((m.write_ops, m.write_bytes), (1, 1024));
    assert_eq!((m.flushes, m.write_through_syncs), (1, 0));
    assert_eq!(m.rejections.total(), 0);
}

#[test]
fn a_large_read_goes_through_the_chunk_buffer_intact() {
    let img = TempImage::new("big", 4 << 20);
    let mut dev = device(&img, true);
    let mem = test_mem();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES_RW | VIRTIO_BLK_F_RO);
    // 1 MiB + 512 from sector 1: four chunks and a bit, over 17 segments
    // whose boundaries do not line up with the chunks'.
    let h = d.header(VIRTIO_BLK_T_IN, 1);
    let mut bufs = vec![h];
    let segs: Vec<Buf> = (0..16).map(|_| d.data(65536, 0, true)).collect();
    bufs.extend(&segs);
    let last = d.data(512, 0, true);
    bufs.push(last);
    let s = d.status();
    bufs.push(s);
    d.post(&bufs);
    dev.process_queue();
    assert_eq!(d.status_of(s), 0);
    let got: Vec<u8> = segs
        .iter()
        .chain([&last])
        .flat_map(|&b| d.read_bytes(b))
        .collect();
    let want: Vec<u8> = (512..512 + (1 << 20) + 512).map(pattern).collect();
    assert!(got == want, "data differs");
}

#[test]
fn get_id_answers_the_drive_id() {
    let img = TempImage::new("id", IMAGE);
    let mut dev = device(&img, true);
    let mem = test_mem();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES_RW | VIRTIO_BLK_F_RO);
    let h = d.header(VIRTIO_BLK_T_GET_ID, 0);
    let buf = d.data(20, 0xee, true);
    let s = d.status();
    let head = d.post(&[h, buf, s]);
    dev.process_queue();
    assert_eq!(d.status_of(s), 0);
    assert_eq!(&d.read_bytes(buf), b"test-drive\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(d.used(), vec![(u32::from(head), 21)]);
    assert_eq!(dev.metrics().get_ids, 1);
}

#[test]
fn read_only_drive_refuses_writes_with_ioerr_and_keeps_the_file() {
    let img = TempImage::new("ro", IMAGE);
    let before = img.contents();
    let mut dev = device(&img, true);
    let mem = test_mem();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES_RW | VIRTIO_BLK_F_RO);
    let h = d.header(VIRTIO_BLK_T_OUT, 0);
    let data = d.data(512, 0x55, false);
    let s = d.status();
    d.post(&[h, data, s]);
    dev.process_queue();
    assert_eq!(d.status_of(s), VIRTIO_BLK_S_IOERR);
    assert_eq!(img.contents(), before);
    let m = dev.metrics();
    assert_eq!(m.rejections.write_to_read_only, 1);
    assert_eq!(m.write_ops, 0);
}

#[test]
fn refused_requests_get_a_status_when_they_have_one_and_are_counted() {
    let img = TempImage::new("bad", IMAGE);
    let mut dev = device(&img, false);
    let mem = test_mem();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES_RW);
    // Past the end.
    let h = d.header(VIRTIO_BLK_T_IN, SECTORS);
    let data = d.data(512, 0x77, true);
    let s1 = d.status();
    let past = d.post(&[h, data, s1]);
    // Unknown type.
    let h = d.header(99, 0);
    let s2 = d.status();
    d.post(&[h, s2]);
    // Data outside guest memory: no status written, returned with 0.
    let h = d.header(VIRTIO_BLK_T_IN, 0);
    let s3 = d.status();
    let outside = d.post(&[h, (MEM_END - 256, 512, true), s3]);
    // No status descriptor.
    let h = d.header(VIRTIO_BLK_T_OUT, 0);
    let nostatus = d.post(&[h, (DATA_AREA, 512, false)]);
    dev.process_queue();

    assert_eq!(d.status_of(s1), VIRTIO_BLK_S_IOERR);
    assert!(
        d.read_bytes(data).iter().all(|&b| b == 0x77),
        "no data read"
    );
    assert_eq!(d.status_of(s2), VIRTIO_BLK_S_UNSUPP);
    assert_eq!(d.status_of(s3), 0xff, "untouched");
    let used = d.used();
    assert_eq!(used.len(), 4, "every chain comes back");
    assert!(used.contains(&(u32::from(past), 1)));
    assert!(used.contains(&(u32::from(outside), 0)));
    assert!(used.contains(&(u32::from(nostatus), 0)));
    let r = dev.metrics().rejections;
    assert_eq!(r.sector_out_of_range, 1);
    assert_eq!(r.unsupported_type, 1);
    assert_eq!(r.descriptor_outside_memory, 1);
    assert_eq!(r.no_status, 1);
    assert_eq!(r.total(), 4);
}

#[test]
fn host_io_errors_become_ioerr() {
    let img = TempImage::new("ioerr", IMAGE);
    let mut dev = device(&img, false);
    // The image shrinks under the running device.
    std::fs::OpenOptions::new()
        .write(true)
        .open(img.path())
        .unwrap()
        .set_len(4096)
        .unwrap();
    let mem = test_mem();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, OFFERED_FEATURES_RW);
    let h = d.header(VIRTIO_BLK_T_IN, 100);
    let data = d.data(512, 0, true);
    let s = d.status();
    d.post(&[h, data, s]);
    dev.process_queue();
    assert_eq!(d.status_of(s), VIRTIO_BLK_S_IOERR);
    let m = dev.metrics();
    assert_eq!((m.io_errors, m.read_ops), (1, 0));
}

#[test]
fn without_flush_negotiated_writes_are_synced_at_once() {
    let img = TempImage::new("wt", IMAGE);
    let mut dev = device(&img, false);
    let mem = test_mem();
    let mut d = Driver::new(&mem);
    d.activate(&mut dev, VIRTIO_F_VERSION_1);
    let h = d.header(VIRTIO_BLK_T_OUT, 1);
    let data = d.data(512, 1, false);
    let s = d.status();
    d.post(&[h, data, s]);
    dev.process_queue();
    assert_eq!(d.status_of(s), 0);
    assert_eq!(dev.metrics().write_through_syncs, 1);
}

#[test]
fn activation_rules_and_reset() {
    let img = TempImage::new("act", IMAGE);
    let mut dev = device(&img, false);
    let mem = test_mem();
    let d = Driver::new(&mem);
    // RO was not offered on a read-write drive.
    let err = dev
        .activate(Activation {
            mem: mem.clone(),
            acked_features: OFFERED_FEATURES_RW | VIRTIO_BLK_F_RO,
            queues: vec![d.queue.queue()],
            queue_events: vec![EventFd::new(libc::EFD_NONBLOCK).unwrap()],
            interrupt: d.interrupt.clone(),
        })
        .unwrap_err();
    assert!(err.0.contains("did not offer"), "{err}");
    assert!(!dev.is_activated());
    d.activate(&mut dev, OFFERED_FEATURES_RW);
    assert!(dev.is_activated());
    dev.reset();
    assert!(!dev.is_activated());
    // Nothing to process after a reset.
    dev.process_queue();
    d.activate(&mut dev, OFFERED_FEATURES_RW);
    let m = dev.metrics();
    assert_eq!((m.activations, m.resets), (2, 1));
}
