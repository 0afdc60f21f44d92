//! The virtio-net device model (virtio 1.2, section 5.1) over a TAP device
//! the operator created, with Firecracker's layout: a receive and a
//! transmit queue, no offloads, frames copied through two host buffers on
//! the VMM's event loop.
//!
//! Features: `VIRTIO_F_VERSION_1` and, when a MAC is configured,
//! `VIRTIO_NET_F_MAC` (the guest's MAC in configuration space). Nothing
//! else: without checksum or segmentation offloads each frame is at most
//! [`MAX_BUFFER_LEN`] bytes with its 12-byte vnet header, so one chain per
//! frame suffices and no mergeable buffers are needed; offloads can come
//! later (the TAP already speaks vnet headers).
//!
//! The guest is untrusted. Every chain is walked and validated as a whole
//! before a byte of it is used ([`virtio_device::chain`]): it ends, every buffer lies in
//! guest RAM, its buffers go the right way (all device-readable on
//! transmit, all device-writable on receive). A transmit chain is at most
//! [`MAX_BUFFER_LEN`] bytes, holds a header asking for no offload and at
//! least an Ethernet header ([`header`]); the header the TAP gets is ours.
//! A frame is received only into a chain that holds all of it. Whatever is
//! refused is counted per reason in [`NetMetrics`] and the chain returned
//! with nothing written. Nothing the guest sends stops the device or the
//! VMM.
//!
//! Layout of the crate, one concept per file:
//! - [`config`]: host configuration, MAC, features, limits, configuration
//!   space;
//! - [`tap`]: the TAP device; [`backend`]: what the device needs of it;
//! - [`header`]: the vnet header and the checks of a frame;
//! - `device`: the [`Net`] device, rx and tx processing and its
//!   [`virtio_device::VirtioDevice`] implementation;
//! - `event_handler`: the `event-manager` subscriber;
//! - [`metrics`]: counters, including one per rejection reason.

pub mod backend;
pub mod config;
mod device;
mod event_handler;
pub mod header;
pub mod metrics;
pub mod tap;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod test_utils;

pub use backend::Backend;
pub use config::{
    ConfigError, MacAddr, NetConfig, MAX_BUFFER_LEN, MAX_FRAME_LEN, QUEUE_SIZE, VNET_HDR_LEN,
};
pub use device::{Net, OFFERED_FEATURES};
pub use metrics::{NetMetrics, RejectReason, Rejections};
pub use tap::{Tap, TapError};

/// Errors of creating the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}
