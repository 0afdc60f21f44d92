//! One microVM: KVM VM, guest RAM, boot, vCPUs and legacy devices.
//!
//! The order of [`Vm::boot`] is the data path: open KVM, create the VM and
//! its in-kernel interrupt controllers, map RAM, write ACPI tables, load the
//! guest, wire the devices, configure and start the vCPUs. After that the
//! calling thread runs the VM's event loop ([`Vm::wait`]): virtio queue
//! notifications and device timers, until a vCPU reports the end.

pub mod acpi;
pub mod boot;
pub mod charge_wait;
pub mod cpuid;
pub mod exit;
pub mod image_file;
pub mod layout;
pub mod memory;
pub mod numa;
pub mod pause;
pub mod regs;
pub mod release;
pub mod stop_signals;
pub mod vcpu;
pub mod virtio;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use balloon::{Balloon, BalloonConfig};
use block::{Block, BlockConfig};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use net::{Net, NetConfig};
use vmm_sys_util::eventfd::EventFd;
use vsock::{Vsock, VsockConfig};

use crate::devices::debug_exit::DebugExit;
use crate::devices::i8042::I8042;
use crate::devices::pv_idle::IdleWake;
use crate::devices::serial::{new_serial, SerialDevice, COM1_GSI};
use crate::devices::{IoBuses, MmioBus, PioBus};
use acpi::{AcpiConfig, AcpiTables};
use boot::KernelImage;
use cpuid::CpuidPolicy;
use exit::{ExitSignal, VmExit};
use memory::GuestRam;
use release::Releaser;
use vcpu::{Park, Vcpu, VcpuThreads};
use virtio::{Announce, VirtioSlots};

/// The subscribers of the VM's event loop.
pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Everything needed to build and boot one microVM.
pub struct VmConfig {
    pub kernel: KernelImage,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub mem_size: u64,
    pub vcpus: u8,
    pub cpuid: CpuidPolicy,
    pub serial_out: Box<dyn Write + Send>,
    /// A virtio-balloon device, if wanted.
    pub balloon: Option<BalloonConfig>,
    /// A virtio-vsock device, if wanted; its host socket is bound at boot.
    pub vsock: Option<VsockConfig>,
    /// virtio-blk devices; the root device, if any, becomes the first
    /// (`vda`), the others keep their order.
    pub drives: Vec<BlockConfig>,
    /// virtio-net devices, in order, after the drives.
    pub nets: Vec<NetConfig>,
    /// How virtio-mmio devices are announced to the guest.
    pub announce: Announce,
    /// Also write the ACPI tables, one `<SIG>.dat` file each, here.
    pub dump_acpi: Option<PathBuf>,
    /// Bind guest RAM to these NUMA nodes (`MPOL_BIND`).
    pub numa_nodes: Option<crate::host::numa::NodeSet>,
    /// Create the in-kernel i8254 PIT (`KVM_CREATE_PIT2`). Linux may
    /// calibrate its clocks against it and falls back to it as a timer;
    /// the tiny guest never touches ports 0x40-0x43, and the PIT costs
    /// milliseconds of start-up (KVM starts a kernel thread for it).
    pub pit: bool,
}

