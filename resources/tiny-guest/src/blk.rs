//! A polled virtio-blk driver (virtio 1.x, section 5.2) and the
//! `tiny.blk=` actions: one request at a time, each a header, data
//! segments of at most the device's `size_max` (and at most `seg_max` of
//! them), and a status byte.
//!
//! Invariants: the queue and every buffer handed to the device live in
//! [`DMA`], owned by this driver alone (`DMA_TAKEN`); a request's buffers
//! are not touched by the driver between `notify` and the used element
//! that returns them (or, after a timeout, ever again: the driver stops).
//! Every wait is bounded.

use core::cell::UnsafeCell;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::cmdline::{BlkAction, BlkPlan};
use crate::idle;
use crate::say;
use crate::serial::{exit, Escaped};
use crate::tsc;
use crate::virtio_mmio::{InitError, Transport, F_VERSION_1};
use crate::virtqueue::{Buffer, Virtqueue, RING_BYTES};

/// The virtio device ID of a block device.
pub const DEVICE_ID: u32 = 2;
/// Configuration bytes read: `capacity`, `size_max`, `seg_max`.
pub const CONFIG_BYTES: u64 = 16;
/// Exit code: no usable virtio-blk device.
pub const EXIT_DEVICE: u8 = 9;
/// Exit code: the device did not answer a request in time.
pub const EXIT_TIMEOUT: u8 = 10;

const F_SIZE_MAX: u64 = 1 << 1;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;

const SECTOR: u64 = 512;
/// Data area: the most one request carries here. Small, because `.dma`
/// is part of the image and the image must end below 2 MiB, where the
/// memory test starts.
const DATA_BYTES: usize = 64 * 1024;
/// Largest segment we make when the device gives no `size_max`.
const DEFAULT_SEG: u32 = 64 * 1024;
/// How long a request is polled before the driver sleeps in the idle port
/// until the device answers: a quick answer costs no VM exit and wake-up.
const SPIN_US: u64 = 50;
/// How long the device may take to answer one request.
const ANSWER_MS: u64 = 5000;

/// Memory shared with the device.
#[repr(C, align(4096))]
struct DmaArea {
    ring: [u8; RING_BYTES],
    data: [u8; DATA_BYTES],
    header: [u8; 16],
    status: [u8; 16],
}

struct Dma(UnsafeCell<DmaArea>);

// SAFETY: the guest has one thread; the area is handed out once
// (DMA_TAKEN) and then only accessed through raw pointers by its owner.
unsafe impl Sync for Dma {}

#[link_section = ".dma.blk"]
static DMA: Dma = Dma(UnsafeCell::new(DmaArea {
    ring: [0; RING_BYTES],
    data: [0; DATA_BYTES],
    header: [0; 16],
    status: [0; 16],
}));
static DMA_TAKEN: AtomicBool = AtomicBool::new(false);

/// The driver.
pub struct Blk {
    mmio: Transport,
    dma: *mut DmaArea,
    q: Virtqueue,
    capacity: u64,
    read_only: bool,
    /// Bytes per data segment: `size_max`, capped.
    seg: u32,
    /// Data segments per request: `seg_max`, capped by the queue.
    segs: usize,
    freq: tsc::TscFreq,
}

