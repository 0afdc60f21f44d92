//! COM1: a 16550A UART (vm-superio) at port 0x3f8, IRQ 4, output to stdout
//! or a file.

use std::io::{self, Write};

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;
/// ISA IRQ of COM1, also its GSI on the in-kernel IOAPIC.
pub const COM1_GSI: u32 = 4;

/// Raises the UART's interrupt through an eventfd registered as a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Serial output, written line by line. vm-superio flushes after every
/// byte; one `write(2)` per byte would make a chatty guest (a Linux boot
/// log) pay a syscall per character, so `flush` only passes complete lines
/// or a full buffer on. [`SerialOutput::finish`] writes whatever is left.
pub struct SerialOutput {
    sink: Box<dyn Write + Send>,
    pending: Vec<u8>,
}

const MAX_PENDING: usize = 4096;

impl SerialOutput {
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        SerialOutput {
            sink,
            pending: Vec::with_capacity(256),
        }
    }

    /// Writes out any partial last line.
    pub fn finish(&mut self) -> io::Result<()> {
        self.sink.write_all(&self.pending)?;
        self.pending.clear();
        self.sink.flush()
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.last() == Some(&b'\n') || self.pending.len() >= MAX_PENDING {
            self.finish()?;
        }
        Ok(())
    }
}

/// The UART model with its interrupt and output.
pub type SerialDevice = Serial<IrqTrigger, NoEvents, SerialOutput>;

pub fn new_serial(irq: EventFd, out: Box<dyn Write + Send>) -> SerialDevice {
    Serial::new(IrqTrigger(irq), SerialOutput::new(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_passes_whole_lines() {
        let sink = Shared::default();
        let mut serial = new_serial(EventFd::new(0).unwrap(), Box::new(sink.clone()));
        for b in b"hello\nwor" {
            serial.write(0, *b).unwrap();
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hello\n");
        serial.writer_mut().finish().unwrap();
        assert_eq!(&*sink.0.lock().unwrap(), b"hello\nwor");
    }
}
