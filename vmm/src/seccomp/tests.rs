use super::*;

/// Every filter compiles to a BPF program the kernel accepts in size
/// (`BPF_MAXINSNS`), for x86_64, the one architecture the VMM runs on.
#[test]
fn every_filter_compiles_to_bpf_for_x86_64() {
    let filters = Filters::compile_for(TargetArch::x86_64).unwrap();
    for kind in ThreadKind::ALL {
        let len = filters.program(kind).len();
        assert!(len > 10 && len <= 4096, "{kind:?}: {len} instructions");
    }
}

#[test]
fn kvm_ioctl_numbers_are_the_kernel_ones() {
    assert_eq!(filters::KVM_RUN, 0xae80);
    assert_eq!(filters::KVM_GET_REGS, 0x8090_ae81);
}

/// The vCPU filter differs from the API's: each kind has its own table
/// (a kind that fell back to another's would compile just as well).
#[test]
fn each_kind_has_its_own_filter() {
    let filters = Filters::compile().unwrap();
    for (i, a) in ThreadKind::ALL.iter().enumerate() {
        for b in &ThreadKind::ALL[i + 1..] {
            assert_ne!(filters.program(*a), filters.program(*b), "{a:?} = {b:?}");
        }
    }
}

/// A thread under each filter can do what every thread does through std
/// and glibc (allocate, lock, sleep, end), and is joined: the common part
/// of the allowlists is complete enough for a thread's life. (A missing
/// syscall kills this test binary with SIGSYS: loud.)
#[test]
fn a_thread_lives_and_ends_under_each_filter() {
    let filters = Arc::new(Filters::compile().unwrap());
    for kind in ThreadKind::ALL {
        let filters = Arc::clone(&filters);
        std::thread::Builder::new()
            .name(format!("seccomp-{kind:?}"))
            .spawn(move || {
                seccompiler::apply_filter(filters.program(kind)).unwrap();
                let v: Vec<u64> = (0..100_000).collect();
                let m = std::sync::Mutex::new(v.len());
                assert_eq!(*m.lock().unwrap(), 100_000);
                std::thread::sleep(std::time::Duration::from_millis(1));
                let mut big = vec![0u8; 8 << 20];
                big[4 << 20] = 1;
                drop(big);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}

use std::sync::Arc;
