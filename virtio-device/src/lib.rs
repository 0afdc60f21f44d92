//! The contract between a virtio device model (e.g. the balloon crate) and
//! the transport that exposes it to the guest (the VMM's virtio-mmio).
//!
//! The transport owns the virtio-mmio registers, feature negotiation and the
//! queue configuration the driver writes; the device owns its configuration
//! space and what its queues mean. Once the driver sets `DRIVER_OK`, the
//! transport hands the validated queues, their notification eventfds and an
//! interrupt to [`VirtioDevice::activate`]. From then on the device processes
//! its queues on its own schedule (the VMM drives it from an event loop
//! through `event-manager`), and raises interrupts through
//! [`VirtioInterrupt`].
//!
//! Everything the driver writes is untrusted: the transport validates queue
//! addresses and sizes before activation, and devices must check every
//! descriptor they read (virtio-queue bounds-checks against guest memory).
//!
//! What the device models share, one concept per module:
//! - [`activation`]: checking an activation, taking its queues, and
//!   keeping the event loop's registrations in step with them;
//! - [`queue`]: a device's side of a queue: taking and returning chains
//!   with bounds, ending a round;
//! - [`chain`]: walking and validating a chain, copying to and from it;
//! - [`metrics`]: saturating counters, one per rejection reason, and the
//!   counting of the shared queue code;
//! - `testing` (feature `test-utils`): what the device crates' unit tests
//!   and fuzz harnesses share.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

pub mod activation;
pub mod chain;
pub mod metrics;
pub mod queue;
#[cfg(feature = "test-utils")]
pub mod testing;

pub use virtio_queue::{Queue, QueueT};

/// Guest RAM as devices see it.
pub type GuestRam = vm_memory::GuestMemoryMmap<()>;

/// `VIRTIO_F_VERSION_1`: a modern (virtio 1.x) device. Our transport is
/// virtio-mmio version 2 only, so every device offers it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device IDs (virtio 1.2, section 5).
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;

/// How a device signals the driver.
pub trait VirtioInterrupt: Send + Sync {
    /// New buffers were put in the used ring of queue `queue_index`.
    fn notify_used(&self, queue_index: u16) -> std::io::Result<()>;
    /// The device's configuration space changed.
    fn notify_config(&self) -> std::io::Result<()>;
    /// New buffers were put in the used ring of queue `queue_index`, but
    /// the driver suppressed the interrupt (`VRING_AVAIL_F_NO_INTERRUPT`):
    /// it polls. No interrupt is raised; a transport whose polling driver
    /// may be asleep in the VMM (the tiny guest's idle port) wakes it.
    fn used_without_interrupt(&self, _queue_index: u16) {}
}

/// What a device receives when the driver sets `DRIVER_OK`.
pub struct Activation {
    pub mem: GuestRam,
    /// Features both sides agreed on.
    pub acked_features: u64,
    /// The queues in device order. Those the driver enabled (`ready()`) are
    /// validated against guest memory; the others are not ready.
    pub queues: Vec<Queue>,
    /// One eventfd per queue, written when the driver notifies that queue.
    pub queue_events: Vec<EventFd>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// Why a device refused to activate.
#[derive(Debug)]
pub struct ActivateError(pub String);

impl std::fmt::Display for ActivateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "device activation failed: {}", self.0)
    }
}

impl std::error::Error for ActivateError {}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// The virtio device ID, e.g. [`TYPE_BALLOON`].
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers, including [`VIRTIO_F_VERSION_1`].
    fn device_features(&self) -> u64;
    /// Reads `data.len()` bytes of configuration space at `offset`. Reads
    /// past the end return zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes configuration space; writes to read-only fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device with the driver's queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device (status 0): drop the queues and return to
    /// the pre-activation state, keeping host-side configuration.
    fn reset(&mut self);
}