impl Blk {
    /// Resets and sets up the device with one queue.
    pub fn init(mmio: Transport) -> Result<Blk, InitError> {
        assert!(!DMA_TAKEN.swap(true, Ordering::Relaxed), "blk set up twice");
        let dma = DMA.0.get();
        let wanted = F_VERSION_1 | F_RO | F_FLUSH | F_SIZE_MAX | F_SEG_MAX;
        let (offered, accepted) = mmio.negotiate(wanted, F_VERSION_1)?;
        let capacity = u64::from(mmio.config_u32(0)) | u64::from(mmio.config_u32(4)) << 32;
        let size_max = if accepted & F_SIZE_MAX != 0 { mmio.config_u32(8) } else { 0 };
        let seg_max = if accepted & F_SEG_MAX != 0 { mmio.config_u32(12) } else { 0 };
        let max = match mmio.queue_max(0) {
            Some(max) if max > 0 => max,
            _ => {
                mmio.fail();
                return Err(InitError::QueueUnavailable(0));
            }
        };
        // SAFETY: the ring is a 4096-aligned page of DMA, owned by this
        // driver alone (DMA_TAKEN), identity-mapped; the device was just
        // reset by `negotiate` and uses none of it.
        let q = unsafe { Virtqueue::new(addr_of_mut!((*dma).ring).cast(), max) };
        mmio.setup_queue(0, &q);
        mmio.driver_ok();
        // Whole sectors per segment, at most DEFAULT_SEG.
        let seg = match size_max {
            0 => DEFAULT_SEG,
            s => (s.min(DEFAULT_SEG) / SECTOR as u32).max(1) * SECTOR as u32,
        };
        let room = usize::from(q.size()).saturating_sub(2).max(1);
        let segs = match seg_max {
            0 => 1,
            n => (n as usize).min(room),
        };
        say!(
            "virtio-blk capacity={} sectors ro={} features offered={:#x} accepted={:#x} size_max={} seg_max={} queue={}",
            capacity,
            if accepted & F_RO != 0 { "yes" } else { "no" },
            offered,
            accepted,
            size_max,
            seg_max,
            q.size()
        );
        Ok(Blk {
            mmio,
            dma,
            q,
            capacity,
            read_only: accepted & F_RO != 0,
            seg,
            segs,
            freq: tsc::frequency(),
        })
    }

    /// Bytes one request may carry here.
    fn max_request(&self) -> usize {
        (self.seg as usize * self.segs).min(DATA_BYTES)
    }

    fn data_ptr(&self) -> *mut u8 {
        // SAFETY: a field of the DMA area this driver owns.
        unsafe { addr_of_mut!((*self.dma).data).cast() }
    }

    /// One request with `len` bytes of the data area; returns its status.
    /// Exits the guest if the device does not answer in time.
    fn request(&mut self, t: u32, sector: u64, len: usize, device_writes: bool) -> u8 {
        // SAFETY: header and status belong to the DMA area, and no request
        // is in flight (each waits for its answer), so the device does not
        // use them now.
        unsafe {
            let h = addr_of_mut!((*self.dma).header).cast::<u8>();
            for (i, b) in t
                .to_le_bytes()
                .iter()
                .chain(&0u32.to_le_bytes())
                .chain(&sector.to_le_bytes())
                .enumerate()
            {
                write_volatile(h.add(i), *b);
            }
            write_volatile(addr_of_mut!((*self.dma).status).cast::<u8>(), 0xff);
        }
        let mut bufs = [Buffer {
            addr: 0,
            len: 0,
            device_writes: false,
        }; 130];
        let mut n = 0;
        // SAFETY: taking addresses only.
        bufs[n].addr = unsafe { addr_of_mut!((*self.dma).header) } as u64;
        bufs[n].len = 16;
        n += 1;
        let mut off = 0usize;
        while off < len && n < bufs.len() - 1 {
            let l = (len - off).min(self.seg as usize);
            bufs[n] = Buffer {
                addr: self.data_ptr() as u64 + off as u64,
                len: l as u32,
                device_writes,
            };
            n += 1;
            off += l;
        }
        bufs[n] = Buffer {
            // SAFETY: taking an address only.
            addr: unsafe { addr_of_mut!((*self.dma).status) } as u64,
            len: 1,
            device_writes: true,
        };
        n += 1;
        let Some(head) = self.q.add(&bufs[..n]) else {
            say!("blk: no free descriptors");
            exit(EXIT_TIMEOUT)
        };
        self.q.publish();
        self.mmio.notify(0);
        let t0 = tsc::now();
        let limit = ANSWER_MS.saturating_mul(self.freq.khz);
        let spin = SPIN_US.saturating_mul(self.freq.khz) / 1000;
        loop {
            if let Some(used) = self.q.pop_used() {
                if used.known && used.id == u32::from(head) {
                    break;
                }
                say!("blk: unexpected used id {}", used.id);
            }
            let elapsed = tsc::now().wrapping_sub(t0);
            if elapsed > limit {
                say!("blk: no answer in {} ms", ANSWER_MS);
                exit(EXIT_TIMEOUT)
            }
            if elapsed < spin {
                core::hint::spin_loop();
            } else {
                // Asleep in the VMM until the device uses the request.
                idle::sleep_ticks(self.freq, limit - elapsed);
            }
        }
        self.mmio.ack_interrupts();
        // SAFETY: the device gave the buffers back.
        unsafe { read_volatile(addr_of_mut!((*self.dma).status).cast::<u8>()) }
    }

