//! A polling virtio-vsock driver (virtio 1.2 section 5.10) over
//! virtio-mmio: stream connections between this guest and the host (CID 2),
//! with credit-based flow control, for the host's device tests. What to do
//! with it is `vsock_orders`' business; this file is the protocol.
//!
//! Queues: rx 0 (the device's packets land in our buffers), tx 1 (our
//! packets), event 2 (buffers posted, events ignored). Features: `VERSION_1`
//! (required) and `F_STREAM` when offered; nothing else (no `EVENT_IDX`, no
//! indirect descriptors).
//!
//! Everything is polled: [`Vsock::poll`] takes back used tx buffers, handles
//! every packet the device delivered (and posts the buffer again), echoes
//! held data, and sends what connections owe (`REQUEST`, `RESPONSE`, `RST`,
//! `SHUTDOWN`, `CREDIT_UPDATE`, data) while tx slots last. Nothing waits
//! inside `poll`, so the device is never starved of rx buffers by a driver
//! waiting for a tx slot.
//!
//! Invariants:
//! * All memory shared with the device lives in [`DmaArea`], in the
//!   `.dma` section placed after the stack (`linker.ld`): outside `.bss`,
//!   so the boot stub does not touch it and guests without vsock orders
//!   leave it untouched on the host. The driver writes every byte it hands
//!   to the device, and reads only what the device returned.
//! * A buffer is reused only after the device returned it (used ring); the
//!   bookkeeping of which buffer is behind which head is ours, never read
//!   back from the shared rings.
//! * We never send more data than the host's credit allows, except in the
//!   deliberate `credit-overrun` case; the device's packets are checked
//!   against our credit (`credit_ok`) and their headers against our CID.

use crate::say;
use crate::serial::exit;
use crate::tsc::{self, TscFreq};
use crate::virtio_mmio::{InitError, Transport, F_VERSION_1, STATUS_NEEDS_RESET};
use crate::virtqueue::{Buffer, Virtqueue, MAX_SIZE, RING_BYTES};
use core::cell::UnsafeCell;
use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{AtomicBool, Ordering};

/// Virtio device id of vsock.
pub const DEVICE_ID: u32 = 19;
/// Bytes of configuration the driver reads: `guest_cid`.
pub const CONFIG_BYTES: u64 = 8;
/// Exit code: no usable vsock device, or it stopped working.
pub const EXIT_DEVICE: u8 = 7;

/// Feature bit: stream sockets.
const F_STREAM: u64 = 1 << 0;

pub const HOST_CID: u64 = 2;
/// Bytes of a packet header.
pub const HDR: usize = 44;
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUT_RCV: u32 = 1;
pub const SHUT_SEND: u32 = 2;
pub const SHUT_BOTH: u32 = 3;

const RX_Q: u16 = 0;
const TX_Q: u16 = 1;
const EV_Q: u16 = 2;

/// rx buffers; even ones are one descriptor (header and payload together,
/// as Linux 6.x posts them), odd ones two (header, then payload, as older
/// Linux did).
const RX_BUFS: usize = 32;
/// Payload room of an rx buffer.
pub const RX_PAYLOAD: usize = 8192;
const RX_SLOT: usize = 8256;
/// tx slots: a header and up to `TX_PAYLOAD` bytes each.
const TX_SLOTS: usize = 16;
pub const TX_PAYLOAD: usize = 8192;
const TX_SLOT: usize = 8256;
const EVENT_BUFS: usize = 4;
/// Bytes for the evil cases' hand-made chains.
const SCRATCH: usize = 256;

/// Connections at once (more than the device's bound of 64).
pub const MAX_CONNS: usize = 96;
/// Our receive buffer for ordinary connections (data is consumed at once).
pub const BUF_ALLOC: u32 = 64 * 1024;
/// First local port of connections we open.
const FIRST_PORT: u32 = 49152;
/// RSTs to ports we have no connection for, remembered for the evil cases.
const STRAY_RSTS: usize = 8;
/// Replies we owe to packets for unknown connections.
const OWED_RSTS: usize = 32;

/// The stream pattern: the byte at offset `o` of a stream.
pub fn pattern(o: u64) -> u8 {
    (o % 251) as u8
}

/// Memory shared with the device.
#[repr(C, align(4096))]
struct DmaArea {
    rings: [[u8; RING_BYTES]; 3],
    rx: [[u8; RX_SLOT]; RX_BUFS],
    tx: [[u8; TX_SLOT]; TX_SLOTS],
    events: [[u8; 8]; EVENT_BUFS],
    scratch: [u8; SCRATCH],
}

struct Dma(UnsafeCell<DmaArea>);

// SAFETY: the guest has one thread; the area is handed out once
// (DMA_TAKEN) and then only accessed through raw pointers by its owner.
unsafe impl Sync for Dma {}

