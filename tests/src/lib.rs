//! Helpers for integration tests that boot real microVMs: find the `vmm`
//! binary, start it, read its serial output line by line with timestamps,
//! and read its memory use from `/proc`.
//!
//! Tests that need KVM call [`require_kvm`], which fails loudly instead of
//! skipping: a CI machine without /dev/kvm must not go green.

pub mod daemon;
pub mod netns;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `vmm` binary built alongside these tests (`$VMM_BIN` overrides).
pub fn vmm_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("VMM_BIN") {
        return p.into();
    }
    // target/<profile>/deps/<test> -> target/<profile>/vmm
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("vmm");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p vmm` (cargo test --workspace does)",
        bin.display()
    );
    bin
}

/// Panics unless /dev/kvm can be opened read-write.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test boots real VMs and needs /dev/kvm, which cannot be opened: {e}");
    }
}

/// Directory where `resources/linux/fetch-kernel.sh` caches the guest kernel.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("VMM_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"))
}

/// A file the fetch script must have produced; panics with the fix otherwise.
pub fn cached_linux_file(name: &str) -> PathBuf {
    let path = cache_dir().join("linux").join(name);
    assert!(
        path.exists(),
        "{} is missing: run resources/linux/fetch-kernel.sh first (.ci/run does)",
        path.display()
    );
    path
}

/// One line of guest serial output and when it arrived.
#[derive(Clone, Debug)]
pub struct Line {
    pub at: Duration,
    pub text: String,
}

/// A running `vmm` process with its stdout captured line by line.
/// Dropping it kills the process by pid and reaps it.
pub struct VmProcess {
    child: Child,
    started: Instant,
    lines: Receiver<Line>,
    seen: Vec<Line>,
}

impl VmProcess {
    /// Starts `vmm` with `args` (e.g. `["run", "--mem", "64M"]`).
    pub fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> VmProcess {
        let mut cmd = Command::new(vmm_bin());
        cmd.args(args);
        VmProcess::spawn(cmd)
    }

    /// Starts `vmm` with `args` inside the network namespace `netns`
    /// (`ip netns exec`, which execs `vmm`: the pid is the VMM's).
    pub fn start_in_netns<S: AsRef<std::ffi::OsStr>>(netns: &str, args: &[S]) -> VmProcess {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns]).arg(vmm_bin()).args(args);
        VmProcess::spawn(cmd)
    }

    /// Starts `cmd`, a command line that execs `vmm` (so that the pid is
    /// the VMM's), with the same capture as [`VmProcess::start`].
    pub fn spawn(mut cmd: Command) -> VmProcess {
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vmm");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx
                    .send(Line {
                        at: started.elapsed(),
                        text,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        VmProcess {
            child,
            started,
            lines,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for a line containing `needle`; returns it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<Line> {
        if let Some(l) = self.seen.iter().find(|l| l.text.contains(needle)) {
            return Some(l.clone());
        }
        let deadline = self.started.elapsed() + timeout;
        loop {
            let left = deadline.checked_sub(self.started.elapsed())?;
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.text.contains(needle) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Every line seen so far (after draining what has arrived).
    pub fn output(&mut self) -> String {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        self.seen
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits up to `timeout` for the process to exit; returns its status and
    /// stderr. Kills it and panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                // Let the reader thread deliver the last lines.
                std::thread::sleep(Duration::from_millis(20));
                self.output();
                return (status, err);
            }
            if Instant::now() > deadline {
                let out = self.output();
                self.kill();
                panic!("vmm did not exit within {timeout:?}; output so far:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL by pid, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Resident set size of the VMM process in bytes, exact: from
    /// `smaps_rollup`, which walks the page tables. (`VmRSS` in `status`
    /// comes from per-CPU counters and may lag by a few hundred KiB.)
    pub fn rss_bytes(&self) -> u64 {
        proc_kib_field(&format!("/proc/{}/smaps_rollup", self.pid()), "Rss:") * 1024
    }

    /// The anonymous part of [`Self::rss_bytes`]: guest RAM and the VMM's
    /// heap, without the shared-library pages whose fault-around makes the
    /// total wobble by ~100 KiB between runs.
    pub fn anon_rss_bytes(&self) -> u64 {
        proc_kib_field(&format!("/proc/{}/smaps_rollup", self.pid()), "Anonymous:") * 1024
    }
}

impl VmProcess {
    /// Resident bytes of the guest-RAM mapping: the mapping of exactly
    /// `mem_size` bytes (guests below 3 GiB have one RAM region).
    pub fn guest_ram_rss_bytes(&self, mem_size: u64) -> u64 {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid())).unwrap();
        let mut in_ram = false;
        for line in smaps.lines() {
            if let Some(size) = line.strip_prefix("Size:") {
                in_ram = size
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
                    == Some(mem_size >> 10);
            } else if let (true, Some(rss)) = (in_ram, line.strip_prefix("Rss:")) {
                return rss
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
                    << 10;
            }
        }
        panic!(
            "no mapping of {mem_size} bytes in /proc/{}/smaps",
            self.pid()
        );
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `kB` field of a `/proc` file such as `/proc/<pid>/status`.
pub fn proc_kib_field(path: &str, field: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {path}"))
}

pub const MIB: u64 = 1 << 20;

/// The stock Debian kernel (`vmlinux`, PVH ELF) and its bzImage, fetched by
/// `resources/linux/fetch-kernel.sh` into the cache on first use.
pub fn stock_kernel(name: &str) -> PathBuf {
    static FETCH: std::sync::Once = std::sync::Once::new();
    FETCH.call_once(|| {
        if cache_dir().join("linux").join("vmlinux").exists() {
            return;
        }
        let script = repo_root().join("resources/linux/fetch-kernel.sh");
        let status = Command::new(&script)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            status.success(),
            "{} failed; see its messages above",
            script.display()
        );
    });
    cached_linux_file(name)
}

/// Runs one of our build scripts and returns the path it prints on stdout.
fn run_build_script(script: &str, args: &[&str]) -> PathBuf {
    let script = repo_root().join(script);
    let out = Command::new(&script)
        .args(args)
        // The tests' initramfs has no guest agent, whatever the shell says.
        .env_remove("GUEST_AGENT")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}); see its messages above",
        script.display(),
        out.status
    );
    let path = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    assert!(
        path.exists(),
        "{} printed {}, which does not exist",
        script.display(),
        path.display()
    );
    path
}

/// The command line the tiny Linux guest needs on a PVM host
/// (resources/linux/README.md): no XSAVE, FSGSBASE or the instructions the
/// emulator lacks, no async page faults or pv spinlocks (hypercalls hang
/// the vCPU), reboot through the i8042 so that the VMM exits, reboot at
/// once on panic. Without ERMS and FSRM the kernel zeroes and copies with
/// `rep stosq`/`movsq`, not byte by byte: page faults cost ~40 % less in
/// the emulator.
pub const LINUX_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 rdinit=/init noxsave nofsgsbase \
     clearcpuid=smap,pcid,invpcid,rdrand,rdseed,popcnt,erms,fsrm no-kvmapf nopvspin";

/// The tiny Linux guest kernel (`vmlinux`, PVH ELF) that
/// `resources/linux/build-guest-kernel.sh` builds into
/// `.cache/linux-guest/`. The script runs once per test binary: when its
/// inputs are unchanged it only checks its stamp (well under a second);
/// otherwise it builds, which takes about 15 minutes on 2 cores.
pub fn guest_kernel() -> PathBuf {
    static KERNEL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    KERNEL
        .get_or_init(|| run_build_script("resources/linux/build-guest-kernel.sh", &[]))
        .clone()
}

/// The tiny Linux guest's initramfs (`/init`, `/bin/hog`), rebuilt from
/// `resources/linux/initramfs/` once per test binary (about a second) into
/// its own file, so that an operator's `.cache/linux-guest/initramfs.cpio`
/// (perhaps with the guest agent) is left alone.
pub fn guest_initramfs() -> PathBuf {
    static INITRD: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    INITRD
        .get_or_init(|| {
            let out = cache_dir().join("linux-guest").join("test-initramfs.cpio");
            run_build_script(
                "resources/linux/build-initramfs.sh",
                &["--out", out.to_str().unwrap()],
            )
        })
        .clone()
}

/// One HTTP request to a VMM's API socket; returns the status code and the
/// body. `Connection: close` keeps the parsing trivial.
pub fn api(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(sock)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", sock.display()));
    // A server that accepted but never answers fails the test, not hangs it.
    let limit = Some(Duration::from_secs(30));
    stream.set_read_timeout(limit).unwrap();
    stream.set_write_timeout(limit).unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `f` every 10 ms until it returns `Some`, for up to `timeout`.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A per-test path for an API socket, removed by the VMM on a clean exit
/// and by [`VmProcess`]'s users otherwise.
pub fn socket_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmm-test-{}-{name}.sock", std::process::id()))
}