    /// Reads `sectors` from `sector`, feeding what it read to `hash`;
    /// returns the first non-zero status, or 0.
    fn read(&mut self, sector: u64, sectors: u64, hash: &mut u64) -> u8 {
        let per = (self.max_request() as u64 / SECTOR).max(1);
        let mut done = 0;
        // At least one request, so a zero-length or out-of-range read
        // still asks the device.
        loop {
            let n = (sectors - done).min(per);
            let len = (n * SECTOR) as usize;
            let status = self.request(T_IN, sector.wrapping_add(done), len, true);
            if status != 0 {
                return status;
            }
            for i in 0..len {
                // SAFETY: inside the data area; the device is done with it.
                let b = unsafe { read_volatile(self.data_ptr().add(i)) };
                *hash = (*hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
            }
            done += n;
            if done >= sectors {
                return 0;
            }
        }
    }

    /// Writes `sectors` of `byte` from `sector`.
    fn write(&mut self, sector: u64, sectors: u64, byte: u8) -> u8 {
        let per = (self.max_request() as u64 / SECTOR).max(1);
        let mut done = 0;
        loop {
            let n = (sectors - done).min(per);
            let len = (n * SECTOR) as usize;
            for i in 0..len {
                // SAFETY: inside the data area; no request is in flight.
                unsafe { write_volatile(self.data_ptr().add(i), byte) };
            }
            let status = self.request(T_OUT, sector.wrapping_add(done), len, false);
            if status != 0 {
                return status;
            }
            done += n;
            if done >= sectors {
                return 0;
            }
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Runs the actions in order; a status other than 0 is printed, not an
/// error (the host's tests ask for some on purpose).
pub fn run(dev: &mut Blk, plan: &BlkPlan) {
    for &action in plan.actions() {
        match action {
            BlkAction::Read { sector, sectors } => {
                let mut h = FNV_OFFSET;
                let status = dev.read(sector, sectors, &mut h);
                say!("blk read {}+{}: status={} fnv1a64={:#018x}", sector, sectors, status, h);
            }
            BlkAction::Write { sector, sectors, byte } => {
                let status = dev.write(sector, sectors, byte);
                say!("blk write {}+{} byte={:#x}: status={}", sector, sectors, byte, status);
            }
            BlkAction::Flush => {
                let status = dev.request(T_FLUSH, 0, 0, false);
                say!("blk flush: status={}", status);
            }
            BlkAction::Id => {
                let status = dev.request(T_GET_ID, 0, 20, true);
                let mut id = [0u8; 20];
                for (i, b) in id.iter_mut().enumerate() {
                    // SAFETY: inside the data area; the device is done.
                    *b = unsafe { read_volatile(dev.data_ptr().add(i)) };
                }
                let n = id.iter().position(|&b| b == 0).unwrap_or(id.len());
                say!("blk id: status={} id=\"{}\"", status, Escaped(&id[..n]));
            }
            BlkAction::ReadAll => {
                let mut h = FNV_OFFSET;
                let t0 = tsc::now();
                let status = dev.read(0, dev.capacity, &mut h);
                let ticks = tsc::now().wrapping_sub(t0).max(1);
                let us = ticks.saturating_mul(1000) / dev.freq.khz.max(1);
                let bytes = dev.capacity * SECTOR;
                say!(
                    "blk readall: {} bytes in {} us ({} MB/s) status={} fnv1a64={:#018x}",
                    bytes,
                    us,
                    bytes / us.max(1),
                    status,
                    h
                );
            }
        }
    }
    say!("blk: all actions done (read_only={})", if dev.read_only { "yes" } else { "no" });
}
