//! The virtio-mmio register file under a fuzzed driver: random sequences
//! of reads and writes of every width at every offset (registers, their
//! odd bytes, configuration space, past the window), mixed with driver-like
//! steps that take the status machine through its states with random
//! mistakes: features not offered or without VERSION_1, queues of random
//! sizes at random addresses (in RAM, in the hole, past it), bits cleared
//! without a reset, notifications, interrupts and acknowledgements.
//!
//! After every access it checks what the spec and the transport promise:
//! identity registers never change; reads of unknown or write-only
//! registers, and reads that are not 32 bits wide, return 0 and change
//! nothing; writes that are not 32 bits wide change nothing; the status
//! only gains bits until a reset, in order (no DRIVER before ACKNOWLEDGE,
//! ...); FEATURES_OK is set only for features the device offered that
//! include VERSION_1; the device is activated at most once per reset, only
//! at the write that sets DRIVER_OK, with every queue it gets as ready
//! valid in guest memory and the features the driver wrote, and a failed
//! activation sets DEVICE_NEEDS_RESET; a reset clears status, queues and
//! interrupts and resets a device that was activated exactly once;
//! configuration space reads are the device's, writes reach it only with
//! DRIVER set and FAILED clear; ConfigGeneration never goes back.

use std::sync::{Arc, Mutex};

use virtio_device::{
    ActivateError, Activation, GuestRam, QueueT, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::fuzz_support::{run_cases, Rng};

const CASES: u64 = 10_000;

/// Guest RAM: [0, 1 MiB) and [2, 3 MiB), a hole between.
fn guest_mem() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20), (GuestAddress(2 << 20), 1 << 20)]).unwrap()
}

/// What the device saw of one activation: per queue, ready or not, and
/// whether a ready one was valid in guest memory.
#[derive(Debug)]
struct Activated {
    features: u64,
    queues: Vec<(bool, bool)>,
}

/// A device with random offerings that records what the transport does
/// to it.
struct FuzzDevice {
    sizes: Vec<u16>,
    features: u64,
    config: Vec<u8>,
    /// Refuse activations (a device that finds the queues wrong).
    refuse: bool,
    activations: Vec<Activated>,
    resets: usize,
    config_writes: usize,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
}

impl VirtioDevice for FuzzDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn device_features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get(o))
                .copied()
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.config_writes += 1;
        for (i, b) in data.iter().enumerate() {
            let slot = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.config.get_mut(o));
            if let Some(slot) = slot {
                *slot = *b;
            }
        }
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.activations.push(Activated {
            features: a.acked_features,
            queues: a
                .queues
                .iter()
                .map(|q| (q.ready(), !q.ready() || q.is_valid(&a.mem)))
                .collect(),
        });
        assert_eq!(a.queues.len(), self.sizes.len());
        assert_eq!(a.queue_events.len(), self.sizes.len());
        if self.refuse {
            return Err(ActivateError("refused".into()));
        }
        self.interrupt = Some(a.interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.interrupt = None;
    }
}

const REGISTERS: &[u64] = &[
    REG_MAGIC,
    REG_VERSION,
    REG_DEVICE_ID,
    REG_VENDOR_ID,
    REG_DEVICE_FEATURES,
    REG_DEVICE_FEATURES_SEL,
    REG_DRIVER_FEATURES,
    REG_DRIVER_FEATURES_SEL,
    REG_QUEUE_SEL,
    REG_QUEUE_NUM_MAX,
    REG_QUEUE_NUM,
    REG_QUEUE_READY,
    REG_QUEUE_NOTIFY,
    REG_INTERRUPT_STATUS,
    REG_INTERRUPT_ACK,
    REG_STATUS,
    REG_QUEUE_DESC_LOW,
    REG_QUEUE_DESC_HIGH,
    REG_QUEUE_DRIVER_LOW,
    REG_QUEUE_DRIVER_HIGH,
    REG_QUEUE_DEVICE_LOW,
    REG_QUEUE_DEVICE_HIGH,
    REG_CONFIG_GENERATION,
];

/// Registers a read may return non-zero for; every other offset below
/// the configuration space reads as 0.
const READABLE: &[u64] = &[
    REG_MAGIC,
    REG_VERSION,
    REG_DEVICE_ID,
    REG_VENDOR_ID,
    REG_DEVICE_FEATURES,
    REG_QUEUE_NUM_MAX,
    REG_QUEUE_READY,
    REG_INTERRUPT_STATUS,
    REG_STATUS,
    REG_CONFIG_GENERATION,
];

