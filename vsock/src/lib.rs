//! The virtio-vsock device model (virtio 1.2, section 5.10), with
//! Firecracker's hybrid backend: guest `AF_VSOCK` stream sockets on one
//! side, host `AF_UNIX` stream sockets on the other.
//!
//! The device has three queues (rx, tx, event) and a configuration space
//! holding the guest's CID. The guest talks to the host (CID 2) only:
//!
//! * **Host-initiated**: a host process connects to `uds_path`, writes
//!   `CONNECT <port>\n`, reads `OK <host port>\n` once the guest accepted,
//!   and the stream then carries the connection's bytes both ways.
//! * **Guest-initiated**: a guest connection to CID 2 port P is forwarded
//!   to a new connection to the Unix socket `<uds_path>_P`; if nobody
//!   listens there the guest gets `RST`.
//!
//! Stream type only; operations `REQUEST`, `RESPONSE`, `RST`, `SHUTDOWN`,
//! `RW`, `CREDIT_UPDATE`, `CREDIT_REQUEST`, with credit-based flow control
//! in both directions ([`credit`]).
//!
//! The guest is untrusted. Every chain is walked with bounds; every header
//! is checked (size, `len` against the chain, `src_cid` is the guest's,
//! `dst_cid` is the host's, type, op, flags); every packet is checked
//! against its connection's state and credit. A violation is counted per
//! reason in [`VsockMetrics`] and answered with `RST` (the connection it
//! names, if any, is dropped); it never stops the device. Memory is
//! bounded ([`Limits`]): connections, handshakes in progress, guest data
//! buffered per connection (allocated only while a host reader lags), and
//! the `RST`s owed for connections that do not exist. Host socket I/O is
//! non-blocking and driven from the VMM's event loop.
//!
//! Layout of the crate, one concept per file:
//! - [`header`]: the 44-byte packet header and its checks;
//! - [`config`]: host configuration, limits, features, configuration space;
//! - `packet`: walking tx and rx chains ([`virtio_device::chain`]),
//!   reading and writing packets in guest memory;
//! - [`credit`]: flow-control bookkeeping;
//! - `txbuf`: the bounded buffer of guest data for a slow host reader;
//! - `connection`: one connection's state machine;
//! - [`handshake`]: the host's `CONNECT`/`OK` lines;
//! - `host_socket`: non-blocking `connect` and `MSG_PEEK`;
//! - `muxer`: the Unix-socket backend, its epoll and its bounds;
//! - `device`: the [`Vsock`] device and its [`virtio_device::VirtioDevice`]
//!   implementation;
//! - `event_handler`: the `event-manager` subscriber;
//! - [`metrics`]: counters, including one per rejection reason.

pub mod config;
mod connection;
pub mod credit;
mod device;
mod event_handler;
pub mod handshake;
pub mod header;
mod host_socket;
pub mod metrics;
mod muxer;
mod packet;
mod txbuf;

#[cfg(test)]
mod test_utils;

pub use config::{ConfigError, Limits, VsockConfig, QUEUE_SIZE, VIRTIO_VSOCK_F_STREAM};
pub use device::{Vsock, OFFERED_FEATURES};
pub use header::{Header, Op, HEADER_SIZE, HOST_CID, MAX_PAYLOAD};
pub use metrics::{RejectReason, Rejections, VsockMetrics};
pub use muxer::FIRST_LOCAL_PORT;

/// Errors of creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot set up the vsock Unix socket backend")]
    Backend(#[source] std::io::Error),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}
