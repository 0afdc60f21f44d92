//! The vsock device: host-side state, configuration space, features,
//! the processing of the tx and rx queues, and the [`VirtioDevice`]
//! implementation the transport drives.

use std::os::unix::net::UnixListener;
use std::sync::Arc;

use virtio_device::activation::{check_acked_features, QueueSlots, Registrations};
use virtio_device::chain::Direction;
use virtio_device::queue::{ActiveQueue, MAX_CHAINS_PER_ROUND};
use virtio_device::{
    ActivateError, Activation, GuestRam, QueueT, VirtioDevice, VirtioInterrupt, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::DescriptorChain;
use vmm_sys_util::eventfd::EventFd;

use crate::config::{
    read_config, Limits, VsockConfig, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
    VIRTIO_VSOCK_F_STREAM,
};
use crate::header::{HEADER_SIZE, MAX_PAYLOAD};
use crate::metrics::{bump, RejectReason, VsockMetrics};
use crate::muxer::Muxer;
use crate::packet::{read_header, read_payload, walk, write_packet};
use crate::VsockError;

/// tx/rx round pairs per event before the device lets others run.
const PUMP_ROUNDS: usize = 4;

/// Features the device offers.
pub const OFFERED_FEATURES: u64 = VIRTIO_F_VERSION_1 | VIRTIO_VSOCK_F_STREAM;

/// Everything that exists only between activation and reset.
pub(crate) struct Active {
    pub mem: GuestRam,
    pub acked_features: u64,
    pub rx: ActiveQueue,
    pub tx: ActiveQueue,
    /// Held, never used: this device sends no events (there is no live
    /// migration to announce with `TRANSPORT_RESET`).
    pub event: ActiveQueue,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

impl Active {
    pub fn queues(&self) -> [&ActiveQueue; 3] {
        [&self.rx, &self.tx, &self.event]
    }

    fn into_events(self) -> [EventFd; 3] {
        [self.rx.event, self.tx.event, self.event.event]
    }
}

/// A virtio-vsock device backed by Unix sockets.
///
/// Invariants: the guest CID, the offered features and the queue sizes
/// are fixed at creation; the muxer exists for the device's whole life (the
/// host socket listens before the guest boots), and its connections exist
/// only while the device is active (a reset drops them); tx processing is
/// paused only while the muxer's stray `RST`s are at their bound
/// (`tx_stalled`), and resumes once rx buffers take them.
pub struct Vsock {
    config: VsockConfig,
    queue_sizes: [u16; 3],
    pub(crate) active: Option<Active>,
    /// The event loop's registrations of the queue eventfds.
    pub(crate) registrations: Registrations,
    pub(crate) muxer: Muxer,
    pub(crate) metrics: VsockMetrics,
    tx_stalled: bool,
    /// Payload bytes in transit through the device (one packet).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("config", &self.config)
            .field("activated", &self.active.is_some())
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// A device for `config` with the default [`Limits`], serving host
    /// connections on `listener` (bound at `config.uds_path` by the caller).
    pub fn new(config: VsockConfig, listener: UnixListener) -> Result<Self, VsockError> {
        Self::with_limits(config, Limits::default(), listener)
    }

    /// [`Vsock::new`] with explicit limits.
    pub fn with_limits(
        config: VsockConfig,
        limits: Limits,
        listener: UnixListener,
    ) -> Result<Self, VsockError> {
        config.validate()?;
        let muxer = Muxer::new(&config, limits, listener).map_err(VsockError::Backend)?;
        Ok(Vsock {
            config,
            queue_sizes: [QUEUE_SIZE; 3],
            active: None,
            registrations: Registrations::new().map_err(VsockError::EventFd)?,
            muxer,
            metrics: VsockMetrics::default(),
            tx_stalled: false,
            scratch: vec![0u8; MAX_PAYLOAD as usize],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VsockConfig {
        &self.config
    }

    /// Counters, including one per rejection reason, and the gauges now.
    pub fn metrics(&self) -> VsockMetrics {
        let mut m = self.metrics.clone();
        self.muxer.gauges(&mut m);
        m
    }

    /// Whether the driver activated the device (and has not reset it).
    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Features the driver acked, while active.
    pub fn acked_features(&self) -> Option<u64> {
        self.active.as_ref().map(|a| a.acked_features)
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.muxer.connections()
    }

    /// The driver notified the tx queue: takes its packets, then delivers
    /// what they caused.
    pub fn process_tx(&mut self) {
        self.pump(true);
    }

    /// The driver posted rx buffers: fills them.
    pub fn process_rx(&mut self) {
        self.pump(false);
    }

    /// The muxer's epoll is readable: handles the host-side events, then
    /// delivers what they produced.
    pub fn process_backend(&mut self) {
        self.muxer.process_events(&mut self.metrics);
        self.pump(false);
    }

    /// Alternates tx and rx rounds while tx is paused for room that rx
    /// rounds make (a few times; then the tx queue is signalled so the
    /// event loop comes back after serving others).
    fn pump(&mut self, mut tx: bool) {
        for _ in 0..PUMP_ROUNDS {
            tx |= self.tx_resumable();
            if tx {
                self.tx_round();
            }
            self.rx_round();
            if !self.tx_resumable() {
                return;
            }
            tx = true;
        }
        if let Some(a) = &self.active {
            if a.tx.event.write(1).is_err() {
                bump(&mut self.metrics.event_errors);
            }
        }
    }

    /// tx was paused for lack of room for `RST`s, and there is room now.
    fn tx_resumable(&self) -> bool {
        self.tx_stalled && !self.muxer.stray_full()
    }

    /// Takes packets from the tx queue and hands each, checked, to the
    /// muxer; every chain is returned, valid or not. Stops while the
    /// muxer's stray `RST`s are at their bound (`tx_stalled`).
    fn tx_round(&mut self) {
        let Vsock {
            active,
            muxer,
            metrics,
            scratch,
            tx_stalled,
            config,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        *tx_stalled = false;
        let size = a.tx.queue.size();
        let mut more = false;
        for round in 0..MAX_CHAINS_PER_ROUND {
            if muxer.stray_full() {
                bump(&mut metrics.tx_stalls);
                *tx_stalled = true;
                break;
            }
            let chain = match a.tx.next_chain(&a.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(fault) => {
                    metrics.reject(fault.into());
                    break;
                }
            };
            let head = chain.head_index();
            bump(&mut metrics.tx_packets);
            handle_tx_chain(chain, size, config.guest_cid, muxer, metrics, scratch);
            if !a.tx.give_back(&a.mem, head, 0, metrics) {
                break;
            }
            more = round + 1 == MAX_CHAINS_PER_ROUND;
        }
        a.tx.finish_round(&a.mem, a.interrupt.as_ref(), more, metrics);
    }

    /// Fills rx buffers with the muxer's packets until it has none or the
    /// guest posted no more buffers.
    fn rx_round(&mut self) {
        let Vsock {
            active,
            muxer,
            metrics,
            scratch,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        let size = a.rx.queue.size();
        let mut more = false;
        for round in 0..MAX_CHAINS_PER_ROUND {
            if !muxer.has_rx() {
                break;
            }
            let chain = match a.rx.next_chain(&a.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(fault) => {
                    metrics.reject(fault.into());
                    break;
                }
            };
            let head = chain.head_index();
            let written = match walk(chain, size, Direction::DeviceWrites) {
                Err(reason) => {
                    metrics.reject(reason);
                    0
                }
                Ok(c) if c.total() < HEADER_SIZE as u64 => {
                    metrics.reject(RejectReason::RxBufferTooShort);
                    0
                }
                Ok(c) => {
                    let cap = (c.total() - HEADER_SIZE as u64).min(u64::from(MAX_PAYLOAD)) as usize;
                    let Some((hdr, len)) = muxer.next_rx(&mut scratch[..cap], metrics) else {
                        // Nothing after all: the buffer stays the driver's.
                        a.rx.undo_take();
                        break;
                    };
                    match write_packet(&c, &a.mem, &hdr, &scratch[..len]) {
                        Ok(n) => {
                            bump(&mut metrics.rx_packets);
                            metrics.rx_bytes = metrics.rx_bytes.saturating_add(len as u64);
                            n
                        }
                        Err(reason) => {
                            metrics.reject(reason);
                            0
                        }
                    }
                }
            };
            if !a.rx.give_back(&a.mem, head, written, metrics) {
                break;
            }
            more = round + 1 == MAX_CHAINS_PER_ROUND && muxer.has_rx();
        }
        a.rx.finish_round(&a.mem, a.interrupt.as_ref(), more, metrics);
    }
}

/// One tx chain: validated, its header checked, its payload handed to the
/// muxer; or counted and (when it names a connection) answered with `RST`.
fn handle_tx_chain(
    chain: DescriptorChain<&GuestRam>,
    queue_size: u16,
    guest_cid: u64,
    muxer: &mut Muxer,
    metrics: &mut VsockMetrics,
    scratch: &mut [u8],
) {
    let mem = chain.memory();
    let c = match walk(chain.clone(), queue_size, Direction::DeviceReads) {
        Ok(c) => c,
        Err(reason) => return metrics.reject(reason),
    };
    let hdr = match read_header(&c, mem) {
        Ok(hdr) => hdr,
        Err(reason) => return metrics.reject(reason),
    };
    let op = match hdr.check_from_guest(guest_cid, c.total() - HEADER_SIZE as u64) {
        Ok(op) => op,
        Err(reason) => {
            metrics.reject(reason);
            return muxer.reject_pkt(&hdr, metrics);
        }
    };
    let payload = &mut scratch[..hdr.len as usize];
    if let Err(reason) = read_payload(&c, mem, payload) {
        metrics.reject(reason);
        return muxer.reject_pkt(&hdr, metrics);
    }
    muxer.send_pkt(&hdr, op, payload, metrics);
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        OFFERED_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(self.config.guest_cid, offset, data);
    }

    fn write_config(&mut self, _offset: u64, data: &[u8]) {
        self.metrics.config_writes_ignored = self
            .metrics
            .config_writes_ignored
            .saturating_add(data.len() as u64);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError("the vsock device is already active".into()));
        }
        let Activation {
            mem,
            acked_features,
            queues,
            queue_events,
            interrupt,
        } = activation;
        check_acked_features("vsock device", OFFERED_FEATURES, acked_features)?;
        let mut slots = QueueSlots::new(queues, queue_events);
        let rx = slots.take(RX_QUEUE, "rx")?;
        let tx = slots.take(TX_QUEUE, "tx")?;
        let event = slots.take(EVENT_QUEUE, "event")?;
        self.active = Some(Active {
            mem,
            acked_features,
            rx,
            tx,
            event,
            interrupt,
        });
        if let Err(e) = self.registrations.activated("vsock device") {
            self.active = None;
            return Err(e);
        }
        bump(&mut self.metrics.activations);
        Ok(())
    }

    /// Drops every connection (their host streams close) and returns to the
    /// pre-activation state; the host socket keeps listening.
    fn reset(&mut self) {
        let events = self.active.take().map(|active| {
            bump(&mut self.metrics.resets);
            active.into_events()
        });
        self.muxer.reset(&mut self.metrics);
        self.tx_stalled = false;
        if self
            .registrations
            .reset(events.into_iter().flatten())
            .is_err()
        {
            bump(&mut self.metrics.event_errors);
        }
    }
}

#[cfg(test)]
mod tests;
