//! The bounded buffer that holds guest data a host reader has not taken
//! yet (guest → host direction).
//!
//! Invariants: it never holds more than its capacity (the connection's
//! `buf_alloc`; credit keeps a well-behaved guest below it, and
//! [`TxBuf::push`] refuses the rest); its memory is allocated only when
//! something must wait and freed as soon as it is drained, so idle
//! connections cost no buffer.

use std::io::{self, Write};

/// The buffer would overflow: nothing was stored.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// A ring buffer of at most `cap` bytes, allocated on demand.
#[derive(Debug)]
pub struct TxBuf {
    data: Option<Box<[u8]>>,
    /// Index of the oldest byte.
    head: usize,
    len: usize,
    cap: usize,
}

impl TxBuf {
    /// An empty buffer that will hold at most `cap` bytes.
    pub fn new(cap: usize) -> TxBuf {
        TxBuf {
            data: None,
            head: 0,
            len: 0,
            cap,
        }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of memory allocated now (0 or the capacity).
    pub fn allocated(&self) -> usize {
        self.data.as_ref().map_or(0, |d| d.len())
    }

    /// Appends all of `bytes`, or nothing if they do not fit.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), Full> {
        if bytes.len() > self.cap - self.len {
            return Err(Full);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let cap = self.cap;
        let data = self
            .data
            .get_or_insert_with(|| vec![0u8; cap].into_boxed_slice());
        let tail = (self.head + self.len) % cap;
        let first = bytes.len().min(cap - tail);
        data[tail..tail + first].copy_from_slice(&bytes[..first]);
        data[..bytes.len() - first].copy_from_slice(&bytes[first..]);
        self.len += bytes.len();
        Ok(())
    }

    /// Writes as much as `w` takes, oldest first, until it would block or
    /// the buffer is empty; returns the bytes written. An error other than
    /// "would block" is returned only if nothing was written.
    pub fn flush_to<W: Write>(&mut self, w: &mut W) -> io::Result<usize> {
        let mut written = 0;
        while self.len > 0 {
            let Some(data) = self.data.as_ref() else {
                break;
            };
            let end = (self.head + self.len).min(self.cap);
            match w.write(&data[self.head..end]) {
                Ok(0) => break,
                Ok(n) => {
                    written += n;
                    self.head = (self.head + n) % self.cap;
                    self.len -= n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if written == 0 => return Err(e),
                Err(_) => break,
            }
        }
        if self.len == 0 {
            self.data = None;
            self.head = 0;
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `room` bytes, `chunk` per call.
    struct Slow {
        got: Vec<u8>,
        room: usize,
        chunk: usize,
    }

    impl Write for Slow {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.chunk).min(self.room);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.got.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bounded_and_allocated_only_while_holding_data() {
        let mut b = TxBuf::new(8);
        assert_eq!(b.allocated(), 0);
        b.push(b"").unwrap();
        assert_eq!(b.allocated(), 0);
        b.push(b"12345").unwrap();
        assert_eq!(b.allocated(), 8);
        assert_eq!(b.push(b"6789"), Err(Full));
        assert_eq!(b.len(), 5, "a refused push stores nothing");
        b.push(b"678").unwrap();
        let mut w = Slow {
            got: Vec::new(),
            room: usize::MAX,
            chunk: 3,
        };
        assert_eq!(b.flush_to(&mut w).unwrap(), 8);
        assert_eq!(w.got, b"12345678");
        assert!(b.is_empty());
        assert_eq!(b.allocated(), 0);
    }

    #[test]
    fn wraps_around_and_keeps_order_under_a_slow_reader() {
        let mut b = TxBuf::new(7);
        let mut w = Slow {
            got: Vec::new(),
            room: 0,
            chunk: 2,
        };
        let mut sent = Vec::new();
        let mut next = 0u8;
        for _ in 0..200 {
            let chunk: Vec<u8> = (0..3)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            while b.push(&chunk).is_err() {
                w.room += 2;
                b.flush_to(&mut w).unwrap();
            }
            sent.extend_from_slice(&chunk);
            assert!(b.len() <= 7);
        }
        w.room = usize::MAX;
        b.flush_to(&mut w).unwrap();
        assert_eq!(w.got, sent);
    }

    #[test]
    fn a_broken_writer_reports_its_error() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut b = TxBuf::new(4);
        b.push(b"ab").unwrap();
        assert_eq!(
            b.flush_to(&mut Broken).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        assert_eq!(b.len(), 2);
    }
}
