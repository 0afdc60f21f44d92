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
        .contains("cannot open kernel /nonexistent/vmlinux"));
    let not_a_kernel = refused(&["run", "--kernel", "/etc/hostname"]);
    assert!(
        not_a_kernel.contains("neither an ELF (vmlinux) nor a bzImage"),
        "{not_a_kernel}"
    );
}

/// `vmm run` under a 1 GiB address-space limit, so that a regression that
/// reads an endless file fails this test instead of the host.
fn refused_within_1g(args: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(vmm_integration_tests::vmm_bin());
    cmd.args(args);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    let out = cmd.output().expect("run vmm");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(250), "{args:?}: {stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{args:?} took {:?}",
        started.elapsed()
    );
    stderr
}

/// Issue 9: `--initrd /dev/zero` once grew the VMM to 21 GiB and took the
/// host into a kernel OOM. Boot images must be regular files whose size
/// fits before a byte is read.
#[test]
fn boot_images_that_are_not_regular_files_or_do_not_fit() {
    let zero = refused_within_1g(&["run", "--mem", "16M", "--initrd", "/dev/zero"]);
    assert!(
        zero.contains("initrd /dev/zero is a character device, not a regular file"),
        "{zero}"
    );
    let dir = std::env::temp_dir().join(format!("vmm-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel_dir = refused_within_1g(&["run", "--kernel", dir.to_str().unwrap()]);
    assert!(
        kernel_dir.contains("is a directory, not a regular file"),
        "{kernel_dir}"
    );

    // A FIFO with no writer: opening it must not wait for one.
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let kernel_fifo = refused_within_1g(&["run", "--kernel", fifo.to_str().unwrap()]);
    assert!(
        kernel_fifo.contains("is a FIFO, not a regular file"),
        "{kernel_fifo}"
    );

    // A sparse 64 MiB file for a 16 MiB guest: refused from its size,
    // without reading it.
    let big = dir.join("big.img");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let too_big = refused_within_1g(&["run", "--mem", "16M", "--initrd", big.to_str().unwrap()]);
    assert!(
        too_big.contains("(67108864 bytes) does not fit in guest RAM"),
        "{too_big}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
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
