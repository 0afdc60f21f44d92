//! The block device: host-side state, configuration space, features, the
//! processing of the request queue, and the [`VirtioDevice`]
//! implementation the transport drives.

use std::sync::Arc;

use virtio_device::activation::{check_acked_features, QueueSlots, Registrations};
use virtio_device::chain::{walk_chain, Chain};
use virtio_device::queue::{ActiveQueue, MAX_CHAINS_PER_ROUND};
use virtio_device::{
    ActivateError, Activation, GuestRam, VirtioDevice, VirtioInterrupt, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress};

use crate::config::{
    read_config, BlockConfig, IO_CHUNK_BYTES, QUEUE_SIZE, REQUEST_QUEUE, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
};
use crate::disk::Disk;
use crate::metrics::{bump, BlockMetrics, RejectReason};
use crate::request::{
    check, check_shape, Header, Kind, Refusal, Request, Shape, HEADER_SIZE, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
};
use crate::BlockError;

/// Features a read-write drive offers; a read-only one adds
/// `VIRTIO_BLK_F_RO`.
pub const OFFERED_FEATURES_RW: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_SIZE_MAX;

/// Everything that exists only between activation and reset.
pub(crate) struct Active {
    pub mem: GuestRam,
    pub acked_features: u64,
    pub queue: ActiveQueue,
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio-blk device backed by a raw image file.
///
/// Invariants: the drive id, the image (opened once, at creation, in the
/// mode the configuration says), its capacity, the offered features and
/// the queue size are fixed at creation; the queue exists only while the
/// device is active; host memory per request is the one
/// [`IO_CHUNK_BYTES`] buffer, whatever the guest asks.
pub struct Block {
    config: BlockConfig,
    disk: Disk,
    features: u64,
    queue_sizes: [u16; 1],
    pub(crate) active: Option<Active>,
    /// The event loop's registrations of the queue eventfd.
    pub(crate) registrations: Registrations,
    pub(crate) metrics: BlockMetrics,
    /// Data in transit between the image and guest memory.
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("config", &self.config)
            .field("capacity_sectors", &self.disk.capacity_sectors())
            .field("activated", &self.active.is_some())
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A device for `config`: checks it and opens the image.
    pub fn new(config: BlockConfig) -> Result<Self, BlockError> {
        config.validate()?;
        let disk = Disk::open(&config.path, config.read_only)?;
        let mut features = OFFERED_FEATURES_RW;
        if config.read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        Ok(Block {
            config,
            disk,
            features,
            queue_sizes: [QUEUE_SIZE],
            active: None,
            registrations: Registrations::new().map_err(BlockError::EventFd)?,
            metrics: BlockMetrics::default(),
            scratch: vec![0u8; IO_CHUNK_BYTES],
        })
    }

    /// The configuration.
    pub fn config(&self) -> &BlockConfig {
        &self.config
    }

    /// The drive's size as the guest sees it, in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// Counters, including one per rejection reason.
    pub fn metrics(&self) -> BlockMetrics {
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

    /// The driver notified the queue: executes its requests, at most
    /// [`MAX_CHAINS_PER_ROUND`] before the event loop serves others (the
    /// queue is signalled again if more may wait).
    pub fn process_queue(&mut self) {
        let Block {
            active,
            disk,
            metrics,
            scratch,
            config,
            ..
        } = self;
        let Some(a) = active.as_mut() else {
            return;
        };
        let id = config.id_bytes();
        let write_through = a.acked_features & VIRTIO_BLK_F_FLUSH == 0;
        let more = a.queue.drain(
            &a.mem,
            MAX_CHAINS_PER_ROUND,
            metrics,
            |chain, size, metrics| {
                bump(&mut metrics.requests);
                let mut io = Io {
                    disk,
                    id,
                    write_through,
                    metrics,
                    scratch,
                };
                io.handle_chain(chain, size)
            },
        );
        a.queue
            .finish_round(&a.mem, a.interrupt.as_ref(), more, metrics);
    }
}

/// What executing a request needs, borrowed from the device.
struct Io<'a> {
    disk: &'a Disk,
    id: [u8; crate::config::ID_BYTES],
    /// The driver did not negotiate `VIRTIO_BLK_F_FLUSH`: every write is
    /// synced before it completes.
    write_through: bool,
    metrics: &'a mut BlockMetrics,
    scratch: &'a mut [u8],
}

impl Io<'_> {
    /// One chain: validated, checked, executed, its status written.
    /// Returns the bytes written into the chain (the used length).
    fn handle_chain(&mut self, chain: DescriptorChain<&GuestRam>, queue_size: u16) -> u32 {
        let mem = chain.memory();
        let c = match walk_chain(chain.clone(), queue_size) {
            Ok(c) => c,
            Err(fault) => {
                self.metrics.reject(fault.into());
                return 0;
            }
        };
        match parse(&c, mem, self.disk) {
            Ok(req) => self.execute(&c, mem, &req),
            Err(refusal) => {
                self.metrics.reject(refusal.reason);
                match refusal.status {
                    Some((addr, code)) => write_status(mem, addr, code),
                    None => 0,
                }
            }
        }
    }