/// The driver's side, as far as the checks need it.
struct Driver {
    t: MmioTransport,
    dev: Arc<Mutex<FuzzDevice>>,
    /// What the transport accepted into DriverFeatures (written while
    /// negotiating, with the selector the driver last wrote).
    features: u64,
    features_sel: u32,
    /// Activations of the device when the status was last 0.
    epoch_activations: usize,
    /// What ConfigGeneration must read.
    generation: u32,
    /// What this step wrote: the status, interrupt acks, config space.
    wrote_status: Option<u32>,
    acked_irq: u32,
    config_write: bool,
    /// What the cases got to, for the summary.
    seen: Seen,
}

/// Outcomes the generator must reach, counted.
#[derive(Default, Debug)]
struct Seen {
    activations: u64,
    activations_refused_by_the_device: u64,
    driver_ok_with_invalid_queues: u64,
    features_ok_refused: u64,
    resets_of_a_live_device: u64,
}

fn read(t: &mut MmioTransport, offset: u64, width: usize) -> Vec<u8> {
    let mut data = vec![0xa5; width];
    t.read(offset, &mut data);
    data
}

fn read32(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

impl Driver {
    fn new(rng: &mut Rng) -> Option<Driver> {
        let nqueues = rng.range(0, 4) as usize;
        let sizes: Vec<u16> = (0..nqueues)
            .map(|_| match rng.below(8) {
                0 => rng.next() as u16,
                1 => 0,
                _ => 1 << rng.below(16),
            })
            .collect();
        let features = match rng.below(3) {
            0 => rng.next(),
            _ => rng.next() & 0xffff_ffff | VIRTIO_F_VERSION_1,
        };
        let len = rng.below(40) as usize;
        let config = rng.bytes(len);
        let dev = Arc::new(Mutex::new(FuzzDevice {
            sizes: sizes.clone(),
            features,
            config,
            refuse: rng.one_in(8),
            activations: Vec::new(),
            resets: 0,
            config_writes: 0,
            interrupt: None,
        }));
        let t = MmioTransport::new(
            dev.clone(),
            guest_mem(),
            EventFd::new(0).unwrap(),
            Arc::default(),
        );
        // virtio-queue refuses sizes that are zero, not a power of two or
        // over 32768: then so does the transport, without a panic.
        let valid = sizes
            .iter()
            .all(|&s| s != 0 && s.is_power_of_two() && s <= 32768);
        assert_eq!(t.is_ok(), valid, "queue sizes {sizes:?}");
        Some(Driver {
            t: t.ok()?,
            dev,
            features: 0,
            features_sel: 0,
            epoch_activations: 0,
            generation: 0,
            wrote_status: None,
            acked_irq: 0,
            config_write: false,
            seen: Seen::default(),
        })
    }

    fn offered(&self) -> u64 {
        self.dev.lock().unwrap().features | VIRTIO_F_VERSION_1
    }

    fn nqueues(&self) -> u32 {
        self.dev.lock().unwrap().sizes.len() as u32
    }

    /// One access, driver-like or random, then the checks.
    fn step(&mut self, rng: &mut Rng) {
        if rng.one_in(21) {
            // Checked write by write.
            self.init(rng);
            return;
        }
        self.checked(|drv| drv.access(rng));
    }

    /// Runs `f` (accesses without a status write of 0 among others) and
    /// checks what it did.
    fn checked(&mut self, f: impl FnOnce(&mut Self)) {
        let status = self.t.status();
        let activations = self.dev.lock().unwrap().activations.len();
        let resets = self.dev.lock().unwrap().resets;
        let config_writes = self.dev.lock().unwrap().config_writes;
        let irq_before = self.t.interrupt.status.load(Ordering::SeqCst);
        let ready_before = self.queue_ready();
        self.wrote_status = None;
        self.acked_irq = 0;
        self.config_write = false;
        f(self);
        self.check(
            status,
            activations,
            resets,
            config_writes,
            irq_before,
            &ready_before,
        );
    }

    fn access(&mut self, rng: &mut Rng) {
        let status = self.t.status();
        match rng.below(20) {
            // A write of the next status bit, or of a random status.
            0..=4 => {
                let next = [
                    STATUS_ACKNOWLEDGE,
                    STATUS_DRIVER,
                    STATUS_FEATURES_OK,
                    STATUS_DRIVER_OK,
                ]
                .into_iter()
                .find(|b| status & b == 0)
                .unwrap_or(0);
                let stuck = status & (STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED) != 0;
                let v = match rng.below(24) {
                    _ if stuck && rng.bool() => 0,
                    0 => 0,
                    1 => rng.next() as u32,
                    2 => status | STATUS_FAILED,
                    3 => status & !(1 << rng.below(8)),
                    4 => status | (1 << rng.below(8)),
                    5 => status,
                    _ => status | next,
                };
                self.write32(REG_STATUS, v);
            }
            5..=6 => {
                // Features: sometimes what was offered, sometimes not.
                let want = self.some_features(rng);
                let sel = rng.pick(&[0, 1, 0, 1, 2, u32::MAX]);
                self.write32(REG_DRIVER_FEATURES_SEL, sel);
                let word = match sel {
                    0 => want as u32,
                    1 => (want >> 32) as u32,
                    _ => rng.next() as u32,
                };
                self.write32(REG_DRIVER_FEATURES, word);
                let offered = self.offered();
                let sel = rng.pick(&[0, 1, 7]);
                self.write32(REG_DEVICE_FEATURES_SEL, sel);
                let got = read32(&mut self.t, REG_DEVICE_FEATURES);
                let expect = match sel {
                    0 => offered as u32,
                    1 => (offered >> 32) as u32,
                    _ => 0,
                };
                assert_eq!(got, expect, "DeviceFeatures[{sel}]");
            }
            7..=9 => self.queue_setup(rng),
            10 => {
                let q = rng.below(u64::from(self.nqueues()) + 2) as u32;
                self.write32(REG_QUEUE_NOTIFY, q);
            }
            11 => {
                // The device raises an interrupt, the driver acks some.
                let irq = self.dev.lock().unwrap().interrupt.clone();
                if let Some(irq) = irq {
                    if rng.bool() {
                        irq.notify_used(0).unwrap();
                    } else {
                        irq.notify_config().unwrap();
                        // ConfigGeneration moves with the device's change.
                        self.generation = self.generation.wrapping_add(1);
                    }
                }
                let ack = rng.below(4) as u32;
                self.write32(REG_INTERRUPT_ACK, ack);
            }
            12..=13 => {
                // Configuration space, any width, in and past it.
                let offset = REG_CONFIG + rng.below(48);
                let width = rng.pick(&[1, 2, 4, 8, 3]);
                if rng.bool() {
                    let data = rng.bytes(width);
                    self.t.write(offset, &data);
                    self.config_write = true;
                } else {
                    let got = read(&mut self.t, offset, width);
                    let mut want = vec![0u8; width];
                    self.dev
                        .lock()
                        .unwrap()
                        .read_config(offset - REG_CONFIG, &mut want);
                    assert_eq!(got, want, "config read at {offset:#x}");
                }
            }
            _ => self.random_access(rng),
        }
    }

    /// Features to ask for: mostly a subset of the offer with VERSION_1.
    fn some_features(&self, rng: &mut Rng) -> u64 {
        let offered = self.offered();
        match rng.below(6) {
            0 => rng.next(),
            1 => offered & !VIRTIO_F_VERSION_1,
            _ => offered & rng.next() | VIRTIO_F_VERSION_1,
        }
    }

    /// What a driver does from reset to DRIVER_OK, with an occasional
    /// mistake (the random steps around it do the rest).
    fn init(&mut self, rng: &mut Rng) {
        for v in [0, STATUS_ACKNOWLEDGE, STATUS_ACKNOWLEDGE | STATUS_DRIVER] {
            self.checked(|drv| drv.write32(REG_STATUS, v));
        }
        let want = self.some_features(rng);
        self.checked(|drv| {
            for sel in 0..2 {
                drv.write32(REG_DRIVER_FEATURES_SEL, sel);
                drv.write32(REG_DRIVER_FEATURES, (want >> (32 * sel)) as u32);
            }
        });
        self.checked(|drv| {
            drv.write32(
                REG_STATUS,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            )
        });
        self.checked(|drv| drv.init_queues(rng));
        let status = self.t.status();
        self.checked(|drv| drv.write32(REG_STATUS, status | STATUS_DRIVER_OK));
    }

    fn init_queues(&mut self, rng: &mut Rng) {
        for q in 0..self.nqueues() {
            if rng.one_in(6) {
                continue;
            }
            if rng.one_in(8) {
                self.queue_setup(rng);
                continue;
            }
            self.write32(REG_QUEUE_SEL, q);
            let max = read32(&mut self.t, REG_QUEUE_NUM_MAX);
            let size = max >> rng.below(3).min(u64::from(max.trailing_zeros()));
            self.write32(REG_QUEUE_NUM, size);
            // Each queue in its own 64 KiB, in either region.
            let base = u64::from(q) * 0x1_0000 + if rng.bool() { 0 } else { 2 << 20 };
            let desc = base;
            let avail = desc + 16 * u64::from(size);
            let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
            for (reg, a) in [
                (REG_QUEUE_DESC_LOW, desc),
                (REG_QUEUE_DRIVER_LOW, avail),
                (REG_QUEUE_DEVICE_LOW, used),
            ] {
                self.write32(reg, a as u32);
                self.write32(reg + 4, (a >> 32) as u32);
            }
            self.write32(REG_QUEUE_READY, 1);
        }
    }

    /// Writes a 32-bit register, tracking what the transport accepts into
    /// DriverFeatures.
    fn write32(&mut self, offset: u64, v: u32) {
        let negotiating =
            self.t.status() & (STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED) == STATUS_DRIVER;
        match offset {
            REG_STATUS => self.wrote_status = Some(v),
            REG_INTERRUPT_ACK => self.acked_irq |= v,
            REG_DRIVER_FEATURES_SEL => self.features_sel = v,
            REG_DRIVER_FEATURES if negotiating => match self.features_sel {
                0 => self.features = self.features & !0xffff_ffff | u64::from(v),
                1 => self.features = self.features & 0xffff_ffff | u64::from(v) << 32,
                _ => {}
            },
            _ => {}
        }
        self.t.write(offset, &v.to_le_bytes());
    }

    /// Programs a queue: sizes and addresses that are right, off, or
    /// outside guest memory.
    fn queue_setup(&mut self, rng: &mut Rng) {
        let n = self.nqueues();
        let sel = match rng.below(6) {
            0 => n + rng.below(3) as u32,
            1 => rng.next() as u32,
            _ => rng.below(u64::from(n.max(1))) as u32,
        };
        self.write32(REG_QUEUE_SEL, sel);
        let max = read32(&mut self.t, REG_QUEUE_NUM_MAX);
        let size = match rng.below(6) {
            0 => rng.next() as u32,
            1 => 0,
            2 => max.saturating_mul(2),
            _ => max >> rng.below(4),
        };
        self.write32(REG_QUEUE_NUM, size);
        let addr = |rng: &mut Rng| -> u64 {
            match rng.below(8) {
                0 => rng.next(),
                1 => (1 << 20) - 16 * rng.below(4),
                2 => (3 << 20) + rng.below(1 << 20),
                3 => rng.below(1 << 20) | 1,
                _ => {
                    let region = if rng.bool() { 0 } else { 2 << 20 };
                    region + 0x1000 * rng.below(0xf0)
                }
            }
        };
        for reg in [
            REG_QUEUE_DESC_LOW,
            REG_QUEUE_DRIVER_LOW,
            REG_QUEUE_DEVICE_LOW,
        ] {
            let a = addr(rng);
            self.write32(reg, a as u32);
            if rng.bool() {
                self.write32(reg + 4, (a >> 32) as u32);
            }
        }
        let ready = rng.pick(&[1, 1, 1, 0, 2]);
        self.write32(REG_QUEUE_READY, ready);
    }

    /// A read or write at any offset and of any width.
    fn random_access(&mut self, rng: &mut Rng) {
        let offset = match rng.below(6) {
            0 => rng.pick(REGISTERS) + rng.below(4),
            1 => rng.below(0x100),
            2 => rng.pick(&[0x1000, 0xfff, 0x200, u64::MAX - 3, u64::MAX]),
            3 => rng.next(),
            _ => rng.pick(REGISTERS),
        };
        let width = rng.pick(&[4, 4, 1, 2, 8, 3, 0, 16]);
        if rng.one_in(3) {
            let got = read(&mut self.t, offset, width);
            if offset < REG_CONFIG && (width != 4 || !READABLE.contains(&offset)) {
                assert!(
                    got.iter().all(|b| *b == 0),
                    "read of {width} bytes at {offset:#x}: {got:?}"
                );
            }
            return;
        }
        let data = rng.bytes(width);
        if offset < REG_CONFIG && width == 4 {
            // Through write32, so the feature model sees it.
            let v = u32::from_le_bytes(data.try_into().unwrap());
            self.write32(offset, v);
        } else {
            let before = self.t.status();
            self.t.write(offset, &data);
            if offset < REG_CONFIG {
                assert_eq!(self.t.status(), before, "a {width}-byte register write");
            } else {
                self.config_write = true;
            }
        }
    }

    fn queue_ready(&mut self) -> Vec<u32> {
        let sel = self.t.queue_sel;
        let n = self.nqueues();
        let ready = (0..n)
            .map(|q| {
                self.t.queue_sel = q;
                read32(&mut self.t, REG_QUEUE_READY)
            })
            .collect();
        self.t.queue_sel = sel;
        ready
    }

    fn check(
        &mut self,
        before: u32,
        activations: usize,
        resets: usize,
        config_writes: usize,
        irq_before: u32,
        ready_before: &[u32],
    ) {
        let (wrote_status, acked_irq, config_write) =
            (self.wrote_status, self.acked_irq, self.config_write);
        let t = &mut self.t;
        let status = t.status();
        assert_eq!(read32(t, REG_STATUS), status);
        // Identity.
        assert_eq!(read32(t, REG_MAGIC), MAGIC);
        assert_eq!(read32(t, REG_VERSION), VERSION_MODERN);
        assert_eq!(read32(t, REG_VENDOR_ID), VENDOR_ID);
        assert_eq!(read32(t, REG_DEVICE_ID), 42);
        // Status: only a reset takes bits away; bits come in order.
        if status != 0 {
            assert_eq!(status & before, before, "{before:#x} -> {status:#x}");
        }
        if status & STATUS_DRIVER != 0 {
            assert_ne!(status & STATUS_ACKNOWLEDGE, 0, "{status:#x}");
        }
        if status & STATUS_FEATURES_OK != 0 {
            assert_ne!(status & STATUS_DRIVER, 0, "{status:#x}");
            let offered = self.dev.lock().unwrap().features | VIRTIO_F_VERSION_1;
            assert_eq!(
                self.features & !offered,
                0,
                "FEATURES_OK for {:#x}",
                self.features
            );
            assert_ne!(
                self.features & VIRTIO_F_VERSION_1,
                0,
                "FEATURES_OK without VERSION_1"
            );
        }
        if status & STATUS_DRIVER_OK != 0 {
            assert_ne!(status & STATUS_FEATURES_OK, 0, "{status:#x}");
        }
        if before & STATUS_DEVICE_NEEDS_RESET != 0 && status != 0 {
            assert_ne!(status & STATUS_DEVICE_NEEDS_RESET, 0);
        }
        if before & STATUS_FAILED != 0 && status != 0 {
            assert_eq!(
                status & !(before | STATUS_DEVICE_NEEDS_RESET),
                0,
                "a failed device went on: {before:#x} -> {status:#x}"
            );
        }
        match wrote_status {
            Some(0) => {
                assert_eq!(status, 0);
                assert_eq!(t.interrupt.status.load(Ordering::SeqCst), 0);
                assert!(self.queue_ready().iter().all(|r| *r == 0));
                self.features = 0;
                self.features_sel = 0;
            }
            Some(v) if v & before != before => {
                assert_eq!(
                    status,
                    before | STATUS_DEVICE_NEEDS_RESET,
                    "bits cleared: {v:#x}"
                );
            }
            _ => {}
        }
        // Activation: at most once per reset, at the DRIVER_OK write.
        let d = self.dev.lock().unwrap();
        let new_activations = d.activations.len() - activations;
        let new_resets = d.resets - resets;
        let driver_ok_added = before & STATUS_DRIVER_OK == 0 && status & STATUS_DRIVER_OK != 0;
        if new_activations > 0 {
            assert_eq!(new_activations, 1);
            assert!(driver_ok_added, "activated without DRIVER_OK being set");
            let a = d.activations.last().unwrap();
            assert_eq!(a.features, self.features, "acked features");
            for (i, (ready, valid)) in a.queues.iter().enumerate() {
                assert!(valid, "queue {i} handed over ready but invalid");
                assert_eq!(u32::from(*ready), ready_before[i]);
            }
            // A device that refused leaves the driver DEVICE_NEEDS_RESET.
            let refused = status & STATUS_DEVICE_NEEDS_RESET != 0;
            assert_eq!(refused, d.refuse, "{status:#x}");
            self.seen.activations += 1;
            self.seen.activations_refused_by_the_device += u64::from(refused);
        } else if driver_ok_added {
            // Invalid queues: the device never sees them.
            assert_ne!(status & STATUS_DEVICE_NEEDS_RESET, 0);
            self.seen.driver_ok_with_invalid_queues += 1;
        }
        if wrote_status.is_some_and(|v| v & !before == STATUS_FEATURES_OK)
            && status & STATUS_FEATURES_OK == 0
        {
            self.seen.features_ok_refused += 1;
        }
        if status == 0 && before != 0 {
            // A reset resets a device that was activated, once.
            let was_live = before & STATUS_DRIVER_OK != 0;
            assert_eq!(new_resets, usize::from(was_live), "resets of {before:#x}");
            self.seen.resets_of_a_live_device += new_resets as u64;
        } else {
            assert_eq!(new_resets, 0, "reset without a status write of 0");
        }
        if status == 0 {
            self.epoch_activations = d.activations.len();
        }
        assert!(
            d.activations.len() - self.epoch_activations <= 1,
            "activated twice without a reset"
        );
        // Configuration space writes reach the device with DRIVER and
        // without FAILED only; they bump ConfigGeneration.
        let reached = d.config_writes - config_writes;
        drop(d);
        if config_write {
            let allowed = before & STATUS_DRIVER != 0 && before & STATUS_FAILED == 0;
            assert_eq!(reached, usize::from(allowed));
            if allowed {
                self.generation = self.generation.wrapping_add(1);
            }
        } else {
            assert_eq!(reached, 0);
        }
        let generation = read32(&mut self.t, REG_CONFIG_GENERATION);
        assert_eq!(generation, self.generation, "ConfigGeneration");
        // Interrupt status: acks clear bits, only the device sets them.
        let irq = self.t.interrupt.status.load(Ordering::SeqCst);
        assert_eq!(irq & !(INT_USED_BUFFER | INT_CONFIG_CHANGE), 0);
        assert_eq!(read32(&mut self.t, REG_INTERRUPT_STATUS), irq);
        if wrote_status.is_none() && acked_irq == 0 {
            assert_eq!(irq & irq_before, irq_before, "interrupt bits lost");
        }
        if acked_irq != 0 {
            assert_eq!(irq & acked_irq, 0, "acked bits still set");
        }
        // Live queues stay as they were handed over (only QueueReady 0 is
        // accepted, as a driver stops a queue).
        if before & STATUS_DRIVER_OK != 0 && status != 0 {
            let ready = self.queue_ready();
            for (i, (b, a)) in ready_before.iter().zip(&ready).enumerate() {
                assert!(a <= b, "queue {i} became ready while live");
            }
        }
    }
}

#[test]
fn fuzz_virtio_mmio_register_file() {
    let mut seen = Seen::default();
    let cases = run_cases("virtio_mmio", CASES, |rng| {
        let Some(mut drv) = Driver::new(rng) else {
            return;
        };
        for _ in 0..rng.range(1, 150) {
            drv.step(rng);
        }
        let s = &drv.seen;
        seen.activations += s.activations;
        seen.activations_refused_by_the_device += s.activations_refused_by_the_device;
        seen.driver_ok_with_invalid_queues += s.driver_ok_with_invalid_queues;
        seen.features_ok_refused += s.features_ok_refused;
        seen.resets_of_a_live_device += s.resets_of_a_live_device;
    });
    eprintln!("fuzz virtio_mmio: {seen:?}");
    if cases >= 1000 {
        // The generator still reaches what it is for.
        assert!(seen.activations > 0 && seen.driver_ok_with_invalid_queues > 0);
        assert!(seen.features_ok_refused > 0 && seen.resets_of_a_live_device > 0);
    }
}
