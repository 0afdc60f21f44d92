//! Port I/O dispatch for the legacy devices. The PIC, PIT and speaker port
//! are emulated inside KVM and never reach us.

use std::sync::{Arc, Mutex};

use super::debug_exit::{DebugExit, DEBUG_EXIT_LEN, DEBUG_EXIT_PORT};
use super::i8042::{I8042, I8042_COMMAND_PORT, I8042_DATA_PORT};
use super::serial::{SerialDevice, COM1_LEN, COM1_PORT};

pub struct PioBus {
    pub serial: Arc<Mutex<SerialDevice>>,
    i8042: I8042,
    debug_exit: DebugExit,
}

/// Value read from a port nothing claims: a floating ISA bus reads all ones.
const UNCLAIMED: u8 = 0xff;

impl PioBus {
    pub fn new(serial: Arc<Mutex<SerialDevice>>, i8042: I8042, debug_exit: DebugExit) -> Self {
        PioBus {
            serial,
            i8042,
            debug_exit,
        }
    }

    /// Handles `in` on `port`, filling `data` (1, 2 or 4 bytes).
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match port {
            COM1_PORT..=0x3ff if data.len() == 1 => {
                data[0] = self.serial().read((port - COM1_PORT) as u8);
            }
            I8042_DATA_PORT | I8042_COMMAND_PORT if data.len() == 1 => {
                data[0] = self.i8042.read(port)
            }
            _ => data.fill(UNCLAIMED),
        }
    }

    /// Handles `out` to `port`.
    pub fn write(&self, port: u16, data: &[u8]) {
        match port {
            COM1_PORT..=0x3ff if data.len() == 1 => {
                // The only error is a failed host write of the output, and a
                // guest must not be able to stop the VMM by filling a disk.
                let _ = self.serial().write((port - COM1_PORT) as u8, data[0]);
            }
            I8042_DATA_PORT | I8042_COMMAND_PORT if data.len() == 1 => {
                self.i8042.write(port, data[0])
            }
            p if (DEBUG_EXIT_PORT..DEBUG_EXIT_PORT + DEBUG_EXIT_LEN).contains(&p) => {
                self.debug_exit.write(data)
            }
            _ => {}
        }
    }

    fn serial(&self) -> std::sync::MutexGuard<'_, SerialDevice> {
        self.serial.lock().unwrap_or_else(|p| p.into_inner())
    }
}

const _: () = assert!(COM1_PORT + COM1_LEN - 1 == 0x3ff);