#[link_section = ".dma.vsock"]
static DMA: Dma = Dma(UnsafeCell::new(DmaArea {
    rings: [[0; RING_BYTES]; 3],
    rx: [[0; RX_SLOT]; RX_BUFS],
    tx: [[0; TX_SLOT]; TX_SLOTS],
    events: [[0; 8]; EVENT_BUFS],
    scratch: [0; SCRATCH],
}));
static DMA_TAKEN: AtomicBool = AtomicBool::new(false);

/// A packet header, as on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Hdr {
    /// Writes the header at `p` (44 bytes).
    ///
    /// # Safety
    /// `p .. p + 44` must be writable memory the driver owns.
    pub unsafe fn write(&self, p: *mut u8) {
        let mut b = [0u8; HDR];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        for (i, v) in b.iter().enumerate() {
            // SAFETY: `i < 44`, inside the range the caller vouches for.
            unsafe { write_volatile(p.add(i), *v) };
        }
    }

    /// Reads a header at `p`.
    ///
    /// # Safety
    /// `p .. p + 44` must be readable memory the driver owns.
    unsafe fn read(p: *const u8) -> Hdr {
        let mut b = [0u8; HDR];
        for (i, v) in b.iter_mut().enumerate() {
            // SAFETY: as above.
            *v = unsafe { read_volatile(p.add(i)) };
        }
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum St {
    Free,
    /// Our `REQUEST` is owed or sent.
    Connecting,
    Open,
    /// We sent `SHUTDOWN` both ways and wait for the host's `RST`.
    Closing,
    /// Over: `reset` says whether by an `RST` the host sent unasked.
    Done,
}

/// What a connection does with its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Accepted: echo everything back.
    Echo,
    /// Accepted: check the pattern, consume at once.
    Sink,
    /// Accepted: consume nothing until `hold_until`, then everything.
    SlowSink,
    /// Opened by us: send `send_left` pattern bytes, check what comes back.
    Send,
}

/// Packets a connection owes the host.
pub const OWE_REQUEST: u8 = 1;
pub const OWE_RESPONSE: u8 = 2;
pub const OWE_RST: u8 = 4;
pub const OWE_CREDIT: u8 = 8;
pub const OWE_SHUTDOWN: u8 = 16;

/// One connection, guest side.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub st: St,
    pub role: Role,
    /// Our port.
    pub port: u32,
    /// The host's port.
    pub peer: u32,
    pub owe: u8,
    /// Flags of the `SHUTDOWN` owed.
    pub shut_flags: u32,
    pub buf_alloc: u32,
    /// Payload bytes received; of those consumed (our `fwd_cnt`); and the
    /// `fwd_cnt` last told.
    pub rx_cnt: u32,
    pub fwd_cnt: u32,
    pub fwd_told: u32,
    pub peer_buf: u32,
    pub peer_fwd: u32,
    /// Payload bytes sent.
    pub tx_cnt: u32,
    pub peer_shut: u32,
    /// The host reset the connection.
    pub reset: bool,
    /// Closed with the shutdown handshake.
    pub clean: bool,
    /// Pattern bytes still to send.
    pub send_left: u64,
    /// Ignore the host's credit (the `credit-overrun` case).
    pub ignore_credit: bool,
    /// Opened by a `flood` action.
    pub flood: bool,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub pattern_ok: bool,
    /// The device never sent beyond our credit.
    pub credit_ok: bool,
    /// Most bytes received and not consumed at once.
    pub max_held: u32,
    /// `SlowSink`: consume nothing before this TSC value.
    pub hold_until: u64,
    /// When data could not go for lack of credit: since when (TSC), and
    /// how often that lasted over 100 ms.
    pub starved_since: Option<u64>,
    pub credit_stalls: u32,
    /// `tx_bytes` when the first long stall began.
    pub first_stall_at: Option<u64>,
    pub opened: u64,
    pub last_data: u64,
}

impl Conn {
    const FREE: Conn = Conn {
        st: St::Free,
        role: Role::Sink,
        port: 0,
        peer: 0,
        owe: 0,
        shut_flags: 0,
        buf_alloc: BUF_ALLOC,
        rx_cnt: 0,
        fwd_cnt: 0,
        fwd_told: 0,
        peer_buf: 0,
        peer_fwd: 0,
        tx_cnt: 0,
        peer_shut: 0,
        reset: false,
        clean: false,
        send_left: 0,
        ignore_credit: false,
        flood: false,
        rx_bytes: 0,
        tx_bytes: 0,
        pattern_ok: true,
        credit_ok: true,
        max_held: 0,
        hold_until: 0,
        starved_since: None,
        credit_stalls: 0,
        first_stall_at: None,
        opened: 0,
        last_data: 0,
    };

    /// Bytes the host lets us send now.
    pub fn credit(&self) -> u32 {
        self.peer_buf
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd))
    }

    fn live(&self) -> bool {
        matches!(self.st, St::Connecting | St::Open | St::Closing)
    }
}

