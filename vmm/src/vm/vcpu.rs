//! A vCPU: its configuration and the `KVM_RUN` loop that turns exits into
//! device accesses or into the end of the VM.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    CpuId, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::boot::BootSetup;
use super::exit::{ExitSignal, VmExit};
use super::memory::GuestRam;
use super::regs::{self, RegsError};
use crate::devices::IoBuses;

/// KVM_INTERNAL_ERROR_EMULATION: the instruction emulator gave up.
const INTERNAL_ERROR_EMULATION: u32 = 1;

pub struct Vcpu {
    fd: VcpuFd,
    index: u8,
}

impl Vcpu {
    pub fn new(fd: VcpuFd, index: u8) -> Self {
        Vcpu { fd, index }
    }

    /// Loads CPUID, MSRs, FPU and LAPIC wiring; the boot CPU also gets the
    /// entry state of `boot`. Other vCPUs wait in KVM for INIT/SIPI from the
    /// guest, as on real hardware.
    pub fn configure(
        &self,
        cpuid: &CpuId,
        mem: &GuestRam,
        boot: Option<&BootSetup>,
    ) -> Result<(), RegsError> {
        self.fd.set_cpuid2(cpuid).map_err(|source| RegsError::Kvm {
            what: "CPUID",
            source,
        })?;
        regs::setup_msrs(&self.fd)?;
        regs::setup_fpu(&self.fd)?;
        regs::setup_lapic_lint(&self.fd)?;
        if let Some(boot) = boot {
            regs::setup_sregs(&self.fd, mem, boot.entry)?;
            regs::setup_regs(&self.fd, boot.entry, boot.boot_info)?;
        }
        Ok(())
    }

    /// The guest TSC frequency KVM runs this vCPU at, if it tells.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|&khz| khz > 0)
    }

    /// Runs the vCPU on its own thread until the VM ends.
    pub fn spawn(
        self,
        buses: Arc<IoBuses>,
        exit: Arc<ExitSignal>,
    ) -> std::io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("vcpu{}", self.index))
            .spawn(move || {
                let mut vcpu = self;
                let end = vcpu.run_loop(&buses, &exit);
                exit.request(end);
            })
    }

    fn run_loop(&mut self, buses: &IoBuses, exit: &ExitSignal) -> VmExit {
        // In a full memory cgroup, KVM_RUN fails instead of waiting for
        // memory; this waits and runs again (see its documentation).
        let mut charge = crate::oom::charge_wait::ChargeWait::for_this_process();
        let me = format!("vcpu{}", self.index);
        loop {
            if exit.is_requested() {
                // Another vCPU ended the VM; its reason is the one reported.
                return VmExit::Reset;
            }
            let outcome = match self.fd.run() {
                Ok(VcpuExit::IoIn(port, data)) => {
                    buses.pio.read(port, data);
                    None
                }
                Ok(VcpuExit::IoOut(port, data)) => {
                    buses.pio.write(port, data);
                    None
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    buses.mmio.read(addr, data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    buses.mmio.write(addr, data);
                    None
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => Some(system_event(kind)),
                Ok(VcpuExit::Shutdown) => Some(VmExit::GuestCrash(
                    self.describe("triple fault (KVM_EXIT_SHUTDOWN)"),
                )),
                Ok(VcpuExit::Hlt) => Some(VmExit::GuestCrash(
                    self.describe("halted with no interrupt source (KVM_EXIT_HLT)"),
                )),
                Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmExit::GuestCrash(self.describe(
                    &format!("VM entry failed: reason {reason:#x} on host cpu {cpu}"),
                ))),
                Ok(VcpuExit::InternalError) => Some(VmExit::GuestCrash(self.internal_error())),
                Ok(VcpuExit::Intr) => None,
                Ok(other) => {
                    let what = format!("unhandled exit {other:?}");
                    Some(VmExit::VmmError(self.describe(&what)))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) if charge.retry_after(e.errno(), &me, &|| exit.is_requested()) => None,
                Err(e) => Some(VmExit::VmmError(format!(
                    "vcpu{}: KVM_RUN failed: {e}",
                    self.index
                ))),
            };
            if let Some(end) = outcome {
                return end;
            }
        }
    }

    /// KVM_EXIT_INTERNAL_ERROR with its sub-error; on PVM hosts this is how
    /// an instruction the emulator lacks shows up.
    fn internal_error(&mut self) -> String {
        // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal`
        // is the active member of the kvm_run union.
        let internal = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        let kind = if internal.suberror == INTERNAL_ERROR_EMULATION {
            "instruction emulation failed"
        } else {
            "KVM internal error"
        };
        self.describe(&format!(
            "{kind} (suberror {}, data {:x?})",
            internal.suberror,
            &internal.data[..n]
        ))
    }

    /// `what`, with the vCPU's instruction pointer for the post-mortem.
    fn describe(&self, what: &str) -> String {
        match self.fd.get_regs() {
            Ok(r) => format!("vcpu{}: {what} at rip {:#x}", self.index, r.rip),
            Err(_) => format!("vcpu{}: {what}", self.index),
        }
    }
}

fn system_event(kind: u32) -> VmExit {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN | KVM_SYSTEM_EVENT_RESET => VmExit::Reset,
        KVM_SYSTEM_EVENT_CRASH => {
            VmExit::GuestCrash("guest reported a crash (KVM_SYSTEM_EVENT_CRASH)".into())
        }
        other => VmExit::VmmError(format!("unknown KVM system event {other}")),
    }
}
