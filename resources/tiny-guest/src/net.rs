//! A polled virtio-net driver (virtio 1.x, section 5.1) and the
//! `tiny.net=` actions: [`RX_BUFS`] receive buffers of [`BUF`] bytes
//! (enough for a 1514-byte frame and its 12-byte header without
//! mergeable buffers), one transmit buffer, one frame in flight at a time.
//!
//! Invariants: both queues and every buffer handed to the device live in
//! [`DMA`], owned by this driver alone (`DMA_TAKEN`); a receive buffer is
//! read only after the device returned it, and posted again after; the
//! transmit buffer is written only when no transmit chain is in flight.
//! Every wait is bounded.

use core::cell::UnsafeCell;
use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};

use crate::cmdline::{NetAction, NetPlan};
use crate::netproto::{answer, Kind};
use crate::say;
use crate::serial::exit;
use crate::tsc;
use crate::virtio_mmio::{InitError, Transport, F_VERSION_1};
use crate::virtqueue::{Buffer, Virtqueue, RING_BYTES};

/// The virtio device ID of a network device.
pub const DEVICE_ID: u32 = 1;
/// Configuration bytes read: `mac` (6, read as two words).
pub const CONFIG_BYTES: u64 = 8;
/// Exit code: no usable virtio-net device.
pub const EXIT_DEVICE: u8 = 11;
/// Exit code: the device did not return a transmit chain in time.
pub const EXIT_TIMEOUT: u8 = 12;

const F_MAC: u64 = 1 << 5;
const RX_QUEUE: u16 = 0;
const TX_QUEUE: u16 = 1;
const HDR: usize = 12;
/// Bytes per buffer: a 1514-byte frame and its header, rounded up.
const BUF: usize = 1536;
/// Receive buffers posted at once. Small: `.dma` is part of the image,
/// which must end below 2 MiB, where the memory test starts.
const RX_BUFS: usize = 4;
/// Descriptors of the `evil-long` chain: 43 × 1536 = 66048 > 65562.
const EVIL_LONG_DESCS: usize = 43;
/// How long the device may take to return a transmit chain.
const ANSWER_MS: u64 = 5000;

/// Memory shared with the device.
#[repr(C, align(4096))]
struct DmaArea {
    rx_ring: [u8; RING_BYTES],
    tx_ring: [u8; RING_BYTES],
    rx: [[u8; BUF]; RX_BUFS],
    tx: [u8; BUF],
}

struct Dma(UnsafeCell<DmaArea>);

// SAFETY: the guest has one thread; the area is handed out once
// (DMA_TAKEN) and then only accessed through raw pointers by its owner.
unsafe impl Sync for Dma {}

#[link_section = ".dma.net"]
static DMA: Dma = Dma(UnsafeCell::new(DmaArea {
    rx_ring: [0; RING_BYTES],
    tx_ring: [0; RING_BYTES],
    rx: [[0; BUF]; RX_BUFS],
    tx: [0; BUF],
}));
static DMA_TAKEN: AtomicBool = AtomicBool::new(false);

/// What `serve` saw.
#[derive(Default)]
struct Counts {
    frames: u64,
    arp: u64,
    icmp: u64,
    udp: u64,
    other: u64,
    sent: u64,
}

/// The driver.
pub struct Net {
    mmio: Transport,
    dma: *mut DmaArea,
    rx: Virtqueue,
    tx: Virtqueue,
    /// Which receive buffer each descriptor head carries.
    rx_of_head: [u8; 128],
    mac: [u8; 6],
    ip: [u8; 4],
    freq: tsc::TscFreq,
}

