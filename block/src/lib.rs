//! The virtio-blk device model (virtio 1.2, section 5.2) with Firecracker's
//! semantics: one request queue, a raw image file on the host, read-only
//! or read-write, synchronous I/O on the VMM's event loop.
//!
//! Requests: `IN` (read), `OUT` (write), `FLUSH` (`fdatasync`) and
//! `GET_ID` (the drive id); everything else is answered with
//! `VIRTIO_BLK_S_UNSUPP`. A read-only drive offers `VIRTIO_BLK_F_RO` and
//! answers writes with `VIRTIO_BLK_S_IOERR`.
//!
//! The guest is untrusted. Every chain is walked and validated as a whole
//! before a byte of it is used ([`virtio_device::chain`]); its shape is checked (a
//! device-readable header first, device-writable buffers after the
//! readable ones, a writable status byte last); the header's sector and
//! the data length are checked against the image size with overflow-checked
//! arithmetic, against whole sectors and against [`MAX_REQUEST_BYTES`]
//! ([`request`]). A refused request is counted per reason in
//! [`BlockMetrics`] and, when its chain has a status byte, answered with
//! `VIRTIO_BLK_S_IOERR`; a host I/O error is answered the same way. Nothing
//! the guest sends stops the device or the VMM.
//!
//! Layout of the crate, one concept per file:
//! - [`config`]: host configuration, features, configuration space, limits;
//! - [`disk`]: the image file and its I/O;
//! - [`request`]: the request header and the checks of a chain's shape;
//! - `device`: the [`Block`] device, request execution and its
//!   [`virtio_device::VirtioDevice`] implementation;
//! - `event_handler`: the `event-manager` subscriber;
//! - [`metrics`]: counters, including one per rejection reason.

pub mod config;
mod device;
pub mod disk;
mod event_handler;
pub mod metrics;
pub mod request;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod test_utils;

pub use config::{
    BlockConfig, ConfigError, IO_CHUNK_BYTES, MAX_REQUEST_BYTES, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX,
    SIZE_MAX,
};
pub use device::{Block, OFFERED_FEATURES_RW};
pub use disk::DiskError;
pub use metrics::{BlockMetrics, RejectReason, Rejections};

/// Errors of creating the device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}
