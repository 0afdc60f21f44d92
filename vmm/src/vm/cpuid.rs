//! The CPUID policy: what the guest is told about its CPU.
//!
//! We start from `KVM_GET_SUPPORTED_CPUID` (what KVM can virtualise on this
//! host) and then
//!
//! 1. **hide what guests cannot run here.** On PVM hosts (KVM without
//!    VMX/SVM) guest CPL0 code runs through KVM's instruction emulator, which
//!    lacks `xsave`/`xrstor` and `cmpxchg16b`. A kernel that sees XSAVE or CX16
//!    uses them and dies. The default hidden set is therefore
//!    - the XSAVE family: XSAVE, OSXSAVE and leaf 0xD, and with them every
//!      feature whose state lives in XSAVE areas: AVX, AVX2, FMA, F16C,
//!      AVX-512, AVX-VNNI, AMX, PKU;
//!    - CX16 (`cmpxchg16b`);
//!    - the KVM paravirtual features whose guest side is a hypercall
//!      (`vmcall`), which hangs the vCPU when it comes from an emulated
//!      CPL0: PV_UNHALT (the pv spinlock kick), PV_SEND_IPI and
//!      PV_SCHED_YIELD, in leaf 0x40000001 EAX. An SMP Linux guest uses
//!      them as soon as KVM offers them; without them it falls back to
//!      native spinlocks and APIC IPIs.
//!
//!    `--cpuid-keep` re-exposes them on hosts with hardware virtualisation;
//!    `--cpuid-hide` hides more. Both take the feature names of [`FEATURES`].
//! 2. **describe the VM**: the hypervisor bit, per-vCPU APIC IDs (leaves 1,
//!    0xB, 0x1F), and the TSC frequency in leaf 0x15 (crystal = 1 GHz, the
//!    in-kernel LAPIC's bus clock) and leaf 0x40000010 (kHz), so guests need
//!    no calibration against timers that are slow to emulate.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// A CPUID register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// One named feature bit.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    pub name: &'static str,
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: Reg,
    pub bit: u8,
    /// Hidden unless the operator keeps it.
    pub hidden_by_default: bool,
}

const fn feat(
    name: &'static str,
    leaf: u32,
    subleaf: u32,
    reg: Reg,
    bit: u8,
    hide: bool,
) -> Feature {
    Feature {
        name,
        leaf,
        subleaf,
        reg,
        bit,
        hidden_by_default: hide,
    }
}

