//! The net device: host-side state, configuration space, features, the
//! processing of the receive and transmit queues, and the
//! [`VirtioDevice`] implementation the transport drives.

use std::io;
use std::sync::Arc;

use virtio_device::activation::{check_acked_features, QueueSlots, Registrations};
use virtio_device::chain::{walk_chain, Chain};
use virtio_device::queue::{ActiveQueue, MAX_CHAINS_PER_ROUND};
use virtio_device::{
    ActivateError, Activation, GuestRam, VirtioDevice, VirtioInterrupt, TYPE_NET,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::DescriptorChain;

use crate::backend::Backend;
use crate::config::{
    read_config, NetConfig, MAX_BUFFER_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_MAC,
    VNET_HDR_LEN,
};
use crate::header::{check_rx_from_tap, check_tx, VnetHeader};
use crate::metrics::{bump, NetMetrics, RejectReason};
use crate::tap::Tap;
use crate::NetError;

/// Features offered: `VIRTIO_F_VERSION_1` (our transport is modern-only,
/// and it fixes the 12-byte header) and, with a configured MAC,
/// `VIRTIO_NET_F_MAC`. No checksum or segmentation offloads, no mergeable
/// receive buffers, no control queue, no `STATUS`, no event index: each
/// frame is one chain, at most [`MAX_BUFFER_LEN`] bytes, checksummed by
/// its sender.
pub const OFFERED_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC;

/// Everything that exists only between activation and reset.
pub(crate) struct Active {
    pub mem: GuestRam,
    pub acked_features: u64,
    pub rx: ActiveQueue,
    pub tx: ActiveQueue,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio-net device whose frames go to and come from `B` (the TAP).
///
/// Invariants: the configuration, the backend (opened once, at creation),
/// the features and queue sizes are fixed at creation; the queues exist
/// only while the device is active; host memory is two buffers of
/// [`MAX_BUFFER_LEN`] bytes, whatever the guest does; at most one frame
/// read from the backend waits for a receive chain (`rx_pending`), and
/// while it waits the backend is not read.
pub struct Net<B: Backend = Tap> {
    config: NetConfig,
    pub(crate) backend: B,
    features: u64,
    queue_sizes: [u16; 2],
    pub(crate) active: Option<Active>,
    /// The event loop's registrations of the queue eventfds.
    pub(crate) registrations: Registrations,
    pub(crate) metrics: NetMetrics,
    /// A frame from the backend, vnet header first.
    rx_buf: Vec<u8>,
    /// Bytes of `rx_buf` that hold a frame not yet delivered.
    rx_pending: Option<usize>,
    /// A frame from the guest on its way to the backend.
    tx_buf: Vec<u8>,
}

impl<B: Backend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("config", &self.config)
            .field("activated", &self.active.is_some())
            .field("rx_pending", &self.rx_pending)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Net<Tap> {
    /// A device for `config`: checks it and attaches to its TAP.
    pub fn new(config: NetConfig) -> Result<Self, NetError> {
        config.validate()?;
        let tap = Tap::open(&config.host_dev_name)?;
        Net::with_backend(config, tap)
    }
}

impl<B: Backend> Net<B> {
    /// A device for `config` over an open backend.
    pub fn with_backend(config: NetConfig, backend: B) -> Result<Self, NetError> {
        config.validate()?;
        let mut features = OFFERED_FEATURES;
        if config.guest_mac.is_none() {
            features &= !VIRTIO_NET_F_MAC;
        }
        Ok(Net {
            config,
            backend,
            features,
            queue_sizes: [QUEUE_SIZE; 2],
            active: None,
            registrations: Registrations::new().map_err(NetError::EventFd)?,
            metrics: NetMetrics::default(),
            rx_buf: vec![0u8; MAX_BUFFER_LEN],
            rx_pending: None,
            tx_buf: vec![0u8; MAX_BUFFER_LEN],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// Counters, including one per rejection reason.
    pub fn metrics(&self) -> NetMetrics {
        self.metrics.clone()
    }

    /// Whether the driver activated the device (and has not reset it).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Features the driver acked, while active.
    pub fn acked_features(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.acked_features)
    }

    /// Moves frames from the backend into receive chains until the
    /// backend has none, the guest has no chain left, or
    /// [`MAX_CHAINS_PER_ROUND`] chains were used (then the receive queue
    /// is signalled, so the event loop comes back after serving others).
    pub fn process_rx(&mut self) {
        let Net {
            active,
            backend,
            metrics,
            rx_buf,
            rx_pending,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        let mut more = false;
        for round in 0..MAX_CHAINS_PER_ROUND {
            let len = match *rx_pending {
                Some(len) => len,
                None => match read_frame(backend, rx_buf, metrics) {
                    Some(len) => len,
                    None => break,
                },
            };
            *rx_pending = Some(len);
            let chain = match a.rx.next_chain(&a.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => {
                    // Back when the driver posts buffers and notifies.
                    bump(&mut metrics.rx_no_buffer);
                    break;
                }
                Err(fault) => {
                    metrics.reject(fault.into());
                    break;
                }
            };
            let head = chain.head_index();
            let used_len = match deliver(chain, a.rx.queue_size(), &rx_buf[..len]) {
                Ok(used) => {
                    bump(&mut metrics.rx_packets);
                    metrics.rx_bytes = metrics.rx_bytes.saturating_add((len - VNET_HDR_LEN) as u64);
                    *rx_pending = None;
                    used
                }
                Err(reason) => {
                    metrics.reject(reason);
                    if reason == RejectReason::RxChainTooSmall {
                        *rx_pending = None;
                    }
                    0
                }
            };
            if !a.rx.give_back(&a.mem, head, used_len, metrics) {
                break;
            }
            more = round + 1 == MAX_CHAINS_PER_ROUND;
        }
        a.rx.finish_round(&a.mem, a.interrupt.as_ref(), more, metrics);
    }

    /// Sends the transmit chains' frames to the backend, at most
    /// [`MAX_CHAINS_PER_ROUND`] before the event loop serves others (the
    /// transmit queue is signalled again if more may wait).
    pub fn process_tx(&mut self) {
        let Net {
            active,
            backend,
            metrics,
            tx_buf,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        let more = a.tx.drain(
            &a.mem,
            MAX_CHAINS_PER_ROUND,
            metrics,
            |chain, size, metrics| {
                bump(&mut metrics.tx_chains);
                match gather(chain, size, tx_buf) {
                    Ok(len) => match backend.write_frame(&tx_buf[..len]) {
                        Ok(_) => {
                            bump(&mut metrics.tx_packets);
                            metrics.tx_bytes =
                                metrics.tx_bytes.saturating_add((len - VNET_HDR_LEN) as u64);
                        }
                        Err(_) => bump(&mut metrics.tx_tap_errors),
                    },
                    Err(reason) => metrics.reject(reason),
                }
                // The device writes nothing into a transmit chain.
                0
            },
        );
        a.tx.finish_round(&a.mem, a.interrupt.as_ref(), more, metrics);
    }
}

/// Reads one usable frame from the backend into `buf`; `None` when there
/// is none now (or the read failed, counted). Frames the kernel marked
/// for offloads we did not negotiate are dropped and counted.
fn read_frame<B: Backend>(backend: &B, buf: &mut [u8], metrics: &mut NetMetrics) -> Option<usize> {
    loop {
        match backend.read_frame(buf) {
            Ok(n) => match check_rx_from_tap(&buf[..n]) {
                Some(_) => return Some(n),
                None => bump(&mut metrics.rx_bad_frames),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                bump(&mut metrics.rx_tap_errors);
                return None;
            }
        }
    }
}

/// Writes `frame` (whose vnet header is replaced by ours) into a receive
/// chain; returns the used length. The chain must be wholly
/// device-writable and hold the whole frame.
fn deliver(
    chain: DescriptorChain<&GuestRam>,
    size: u16,
    frame: &[u8],
) -> Result<u32, RejectReason> {
    let mem = chain.memory();
    let c = walk_chain(chain.clone(), size)?;
    if c.buffers.iter().any(|b| !b.device_writes) {
        return Err(RejectReason::RxReadableDescriptor);
    }
    if c.total() < frame.len() as u64 {
        return Err(RejectReason::RxChainTooSmall);
    }
    let written = c
        .write_at(mem, 0, &VnetHeader::rx_plain().to_bytes())
        .and_then(|()| c.write_at(mem, VNET_HDR_LEN as u64, &frame[VNET_HDR_LEN..]));
    // Not reachable: the chain is validated and large enough.
    written.map_err(|_| RejectReason::DescriptorOutsideMemory)?;
    // At most MAX_BUFFER_LEN: fits in u32.
    Ok(frame.len() as u32)
}

/// Copies a transmit chain's frame into `buf` behind our own plain vnet
/// header; returns its length, header included.
fn gather(
    chain: DescriptorChain<&GuestRam>,
    size: u16,
    buf: &mut [u8],
) -> Result<usize, RejectReason> {
    let mem = chain.memory();
    let c: Chain = walk_chain(chain.clone(), size)?;
    if c.buffers.iter().any(|b| b.device_writes) {
        return Err(RejectReason::TxWritableDescriptor);
    }
    let total = c.total();
    let mut hdr = [0u8; VNET_HDR_LEN];
    let hdr = (total >= VNET_HDR_LEN as u64 && c.read_at(mem, 0, &mut hdr).is_ok())
        .then(|| VnetHeader::from_bytes(&hdr));
    check_tx(total, hdr.as_ref())?;
    // check_tx bounds total by MAX_BUFFER_LEN = buf.len().
    let len = total as usize;
    buf[..VNET_HDR_LEN].copy_from_slice(&VnetHeader::default().to_bytes());
    c.read_at(mem, VNET_HDR_LEN as u64, &mut buf[VNET_HDR_LEN..len])
        // Not reachable: the chain is validated and holds `len` bytes.
        .map_err(|_| RejectReason::DescriptorOutsideMemory)?;
    Ok(len)
}

impl<B: Backend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(self.config.guest_mac, offset, data);
    }

    fn write_config(&mut self, _offset: u64, data: &[u8]) {
        // `mac` is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR's legacy
        // path, which we do not offer.
        self.metrics.config_writes_ignored = self
            .metrics
            .config_writes_ignored
            .saturating_add(data.len() as u64);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError("the net device is already active".into()));
        }
        let Activation {
            mem,
            acked_features,
            queues,
            queue_events,
            interrupt,
        } = activation;
        check_acked_features("net device", self.features, acked_features)?;
        let mut slots = QueueSlots::new(queues, queue_events);
        let rx = slots.take(RX_QUEUE, "receive")?;
        let tx = slots.take(TX_QUEUE, "transmit")?;
        self.active = Some(Active {
            mem,
            acked_features,
            rx,
            tx,
            interrupt,
        });
        if let Err(e) = self.registrations.activated("net device") {
            self.active = None;
            return Err(e);
        }
        bump(&mut self.metrics.activations);
        Ok(())
    }

    /// Drops the queues and a frame waiting for a receive chain; the TAP
    /// stays open (frames queue in the kernel until the next activation).
    fn reset(&mut self) {
        let events = self.active.take().map(|active| {
            bump(&mut self.metrics.resets);
            [active.rx.event, active.tx.event]
        });
        if self
            .registrations
            .reset(events.into_iter().flatten())
            .is_err()
        {
            bump(&mut self.metrics.event_errors);
        }
        self.rx_pending = None;
    }
}

#[cfg(test)]
mod tests;
