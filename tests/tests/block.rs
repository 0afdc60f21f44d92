//! The virtio-blk device with the tiny guest's polling driver, in real
//! VMs: what the guest reads and writes is what the host file holds, a
//! read-only drive refuses writes, requests past the end get an error
//! status and a counter while the VMM keeps serving, and `root=true` names
//! the drive on the kernel command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmm_integration_tests::{api, require_kvm, socket_path, VmProcess};

const BOOT: Duration = Duration::from_secs(30);

/// The byte at offset `i` of a fresh test image.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An image file of `len` pattern bytes, removed when dropped.
struct Image(PathBuf);

impl Image {
    fn new(name: &str, len: usize) -> Image {
        let path = std::env::temp_dir().join(format!("blk-{}-{name}.img", std::process::id()));
        std::fs::write(&path, (0..len).map(pattern).collect::<Vec<u8>>()).unwrap();
        Image(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Boots the tiny guest with one drive and `cmdline`; extra `vmm run`
/// arguments in `extra`.
fn start(drive: &str, cmdline: &str, extra: &[&str]) -> VmProcess {
    require_kvm();
    let mut args = vec![
        "run",
        "--mem",
        "64M",
        "--drive",
        drive,
        "--cmdline",
        cmdline,
    ];
    args.extend_from_slice(extra);
    VmProcess::start(&args)
}

fn line(vm: &mut VmProcess, needle: &str) -> String {
    match vm.wait_for(needle, BOOT) {
        Some(l) => l.text,
        None => panic!("no line with {needle:?}:\n{}", vm.output()),
    }
}

fn exit_code(vm: &mut VmProcess) -> Option<i32> {
    let (status, stderr) = vm.wait_exit(BOOT);
    assert!(!stderr.contains("VMM error"), "{stderr}\n{}", vm.output());
    status.code()
}

#[test]
fn a_guest_write_and_flush_reach_the_file_and_reads_return_it() {
    let img = Image::new("rw", 1 << 20);
    let drive = format!("id=data0,path={},root=true", img.path().display());
    let mut vm = start(
        &drive,
        "tiny.blk=id,write:8:4:0xab,flush,read:8:4,read:0:8",
        &[],
    );
    let ready = line(&mut vm, "virtio-blk capacity=");
    assert!(ready.contains("capacity=2048 sectors ro=no"), "{ready}");
    // root=true: the first drive, named on the command line, read-write.
    let cmdline = line(&mut vm, "cmdline \"");
    assert!(cmdline.contains("root=/dev/vda rw"), "{cmdline}");
    assert_eq!(
        line(&mut vm, "blk id:"),
        "tiny-guest: blk id: status=0 id=\"data0\""
    );
    assert_eq!(
        line(&mut vm, "blk write 8+4"),
        "tiny-guest: blk write 8+4 byte=0xab: status=0"
    );
    assert_eq!(
        line(&mut vm, "blk flush:"),
        "tiny-guest: blk flush: status=0"
    );
    assert_eq!(
        line(&mut vm, "blk read 8+4:"),
        format!(
            "tiny-guest: blk read 8+4: status=0 fnv1a64={:#018x}",
            fnv1a64(&[0xab; 2048])
        )
    );
    let first: Vec<u8> = (0..4096).map(pattern).collect();
    assert_eq!(
        line(&mut vm, "blk read 0+8:"),
        format!(
            "tiny-guest: blk read 0+8: status=0 fnv1a64={:#018x}",
            fnv1a64(&first)
        )
    );
    assert_eq!(exit_code(&mut vm), Some(0), "{}", vm.output());
    let file = img.contents();
    assert_eq!(file.len(), 1 << 20, "the image keeps its size");
    assert!(file[8 * 512..12 * 512].iter().all(|&b| b == 0xab));
    let untouched = |i: usize| !(8 * 512..12 * 512).contains(&i);
    assert!(
        file.iter()
            .enumerate()
            .filter(|&(i, _)| untouched(i))
            .all(|(i, &b)| b == pattern(i)),
        "bytes outside the write changed"
    );
}

#[test]
fn read_only_and_out_of_range_requests_get_ioerr_counted_while_the_vmm_serves() {
    let img = Image::new("ro", 1 << 20);
    let before = img.contents();
    let sock = socket_path("blk-ro");
    let _ = std::fs::remove_file(&sock);
    let drive = format!("id=ro0,path={},ro=true", img.path().display());
    // 2048 sectors: sector 2048 is one past the end; 2^61 overflows
    // sector * 512.
    let mut vm = start(
        &drive,
        "tiny.blk=write:0:1:0x11,read:2048:1,read:2047:2,read:0x2000000000000000:1,read:2047:1 \
         tiny.hold=3s",
        &["--api-sock", sock.to_str().unwrap(), "--boot-now"],
    );
    let ready = line(&mut vm, "virtio-blk capacity=");
    assert!(ready.contains("ro=yes"), "{ready}");
    assert_eq!(
        line(&mut vm, "blk write 0+1"),
        "tiny-guest: blk write 0+1 byte=0x11: status=1"
    );
    for r in ["2048+1", "2047+2", "2305843009213693952+1"] {
        let l = line(&mut vm, &format!("blk read {r}:"));
        assert!(l.contains("status=1"), "{l}");
    }
    let last: Vec<u8> = (2047 * 512..2048 * 512).map(pattern).collect();
    assert_eq!(
        line(&mut vm, "blk read 2047+1:"),
        format!(
            "tiny-guest: blk read 2047+1: status=0 fnv1a64={:#018x}",
            fnv1a64(&last)
        )
    );
    line(&mut vm, "hold 3000 ms");
    // The VMM still serves, and counted each refusal under its reason.
    let (status, body) = api(&sock, "GET", "/drives/ro0/metrics", None);
    assert_eq!(status, 200, "{body}");
    let m: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(m["rejections"]["write_to_read_only"], 1, "{m}");
    assert_eq!(m["rejections"]["sector_out_of_range"], 3, "{m}");
    assert_eq!(m["read_ops"], 1, "{m}");
    assert_eq!(m["read_bytes"], 512, "{m}");
    assert_eq!(m["write_ops"], 0, "{m}");
    let (status, body) = api(&sock, "GET", "/drives/nope/metrics", None);
    assert_eq!(status, 404, "{body}");
    assert_eq!(exit_code(&mut vm), Some(0), "{}", vm.output());
    assert!(img.contents() == before, "a read-only image changed");
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn the_guest_reads_the_whole_disk_intact() {
    let len = 16 << 20;
    let img = Image::new("all", len);
    let want = fnv1a64(&img.contents());
    let drive = format!("id=all,path={},ro=true", img.path().display());
    let mut vm = start(&drive, "tiny.blk=readall", &[]);
    let l = line(&mut vm, "blk readall:");
    assert!(
        l.contains(&format!("{len} bytes in"))
            && l.ends_with(&format!("status=0 fnv1a64={want:#018x}")),
        "{l}"
    );
    eprintln!("{l}");
    assert_eq!(exit_code(&mut vm), Some(0), "{}", vm.output());
}

#[test]
fn a_drive_the_vmm_cannot_open_stops_the_start() {
    require_kvm();
    let mut vm = VmProcess::start(&["run", "--drive", "id=gone,path=/nonexistent/blk-gone.img"]);
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(250), "{stderr}");
    assert!(stderr.contains("blk-gone.img"), "{stderr}");
    let mut vm = VmProcess::start(&["run", "--drive", "id=bad id,path=/x"]);
    let (status, stderr) = vm.wait_exit(BOOT);
    assert_eq!(status.code(), Some(250), "{stderr}");
    assert!(stderr.contains("drive_id"), "{stderr}");
}