/// Features the policy knows by name. Names follow `/proc/cpuinfo`.
pub const FEATURES: &[Feature] = &[
    // The XSAVE family and everything that needs XSAVE-managed state.
    feat("xsave", 1, 0, Reg::Ecx, 26, true),
    feat("osxsave", 1, 0, Reg::Ecx, 27, true),
    feat("avx", 1, 0, Reg::Ecx, 28, true),
    feat("fma", 1, 0, Reg::Ecx, 12, true),
    feat("f16c", 1, 0, Reg::Ecx, 29, true),
    feat("avx2", 7, 0, Reg::Ebx, 5, true),
    feat("avx512f", 7, 0, Reg::Ebx, 16, true),
    feat("avx512dq", 7, 0, Reg::Ebx, 17, true),
    feat("avx512ifma", 7, 0, Reg::Ebx, 21, true),
    feat("avx512cd", 7, 0, Reg::Ebx, 28, true),
    feat("avx512bw", 7, 0, Reg::Ebx, 30, true),
    feat("avx512vl", 7, 0, Reg::Ebx, 31, true),
    feat("avx512vbmi", 7, 0, Reg::Ecx, 1, true),
    feat("pku", 7, 0, Reg::Ecx, 3, true),
    feat("ospke", 7, 0, Reg::Ecx, 4, true),
    feat("avx512_vbmi2", 7, 0, Reg::Ecx, 6, true),
    feat("vaes", 7, 0, Reg::Ecx, 9, true),
    feat("vpclmulqdq", 7, 0, Reg::Ecx, 10, true),
    feat("avx512_vnni", 7, 0, Reg::Ecx, 11, true),
    feat("avx512_bitalg", 7, 0, Reg::Ecx, 12, true),
    feat("avx512_vpopcntdq", 7, 0, Reg::Ecx, 14, true),
    feat("avx512_4vnniw", 7, 0, Reg::Edx, 2, true),
    feat("avx512_4fmaps", 7, 0, Reg::Edx, 3, true),
    feat("avx512_vp2intersect", 7, 0, Reg::Edx, 8, true),
    feat("amx_bf16", 7, 0, Reg::Edx, 22, true),
    feat("avx512_fp16", 7, 0, Reg::Edx, 23, true),
    feat("amx_tile", 7, 0, Reg::Edx, 24, true),
    feat("amx_int8", 7, 0, Reg::Edx, 25, true),
    feat("avx_vnni", 7, 1, Reg::Eax, 4, true),
    feat("avx512_bf16", 7, 1, Reg::Eax, 5, true),
    // cmpxchg16b is missing from KVM's emulator.
    feat("cx16", 1, 0, Reg::Ecx, 13, true),
    // KVM features a guest uses through `vmcall`, which hangs the vCPU at
    // an emulated CPL0. Named after Linux's KVM_FEATURE_* bits.
    feat("kvm_pv_unhalt", KVM_FEATURES_LEAF, 0, Reg::Eax, 7, true),
    feat("kvm_pv_send_ipi", KVM_FEATURES_LEAF, 0, Reg::Eax, 11, true),
    feat(
        "kvm_pv_sched_yield",
        KVM_FEATURES_LEAF,
        0,
        Reg::Eax,
        13,
        true,
    ),
    // Shown by default; named so operators can hide them.
    feat("x2apic", 1, 0, Reg::Ecx, 21, false),
    feat("tsc_deadline_timer", 1, 0, Reg::Ecx, 24, false),
    feat("popcnt", 1, 0, Reg::Ecx, 23, false),
    feat("movbe", 1, 0, Reg::Ecx, 22, false),
    feat("pcid", 1, 0, Reg::Ecx, 17, false),
    feat("rdrand", 1, 0, Reg::Ecx, 30, false),
    feat("fsgsbase", 7, 0, Reg::Ebx, 0, false),
    feat("smep", 7, 0, Reg::Ebx, 7, false),
    feat("invpcid", 7, 0, Reg::Ebx, 10, false),
    feat("rdseed", 7, 0, Reg::Ebx, 18, false),
    feat("smap", 7, 0, Reg::Ebx, 20, false),
    feat("umip", 7, 0, Reg::Ecx, 2, false),
    feat("la57", 7, 0, Reg::Ecx, 16, false),
];

/// Leaves removed entirely by default: 0xD describes XSAVE state components.
const XSAVE_LEAF: u32 = 0xd;
const HYPERVISOR_BIT: u8 = 31;
/// KVM's in-kernel LAPIC timer counts at 1 GHz.
const LAPIC_BUS_HZ: u32 = 1_000_000_000;
const TIMING_LEAF: u32 = 0x4000_0010;
const KVM_SIGNATURE_LEAF: u32 = 0x4000_0000;
/// KVM_CPUID_FEATURES: EAX holds the KVM_FEATURE_* bits.
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpuidError {
    #[error("unknown CPU feature '{0}' (known: {known})", known = FEATURES.iter().map(|f| f.name).collect::<Vec<_>>().join(", "))]
    UnknownFeature(String),
    #[error("the CPUID table is full; cannot add leaf {0:#x}")]
    TableFull(u32),
}

/// What the operator asked for on top of the defaults.
#[derive(Clone, Debug, Default)]
pub struct CpuidPolicy {
    hidden: Vec<&'static Feature>,
    hide_xsave_leaf: bool,
}

