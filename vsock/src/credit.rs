//! Credit-based flow control of one connection (virtio 1.2, 5.10.6.3).
//!
//! Each side tells the other, in every packet, how big its receive buffer
//! is (`buf_alloc`) and how many bytes it has consumed from it so far
//! (`fwd_cnt`). A sender may have at most `buf_alloc - (tx_cnt - fwd_cnt)`
//! bytes in flight. Counters are 32-bit and wrap; only differences count.
//!
//! Invariants:
//! * Guest → host: the device accepts a payload only while
//!   `rx_cnt - fwd_cnt + len <= buf_alloc` ([`Credit::may_receive`]), so the
//!   bytes it holds for a slow host reader never exceed `buf_alloc`. A guest
//!   that sends more breaks the protocol and is reset.
//! * Host → guest: the device sends at most [`Credit::peer_credit`] bytes.
//!   A guest that claims to have consumed more than it was sent (its
//!   `fwd_cnt` ahead of our `tx_cnt`) gets no credit at all: a lie can only
//!   stall its own connection.

use std::num::Wrapping;

use crate::header::Header;

/// One connection's credit bookkeeping, both directions.
#[derive(Clone, Debug)]
pub struct Credit {
    /// Bytes of guest data the device buffers for this connection: what it
    /// advertises as `buf_alloc`.
    buf_alloc: u32,
    /// The guest's view of our free space below which a `CREDIT_UPDATE` is
    /// due.
    update_threshold: u32,
    /// Payload bytes received from the guest.
    rx_cnt: Wrapping<u32>,
    /// Of those, bytes written to the host socket: our `fwd_cnt`.
    fwd_cnt: Wrapping<u32>,
    /// The `fwd_cnt` last sent to the guest.
    fwd_cnt_told: Wrapping<u32>,
    /// The guest's `buf_alloc`, as last told.
    peer_buf_alloc: u32,
    /// The guest's `fwd_cnt`, as last told.
    peer_fwd_cnt: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
}

impl Credit {
    /// Credit for a new connection with a receive buffer of `buf_alloc`
    /// bytes, and the guest's values from its first packet.
    pub fn new(buf_alloc: u32, peer: &Header) -> Credit {
        Credit {
            buf_alloc,
            update_threshold: buf_alloc / 2,
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            fwd_cnt_told: Wrapping(0),
            peer_buf_alloc: peer.buf_alloc,
            peer_fwd_cnt: Wrapping(peer.fwd_cnt),
            tx_cnt: Wrapping(0),
        }
    }

    /// Takes the guest's `buf_alloc` and `fwd_cnt` from any packet it sent.
    pub fn update_peer(&mut self, peer: &Header) {
        self.peer_buf_alloc = peer.buf_alloc;
        self.peer_fwd_cnt = Wrapping(peer.fwd_cnt);
    }

    /// Bytes the device may send to the guest now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `n` payload bytes went to the guest (`n <= peer_credit()`).
    pub fn sent(&mut self, n: u32) {
        self.tx_cnt += Wrapping(n);
    }

    /// Whether the guest may send `len` more bytes now.
    pub fn may_receive(&self, len: u32) -> bool {
        let held = (self.rx_cnt - self.fwd_cnt).0;
        u64::from(held) + u64::from(len) <= u64::from(self.buf_alloc)
    }

    /// `n` payload bytes came from the guest (after [`may_receive`]).
    ///
    /// [`may_receive`]: Credit::may_receive
    pub fn received(&mut self, n: u32) {
        self.rx_cnt += Wrapping(n);
    }

    /// `n` bytes were written to the host socket.
    pub fn forwarded(&mut self, n: u32) {
        self.fwd_cnt += Wrapping(n);
    }

    /// Bytes received from the guest and not yet forwarded.
    pub fn held(&self) -> u32 {
        (self.rx_cnt - self.fwd_cnt).0
    }

    /// Writes our credit into a header going to the guest.
    pub fn stamp(&mut self, hdr: &mut Header) {
        hdr.buf_alloc = self.buf_alloc;
        hdr.fwd_cnt = self.fwd_cnt.0;
        self.fwd_cnt_told = self.fwd_cnt;
    }

    /// Whether the guest believes it has less than half our buffer left
    /// while we have made room since we last told it: then a
    /// `CREDIT_UPDATE` keeps it sending without a stall.
    pub fn update_due(&self) -> bool {
        let guest_view_used = (self.rx_cnt - self.fwd_cnt_told).0;
        self.fwd_cnt != self.fwd_cnt_told
            && self.buf_alloc.saturating_sub(guest_view_used) < self.update_threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            buf_alloc,
            fwd_cnt,
            ..Header::default()
        }
    }

    #[test]
    fn the_device_sends_at_most_the_guests_credit() {
        let mut c = Credit::new(1000, &peer(4096, 0));
        assert_eq!(c.peer_credit(), 4096);
        c.sent(4000);
        assert_eq!(c.peer_credit(), 96);
        c.sent(96);
        assert_eq!(c.peer_credit(), 0);
        c.update_peer(&peer(4096, 1000));
        assert_eq!(c.peer_credit(), 1000);
        // The guest shrinks its buffer below what is in flight: no credit.
        c.update_peer(&peer(1000, 1000));
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn a_guest_claiming_more_than_it_was_sent_gets_nothing() {
        let mut c = Credit::new(1000, &peer(4096, 0));
        c.sent(10);
        c.update_peer(&peer(4096, 500));
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn counters_wrap() {
        let mut c = Credit::new(1000, &peer(4096, u32::MAX - 9));
        c.tx_cnt = Wrapping(u32::MAX - 9);
        c.sent(20);
        assert_eq!(c.peer_credit(), 4076);
        c.rx_cnt = Wrapping(u32::MAX - 4);
        c.fwd_cnt = Wrapping(u32::MAX - 4);
        assert!(c.may_receive(1000));
        c.received(1000);
        assert!(!c.may_receive(1));
        c.forwarded(10);
        assert_eq!(c.held(), 990);
        assert!(c.may_receive(10) && !c.may_receive(11));
    }

    #[test]
    fn the_guest_may_fill_exactly_our_buffer() {
        let mut c = Credit::new(64, &peer(0, 0));
        assert!(c.may_receive(64));
        assert!(!c.may_receive(65));
        c.received(60);
        assert!(c.may_receive(4) && !c.may_receive(5));
        c.forwarded(60);
        assert!(c.may_receive(64));
    }

    #[test]
    fn credit_update_once_the_guest_thinks_we_are_half_full() {
        let mut c = Credit::new(64 * 1024, &peer(0, 0));
        let mut h = Header::default();
        c.stamp(&mut h);
        assert_eq!((h.buf_alloc, h.fwd_cnt), (65536, 0));
        c.received(40 * 1024);
        assert!(!c.update_due(), "nothing forwarded: nothing new to tell");
        c.forwarded(40 * 1024);
        assert!(c.update_due(), "the guest thinks 24 KiB are left");
        c.stamp(&mut h);
        assert_eq!(h.fwd_cnt, 40 * 1024);
        assert!(!c.update_due());
        c.received(8 * 1024);
        c.forwarded(8 * 1024);
        assert!(!c.update_due(), "the guest thinks 56 KiB are left");
    }
}
