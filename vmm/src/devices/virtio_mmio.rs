//! The virtio-mmio transport, version 2 ("modern", virtio 1.2 section 4.2),
//! generic over any [`VirtioDevice`].
//!
//! The guest driver is untrusted. The transport enforces the status state
//! machine (features only while negotiating, queue registers only while the
//! queue is not ready and the device not live), accepts only features the
//! device offered, and validates every queue against guest memory before it
//! hands anything to the device. Driver mistakes set `DEVICE_NEEDS_RESET`
//! or leave `FEATURES_OK` unset, as the spec asks; they never reach the VMM.
//!
//! Queue notifications arrive through one ioeventfd per queue (KVM matches
//! the queue index written to `QueueNotify`), so they never exit to us.
//! Interrupts go out through an irqfd. Every interrupt, and every used
//! buffer whose interrupt the driver suppressed, also wakes the VM's vCPUs
//! sleeping in the idle port ([`super::pv_idle`]): a polling driver (the
//! tiny guest) sleeps there until its device has something for it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use virtio_device::{
    Activation, GuestRam, Queue, QueueT, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
use vmm_sys_util::eventfd::EventFd;

use super::pv_idle::IdleWake;

/// "virt" in little endian.
const MAGIC: u32 = 0x7472_6976;
const VERSION_MODERN: u32 = 2;
/// Vendor ID we report: "VMOM".
const VENDOR_ID: u32 = 0x4d4f_4d56;

// Register offsets.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
/// Offset of `QueueNotify`; its writes are caught by ioeventfds.
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const REG_CONFIG: u64 = 0x100;

// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

// InterruptStatus bits.
const INT_USED_BUFFER: u32 = 1;
const INT_CONFIG_CHANGE: u32 = 2;

/// Raises the device's interrupt: sets the InterruptStatus bits the driver
/// reads and acknowledges, then pulses the irqfd (edge-triggered, as the
/// DSDT announces it) and wakes vCPUs sleeping in the idle port.
pub struct MmioInterrupt {
    status: Arc<AtomicU32>,
    /// ConfigGeneration: bumped whenever configuration space changes, by
    /// the device or the driver, so drivers can detect torn reads.
    config_generation: AtomicU32,
    irqfd: EventFd,
    wake: Arc<IdleWake>,
}

impl MmioInterrupt {
    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        // After the status and the device's own changes are visible, so
        // the woken guest finds them.
        self.wake.wake();
        self.irqfd.write(1)
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn notify_used(&self, _queue_index: u16) -> std::io::Result<()> {
        self.raise(INT_USED_BUFFER)
    }

    fn notify_config(&self) -> std::io::Result<()> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG_CHANGE)
    }

    fn used_without_interrupt(&self, _queue_index: u16) {
        self.wake.wake();
    }
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestRam,
    queues: Vec<Queue>,
    /// One per queue, registered with KVM by the VMM at `QueueNotify`.
    queue_events: Vec<EventFd>,
    interrupt: Arc<MmioInterrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot create a virtio eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("device offers an invalid queue size")]
    Queue(#[source] virtio_queue::Error),
}

