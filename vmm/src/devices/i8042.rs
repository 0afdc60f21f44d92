//! Just enough of the i8042 keyboard controller for a guest to reset the
//! machine: the "pulse reset line" command 0xfe written to the command port.
//! Linux uses it for `reboot` (`reboot=k`, the default fallback), and we turn
//! it into a clean VM end. There is no keyboard: the status register reads 0
//! (no data, input buffer empty), so drivers probing it find nothing to do.

use std::sync::Arc;

use crate::vm::exit::{ExitSignal, VmExit};

pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        I8042 { exit }
    }

    pub fn read(&self, _port: u16) -> u8 {
        0
    }

    pub fn write(&self, port: u16, value: u8) {
        if port == I8042_COMMAND_PORT && value == CMD_RESET_CPU {
            self.exit.request(VmExit::Reset);
        }
    }
}
