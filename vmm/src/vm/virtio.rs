//! Placing virtio-mmio devices: a window and a GSI each, ioeventfds for
//! their queues, an irqfd for their interrupt, and their announcement to
//! the guest (ACPI DSDT or kernel command line, never both: Linux would
//! probe the device twice).

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_device::VirtioDevice;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::acpi::VirtioMmioSlot;
use super::exit::ExitSignal;
use super::layout;
use super::memory::GuestRam;
use crate::devices::pv_idle::IdleWake;
use crate::devices::virtio_mmio::{MmioTransport, TransportError, REG_QUEUE_NOTIFY};
use crate::devices::MmioBus;

/// First GSI for virtio devices; COM1 holds 4.
const FIRST_VIRTIO_GSI: u32 = 5;
/// Last usable IOAPIC pin.
const LAST_GSI: u32 = 23;

/// How the guest learns about virtio-mmio devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Announce {
    /// `LNRO0005` devices in the DSDT: what stock kernels need
    /// (Debian's lacks `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
    Acpi,
    /// `virtio_mmio.device=<size>@<base>:<gsi>` on the command line: what
    /// the tiny guest reads.
    Cmdline,
}

#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    #[error("no GSI left for another virtio device (at most {} devices)", LAST_GSI - FIRST_VIRTIO_GSI + 1)]
    NoGsi,
    #[error("cannot create the virtio transport")]
    Transport(#[from] TransportError),
    #[error("cannot create an eventfd for a virtio interrupt")]
    EventFd(#[source] std::io::Error),
    #[error("KVM refused to {what}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Bus(#[from] crate::devices::mmio_bus::MmioBusError),
}

/// The virtio-mmio devices of a VM, in window order.
#[derive(Default)]
pub struct VirtioSlots {
    slots: Vec<VirtioMmioSlot>,
}

impl VirtioSlots {
    /// Gives `device` the next window and GSI, wires its queue
    /// notifications and interrupt into KVM and puts it on `bus`; its
    /// interrupts also wake vCPUs sleeping in the idle port (`wake`).
    pub fn attach(
        &mut self,
        vm: &VmFd,
        mem: &GuestRam,
        bus: &mut MmioBus,
        device: Arc<Mutex<dyn VirtioDevice>>,
        wake: &Arc<IdleWake>,
    ) -> Result<(), VirtioError> {
        let index = self.slots.len() as u64;
        let gsi = FIRST_VIRTIO_GSI + index as u32;
        if gsi > LAST_GSI {
            return Err(VirtioError::NoGsi);
        }
        let base = layout::MMIO_DEVICES_START + index * layout::MMIO_DEVICE_SIZE;
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(VirtioError::EventFd)?;
        vm.register_irqfd(&irqfd, gsi)
            .map_err(|source| VirtioError::Kvm {
                what: "register a virtio irqfd",
                source,
            })?;
        let transport = MmioTransport::new(device, mem.clone(), irqfd, wake.clone())?;
        let notify = IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY);
        for (queue, event) in transport.queue_events().iter().enumerate() {
            // KVM completes a QueueNotify write of this queue's index
            // in-kernel by signalling the eventfd: no exit to the VMM.
            vm.register_ioevent(event, &notify, queue as u32)
                .map_err(|source| VirtioError::Kvm {
                    what: "register a virtio queue ioeventfd",
                    source,
                })?;
        }
        bus.insert(
            base,
            layout::MMIO_DEVICE_SIZE,
            Arc::new(Mutex::new(transport)),
        )?;
        self.slots.push(VirtioMmioSlot {
            base,
            size: layout::MMIO_DEVICE_SIZE,
            gsi,
        });
        Ok(())
    }

    /// The slots to put in the DSDT.
    pub fn acpi_slots(&self, announce: Announce) -> Vec<VirtioMmioSlot> {
        match announce {
            Announce::Acpi => self.slots.clone(),
            Announce::Cmdline => Vec::new(),
        }
    }

    /// `cmdline` with a `virtio_mmio.device=` entry per device appended
    /// when announcing on the command line.
    pub fn announce_on_cmdline(&self, announce: Announce, cmdline: &str) -> String {
        let mut out = cmdline.to_string();
        if announce == Announce::Cmdline {
            for s in &self.slots {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&format!(
                    "virtio_mmio.device={}K@{:#x}:{}",
                    s.size >> 10,
                    s.base,
                    s.gsi
                ));
            }
        }
        out
    }
}

/// Wakes the event loop when a vCPU ends the VM, so [`super::Vm::wait`]
/// sees it.
pub struct ExitWatcher(pub Arc<ExitSignal>);

impl MutEventSubscriber for ExitWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        // Without this registration the VM could never stop; failing here
        // is a bug in the event manager's use, not a runtime condition.
        ops.add(Events::new(self.0.event(), EventSet::IN))
            .expect("register the VM exit eventfd");
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.event().read();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_announced_one_way_only() {
        let slots = VirtioSlots {
            slots: vec![VirtioMmioSlot {
                base: 0xd000_0000,
                size: 0x1000,
                gsi: 5,
            }],
        };
        assert_eq!(
            slots.announce_on_cmdline(Announce::Cmdline, "console=ttyS0"),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5"
        );
        assert!(slots.acpi_slots(Announce::Cmdline).is_empty());
        assert_eq!(
            slots.announce_on_cmdline(Announce::Acpi, "console=ttyS0"),
            "console=ttyS0"
        );
        assert_eq!(slots.acpi_slots(Announce::Acpi).len(), 1);
    }
}
