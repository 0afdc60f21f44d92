//! The debug-exit port: a guest ends the VM with an exit code by writing one
//! byte to port 0xf4 (the port QEMU's `isa-debug-exit` uses by convention;
//! QEMU reports `(code << 1) | 1`, we report `code` itself).

use std::sync::Arc;

use crate::vm::exit::{ExitSignal, VmExit};

pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Ports claimed, matching `isa-debug-exit,iosize=0x04`.
pub const DEBUG_EXIT_LEN: u16 = 4;

pub struct DebugExit {
    exit: Arc<ExitSignal>,
}

impl DebugExit {
    pub fn new(exit: Arc<ExitSignal>) -> Self {
        DebugExit { exit }
    }

    /// A write of any width ends the VM with its low byte as the code.
    pub fn write(&self, data: &[u8]) {
        if let Some(&code) = data.first() {
            self.exit.request(VmExit::DebugExit(code));
        }
    }
}