impl MmioTransport {
    /// A transport for `device`, raising its interrupt through `irqfd`
    /// and waking sleeping vCPUs through `wake`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestRam,
        irqfd: EventFd,
        wake: Arc<IdleWake>,
    ) -> Result<Self, TransportError> {
        let sizes = lock(&device).queue_max_sizes().to_vec();
        let queues = sizes
            .iter()
            .map(|&max| Queue::new(max))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::Queue)?;
        let queue_events = sizes
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TransportError::EventFd)?;
        Ok(MmioTransport {
            device,
            mem,
            queues,
            queue_events,
            interrupt: Arc::new(MmioInterrupt {
                status: Arc::new(AtomicU32::new(0)),
                config_generation: AtomicU32::new(0),
                irqfd,
                wake,
            }),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
        })
    }

    /// The eventfds to register as ioeventfds, in queue order.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The current device status byte.
    pub fn status(&self) -> u32 {
        self.status
    }

    fn device_features(&self) -> u64 {
        lock(&self.device).device_features() | VIRTIO_F_VERSION_1
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only while that queue is off and the
    /// device is not live.
    fn queue_writable(&self) -> bool {
        self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED) == STATUS_FEATURES_OK
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready())
    }

    /// Handles a read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            lock(&self.device).read_config(offset - REG_CONFIG, data);
            return;
        }
        // Registers are 32 bits wide and must be accessed as such.
        if data.len() != 4 {
            data.fill(0);
            return;
        }
        let value = match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION_MODERN,
            REG_DEVICE_ID => lock(&self.device).device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features() as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status.load(Ordering::SeqCst),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.interrupt.config_generation.load(Ordering::SeqCst),
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a write at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if self.status & STATUS_DRIVER != 0 && self.status & STATUS_FAILED == 0 {
                lock(&self.device).write_config(offset - REG_CONFIG, data);
                self.interrupt
                    .config_generation
                    .fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        let v = u32::from_le_bytes(bytes);
        let negotiating =
            self.status & (STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_FAILED) == STATUS_DRIVER;
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES if negotiating => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM if self.queue_writable() => {
                if let Some(q) = self.selected_queue() {
                    // virtio-queue keeps the old size when `v` is not a power
                    // of two or exceeds the maximum; is_valid catches it later.
                    q.set_size(v as u16);
                }
            }
            REG_QUEUE_READY if self.queue_writable() || v == 0 => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH
                if self.queue_writable() =>
            {
                let high = offset & 0x4 != 0;
                let (lo, hi) = if high {
                    (None, Some(v))
                } else {
                    (Some(v), None)
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !0x4 {
                        REG_QUEUE_DESC_LOW => q.set_desc_table_address(lo, hi),
                        REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(v),
            // Everything else is read-only or written in the wrong state:
            // ignored, as a real device would.
            _ => {}
        }
    }

    /// The status state machine (virtio 1.2 section 3.1.1).
    fn set_status(&mut self, v: u32) {
        if v == 0 {
            self.reset();
            return;
        }
        let added = v & !self.status;
        if v & self.status != self.status {
            // Clearing bits other than by a reset is a driver error.
            self.status |= STATUS_DEVICE_NEEDS_RESET;
            return;
        }
        if added & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
            return;
        }
        match added {
            STATUS_ACKNOWLEDGE if self.status == 0 => self.status = v,
            STATUS_DRIVER if self.status == STATUS_ACKNOWLEDGE => self.status = v,
            STATUS_FEATURES_OK if self.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER => {
                // FEATURES_OK only for a subset of what we offered that
                // includes VERSION_1; otherwise the bit stays clear and the
                // driver sees negotiation failed.
                let offered = self.device_features();
                if self.driver_features & !offered == 0
                    && self.driver_features & VIRTIO_F_VERSION_1 != 0
                {
                    self.status = v;
                }
            }
            STATUS_DRIVER_OK
                if self.status == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK =>
            {
                self.status = v;
                self.activate();
            }
            _ => self.status |= STATUS_DEVICE_NEEDS_RESET,
        }
    }

    fn activate(&mut self) {
        // Queues the driver left off are passed along not ready: which ones
        // a device uses can depend on the negotiated features.
        let all_valid = self
            .queues
            .iter()
            .filter(|q| q.ready())
            .all(|q| q.is_valid(&self.mem));
        let events: Result<Vec<EventFd>, _> =
            self.queue_events.iter().map(|e| e.try_clone()).collect();
        let (true, Ok(queue_events)) = (all_valid, events) else {
            self.status |= STATUS_DEVICE_NEEDS_RESET;
            return;
        };
        let activation = Activation {
            mem: self.mem.clone(),
            acked_features: self.driver_features,
            queues: self.queues.iter().map(duplicate_queue).collect(),
            queue_events,
            interrupt: self.interrupt.clone(),
        };
        if lock(&self.device).activate(activation).is_err() {
            self.status |= STATUS_DEVICE_NEEDS_RESET;
        }
    }

    fn reset(&mut self) {
        if self.status & STATUS_DRIVER_OK != 0 {
            lock(&self.device).reset();
        }
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
    }
}

/// A copy of the driver's queue configuration for the device; the transport
/// keeps its own to answer register reads.
fn duplicate_queue(q: &Queue) -> Queue {
    // The size was accepted by the same max_size before, so this cannot fail.
    let mut copy = Queue::new(q.max_size()).expect("max_size was valid at creation");
    copy.set_size(q.size());
    let split = |a: u64| (Some(a as u32), Some((a >> 32) as u32));
    let (lo, hi) = split(q.desc_table());
    copy.set_desc_table_address(lo, hi);
    let (lo, hi) = split(q.avail_ring());
    copy.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(q.used_ring());
    copy.set_used_ring_address(lo, hi);
    copy.set_ready(q.ready());
    copy
}

