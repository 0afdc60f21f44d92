//! MMIO dispatch: guest-physical windows in the 32-bit hole, each backed by
//! a virtio-mmio transport.

use std::sync::{Arc, Mutex};

use super::virtio_mmio::MmioTransport;

/// One device window.
struct Window {
    base: u64,
    len: u64,
    transport: Arc<Mutex<MmioTransport>>,
}

/// The MMIO windows of a VM; lookups are a linear scan (a handful of
/// devices per microVM).
#[derive(Default)]
pub struct MmioBus {
    windows: Vec<Window>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MmioBusError {
    #[error("MMIO window {base:#x}+{len:#x} overlaps another device")]
    Overlap { base: u64, len: u64 },
}

/// A floating bus reads all ones.
const UNCLAIMED: u8 = 0xff;

impl MmioBus {
    /// Adds a window `[base, base + len)`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        transport: Arc<Mutex<MmioTransport>>,
    ) -> Result<(), MmioBusError> {
        if self
            .windows
            .iter()
            .any(|w| base < w.base + w.len && w.base < base + len)
        {
            return Err(MmioBusError::Overlap { base, len });
        }
        self.windows.push(Window {
            base,
            len,
            transport,
        });
        Ok(())
    }

    /// The window holding the whole access `[addr, addr + size)`.
    fn find(&self, addr: u64, size: usize) -> Option<(&Window, u64)> {
        self.windows
            .iter()
            .find(|w| addr >= w.base && addr.saturating_add(size as u64) <= w.base + w.len)
            .map(|w| (w, addr - w.base))
    }

    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((w, offset)) => w
                .transport
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read(offset, data),
            None => data.fill(UNCLAIMED),
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((w, offset)) = self.find(addr, data.len()) {
            w.transport
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write(offset, data);
        }
    }
}
