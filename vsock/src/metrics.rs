//! Counters of what the device did and of everything it refused.
//!
//! Plain integers: the device is used behind a lock, and callers snapshot
//! the whole struct with [`crate::Vsock::metrics`], which also fills in
//! the gauges (connections and buffered bytes now).

virtio_device::rejections! {
    /// Why the device refused something the driver sent. Each refusal of a
    /// packet that names a connection is answered with an `RST` (never an
    /// `RST` to an `RST`), so the guest learns of it too.
    pub enum RejectReason {
        /// A chain with no usable descriptor (bad head index, unreadable
        /// descriptor table, broken indirect table).
        EmptyChain => empty_chain,
        /// A chain that did not end within the queue size: it loops.
        LoopingChain => looping_chain,
        /// A chain whose `next` leads nowhere.
        BrokenChain => broken_chain,
        /// A descriptor whose buffer is not wholly inside guest memory.
        DescriptorOutsideMemory => descriptor_outside_memory,
        /// A device-writable descriptor on the tx queue, or a device-readable
        /// one on the rx queue.
        WrongDirection => wrong_direction,
        /// A tx chain shorter than the 44-byte header.
        HeaderTooShort => header_too_short,
        /// An rx chain too short to hold a header: it is returned unused.
        RxBufferTooShort => rx_buffer_too_short,
        /// A header whose `len` is more than the chain holds after the header.
        LenBeyondChain => len_beyond_chain,
        /// A header whose `len` is over 64 KiB.
        PayloadTooLarge => payload_too_large,
        /// `src_cid` is not the guest's CID.
        WrongSrcCid => wrong_src_cid,
        /// `dst_cid` is not the host (2).
        WrongDstCid => wrong_dst_cid,
        /// A socket type other than stream.
        UnsupportedType => unsupported_type,
        /// An `op` outside 1..=7.
        UnknownOp => unknown_op,
        /// A payload on an operation other than `RW`.
        PayloadOnControlOp => payload_on_control_op,
        /// `SHUTDOWN` flags other than `RCV` and `SEND`.
        BadShutdownFlags => bad_shutdown_flags,
        /// More data than the credit the device gave (`buf_alloc` minus the
        /// bytes in flight): the connection is reset.
        CreditExceeded => credit_exceeded,
        /// An operation the connection's state does not allow (a `RESPONSE`
        /// to nothing, a `REQUEST` for a connection that exists): the
        /// connection is reset.
        UnexpectedOp => unexpected_op,
        /// Data after the guest said it would send no more (`SHUTDOWN` with
        /// `SEND`): the connection is reset.
        DataAfterShutdown => data_after_shutdown,
        /// The available ring is inconsistent: the queue was not processed
        /// further.
        QueueBroken => queue_broken,
        /// Writing the used ring failed: the queue was not processed further.
        UsedRingError => used_ring_error,
        /// A chain head outside the descriptor table: it cannot be returned.
        BadHeadIndex => bad_head_index,
    }
    /// One counter per [`RejectReason`].
    pub struct Rejections;
}

/// What the device did. Counters only grow (saturating); the fields under
/// "now" are gauges filled in when the metrics are read.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct VsockMetrics {
    /// Successful activations by the driver.
    pub activations: u64,
    /// Resets by the driver after activation.
    pub resets: u64,
    /// Packets taken from the tx queue (valid or not).
    pub tx_packets: u64,
    /// Payload bytes of valid `RW` packets from the guest.
    pub tx_bytes: u64,
    /// Packets put in the rx queue.
    pub rx_packets: u64,
    /// Payload bytes sent to the guest.
    pub rx_bytes: u64,
    /// Host processes that connected to the Unix socket.
    pub host_accepts: u64,
    /// Host connections closed because their first line was not
    /// `CONNECT <port>\n`.
    pub host_bad_connect_lines: u64,
    /// Host connections closed because no `CONNECT` line came in time.
    pub host_connect_line_timeouts: u64,
    /// Connections the host asked for with a valid `CONNECT` line (a
    /// `REQUEST` to the guest followed).
    pub host_initiated: u64,
    /// Connections the guest opened to a listening `<uds_path>_<port>`.
    pub guest_initiated: u64,
    /// Guest `REQUEST`s for a port nobody listens on: answered with `RST`.
    pub guest_connects_refused: u64,
    /// Connections refused because the connection bound was reached (host
    /// or guest side), or too many host connections had not yet sent their
    /// `CONNECT` line.
    pub connection_limit_refusals: u64,
    /// Connections that reached the established state.
    pub established: u64,
    /// Host-initiated connections the guest refused (`RST` to our
    /// `REQUEST`).
    pub refused_by_guest: u64,
    /// Connections that ended with the shutdown handshake.
    pub closed_cleanly: u64,
    /// Connections the guest reset.
    pub reset_by_guest: u64,
    /// Connections reset because the host side failed (write to a closed
    /// socket, socket error).
    pub reset_by_host: u64,
    /// Connections reset because a handshake or shutdown took too long.
    pub timeouts: u64,
    /// Connections dropped by a device reset.
    pub dropped_by_device_reset: u64,
    /// `RST` packets sent to the guest.
    pub rst_sent: u64,
    /// `RST`s for gone connections not queued because too many already
    /// waited for rx buffers (the guest posts none).
    pub rsts_dropped: u64,
    /// Packets for a connection that does not exist (answered with `RST`
    /// unless they were one).
    pub unknown_connection_packets: u64,
    /// `CREDIT_UPDATE` packets sent on the device's own initiative (credit
    /// also travels in every other packet).
    pub credit_updates_sent: u64,
    /// `CREDIT_REQUEST` packets from the guest.
    pub credit_requests_received: u64,
    /// Rounds in which tx processing stopped because the answers it would
    /// cause had no room yet (the guest posts too few rx buffers).
    pub tx_stalls: u64,
    /// Failed reads and writes on host sockets other than "would block".
    pub host_io_errors: u64,
    /// Used-buffer interrupts raised.
    pub used_notifications: u64,
    /// Interrupts that could not be raised.
    pub interrupt_errors: u64,
    /// Driver writes to the (read-only) configuration space.
    pub config_writes_ignored: u64,
    /// Events the device could not attribute, or could not (un)register.
    pub event_errors: u64,
    /// Now: open connections (connecting, established or closing).
    pub connections: u64,
    /// Now: host connections that have not sent their `CONNECT` line yet.
    pub pending_host_connections: u64,
    /// Now: bytes from the guest waiting for a slow host reader.
    pub buffered_bytes: u64,
    /// Now: bytes of buffer allocated for that (released when drained).
    pub buffer_capacity_bytes: u64,
    /// One counter per rejection reason.
    pub rejections: Rejections,
}

pub(crate) use virtio_device::metrics::bump;

virtio_device::queue_counters!(VsockMetrics);

impl VsockMetrics {
    /// Counts one rejection for `reason`.
    pub(crate) fn reject(&mut self, reason: RejectReason) {
        self.rejections.add(reason, 1);
    }
}