/// A poisoned device lock means a device thread panicked; the state it left
/// is still the best we have, and the guest must not be able to take the
/// VMM down through it.
fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_device::ActivateError;
    use vm_memory::GuestAddress;

    /// A device that records what the transport tells it.
    #[derive(Default)]
    struct Recorder {
        activated: Option<(u64, Vec<bool>)>,
        resets: usize,
        config: [u8; 8],
    }

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            5
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn device_features(&self) -> u64 {
            0b101
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = self.config.get(offset as usize + i).copied().unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            for (i, b) in data.iter().enumerate() {
                if let Some(slot) = self.config.get_mut(offset as usize + i) {
                    *slot = *b;
                }
            }
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            self.activated = Some((
                a.acked_features,
                a.queues.iter().map(|q| q.ready()).collect(),
            ));
            Ok(())
        }
        fn reset(&mut self) {
            self.activated = None;
            self.resets += 1;
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Recorder>>) {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let t = MmioTransport::new(
            dev.clone(),
            mem,
            EventFd::new(0).unwrap(),
            Arc::new(IdleWake::default()),
        )
        .unwrap();
        (t, dev)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, features as u32);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, index: u32, base: u64) {
        w(t, REG_QUEUE_SEL, index);
        w(t, REG_QUEUE_NUM, 16);
        w(t, REG_QUEUE_DESC_LOW, base as u32);
        w(t, REG_QUEUE_DRIVER_LOW, (base + 0x100) as u32);
        w(t, REG_QUEUE_DEVICE_LOW, (base + 0x200) as u32);
        w(t, REG_QUEUE_READY, 1);
    }

    const ALL: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identifies_as_a_modern_device() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 5);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1, "VERSION_1 is bit 32");
        w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0b101);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 16);
        w(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0, "no such queue");
    }

    #[test]
    fn features_not_offered_or_without_version_1_fail_negotiation() {
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b10);
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0);
        let (mut t, _) = transport();
        negotiate(&mut t, 0b1);
        assert_eq!(t.status() & STATUS_FEATURES_OK, 0);
        let (mut t, _) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b1);
        assert_ne!(t.status() & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn activation_hands_over_the_ready_queues() {
        let (mut t, dev) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b100);
        setup_queue(&mut t, 0, 0x1000);
        w(&mut t, REG_STATUS, ALL);
        assert_eq!(t.status(), ALL);
        assert_eq!(
            dev.lock().unwrap().activated,
            Some((VIRTIO_F_VERSION_1 | 0b100, vec![true, false]))
        );
        // Live queues cannot be reprogrammed.
        w(&mut t, REG_QUEUE_SEL, 1);
        w(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn a_queue_outside_guest_memory_is_never_activated() {
        let (mut t, dev) = transport();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0xfff0_0000);
        w(&mut t, REG_STATUS, ALL);
        assert!(dev.lock().unwrap().activated.is_none());
        assert_ne!(t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn out_of_order_status_sets_needs_reset_and_reset_recovers() {
        let (mut t, dev) = transport();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER_OK);
        assert_ne!(t.status() & STATUS_DEVICE_NEEDS_RESET, 0);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(t.status(), 0);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 0x1000);
        w(&mut t, REG_STATUS, ALL);
        assert!(dev.lock().unwrap().activated.is_some());
        w(&mut t, REG_STATUS, 0);
        assert_eq!(dev.lock().unwrap().resets, 1);
        assert!(dev.lock().unwrap().activated.is_none());
    }

    #[test]
    fn interrupts_are_raised_and_acknowledged() {
        let (mut t, _) = transport();
        t.interrupt.notify_used(0).unwrap();
        t.interrupt.notify_config().unwrap();
        assert_eq!(
            r(&mut t, REG_INTERRUPT_STATUS),
            INT_USED_BUFFER | INT_CONFIG_CHANGE
        );
        assert_eq!(t.interrupt.irqfd.read().unwrap(), 2);
        w(&mut t, REG_INTERRUPT_ACK, INT_USED_BUFFER);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG_CHANGE);
    }

    #[test]
    fn interrupts_and_suppressed_used_buffers_wake_the_idle_port() {
        use crate::devices::pv_idle::{Sleeper, Woke};
        let (t, _) = transport();
        let wake = t.interrupt.wake.clone();
        let mut vcpu = Sleeper::default();
        let long = std::time::Duration::from_secs(3600);
        t.interrupt.notify_config().unwrap();
        assert_eq!(wake.sleep(&mut vcpu, long), Woke::Event);
        t.interrupt.notify_used(0).unwrap();
        assert_eq!(wake.sleep(&mut vcpu, long), Woke::Event);
        t.interrupt.used_without_interrupt(1);
        assert_eq!(wake.sleep(&mut vcpu, long), Woke::Event);
        // Suppressed means no interrupt: the irqfd saw only the first two.
        assert_eq!(t.interrupt.irqfd.read().unwrap(), 2);
    }

    #[test]
    fn config_space_and_odd_sized_register_accesses() {
        let (mut t, dev) = transport();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        t.write(REG_CONFIG + 4, &[1, 2]);
        assert_eq!(dev.lock().unwrap().config[4..6], [1, 2]);
        assert_eq!(r(&mut t, REG_CONFIG_GENERATION), 1);
        let mut byte = [0xaa];
        t.read(REG_MAGIC, &mut byte);
        assert_eq!(byte, [0], "registers need 32-bit accesses");
        t.write(REG_STATUS, &[0]);
        assert_eq!(
            t.status(),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER,
            "a byte write is ignored"
        );
    }
}

#[cfg(test)]
mod fuzz;