    /// Does the I/O of a checked request and writes its status.
    fn execute(&mut self, c: &Chain, mem: &GuestRam, req: &Request) -> u32 {
        let (status, data_written) = match req.kind {
            Kind::Read { offset, len } => {
                match self.read(c, mem, offset, len, req.writable_start) {
                    Ok(()) => {
                        bump(&mut self.metrics.read_ops);
                        self.metrics.read_bytes = self.metrics.read_bytes.saturating_add(len);
                        (VIRTIO_BLK_S_OK, len as u32)
                    }
                    Err(_) => (VIRTIO_BLK_S_IOERR, 0),
                }
            }
            Kind::Write { offset, len } => match self.write(c, mem, offset, len) {
                Ok(()) => {
                    bump(&mut self.metrics.write_ops);
                    self.metrics.write_bytes = self.metrics.write_bytes.saturating_add(len);
                    (VIRTIO_BLK_S_OK, 0)
                }
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
            Kind::Flush => {
                // A read-only image has nothing to sync.
                if !self.disk.read_only() && self.disk.sync().is_err() {
                    bump(&mut self.metrics.io_errors);
                    (VIRTIO_BLK_S_IOERR, 0)
                } else {
                    bump(&mut self.metrics.flushes);
                    (VIRTIO_BLK_S_OK, 0)
                }
            }
            Kind::GetId { len } => match c.write_at(mem, req.writable_start, &self.id[..len]) {
                Ok(()) => {
                    bump(&mut self.metrics.get_ids);
                    (VIRTIO_BLK_S_OK, len as u32)
                }
                Err(_) => (VIRTIO_BLK_S_IOERR, 0),
            },
        };
        // At most MAX_REQUEST_BYTES + 1: fits in u32.
        data_written + write_status(mem, req.status, status)
    }

    /// Image → guest, one chunk at a time.
    fn read(
        &mut self,
        c: &Chain,
        mem: &GuestRam,
        offset: u64,
        len: u64,
        at: u64,
    ) -> Result<(), ()> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(self.scratch.len() as u64) as usize;
            let buf = &mut self.scratch[..n];
            if self.disk.read_exact_at(buf, offset + done).is_err() {
                bump(&mut self.metrics.io_errors);
                return Err(());
            }
            c.write_at(mem, at + done, buf).map_err(|_| ())?;
            done += n as u64;
        }
        Ok(())
    }

    /// Guest → image, one chunk at a time; synced at once unless the
    /// driver negotiated `FLUSH`.
    fn write(&mut self, c: &Chain, mem: &GuestRam, offset: u64, len: u64) -> Result<(), ()> {
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(self.scratch.len() as u64) as usize;
            let buf = &mut self.scratch[..n];
            c.read_at(mem, HEADER_SIZE as u64 + done, buf)
                .map_err(|_| ())?;
            if self.disk.write_all_at(buf, offset + done).is_err() {
                bump(&mut self.metrics.io_errors);
                return Err(());
            }
            done += n as u64;
        }
        if self.write_through {
            bump(&mut self.metrics.write_through_syncs);
            if self.disk.sync().is_err() {
                bump(&mut self.metrics.io_errors);
                return Err(());
            }
        }
        Ok(())
    }
}

/// Checks a validated chain against the image: its shape, then its header.
fn parse(c: &Chain, mem: &GuestRam, disk: &Disk) -> Result<Request, Refusal> {
    let shape = Shape::of(c);
    let status = check_shape(&shape)?;
    let mut bytes = [0u8; HEADER_SIZE];
    c.read_at(mem, 0, &mut bytes).map_err(|_| Refusal {
        // Not reachable: the chain is in memory and holds a header.
        reason: RejectReason::DescriptorOutsideMemory,
        status: None,
    })?;
    let hdr = Header::from_bytes(&bytes);
    check(
        &hdr,
        &shape,
        status,
        disk.capacity_sectors(),
        disk.read_only(),
    )
}

/// Writes the status byte; returns the bytes written (1, or 0 if it could
/// not be written, which a validated chain rules out).
fn write_status(mem: &GuestRam, addr: GuestAddress, status: u8) -> u32 {
    u32::from(mem.write_obj(status, addr).is_ok())
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config(self.disk.capacity_sectors(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, data: &[u8]) {
        // `writeback` (with VIRTIO_BLK_F_CONFIG_WCE) is the only writable
        // field, and we do not offer it.
        self.metrics.config_writes_ignored = self
            .metrics
            .config_writes_ignored
            .saturating_add(data.len() as u64);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError("the block device is already active".into()));
        }
        let Activation {
            mem,
            acked_features,
            queues,
            queue_events,
            interrupt,
        } = activation;
        check_acked_features("block device", self.features, acked_features)?;
        let queue = QueueSlots::new(queues, queue_events).take(REQUEST_QUEUE, "request")?;
        self.active = Some(Active {
            mem,
            acked_features,
            queue,
            interrupt,
        });
        if let Err(e) = self.registrations.activated("block device") {
            self.active = None;
            return Err(e);
        }
        bump(&mut self.metrics.activations);
        Ok(())
    }

    /// Drops the queue; requests are synchronous, so none is in flight.
    fn reset(&mut self) {
        let events = self.active.take().map(|active| {
            bump(&mut self.metrics.resets);
            active.queue.event
        });
        if self.registrations.reset(events).is_err() {
            bump(&mut self.metrics.event_errors);
        }
    }
}

#[cfg(test)]
mod tests;