/// Most vCPUs we start: the MADT and APIC IDs are 8-bit here.
pub const MAX_VCPUS: u8 = 254;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: this host has no KVM (load the kvm module, or enable virtualisation for this VM host)")]
    NoKvm,
    #[error(
        "no permission to open /dev/kvm: run as root or add this user to the group owning /dev/kvm"
    )]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("KVM on this host lacks {0}, which this VMM needs")]
    MissingCap(&'static str),
    #[error("KVM failed to {what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU count {0} is out of range (1..={max})", max = MAX_VCPUS)]
    VcpuCount(u8),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error(transparent)]
    Numa(#[from] numa::NumaError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    #[error("CPUID: {0}")]
    Cpuid(#[from] cpuid::CpuidError),
    #[error("vCPU setup: {0}")]
    Regs(#[from] regs::RegsError),
    #[error(transparent)]
    Virtio(#[from] virtio::VirtioError),
    #[error("cannot create the event loop: {0}")]
    EventLoop(event_manager::Error),
    #[error("balloon: {0}")]
    Balloon(#[from] balloon::BalloonError),
    #[error("vsock: {0}")]
    Vsock(#[from] vsock::VsockError),
    #[error("drive {id:?}: {source}")]
    Block {
        id: String,
        #[source]
        source: block::BlockError,
    },
    #[error("more than one root drive ({0:?} and {1:?})")]
    TwoRootDrives(String, String),
    #[error("two drives have the id {0:?}")]
    DuplicateDriveId(String),
    #[error("network interface {id:?}: {source}")]
    Net {
        id: String,
        #[source]
        source: net::NetError,
    },
    #[error("two network interfaces have the id {0:?}")]
    DuplicateNetId(String),
    #[error("vsock: cannot serve its host socket: {0}")]
    VsockSocket(#[source] crate::http::ServerError),
    #[error("cannot {what}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
}

/// A booted microVM whose vCPUs are running.
pub struct Vm {
    // Field order is drop order: vCPU threads reference the VM fd and RAM.
    exit: Arc<ExitSignal>,
    buses: Arc<IoBuses>,
    event_loop: EventLoop,
    balloon: Option<Arc<Mutex<Balloon>>>,
    vsock: Option<Arc<Mutex<Vsock>>>,
    drives: Vec<Arc<Mutex<Block>>>,
    nets: Vec<Arc<Mutex<Net>>>,
    /// The vsock device's host socket file, removed with the VM.
    vsock_socket: Option<HostSocket>,
    vcpus: Arc<VcpuThreads>,
    _vm_fd: VmFd,
    mem: GuestRam,
    _kvm: Kvm,
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { what, source }
}

/// Opens /dev/kvm, turning the common failures into advice.
pub fn open_kvm() -> Result<Kvm, VmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmError::NoKvm,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::KvmOpen(e),
    })
}

impl Vm {
    /// Builds the VM described by `cfg` and starts its vCPUs.
    pub fn boot(cfg: VmConfig) -> Result<Vm, VmError> {
        if cfg.vcpus == 0 || cfg.vcpus > MAX_VCPUS {
            return Err(VmError::VcpuCount(cfg.vcpus));
        }
        let kvm = open_kvm()?;
        for (cap, name) in [
            (Cap::Irqchip, "an in-kernel irqchip"),
            (Cap::Irqfd, "irqfd"),
            (Cap::UserMemory, "user memory slots"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(name));
            }
        }
        let vm_fd = kvm.create_vm().map_err(kvm_err("create a VM"))?;
        // The TSS needs three pages below 4 GiB that no RAM or MMIO uses; the
        // top of the MMIO hole, just below the BIOS area, is free.
        vm_fd
            .set_tss_address(0xfffb_d000)
            .map_err(kvm_err("set the TSS address"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("create the in-kernel irqchip"))?;
        if cfg.pit {
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            vm_fd
                .create_pit2(pit)
                .map_err(kvm_err("create the in-kernel PIT"))?;
        }

        let mem = memory::create_guest_ram(cfg.mem_size)?;
        if let Some(nodes) = &cfg.numa_nodes {
            numa::bind_guest_ram(&mem, nodes)?;
        }
        memory::register_guest_ram(&vm_fd, &mem)?;

        // Devices, the exit signal and park requests wake vCPUs that sleep
        // in the idle port.
        let wake = Arc::new(IdleWake::default());
        let exit = Arc::new(ExitSignal::new(wake.clone()).map_err(|source| VmError::Io {
            what: "create an eventfd",
            source,
        })?);
        let mut event_loop = EventLoop::new().map_err(VmError::EventLoop)?;
        event_loop.add_subscriber(Arc::new(Mutex::new(virtio::ExitWatcher(exit.clone()))));
        let stop = stop_signals::StopSignals::new(exit.clone()).map_err(|source| VmError::Io {
            what: "create a signalfd",
            source,
        })?;
        event_loop.add_subscriber(Arc::new(Mutex::new(stop)));

        let mut slots = VirtioSlots::default();
        let mut mmio = MmioBus::default();
        let balloon = match cfg.balloon {
            Some(config) => {
                let mut dev = Balloon::new(config)?;
                dev.set_worker_start(crate::seccomp::release_worker_start);
                let dev = Arc::new(Mutex::new(dev));
                slots.attach(&vm_fd, &mem, &mut mmio, dev.clone(), &wake)?;
                event_loop.add_subscriber(dev.clone());
                Some(dev)
            }
            None => None,
        };

        let (vsock, vsock_socket) = match cfg.vsock {
            Some(config) => {
                let (listener, file) =
                    crate::http::socket::bind(&config.uds_path).map_err(VmError::VsockSocket)?;
                let file = HostSocket(file);
                let dev = Arc::new(Mutex::new(Vsock::new(config, listener)?));
                slots.attach(&vm_fd, &mem, &mut mmio, dev.clone(), &wake)?;
                event_loop.add_subscriber(dev.clone());
                (Some(dev), Some(file))
            }
            None => (None, None),
        };

        let drives = root_first(cfg.drives)?;
        let cmdline = root_device_cmdline(&cfg.cmdline, drives.first());
        let drives = drives
            .into_iter()
            .map(|config| {
                let id = config.drive_id.clone();
                let dev = Arc::new(Mutex::new(
                    Block::new(config).map_err(|source| VmError::Block { id, source })?,
                ));
                slots.attach(&vm_fd, &mem, &mut mmio, dev.clone(), &wake)?;
                event_loop.add_subscriber(dev.clone());
                Ok(dev)
            })
            .collect::<Result<Vec<_>, VmError>>()?;

        let mut net_ids = std::collections::HashSet::new();
        let nets = cfg
            .nets
            .into_iter()
            .map(|config| {
                let id = config.iface_id.clone();
                if !net_ids.insert(id.clone()) {
                    return Err(VmError::DuplicateNetId(id));
                }
                let dev = Arc::new(Mutex::new(
                    Net::new(config).map_err(|source| VmError::Net { id, source })?,
                ));
                slots.attach(&vm_fd, &mem, &mut mmio, dev.clone(), &wake)?;
                event_loop.add_subscriber(dev.clone());
                Ok(dev)
            })
            .collect::<Result<Vec<_>, VmError>>()?;

        let cmdline = slots.announce_on_cmdline(cfg.announce, &cmdline);
        let acpi = AcpiTables::build(&AcpiConfig {
            vcpus: cfg.vcpus,
            virtio_mmio: &slots.acpi_slots(cfg.announce),
        })?;
        acpi.write_to(&mem)?;
        if let Some(dir) = &cfg.dump_acpi {
            for (signature, _, bytes) in acpi.tables() {
                std::fs::write(dir.join(format!("{signature}.dat")), bytes).map_err(|source| {
                    VmError::Io {
                        what: "write an ACPI table dump",
                        source,
                    }
                })?;
            }
        }
        let boot = boot::load_guest(
            &mem,
            &cfg.kernel,
            cfg.initrd.as_deref(),
            &cmdline,
            acpi.rsdp_addr(),
        )?;
        if let KernelImage::Embedded(image) = &cfg.kernel {
            crate::guest_image::unmap_resident_pages(image);
        }

        let serial = Arc::new(Mutex::new(new_serial(serial_irq(&vm_fd)?, cfg.serial_out)));
        let pio = PioBus::new(
            serial,
            I8042::new(exit.clone()),
            DebugExit::new(exit.clone()),
        );
        let buses = Arc::new(IoBuses { pio, mmio });

        let base_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("report supported CPUID"))?;
        let vcpus: Vec<Vcpu> = (0..cfg.vcpus)
            .map(|i| vm_fd.create_vcpu(u64::from(i)).map(|fd| Vcpu::new(fd, i)))
            .collect::<Result<_, _>>()
            .map_err(kvm_err("create a vCPU"))?;
        let tsc_khz = vcpus[0].tsc_khz();
        for (i, vcpu) in vcpus.iter().enumerate() {
            let mut cpuid = base_cpuid.clone();
            cfg.cpuid.apply(&mut cpuid, i as u8, cfg.vcpus, tsc_khz)?;
            vcpu.configure(&cpuid, &mem, (i == 0).then_some(&boot))?;
        }
        vcpu::install_kick_handler().map_err(|source| VmError::Io {
            what: "install the vCPU kick signal handler",
            source,
        })?;
        let park = Arc::new(Park::new(wake.clone()));
        let pause = Arc::new(pause::Pause::default());
        let mut handles = Vec::with_capacity(vcpus.len());
        for vcpu in vcpus {
            let handle = vcpu
                .spawn(buses.clone(), exit.clone(), park.clone(), pause.clone())
                .map_err(|source| VmError::Io {
                    what: "start a vCPU thread",
                    source,
                })?;
            handles.push(handle);
        }
        Ok(Vm {
            exit,
            buses,
            event_loop,
            balloon,
            vsock,
            drives,
            nets,
            vsock_socket,
            vcpus: Arc::new(VcpuThreads::new(handles, park, pause)),
            _vm_fd: vm_fd,
            mem,
            _kvm: kvm,
        })
    }

    /// Runs the VM's event loop until the VM ends, and says how.
    pub fn wait(&mut self) -> VmExit {
        let end = loop {
            if let Some(end) = self.exit.requested() {
                break end;
            }
            match self.event_loop.run() {
                Ok(_) => {}
                Err(event_manager::Error::Epoll(e)) if e.errno() == libc::EINTR => {}
                Err(e) => break VmExit::VmmError(format!("event loop failed: {e}")),
            }
        };
        // Whatever the guest printed last must reach the operator.
        let _ = self.serial().writer_mut().finish();
        end
    }

    /// The balloon device, if the VM has one.
    pub fn balloon(&self) -> Option<&Arc<Mutex<Balloon>>> {
        self.balloon.as_ref()
    }

    /// The vsock device, if the VM has one.
    pub fn vsock(&self) -> Option<&Arc<Mutex<Vsock>>> {
        self.vsock.as_ref()
    }

    /// The virtio-blk devices, root first.
    pub fn drives(&self) -> &[Arc<Mutex<Block>>] {
        &self.drives
    }

    /// The virtio-net devices, in order.
    pub fn nets(&self) -> &[Arc<Mutex<Net>>] {
        &self.nets
    }

    /// Removes the host socket files the VM's devices made (the VMM exits
    /// without dropping the VM).
    pub fn remove_host_sockets(&mut self) {
        self.vsock_socket.take();
    }

    /// Guest RAM, for accounting.
    pub fn guest_ram(&self) -> &GuestRam {
        &self.mem
    }

    /// What another thread needs to stop this VM for good and release its
    /// RAM on up to `threads` threads (see [`release`]).
    pub fn releaser(&self, threads: usize) -> Releaser {
        Releaser::new(self.mem.clone(), self.vcpus.clone(), threads)
    }

    /// The vCPU threads, to pause and resume them.
    pub fn vcpu_threads(&self) -> Arc<VcpuThreads> {
        self.vcpus.clone()
    }

    /// The signal that ends [`Vm::wait`].
    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    fn serial(&self) -> std::sync::MutexGuard<'_, SerialDevice> {
        self.buses
            .pio
            .serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// The drives in attachment order: the root device first (Linux names
/// virtio disks in probe order, so it is `vda`), the others as given.
/// Refuses two root devices and two drives with one id.
fn root_first(mut drives: Vec<BlockConfig>) -> Result<Vec<BlockConfig>, VmError> {
    let mut ids = std::collections::HashSet::new();
    for d in &drives {
        if !ids.insert(d.drive_id.as_str()) {
            return Err(VmError::DuplicateDriveId(d.drive_id.clone()));
        }
    }
    let mut roots = drives.iter().filter(|d| d.is_root_device);
    if let (Some(a), Some(b)) = (roots.next(), roots.next()) {
        return Err(VmError::TwoRootDrives(
            a.drive_id.clone(),
            b.drive_id.clone(),
        ));
    }
    if let Some(i) = drives.iter().position(|d| d.is_root_device) {
        let root = drives.remove(i);
        drives.insert(0, root);
    }
    Ok(drives)
}

/// `cmdline` with `root=/dev/vda ro` (or `rw`) appended when `first` is
/// the root device, as Firecracker does for `is_root_device`.
fn root_device_cmdline(cmdline: &str, first: Option<&BlockConfig>) -> String {
    let mut out = cmdline.to_string();
    if let Some(root) = first.filter(|d| d.is_root_device) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("root=/dev/vda ");
        out.push_str(if root.read_only { "ro" } else { "rw" });
    }
    out
}

/// A device's host socket file, removed when dropped (if still ours), so
/// a boot that fails after binding it leaves nothing behind.
struct HostSocket(crate::http::socket::SocketFile);

impl Drop for HostSocket {
    fn drop(&mut self) {
        self.0.remove();
    }
}

/// An eventfd wired to COM1's GSI on the in-kernel IOAPIC.
fn serial_irq(vm_fd: &VmFd) -> Result<EventFd, VmError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmError::Io {
        what: "create an eventfd",
        source,
    })?;
    vm_fd
        .register_irqfd(&evt, COM1_GSI)
        .map_err(kvm_err("register the serial irqfd"))?;
    Ok(evt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, root: bool, read_only: bool) -> BlockConfig {
        BlockConfig {
            drive_id: id.into(),
            path: "/img".into(),
            read_only,
            is_root_device: root,
        }
    }

    #[test]
    fn the_root_drive_is_vda_and_named_on_the_command_line() {
        let ids =
            |v: Vec<BlockConfig>| -> Vec<String> { v.into_iter().map(|d| d.drive_id).collect() };
        let got = root_first(vec![
            drive("a", false, false),
            drive("b", false, false),
            drive("root", true, true),
        ])
        .unwrap();
        assert_eq!(
            root_device_cmdline("console=ttyS0", got.first()),
            "console=ttyS0 root=/dev/vda ro"
        );
        assert_eq!(ids(got), ["root", "a", "b"]);
        let rw = [drive("r", true, false)];
        assert_eq!(root_device_cmdline("", rw.first()), "root=/dev/vda rw");
        let none = [drive("a", false, false)];
        assert_eq!(root_device_cmdline("x", none.first()), "x");
        assert_eq!(root_device_cmdline("x", None), "x");
        assert!(matches!(
            root_first(vec![drive("a", true, false), drive("b", true, false)]),
            Err(VmError::TwoRootDrives(..))
        ));
        assert!(matches!(
            root_first(vec![drive("a", false, false), drive("a", false, false)]),
            Err(VmError::DuplicateDriveId(_))
        ));
    }
}