/// Data held for echo: rx buffer `buf` holds `len` bytes for connection
/// `conn` at `off` in the payload, of which `done` went back already.
#[derive(Clone, Copy, Default)]
struct Held {
    buf: u8,
    conn: u8,
    off: u16,
    len: u16,
    done: u16,
}

/// rx buffer marker: not one of ours (the evil read-only buffer).
const RX_EVIL: u8 = 0xfe;
const NONE: u8 = 0xff;

/// The driver.
pub struct Vsock {
    mmio: Transport,
    dma: *mut DmaArea,
    pub cid: u64,
    pub freq: TscFreq,
    rxq: Virtqueue,
    txq: Virtqueue,
    evq: Virtqueue,
    rx_of_head: [u8; MAX_SIZE as usize],
    tx_of_head: [u8; MAX_SIZE as usize],
    ev_of_head: [u8; MAX_SIZE as usize],
    /// TSC of the last status check.
    last_status: u64,
    /// Bit `i`: tx slot `i` is free.
    tx_free: u32,
    held: [Held; RX_BUFS],
    held_start: usize,
    held_len: usize,
    pub conns: [Conn; MAX_CONNS],
    /// Listening: (port, role, SlowSink hold in ms).
    pub listener: Option<(u32, Role, u64)>,
    next_port: u32,
    /// Connections accepted / closed under the current listener.
    pub accepted: u32,
    pub closed: u32,
    /// `RST`s for ports we have no connection on (newest last).
    pub stray_rsts: [u32; STRAY_RSTS],
    pub stray_count: usize,
    owed_rsts: [(u32, u32); OWED_RSTS],
    owed_len: usize,
    /// Packets from the device with a bad header (ignored).
    pub bad_packets: u32,
    /// Checks that failed (a pattern mismatch, the device beyond our
    /// credit).
    pub failures: u32,
    /// The evil read-only rx buffer came back, with this length.
    pub evil_rx_back: Option<u32>,
    /// Where the round-robin of `flush` starts.
    rr: usize,
}

impl Vsock {
    /// Sets up the device behind `mmio` (DRIVER_OK, rx and event buffers
    /// posted). Callable once.
    pub fn init(mmio: Transport) -> Result<Vsock, InitError> {
        assert!(
            !DMA_TAKEN.swap(true, Ordering::Relaxed),
            "vsock set up twice"
        );
        let dma = DMA.0.get();
        let (offered, accepted) = mmio.negotiate(F_VERSION_1 | F_STREAM, F_VERSION_1)?;
        let cid = u64::from(mmio.config_u32(0)) | u64::from(mmio.config_u32(4)) << 32;
        // SAFETY: the rings are 4096-aligned pages of DMA, owned by this
        // driver alone (DMA_TAKEN), identity-mapped; the device was just
        // reset by `negotiate` and uses none of them.
        let ring = |i: usize| unsafe { (*dma).rings[i].as_mut_ptr() };
        let mut make = |index: u16| -> Result<Virtqueue, InitError> {
            let max = match mmio.queue_max(index) {
                Some(max) if max > 0 => max,
                _ => {
                    mmio.fail();
                    return Err(InitError::QueueUnavailable(index));
                }
            };
            // SAFETY: a distinct page per queue; see above.
            let q = unsafe { Virtqueue::new(ring(usize::from(index)), max) };
            mmio.setup_queue(index, &q);
            Ok(q)
        };
        let rxq = make(RX_Q)?;
        let txq = make(TX_Q)?;
        let evq = make(EV_Q)?;
        let mut v = Vsock {
            mmio,
            dma,
            cid,
            freq: tsc::frequency(),
            rxq,
            txq,
            evq,
            rx_of_head: [NONE; MAX_SIZE as usize],
            tx_of_head: [NONE; MAX_SIZE as usize],
            ev_of_head: [NONE; MAX_SIZE as usize],
            last_status: 0,
            tx_free: (1 << TX_SLOTS) - 1,
            held: [Held::default(); RX_BUFS],
            held_start: 0,
            held_len: 0,
            conns: [Conn::FREE; MAX_CONNS],
            listener: None,
            next_port: FIRST_PORT,
            accepted: 0,
            closed: 0,
            stray_rsts: [0; STRAY_RSTS],
            stray_count: 0,
            owed_rsts: [(0, 0); OWED_RSTS],
            owed_len: 0,
            bad_packets: 0,
            failures: 0,
            evil_rx_back: None,
            rr: 0,
        };
        v.mmio.driver_ok();
        for i in 0..RX_BUFS {
            v.post_rx(i);
        }
        for i in 0..EVENT_BUFS {
            v.post_event(i);
        }
        v.rxq.publish();
        v.evq.publish();
        v.mmio.notify(RX_Q);
        v.mmio.notify(EV_Q);
        say!(
            "virtio-vsock cid={} features offered={:#x} accepted={:#x} queues=3 size={}",
            cid,
            offered,
            accepted,
            v.rxq.size()
        );
        Ok(v)
    }

