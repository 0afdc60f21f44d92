//! Where the device's frames go: the TAP in the VMM, anything that keeps
//! frame boundaries in the unit tests.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;

use crate::tap::Tap;

/// A frame transport with a pollable descriptor. Each call moves one
/// whole frame, vnet header first, and never blocks (`WouldBlock` when
/// nothing is waiting or there is no room).
pub trait Backend: AsRawFd + Send {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize>;
}

impl Backend for Tap {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame(self, buf)
    }
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        Tap::write_frame(self, frame)
    }
}

/// A nonblocking datagram socket keeps frame boundaries as a TAP does;
/// the unit tests and the fuzz harness use one end of a pair as the
/// "host network".
impl Backend for UnixDatagram {
    fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf)
    }
    fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        self.send(frame)
    }
}
