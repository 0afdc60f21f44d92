//! Test helpers: real processes to measure, and a scratch memory cgroup to
//! make pressure in without touching the rest of the machine.
//!
//! Helper processes are this very test binary, re-run with `--ignored` on
//! [`helper_process`] and a role in `VMM_OOM_TEST_HELPER`: one process, no
//! shell, no grandchildren, so killing it by pid really ends it.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const ROLE_VAR: &str = "VMM_OOM_TEST_HELPER";
const READY: &str = "VMM-OOM-HELPER-READY";

/// What a helper process does once started.
pub enum Role<'a> {
    /// Allocate and touch this many MiB of anonymous memory, then grow by
    /// exactly the pages each `touch <pages>` command asks for.
    Hog { mib: usize },
    /// Join the cgroup whose `cgroup.procs` is given, write 64 MiB to `file`
    /// (so its page cache is charged to that cgroup), then re-read it
    /// forever: file pages thrashing against the cgroup's limit.
    Thrash { procs: &'a Path, file: &'a Path },
}

/// A running helper process. Dropping it kills it by pid and reaps it.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    /// Starts a helper and waits until it has done its setup.
    pub fn spawn(role: Role<'_>) -> Helper {
        let role = match role {
            Role::Hog { mib } => format!("hog:{mib}"),
            Role::Thrash { procs, file } => {
                format!("thrash:{}:{}", procs.display(), file.display())
            }
        };
        let exe = std::env::current_exe().expect("the test binary's path");
        let child = Command::new(exe)
            .args(["--exact", "host::testing::helper_process", "--ignored"])
            .args(["--nocapture", "--test-threads=1"])
            .env(ROLE_VAR, &role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a helper process");
        let mut child = child;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut helper = Helper {
            child,
            stdin,
            stdout,
        };
        // libtest prints its own lines first ("running 1 test", "test ... ").
        let ready = helper.reply();
        assert!(
            ready.is_some(),
            "helper `{role}` exited before it was ready"
        );
        helper
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a command line to a hog (`touch <pages>`) and returns its
    /// answer (`touched <pages so far>`).
    pub fn command(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").expect("helper stdin");
        self.stdin.flush().expect("helper stdin");
        self.reply().expect("helper answered")
    }

    /// The text after the next `READY` marker on the helper's stdout.
    fn reply(&mut self) -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.stdout.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if let Some((_, answer)) = line.split_once(READY) {
                return Some(answer.trim().to_string());
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        // SIGKILL by pid (Child::kill), then wait so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of every helper process; a no-op in a normal `--ignored` run.
#[test]
#[ignore = "the body of helper processes that other oom tests spawn"]
fn helper_process() {
    let Ok(role) = std::env::var(ROLE_VAR) else {
        return;
    };
    let answer = |text: &str| {
        println!("{READY} {text}");
        std::io::stdout().flush().unwrap();
    };
    match role.split(':').collect::<Vec<_>>().as_slice() {
        ["hog", mib] => {
            let page = crate::host::procfs::page_size() as usize;
            let mut memory = vec![0u8; mib.parse::<usize>().unwrap() << 20];
            // One write per page makes every page resident and anonymous.
            for p in memory.chunks_mut(page) {
                p[0] = 1;
            }
            // A reserve to grow into one page per `touch`, never a 2 MiB
            // transparent huge page at once.
            let reserve_len = 64 << 20;
            // SAFETY: a fresh private anonymous mapping, used only below.
            let reserve = unsafe {
                let at = libc::mmap(
                    std::ptr::null_mut(),
                    reserve_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                assert_ne!(at, libc::MAP_FAILED);
                libc::madvise(at, reserve_len, libc::MADV_NOHUGEPAGE);
                at.cast::<u8>()
            };
            let mut touched = 0;
            answer("ready");
            // Serve `touch <pages>` until stdin closes or we are killed.
            for line in std::io::stdin().lines() {
                let line = line.unwrap();
                let pages: usize = line.strip_prefix("touch ").unwrap().parse().unwrap();
                assert!((touched + pages) * page <= reserve_len, "reserve exhausted");
                for i in touched..touched + pages {
                    // SAFETY: inside the reserve mapping (checked above).
                    unsafe { reserve.add(i * page).write_volatile(1) };
                }
                touched += pages;
                answer(&format!("touched {touched}"));
            }
            std::hint::black_box(&memory);
        }
        ["thrash", procs, file] => {
            // "0" moves the writer itself, before it charges anything.
            fs::write(procs, "0").expect("join the scratch cgroup");
            let chunk = vec![0x5au8; 1 << 20];
            let mut f = fs::File::create(file).unwrap();
            for _ in 0..64 {
                f.write_all(&chunk).unwrap();
            }
            drop(f);
            answer("ready");
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let mut f = fs::File::open(file).unwrap();
                while f.read(&mut buf).unwrap() > 0 {}
            }
        }
        other => panic!("unknown helper role {other:?}"),
    }
}

/// A memory cgroup created below this process's own one, with a limit,
/// removed on drop (after killing, by pid, anything still in it — only
/// our helpers can be).
pub struct ScratchMemcg {
    dir: PathBuf,
}

impl ScratchMemcg {
    /// Creates `<own memcg>/vmm-test-<name>-<pid>` limited to `limit` bytes.
    /// Under cgroup v1 it also disables the kernel OOM killer there, so a
    /// test that overshoots pauses instead of causing a kernel OOM kill.
    pub fn create(name: &str, limit: u64) -> ScratchMemcg {
        let own = own_memory_cgroup();
        let dir = own.join(format!("vmm-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir(&dir); // a leftover of a killed earlier run
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = ScratchMemcg { dir };
        if cg.dir.join("memory.limit_in_bytes").exists() {
            cg.write("memory.limit_in_bytes", &limit.to_string());
            cg.write("memory.oom_control", "1");
        } else {
            cg.write("memory.max", &limit.to_string());
        }
        cg
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn write(&self, file: &str, value: &str) {
        let path = self.dir.join(file);
        fs::write(&path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.procs())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for ScratchMemcg {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.pids() {
                // SAFETY: kill(2) with a pid read from our own scratch
                // cgroup, which only our helper processes ever join.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if fs::remove_dir(&self.dir).is_ok() || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// This process's memory cgroup directory: the v1 `memory` hierarchy when
/// mounted, else the cgroup2 mount.
fn own_memory_cgroup() -> PathBuf {
    let cgroups = fs::read_to_string("/proc/self/cgroup").unwrap();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount_of = |fstype: &str, option: Option<&str>| {
        mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut r = right.split_whitespace();
            let ok = r.next() == Some(fstype)
                && option.is_none_or(|o| r.nth(1).is_some_and(|s| s.split(',').any(|x| x == o)));
            ok.then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
    };
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let rel = path.unwrap_or("/").trim_start_matches('/');
        if controllers.is_some_and(|c| c.split(',').any(|c| c == "memory")) {
            if let Some(mount) = mount_of("cgroup", Some("memory")) {
                return mount.join(rel);
            }
        }
    }
    let v2 = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("no memory cgroup v1 and no cgroup2 membership");
    let mount = mount_of("cgroup2", None).expect("no cgroup2 mount");
    let dir = mount.join(v2.trim_start_matches('/'));
    let controllers = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    assert!(
        controllers.split_whitespace().any(|c| c == "memory"),
        "{}: the memory controller is not enabled here; these tests need a \
         memory cgroup they may create children in",
        dir.display()
    );
    dir
}