    /// Milliseconds to TSC ticks.
    pub fn ticks(&self, ms: u64) -> u64 {
        ms.saturating_mul(self.freq.khz)
    }

    /// Microseconds since TSC value `t0`.
    pub fn us_since(&self, t0: u64) -> u64 {
        tsc::now().wrapping_sub(t0) * 1000 / self.freq.khz.max(1)
    }

    fn rx_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: DMA is ours; `i < RX_BUFS`.
        unsafe { (*self.dma).rx[i].as_mut_ptr() }
    }

    fn tx_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: DMA is ours; `i < TX_SLOTS`.
        unsafe { (*self.dma).tx[i].as_mut_ptr() }
    }

    /// The scratch bytes for hand-made chains.
    pub fn scratch(&self) -> *mut u8 {
        // SAFETY: DMA is ours.
        unsafe { (*self.dma).scratch.as_mut_ptr() }
    }

    /// Makes rx buffer `i` available (not yet published).
    fn post_rx(&mut self, i: usize) {
        let addr = self.rx_ptr(i) as u64;
        let head = if i % 2 == 0 {
            self.rxq.add(&[Buffer {
                addr,
                len: (HDR + RX_PAYLOAD) as u32,
                device_writes: true,
            }])
        } else {
            self.rxq.add(&[
                Buffer {
                    addr,
                    len: HDR as u32,
                    device_writes: true,
                },
                Buffer {
                    addr: addr + HDR as u64,
                    len: RX_PAYLOAD as u32,
                    device_writes: true,
                },
            ])
        };
        match head {
            Some(h) => self.rx_of_head[usize::from(h)] = i as u8,
            None => say!("vsock: no descriptor for rx buffer {}", i),
        }
    }

    /// Makes event buffer `i` available (not yet published).
    fn post_event(&mut self, i: usize) {
        // SAFETY: DMA is ours; the event buffer is not with the device.
        let addr = unsafe { (*self.dma).events[i].as_ptr() } as u64;
        if let Some(h) = self.evq.add(&[Buffer {
            addr,
            len: 8,
            device_writes: true,
        }]) {
            self.ev_of_head[usize::from(h)] = i as u8;
        }
    }

    /// Posts a read-only buffer on the rx queue (the `rx-readonly` case).
    pub fn post_evil_rx(&mut self) {
        let addr = self.scratch() as u64;
        if let Some(h) = self.rxq.add(&[Buffer {
            addr,
            len: SCRATCH as u32,
            device_writes: false,
        }]) {
            self.rx_of_head[usize::from(h)] = RX_EVIL;
            self.rxq.publish();
            self.mmio.notify(RX_Q);
        }
    }

    /// A free tx slot, if any (taken).
    fn take_slot(&mut self) -> Option<usize> {
        if self.tx_free == 0 {
            return None;
        }
        let i = self.tx_free.trailing_zeros() as usize;
        self.tx_free &= !(1 << i);
        Some(i)
    }

    /// Free tx slots now.
    pub fn free_slots(&self) -> u32 {
        self.tx_free.count_ones()
    }

    /// Sends a header (and `payload` bytes already written after it) from
    /// tx slot `slot`: one descriptor for the header, one for the payload.
    fn send_slot(&mut self, slot: usize, hdr: &Hdr, payload: usize) {
        let p = self.tx_ptr(slot);
        // SAFETY: the slot is ours (taken, not with the device).
        unsafe { hdr.write(p) };
        let addr = p as u64;
        let head = if payload == 0 {
            self.txq.add(&[Buffer {
                addr,
                len: HDR as u32,
                device_writes: false,
            }])
        } else {
            self.txq.add(&[
                Buffer {
                    addr,
                    len: HDR as u32,
                    device_writes: false,
                },
                Buffer {
                    addr: addr + HDR as u64,
                    len: payload as u32,
                    device_writes: false,
                },
            ])
        };
        match head {
            Some(h) => self.tx_of_head[usize::from(h)] = slot as u8,
            None => {
                say!("vsock: tx queue full");
                self.tx_free |= 1 << slot;
            }
        }
    }

    /// Sends a hand-made chain on the tx queue (the evil cases); returns
    /// its head. Its buffers are not slots.
    pub fn send_raw(&mut self, bufs: &[Buffer]) -> Option<u16> {
        let head = self.txq.add(bufs)?;
        self.tx_of_head[usize::from(head)] = RX_EVIL;
        self.txq.publish();
        self.mmio.notify(TX_Q);
        Some(head)
    }

    /// Sends a descriptor that chains to itself (the `desc-loop` case).
    pub fn send_loop(&mut self, buf: Buffer) -> Option<u16> {
        let head = self.txq.add_self_loop(buf)?;
        self.tx_of_head[usize::from(head)] = RX_EVIL;
        self.txq.publish();
        self.mmio.notify(TX_Q);
        Some(head)
    }

    /// Sends a header with no connection behind it (the evil cases),
    /// with `payload` pattern bytes, from a slot; false if none is free.
    pub fn send_hdr(&mut self, hdr: &Hdr, payload: usize) -> bool {
        let Some(slot) = self.take_slot() else {
            return false;
        };
        let p = self.tx_ptr(slot);
        for i in 0..payload.min(TX_PAYLOAD) {
            // SAFETY: the slot is ours; `HDR + i < TX_SLOT`.
            unsafe { write_volatile(p.add(HDR + i), pattern(i as u64)) };
        }
        self.send_slot(slot, hdr, payload.min(TX_PAYLOAD));
        self.txq.publish();
        self.mmio.notify(TX_Q);
        true
    }

    /// A header from `c` to its peer, stamped with our credit.
    fn hdr_for(&mut self, ci: usize, op: u16) -> Hdr {
        let cid = self.cid;
        let c = &mut self.conns[ci];
        c.fwd_told = c.fwd_cnt;
        Hdr {
            src_cid: cid,
            dst_cid: HOST_CID,
            src_port: c.port,
            dst_port: c.peer,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: c.buf_alloc,
            fwd_cnt: c.fwd_cnt,
        }
    }

    /// A new local port.
    pub fn new_port(&mut self) -> u32 {
        let p = self.next_port;
        self.next_port = if p == u32::MAX { FIRST_PORT } else { p + 1 };
        p
    }

    /// A free connection slot, reset to defaults.
    fn alloc_conn(&mut self) -> Option<usize> {
        let i = self.conns.iter().position(|c| c.st == St::Free)?;
        self.conns[i] = Conn::FREE;
        self.conns[i].opened = tsc::now();
        Some(i)
    }

    /// Opens a connection to host `port` (the `REQUEST` goes at the next
    /// poll). `None` when every slot is taken.
    pub fn connect(&mut self, port: u32, role: Role) -> Option<usize> {
        let ci = self.alloc_conn()?;
        let local = self.new_port();
        let c = &mut self.conns[ci];
        c.st = St::Connecting;
        c.role = role;
        c.port = local;
        c.peer = port;
        c.owe = OWE_REQUEST;
        Some(ci)
    }

    /// Starts closing `ci`: `SHUTDOWN` both ways, then the host's `RST`.
    pub fn close(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        if matches!(c.st, St::Open | St::Connecting) {
            c.st = St::Closing;
            c.owe |= OWE_SHUTDOWN;
            c.shut_flags = SHUT_BOTH;
            c.send_left = 0;
        }
    }

    /// Resets `ci` (an `RST` goes at the next poll) and forgets it.
    pub fn abort(&mut self, ci: usize) {
        let c = self.conns[ci];
        if c.live() {
            self.owe_rst(c.port, c.peer);
        }
        self.conns[ci].st = St::Done;
    }

    /// Room for more owed `RST`s.
    pub fn owed_room(&self) -> usize {
        OWED_RSTS - self.owed_len
    }

    fn owe_rst(&mut self, port: u32, peer: u32) {
        if self.owed_len < OWED_RSTS {
            self.owed_rsts[self.owed_len] = (port, peer);
            self.owed_len += 1;
        }
    }

    /// Frees a finished connection slot.
    pub fn release(&mut self, ci: usize) {
        self.conns[ci].st = St::Free;
    }

    /// Does all the work there is without waiting; true if anything moved.
    pub fn poll(&mut self) -> bool {
        // Register reads exit to the VMM: every 10 ms is enough.
        let now = tsc::now();
        if now.wrapping_sub(self.last_status) > self.ticks(10) {
            self.last_status = now;
            let status = self.mmio.status();
            if status & STATUS_NEEDS_RESET != 0 {
                say!("virtio-vsock: device needs reset (status {:#x})", status);
                exit(EXIT_DEVICE);
            }
            self.mmio.ack_interrupts();
        }
        let mut moved = false;
        while let Some(u) = self.txq.pop_used() {
            moved = true;
            if u.known {
                let slot = self.tx_of_head[u.id as usize];
                if usize::from(slot) < TX_SLOTS {
                    self.tx_free |= 1 << slot;
                }
            }
        }
        let mut repost = false;
        while let Some(u) = self.evq.pop_used() {
            let i = if u.known {
                usize::from(self.ev_of_head[u.id as usize])
            } else {
                NONE.into()
            };
            if i < EVENT_BUFS {
                self.post_event(i);
                repost = true;
            }
        }
        if repost {
            self.evq.publish();
            self.mmio.notify(EV_Q);
        }
        let mut reposted = false;
        while let Some(u) = self.rxq.pop_used() {
            moved = true;
            if !u.known {
                continue;
            }
            let buf = self.rx_of_head[u.id as usize];
            if buf == RX_EVIL {
                self.evil_rx_back = Some(u.len);
                continue;
            }
            let i = usize::from(buf);
            if i >= RX_BUFS {
                continue;
            }
            if self.handle_rx(i, u.len) {
                self.post_rx(i);
                reposted = true;
            }
        }
        moved |= self.echo_held(&mut reposted);
        if reposted {
            self.rxq.publish();
            self.mmio.notify(RX_Q);
        }
        moved |= self.flush();
        moved
    }

    /// Handles the packet in rx buffer `i` (`len` bytes written); returns
    /// whether the buffer may be posted again (false: held for echo).
    fn handle_rx(&mut self, i: usize, len: u32) -> bool {
        let p = self.rx_ptr(i);
        if (len as usize) < HDR {
            self.bad_packets += 1;
            return true;
        }
        // SAFETY: the device returned the buffer; it is ours to read.
        let h = unsafe { Hdr::read(p) };
        let payload = len as usize - HDR;
        if h.len as usize != payload
            || payload > RX_PAYLOAD
            || h.dst_cid != self.cid
            || h.src_cid != HOST_CID
            || h.type_ != TYPE_STREAM
        {
            self.bad_packets += 1;
            return true;
        }
        let found = self
            .conns
            .iter()
            .position(|c| c.live() && c.port == h.dst_port && c.peer == h.src_port);
        let Some(ci) = found else {
            return self.handle_stranger(&h);
        };
        let now = tsc::now();
        let c = &mut self.conns[ci];
        c.peer_buf = h.buf_alloc;
        c.peer_fwd = h.fwd_cnt;
        match h.op {
            OP_RESPONSE if c.st == St::Connecting => c.st = St::Open,
            OP_RST => {
                c.clean = c.st == St::Closing;
                c.reset = !c.clean;
                c.st = St::Done;
                self.finished(ci);
            }
            OP_SHUTDOWN => {
                c.peer_shut |= h.flags & SHUT_BOTH;
                self.maybe_close(ci);
            }
            OP_CREDIT_REQUEST => c.owe |= OWE_CREDIT,
            OP_CREDIT_UPDATE => {}
            OP_RW if c.st == St::Open || c.st == St::Closing => {
                c.rx_cnt = c.rx_cnt.wrapping_add(payload as u32);
                let held = c.rx_cnt.wrapping_sub(c.fwd_cnt);
                if held > c.buf_alloc {
                    c.credit_ok = false;
                }
                c.max_held = c.max_held.max(held);
                c.last_data = now;
                // SAFETY: the payload follows the header in the buffer.
                let data = unsafe { core::slice::from_raw_parts(p.add(HDR), payload) };
                match c.role {
                    Role::Echo => {
                        if self.held_len < RX_BUFS {
                            let at = (self.held_start + self.held_len) % RX_BUFS;
                            self.held[at] = Held {
                                buf: i as u8,
                                conn: ci as u8,
                                off: HDR as u16,
                                len: payload as u16,
                                done: 0,
                            };
                            self.held_len += 1;
                            return false;
                        }
                    }
                    Role::SlowSink => {
                        // Looked at, but consumed only once the hold ends.
                        check(c, data);
                        if now.wrapping_sub(c.hold_until) < u64::MAX / 2 {
                            c.fwd_cnt = c.rx_cnt;
                        }
                    }
                    _ => {
                        check(c, data);
                        c.fwd_cnt = c.rx_cnt;
                    }
                }
                self.credit_due(ci);
            }
            _ => {
                // An op that makes no sense here: the host is confused.
                self.bad_packets += 1;
            }
        }
        true
    }

    /// A packet for no connection of ours: a `REQUEST` to the listener
    /// opens one; an `RST` is remembered; anything else gets `RST`.
    fn handle_stranger(&mut self, h: &Hdr) -> bool {
        match h.op {
            OP_RST => {
                self.stray_rsts[self.stray_count % STRAY_RSTS] = h.dst_port;
                self.stray_count += 1;
            }
            OP_REQUEST => {
                let listen = self.listener.filter(|&(port, _, _)| port == h.dst_port);
                let slot = listen.and_then(|_| self.alloc_conn());
                match (listen, slot) {
                    (Some((_, role, hold_ms)), Some(ci)) => {
                        let hold = self.ticks(hold_ms);
                        let c = &mut self.conns[ci];
                        c.st = St::Open;
                        c.role = role;
                        c.port = h.dst_port;
                        c.peer = h.src_port;
                        c.peer_buf = h.buf_alloc;
                        c.peer_fwd = h.fwd_cnt;
                        c.owe = OWE_RESPONSE;
                        if role == Role::SlowSink {
                            c.buf_alloc = 16 * 1024;
                            c.hold_until = c.opened.wrapping_add(hold);
                        }
                        self.accepted += 1;
                    }
                    _ => self.owe_rst(h.dst_port, h.src_port),
                }
            }
            _ => self.owe_rst(h.dst_port, h.src_port),
        }
        true
    }

    /// After the host's `SHUTDOWN` or an echo drained: a server
    /// connection whose host sends no more closes once nothing of it is
    /// held.
    fn maybe_close(&mut self, ci: usize) {
        let c = self.conns[ci];
        if c.st != St::Open || c.peer_shut & SHUT_SEND == 0 || c.role == Role::Send {
            return;
        }
        let held = (0..self.held_len)
            .any(|k| usize::from(self.held[(self.held_start + k) % RX_BUFS].conn) == ci);
        if !held {
            self.report_server(ci);
            self.close(ci);
        }
    }

    /// Prints what a server connection saw, when the host is done with it.
    fn report_server(&mut self, ci: usize) {
        let c = self.conns[ci];
        if !c.pattern_ok || !c.credit_ok {
            self.failures += 1;
        }
        let us = self.us_since(c.opened);
        let yes = |b: bool| if b { "yes" } else { "no" };
        match c.role {
            Role::Echo => say!(
                "vsock echo {}: host port {} done, {} bytes echoed in {} us",
                c.port,
                c.peer,
                c.tx_bytes,
                us
            ),
            Role::Sink => say!(
                "vsock sink {}: host port {} done, received {} bytes in {} us, pattern ok={}, credit respected={}",
                c.port,
                c.peer,
                c.rx_bytes,
                us,
                yes(c.pattern_ok),
                yes(c.credit_ok)
            ),
            Role::SlowSink => say!(
                "vsock slowsink {}: received {} bytes, most held {} of {}, credit respected={}, pattern ok={}",
                c.port,
                c.rx_bytes,
                c.max_held,
                c.buf_alloc,
                yes(c.credit_ok),
                yes(c.pattern_ok)
            ),
            Role::Send => {}
        }
    }

    /// A connection reached `Done`.
    fn finished(&mut self, ci: usize) {
        let c = self.conns[ci];
        if c.role != Role::Send && self.listener.is_some_and(|(p, _, _)| p == c.port) {
            if c.reset {
                say!(
                    "vsock: port {}: host port {} reset the connection",
                    c.port,
                    c.peer
                );
            }
            self.closed += 1;
            self.conns[ci].st = St::Free;
        }
    }

    /// Owes a credit update if the host believes less than half our
    /// buffer is left while we have consumed more since we told it.
    fn credit_due(&mut self, ci: usize) {
        let c = &mut self.conns[ci];
        let used = c.rx_cnt.wrapping_sub(c.fwd_told);
        if c.fwd_cnt != c.fwd_told && c.buf_alloc.saturating_sub(used) < c.buf_alloc / 2 {
            c.owe |= OWE_CREDIT;
        }
    }

    /// Lets a `SlowSink` connection consume what it held once its time
    /// came.
    pub fn release_slow(&mut self) {
        let now = tsc::now();
        for ci in 0..MAX_CONNS {
            let c = &mut self.conns[ci];
            if c.st == St::Open
                && c.role == Role::SlowSink
                && c.fwd_cnt != c.rx_cnt
                && now.wrapping_sub(c.hold_until) < u64::MAX / 2
            {
                c.fwd_cnt = c.rx_cnt;
                c.owe |= OWE_CREDIT;
            }
        }
    }

    /// Echoes held data while slots and credit allow; reposts drained
    /// buffers (sets `reposted`). True if anything went.
    fn echo_held(&mut self, reposted: &mut bool) -> bool {
        let mut moved = false;
        while self.held_len > 0 {
            let h = self.held[self.held_start];
            let ci = usize::from(h.conn);
            let c = self.conns[ci];
            if !matches!(c.st, St::Open | St::Closing) || c.peer_shut & SHUT_RCV != 0 {
                // Nobody to echo to: drop the data.
                self.pop_held(ci, h, reposted);
                continue;
            }
            let n = usize::from(h.len - h.done)
                .min(c.credit() as usize)
                .min(TX_PAYLOAD);
            if n == 0 {
                break;
            }
            let Some(slot) = self.take_slot() else {
                break;
            };
            let src = self.rx_ptr(usize::from(h.buf));
            let dst = self.tx_ptr(slot);
            // SAFETY: both buffers are ours; the ranges lie inside them
            // (`off + len <= RX_SLOT`, `HDR + n <= TX_SLOT`).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    src.add(usize::from(h.off + h.done)),
                    dst.add(HDR),
                    n,
                )
            };
            let mut hdr = self.hdr_for(ci, OP_RW);
            hdr.len = n as u32;
            self.send_slot(slot, &hdr, n);
            let c = &mut self.conns[ci];
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            c.tx_bytes += n as u64;
            c.rx_bytes += n as u64;
            self.held[self.held_start].done += n as u16;
            moved = true;
            if self.held[self.held_start].done == h.len {
                self.pop_held(ci, self.held[self.held_start], reposted);
            }
        }
        if moved {
            self.txq.publish();
            self.mmio.notify(TX_Q);
        }
        moved
    }

    fn pop_held(&mut self, ci: usize, h: Held, reposted: &mut bool) {
        self.held_start = (self.held_start + 1) % RX_BUFS;
        self.held_len -= 1;
        let c = &mut self.conns[ci];
        c.fwd_cnt = c.fwd_cnt.wrapping_add(u32::from(h.len));
        self.post_rx(usize::from(h.buf));
        *reposted = true;
        self.credit_due(ci);
        self.maybe_close(ci);
    }

    /// Sends what connections owe, round robin, while tx slots last.
    fn flush(&mut self) -> bool {
        let mut sent = 0;
        while self.owed_len > 0 {
            let Some(slot) = self.take_slot() else {
                break;
            };
            self.owed_len -= 1;
            let (port, peer) = self.owed_rsts[self.owed_len];
            let hdr = Hdr {
                src_cid: self.cid,
                dst_cid: HOST_CID,
                src_port: port,
                dst_port: peer,
                type_: TYPE_STREAM,
                op: OP_RST,
                ..Hdr::default()
            };
            self.send_slot(slot, &hdr, 0);
            sent += 1;
        }
        let now = tsc::now();
        let long = self.ticks(100);
        for k in 0..MAX_CONNS {
            let ci = (self.rr + k) % MAX_CONNS;
            if !self.conns[ci].live() {
                continue;
            }
            while self.conns[ci].owe != 0 {
                let Some(slot) = self.take_slot() else {
                    return self.flushed(sent);
                };
                let owe = self.conns[ci].owe;
                let bit = owe & owe.wrapping_neg();
                self.conns[ci].owe &= !bit;
                let op = match bit {
                    OWE_REQUEST => OP_REQUEST,
                    OWE_RESPONSE => OP_RESPONSE,
                    OWE_RST => OP_RST,
                    OWE_SHUTDOWN => OP_SHUTDOWN,
                    _ => OP_CREDIT_UPDATE,
                };
                let mut hdr = self.hdr_for(ci, op);
                if op == OP_SHUTDOWN {
                    hdr.flags = self.conns[ci].shut_flags;
                }
                self.send_slot(slot, &hdr, 0);
                sent += 1;
            }
            while self.conns[ci].st == St::Open && self.conns[ci].send_left > 0 {
                let c = self.conns[ci];
                let credit = if c.ignore_credit {
                    u32::MAX
                } else {
                    c.credit()
                };
                let n = (TX_PAYLOAD as u64).min(c.send_left).min(u64::from(credit)) as usize;
                if n == 0 {
                    let c = &mut self.conns[ci];
                    match c.starved_since {
                        None => c.starved_since = Some(now),
                        Some(t)
                            if now.wrapping_sub(t) > long
                                && c.first_stall_at != Some(c.tx_bytes) =>
                        {
                            if c.first_stall_at.is_none() {
                                say!(
                                    "vsock send {}: waiting for credit at {} bytes",
                                    c.peer,
                                    c.tx_bytes
                                );
                            }
                            c.credit_stalls += 1;
                            c.first_stall_at.get_or_insert(c.tx_bytes);
                            c.starved_since = Some(now);
                        }
                        Some(_) => {}
                    }
                    break;
                }
                let Some(slot) = self.take_slot() else {
                    return self.flushed(sent);
                };
                let p = self.tx_ptr(slot);
                let off = c.tx_bytes;
                for j in 0..n {
                    // SAFETY: the slot is ours; `HDR + j < TX_SLOT`.
                    unsafe { *p.add(HDR + j) = pattern(off + j as u64) };
                }
                let mut hdr = self.hdr_for(ci, OP_RW);
                hdr.len = n as u32;
                self.send_slot(slot, &hdr, n);
                let c = &mut self.conns[ci];
                c.starved_since = None;
                c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                c.tx_bytes += n as u64;
                c.send_left -= n as u64;
                sent += 1;
            }
        }
        self.rr = (self.rr + 1) % MAX_CONNS;
        self.flushed(sent)
    }

    fn flushed(&mut self, sent: usize) -> bool {
        if sent > 0 {
            self.txq.publish();
            self.mmio.notify(TX_Q);
        }
        sent > 0
    }

    /// Whether every tx chain came back.
    pub fn tx_idle(&self) -> bool {
        self.tx_free == (1 << TX_SLOTS) - 1 && self.txq.num_free() == self.txq.size()
    }
}

/// Checks received data against the stream pattern and consumes it.
fn check(c: &mut Conn, data: &[u8]) {
    let base = c.rx_bytes;
    for (j, &b) in data.iter().enumerate() {
        if b != pattern(base + j as u64) {
            c.pattern_ok = false;
            break;
        }
    }
    c.rx_bytes += data.len() as u64;
}