impl Net {
    /// Resets and sets up the device with both queues, and posts every
    /// receive buffer.
    pub fn init(mmio: Transport) -> Result<Net, InitError> {
        assert!(!DMA_TAKEN.swap(true, Ordering::Relaxed), "net set up twice");
        let dma = DMA.0.get();
        let (offered, accepted) = mmio.negotiate(F_VERSION_1 | F_MAC, F_VERSION_1)?;
        let mut mac = [0u8; 6];
        if accepted & F_MAC != 0 {
            let lo = mmio.config_u32(0).to_le_bytes();
            let hi = mmio.config_u32(4).to_le_bytes();
            mac[..4].copy_from_slice(&lo);
            mac[4..].copy_from_slice(&hi[..2]);
        } else {
            mac = [0x02, 0, 0, 0, 0, 0x99];
        }
        let mut sizes = [0u16; 2];
        for (i, s) in sizes.iter_mut().enumerate() {
            match mmio.queue_max(i as u16) {
                Some(max) if max > 0 => *s = max,
                _ => {
                    mmio.fail();
                    return Err(InitError::QueueUnavailable(i as u16));
                }
            }
        }
        // SAFETY: each ring is a 4096-aligned page of DMA, owned by this
        // driver alone (DMA_TAKEN), identity-mapped; the device was just
        // reset by `negotiate` and uses none of it.
        let (rx, tx) = unsafe {
            (
                Virtqueue::new(addr_of_mut!((*dma).rx_ring).cast(), sizes[0]),
                Virtqueue::new(addr_of_mut!((*dma).tx_ring).cast(), sizes[1]),
            )
        };
        mmio.setup_queue(RX_QUEUE, &rx);
        mmio.setup_queue(TX_QUEUE, &tx);
        mmio.driver_ok();
        say!(
            "virtio-net mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} features offered={:#x} accepted={:#x} queues rx={} tx={}",
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5],
            offered,
            accepted,
            rx.size(),
            tx.size()
        );
        let mut dev = Net {
            mmio,
            dma,
            rx,
            tx,
            rx_of_head: [0; 128],
            mac,
            ip: [0; 4],
            freq: tsc::frequency(),
        };
        for i in 0..RX_BUFS {
            dev.post_rx(i);
        }
        dev.mmio.notify(RX_QUEUE);
        Ok(dev)
    }

    fn rx_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: a field of the DMA area this driver owns; i < RX_BUFS.
        unsafe { addr_of_mut!((*self.dma).rx[i]).cast() }
    }

    fn tx_ptr(&self) -> *mut u8 {
        // SAFETY: a field of the DMA area this driver owns.
        unsafe { addr_of_mut!((*self.dma).tx).cast() }
    }

    /// Makes receive buffer `i` available (the caller notifies).
    fn post_rx(&mut self, i: usize) {
        let buf = Buffer {
            addr: self.rx_ptr(i) as u64,
            len: BUF as u32,
            device_writes: true,
        };
        if let Some(head) = self.rx.add(&[buf]) {
            self.rx_of_head[usize::from(head)] = i as u8;
            self.rx.publish();
        }
    }

    /// Makes `bufs` available on the transmit queue and waits until the
    /// device returns them; returns the used length. Exits the guest if it
    /// does not in time.
    fn transmit(&mut self, bufs: &[Buffer]) -> u32 {
        let Some(head) = self.tx.add(bufs) else {
            say!("net: no free transmit descriptors");
            exit(EXIT_TIMEOUT)
        };
        self.tx.publish();
        self.mmio.notify(TX_QUEUE);
        let t0 = tsc::now();
        let limit = ANSWER_MS.saturating_mul(self.freq.khz);
        loop {
            if let Some(used) = self.tx.pop_used() {
                if used.known && used.id == u32::from(head) {
                    return used.len;
                }
                say!("net: unexpected transmit used id {}", used.id);
            }
            if tsc::now().wrapping_sub(t0) > limit {
                say!("net: transmit chain not returned in {} ms", ANSWER_MS);
                exit(EXIT_TIMEOUT)
            }
            core::hint::spin_loop();
        }
    }

    /// Answers frames for `millis`.
    fn serve(&mut self, millis: u64) -> Counts {
        let mut c = Counts::default();
        let mut frame = [0u8; BUF];
        let mut out = [0u8; BUF];
        let t0 = tsc::now();
        let limit = millis.saturating_mul(self.freq.khz);
        while tsc::now().wrapping_sub(t0) <= limit {
            let Some(used) = self.rx.pop_used() else {
                core::hint::spin_loop();
                continue;
            };
            if !used.known {
                say!("net: unexpected receive used id {}", used.id);
                continue;
            }
            let i = usize::from(self.rx_of_head[used.id as usize]);
            // The device says how much it wrote; never trust it past the
            // buffer.
            let len = (used.len as usize).min(BUF);
            for (j, b) in frame[..len].iter_mut().enumerate() {
                // SAFETY: inside receive buffer i, which the device gave
                // back.
                *b = unsafe { read_volatile(self.rx_ptr(i).add(j)) };
            }
            self.post_rx(i);
            self.mmio.notify(RX_QUEUE);
            c.frames += 1;
            if len < HDR {
                c.other += 1;
                continue;
            }
            let (kind, n) = answer(&frame[HDR..len], self.mac, self.ip, &mut out[HDR..]);
            match kind {
                Kind::Arp => c.arp += 1,
                Kind::Icmp => c.icmp += 1,
                Kind::Udp => c.udp += 1,
                Kind::Other => c.other += 1,
            }
            if n == 0 {
                continue;
            }
            // A plain header: no offloads.
            out[..HDR].fill(0);
            for (j, b) in out[..HDR + n].iter().enumerate() {
                // SAFETY: inside the transmit buffer; no transmit chain
                // is in flight (each waits for its return).
                unsafe { write_volatile(self.tx_ptr().add(j), *b) };
            }
            let buf = Buffer {
                addr: self.tx_ptr() as u64,
                len: (HDR + n) as u32,
                device_writes: false,
            };
            self.transmit(&[buf]);
            c.sent += 1;
        }
        self.mmio.ack_interrupts();
        c
    }
}

/// Runs the actions in order.
pub fn run(dev: &mut Net, plan: &NetPlan) {
    for &action in plan.actions() {
        match action {
            NetAction::Ip(ip) => dev.ip = ip,
            NetAction::EvilLong => {
                let buf = Buffer {
                    addr: dev.tx_ptr() as u64,
                    len: BUF as u32,
                    device_writes: false,
                };
                let used = dev.transmit(&[buf; EVIL_LONG_DESCS]);
                say!(
                    "net evil-long: {} descriptors, {} bytes, returned used={}",
                    EVIL_LONG_DESCS,
                    EVIL_LONG_DESCS * BUF,
                    used
                );
            }
            NetAction::EvilBadDesc => {
                let hdr = Buffer {
                    addr: dev.tx_ptr() as u64,
                    len: HDR as u32,
                    device_writes: false,
                };
                // Far outside any RAM we have, inside the identity map's
                // reach of no one.
                let bad = Buffer {
                    addr: 0x7fff_ffff_0000,
                    len: 1000,
                    device_writes: false,
                };
                let used = dev.transmit(&[hdr, bad]);
                say!("net evil-bad-desc: returned used={}", used);
            }
            NetAction::Serve { millis } => {
                let ip = dev.ip;
                say!("net serve {}.{}.{}.{} for {} ms", ip[0], ip[1], ip[2], ip[3], millis);
                let c = dev.serve(millis);
                say!(
                    "net served: frames={} arp={} icmp={} udp={} other={} sent={}",
                    c.frames, c.arp, c.icmp, c.udp, c.other, c.sent
                );
            }
        }
    }
    say!("net: all actions done");
}
