//! `vmm run` refuses bad input with a message a person can act on and exit
//! status 250, before any VM runs.

use std::time::Duration;

use vmm_integration_tests::VmProcess;

fn refused(args: &[&str]) -> String {
    let mut vm = VmProcess::start(args);
    let (status, stderr) = vm.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(250), "{args:?}: stderr {stderr}");
    stderr
}

#[test]
fn bad_memory_sizes() {
    assert!(refused(&["run", "--mem", "12Q"]).contains("unknown unit"));
    assert!(refused(&["run", "--mem", "lots"]).contains("does not start with a number"));
    assert!(refused(&["run", "--mem", "1M"]).contains("too small"));
    assert!(refused(&["run", "--mem", "8193K"]).contains("multiple of the 4 KiB page size"));
}

#[test]
fn bad_kernels() {
    assert!(refused(&["run", "--kernel", "/nonexistent/vmlinux"])
        .contains("cannot read kernel /nonexistent/vmlinux"));
    let not_a_kernel = refused(&["run", "--kernel", "/etc/hostname"]);
    assert!(
        not_a_kernel.contains("neither an ELF (vmlinux) nor a bzImage"),
        "{not_a_kernel}"
    );
}

#[test]
fn bad_vcpu_counts_and_features() {
    assert!(refused(&["run", "--vcpus", "0"]).contains("out of range"));
    assert!(refused(&["run", "--cpuid-keep", "sse9"]).contains("unknown CPU feature 'sse9'"));
}

#[test]
fn command_line_too_long() {
    let long = "x".repeat(5000);
    assert!(refused(&["run", "--cmdline", &long]).contains("command line is 5000 bytes"));
}

#[test]
fn missing_kvm_is_explained() {
    // A private mount namespace whose /dev is empty: /dev/kvm is absent for
    // this process only. Needs CAP_SYS_ADMIN, as CI (root) has.
    let out = std::process::Command::new("unshare")
        .args([
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs none /dev && exec \"$0\" run",
        ])
        .arg(vmm_integration_tests::vmm_bin())
        .output()
        .expect("run unshare");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(250), "{stderr}");
    assert!(stderr.contains("/dev/kvm does not exist"), "{stderr}");
}

#[test]
fn bad_numa_nodes() {
    let missing = refused(&["run", "--numa-nodes", "0,9"]);
    assert!(
        missing.contains("--numa-nodes: NUMA node 9 does not exist here (nodes with memory: 0"),
        "{missing}"
    );
    let garbage = refused(&["run", "--numa-nodes", "1-"]);
    assert!(garbage.contains("bad NUMA node list"), "{garbage}");
}