impl CpuidPolicy {
    /// The default policy with `keep` re-exposed and `hide` hidden.
    pub fn new<S: AsRef<str>>(keep: &[S], hide: &[S]) -> Result<Self, CpuidError> {
        let lookup = |name: &str| {
            FEATURES
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| CpuidError::UnknownFeature(name.to_string()))
        };
        let keep: Vec<&Feature> = keep
            .iter()
            .map(|n| lookup(n.as_ref()))
            .collect::<Result<_, _>>()?;
        let mut hidden: Vec<&'static Feature> = FEATURES
            .iter()
            .filter(|f| f.hidden_by_default && !keep.iter().any(|k| k.name == f.name))
            .collect();
        for name in hide {
            let f = lookup(name.as_ref())?;
            if !hidden.iter().any(|h| h.name == f.name) {
                hidden.push(f);
            }
        }
        let hide_xsave_leaf = hidden.iter().any(|f| f.name == "xsave");
        Ok(CpuidPolicy {
            hidden,
            hide_xsave_leaf,
        })
    }

    /// Names of the features this policy hides.
    pub fn hidden_names(&self) -> Vec<&'static str> {
        self.hidden.iter().map(|f| f.name).collect()
    }

    /// Applies the policy to KVM's supported table for vCPU `cpu_index` of
    /// `vcpu_count`. `tsc_khz` is the guest TSC frequency when known.
    pub fn apply(
        &self,
        cpuid: &mut CpuId,
        cpu_index: u8,
        vcpu_count: u8,
        tsc_khz: Option<u32>,
    ) -> Result<(), CpuidError> {
        if self.hide_xsave_leaf {
            cpuid.retain(|e| e.function != XSAVE_LEAF);
        }
        for entry in cpuid.as_mut_slice() {
            let (leaf, subleaf) = (entry.function, entry.index);
            for f in self
                .hidden
                .iter()
                .filter(|f| f.leaf == leaf && f.subleaf == subleaf)
            {
                *reg_mut(entry, f.reg) &= !(1 << f.bit);
            }
            describe_vm(entry, cpu_index, vcpu_count);
        }
        if let Some(khz) = tsc_khz {
            set_tsc_leaves(cpuid, khz)?;
        }
        Ok(())
    }
}

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: Reg) -> &mut u32 {
    match reg {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

/// Hypervisor bit and topology: each vCPU is one core of one package.
fn describe_vm(e: &mut kvm_cpuid_entry2, cpu_index: u8, vcpu_count: u8) {
    match e.function {
        1 => {
            e.ecx |= 1 << HYPERVISOR_BIT;
            // EBX[31:24] initial APIC ID, [23:16] logical processors per package.
            e.ebx = (e.ebx & 0x0000_ffff)
                | (u32::from(cpu_index) << 24)
                | (u32::from(vcpu_count) << 16);
            // HTT: more than one logical processor in the package.
            if vcpu_count > 1 {
                e.edx |= 1 << 28;
            }
        }
        // Extended topology: EDX is the x2APIC ID on every subleaf.
        0xb | 0x1f => e.edx = u32::from(cpu_index),
        _ => {}
    }
}

/// Announces the TSC frequency. Leaf 0x15 gives TSC = crystal * EBX / EAX;
/// with a 1 GHz crystal Linux also derives the right LAPIC timer period.
fn set_tsc_leaves(cpuid: &mut CpuId, tsc_khz: u32) -> Result<(), CpuidError> {
    let crystal_khz = LAPIC_BUS_HZ / 1000;
    upsert(cpuid, 0x15, 0, [crystal_khz, tsc_khz, LAPIC_BUS_HZ, 0])?;
    upsert(cpuid, TIMING_LEAF, 0, [tsc_khz, crystal_khz, 0, 0])?;
    for e in cpuid.as_mut_slice() {
        // Raise the maximum leaves so guests look at what we added.
        if e.function == 0 && e.eax < 0x15 {
            e.eax = 0x15;
        }
        if e.function == KVM_SIGNATURE_LEAF && e.eax < TIMING_LEAF {
            e.eax = TIMING_LEAF;
        }
    }
    Ok(())
}

fn upsert(
    cpuid: &mut CpuId,
    function: u32,
    index: u32,
    [eax, ebx, ecx, edx]: [u32; 4],
) -> Result<(), CpuidError> {
    if let Some(e) = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == function && e.index == index)
    {
        (e.eax, e.ebx, e.ecx, e.edx) = (eax, ebx, ecx, edx);
        return Ok(());
    }
    let flags = if index != 0 {
        KVM_CPUID_FLAG_SIGNIFCANT_INDEX
    } else {
        0
    };
    cpuid
        .push(kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        })
        .map_err(|_| CpuidError::TableFull(function))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CpuId {
        let entries = [
            kvm_cpuid_entry2 {
                function: 0,
                eax: 0xd,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 1,
                ecx: u32::MAX,
                edx: 0,
                ebx: 0x0001_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 7,
                ebx: u32::MAX,
                ecx: u32::MAX,
                edx: u32::MAX,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xd,
                eax: 7,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: KVM_SIGNATURE_LEAF,
                eax: 0x4000_0001,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: KVM_FEATURES_LEAF,
                eax: u32::MAX,
                edx: u32::MAX,
                ..Default::default()
            },
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    fn leaf(c: &CpuId, f: u32) -> Option<kvm_cpuid_entry2> {
        c.as_slice().iter().find(|e| e.function == f).copied()
    }

    #[test]
    fn default_policy_hides_xsave_avx_and_cx16() {
        let mut c = sample();
        CpuidPolicy::new::<&str>(&[], &[])
            .unwrap()
            .apply(&mut c, 0, 1, None)
            .unwrap();
        let l1 = leaf(&c, 1).unwrap();
        for bit in [26, 27, 28, 13, 12, 29] {
            assert_eq!(l1.ecx & (1 << bit), 0, "leaf 1 ecx bit {bit}");
        }
        assert_ne!(l1.ecx & (1 << 21), 0, "x2apic stays");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit set");
        assert_eq!(leaf(&c, 7).unwrap().ebx & (1 << 5), 0, "avx2 hidden");
        assert!(leaf(&c, 0xd).is_none(), "xsave leaf removed");
    }

    #[test]
    fn default_policy_hides_the_kvm_hypercall_features() {
        let mut c = sample();
        CpuidPolicy::new::<&str>(&[], &[])
            .unwrap()
            .apply(&mut c, 0, 1, None)
            .unwrap();
        let kvm = leaf(&c, KVM_FEATURES_LEAF).unwrap();
        // PV_UNHALT, PV_SEND_IPI, PV_SCHED_YIELD: hidden.
        for bit in [7, 11, 13] {
            assert_eq!(kvm.eax & (1 << bit), 0, "KVM feature bit {bit}");
        }
        // Everything else KVM offers stays: clocksource, PV EOI, ...
        assert_eq!(kvm.eax, !(1 << 7 | 1 << 11 | 1 << 13));
        assert_eq!(kvm.edx, u32::MAX, "hints untouched");

        let mut c = sample();
        CpuidPolicy::new(&["kvm_pv_unhalt", "kvm_pv_send_ipi"], &[] as &[&str])
            .unwrap()
            .apply(&mut c, 0, 1, None)
            .unwrap();
        let kvm = leaf(&c, KVM_FEATURES_LEAF).unwrap();
        assert_eq!(kvm.eax, !(1 << 13), "kept on request");
    }

    #[test]
    fn hide_takes_fsgsbase_invpcid_and_rdseed() {
        let mut c = sample();
        CpuidPolicy::new(&[] as &[&str], &["fsgsbase", "invpcid", "rdseed"])
            .unwrap()
            .apply(&mut c, 0, 1, None)
            .unwrap();
        let l7 = leaf(&c, 7).unwrap();
        for (name, bit) in [("fsgsbase", 0), ("invpcid", 10), ("rdseed", 18)] {
            assert_eq!(l7.ebx & (1 << bit), 0, "{name} hidden");
        }
        assert_ne!(l7.ebx & (1 << 7), 0, "smep stays");

        // Shown by default.
        let mut c = sample();
        CpuidPolicy::new::<&str>(&[], &[])
            .unwrap()
            .apply(&mut c, 0, 1, None)
            .unwrap();
        let l7 = leaf(&c, 7).unwrap();
        for bit in [0, 10, 18] {
            assert_ne!(l7.ebx & (1 << bit), 0, "leaf 7 ebx bit {bit} shown");
        }
    }

    #[test]
    fn keep_and_hide_override_the_defaults() {
        let mut c = sample();
        CpuidPolicy::new(&["xsave", "cx16"], &["x2apic"])
            .unwrap()
            .apply(&mut c, 0, 1, None)
            .unwrap();
        let l1 = leaf(&c, 1).unwrap();
        assert_ne!(l1.ecx & (1 << 26), 0);
        assert_ne!(l1.ecx & (1 << 13), 0);
        assert_eq!(l1.ecx & (1 << 21), 0);
        assert!(leaf(&c, 0xd).is_some());
        assert_eq!(
            CpuidPolicy::new(&["sse9"], &[]).unwrap_err(),
            CpuidError::UnknownFeature("sse9".into())
        );
    }

    #[test]
    fn apic_ids_and_tsc_frequency() {
        let mut c = sample();
        CpuidPolicy::new::<&str>(&[], &[])
            .unwrap()
            .apply(&mut c, 3, 4, Some(2_100_000))
            .unwrap();
        assert_eq!(leaf(&c, 1).unwrap().ebx >> 24, 3);
        assert_eq!((leaf(&c, 1).unwrap().ebx >> 16) & 0xff, 4);
        let l15 = leaf(&c, 0x15).unwrap();
        assert_eq!(
            u64::from(l15.ecx) / 1000 * u64::from(l15.ebx) / u64::from(l15.eax),
            2_100_000
        );
        assert_eq!(leaf(&c, 0).unwrap().eax, 0x15);
        assert_eq!(leaf(&c, TIMING_LEAF).unwrap().eax, 2_100_000);
        assert_eq!(leaf(&c, KVM_SIGNATURE_LEAF).unwrap().eax, TIMING_LEAF);
    }
}
