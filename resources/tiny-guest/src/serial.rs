//! Polled output on the 8250/16550 UART at I/O port 0x3f8 (COM1), and the
//! debug-exit port.
//!
//! Invariants: the guest runs at CPL3 with IOPL 3, so `in`/`out` are allowed;
//! nothing here uses interrupts. Every byte waits for the transmit holding
//! register to be empty (LSR bit 5) before it is written, with a bounded
//! wait so a missing or stuck UART cannot hang the guest.

use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

/// Base I/O port of COM1.
const COM1: u16 = 0x3f8;
/// Line status register.
const LSR: u16 = COM1 + 5;
/// LSR bit 5: transmit holding register empty.
const LSR_THRE: u8 = 1 << 5;
/// Polls of LSR before a byte is written anyway.
const THRE_POLLS: u32 = 1 << 16;
/// The debug-exit port (QEMU's `isa-debug-exit,iobase=0xf4`, our VMM).
const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Reads one byte from an I/O port.
fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port input only touches device state; IOPL 3 makes it legal at
    // CPL3 and it has no memory effects.
    unsafe {
        core::arch::asm!("in al, dx", out("al") value, in("dx") port,
            options(nomem, nostack, preserves_flags));
    }
    value
}

/// Writes one byte to an I/O port.
fn outb(port: u16, value: u8) {
    // SAFETY: as for `inb`; the ports we write (UART data, debug exit) have
    // no effect on guest memory.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value,
            options(nomem, nostack, preserves_flags));
    }
}

/// True while the last byte written was a newline (or nothing was written),
/// so a panic in the middle of a line can start a fresh one.
static AT_LINE_START: AtomicBool = AtomicBool::new(true);

/// The serial console. Zero-sized: all state lives in the UART.
pub struct Serial;

impl Serial {
    /// Writes one byte once the transmitter is ready.
    pub fn write_byte(&mut self, byte: u8) {
        for _ in 0..THRE_POLLS {
            if inb(LSR) & LSR_THRE != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        outb(COM1, byte);
        AT_LINE_START.store(byte == b'\n', Ordering::Relaxed);
    }

    /// Ends the current line if something was written to it.
    pub fn finish_line(&mut self) {
        if !AT_LINE_START.load(Ordering::Relaxed) {
            self.write_byte(b'\n');
        }
    }
}

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            self.write_byte(b);
        }
        Ok(())
    }
}

/// Prints one line prefixed with `tiny-guest: `.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut serial = $crate::serial::Serial;
        let _ = serial.write_str("tiny-guest: ");
        let _ = serial.write_fmt(format_args!($($arg)*));
        let _ = serial.write_str("\n");
    }};
}

/// Prints `tiny-guest: exit <code>` and stops the VM through the debug-exit
/// port. Never returns: CPL3 cannot `hlt`, so it keeps writing the port.
pub fn exit(code: u8) -> ! {
    crate::say!("exit {}", code);
    loop {
        outb(DEBUG_EXIT_PORT, code);
        core::hint::spin_loop();
    }
}

/// Shows bytes from the host (command line, tokens) as printable ASCII:
/// `"` and `\` are escaped, other non-printable bytes become `\xNN`.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            match b {
                b'"' => f.write_str("\\\"")?,
                b'\\' => f.write_str("\\\\")?,
                0x20..=0x7e => f.write_str(char::from(b).encode_utf8(&mut [0; 4]))?,
                _ => write!(f, "\\x{:02x}", b)?,
            }
        }
        Ok(())
    }
}
