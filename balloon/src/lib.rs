//! The virtio-balloon device model (virtio 1.2, section 5.5).
//!
//! The host sets a target (`num_pages`); the guest driver inflates the
//! balloon by handing pages to the device (inflateq), deflates it by taking
//! pages back (deflateq), reports its memory statistics (statsq) and hands
//! over free pages it does not need right now (reporting_vq). The device
//! releases inflated and reported pages to the host with
//! `madvise(MADV_DONTNEED)` (`MADV_REMOVE` for shared mappings), one call per
//! contiguous host range. With `VIRTIO_BALLOON_F_MUST_TELL_HOST` negotiated,
//! inflated pages are released by a worker thread after their buffers are
//! returned, and never after the driver may use them again (see
//! `release_worker` for the invariant).
//!
//! The guest is untrusted. Every descriptor chain is walked with bounds:
//! chains that loop, point outside guest memory, have the wrong direction,
//! are too large or are malformed are rejected and counted per reason in
//! [`BalloonMetrics`]; PFNs that are not guest RAM are dropped and counted.
//! Nothing is ever released outside a guest RAM region: the only host
//! addresses the device ever advises come from a [`GuestRam`] region, for a
//! range that lies wholly inside that region.
//!
//! Layout of the crate, one job per file:
//! - [`config`]: host-side configuration, feature bits, configuration space;
//! - `device`: the [`Balloon`] itself and its [`virtio_device::VirtioDevice`]
//!   implementation;
//! - `queues`: the queue layout for the acked features, and the
//!   balloon's bounds on taking and walking chains (the queue and the
//!   walker are [`virtio_device`]'s);
//! - `inflate`, `stats`, `reporting`: what each queue means;
//! - `ballooned`: which guest pages are in the balloon (host bookkeeping);
//! - [`release`]: guest ranges to host ranges, coalescing, `madvise`;
//! - `release_worker`: the thread that releases inflated pages in the
//!   background, and the drains that keep that safe;
//! - `event_handler`: the `event-manager` subscriber;
//! - [`metrics`]: counters, including one per rejection reason.
//!
//! [`GuestRam`]: virtio_device::GuestRam

mod ballooned;
pub mod config;
mod device;
mod event_handler;
mod inflate;
pub mod metrics;
mod queues;
pub mod release;
mod release_worker;
mod reporting;
mod stats;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod test_utils;

pub use config::{
    mib_to_pages, pages_to_mib, BalloonConfig, BALLOON_PAGE_SIZE, PAGES_PER_MIB, QUEUE_SIZE,
    VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_FREE_PAGE_REPORTING, VIRTIO_BALLOON_F_MUST_TELL_HOST,
    VIRTIO_BALLOON_F_PAGE_POISON, VIRTIO_BALLOON_F_STATS_VQ,
};
pub use device::Balloon;
pub use metrics::{BalloonMetrics, RejectReason, Rejections};
pub use queues::QueueLayout;
pub use release::{HostRange, MadviseReleaser, Releaser};
pub use release_worker::ThreadStart;
pub use stats::{BalloonStats, StatTag, MAX_STATS_ENTRIES, STATS_ENTRY_SIZE};

/// Errors of the host-facing API.
#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    /// `amount_mib * 256` does not fit the 32-bit `num_pages` field.
    #[error("a balloon of {mib} MiB does not fit the 32-bit page count of the device")]
    TargetTooLarge { mib: u32 },
    /// Statistics polling can only be changed when the device was created
    /// with a non-zero interval (the stats queue is offered at creation).
    #[error("balloon statistics were not enabled when the device was created")]
    StatsNotEnabled,
    /// The driver has not activated the device (or reset it).
    #[error("the balloon device is not activated")]
    NotActivated,
    /// The driver did not negotiate the feature this queue belongs to.
    #[error("the driver did not negotiate the {0} queue")]
    QueueNotNegotiated(&'static str),
    #[error("cannot create or signal an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("cannot create or arm the statistics timer")]
    Timer(#[source] std::io::Error),
    /// The interrupt to the driver could not be raised; the state change
    /// that wanted it has been made anyway.
    #[error("cannot interrupt the driver")]
    Interrupt(#[source] std::io::Error),
}
