//! Where and when a benchmark ran: date, CPU, kernel, KVM flavour, versions.

use std::path::Path;
use std::process::Command;

pub struct Machine {
    pub date_utc: String,
    pub cpu: String,
    pub nproc: usize,
    pub kernel: String,
    pub kvm_pvm: bool,
    pub thp: String,
    pub qemu_version: String,
    pub vmm_commit: String,
}

impl Machine {
    /// The report's `machine` cell: CPU, count, kernel and KVM flavour.
    pub fn describe(&self) -> String {
        let kvm = if self.kvm_pvm {
            "PVM (`/sys/module/kvm_pvm` present)"
        } else {
            "not PVM"
        };
        format!(
            "{}, {} CPUs, kernel {}, KVM: {kvm}",
            self.cpu, self.nproc, self.kernel
        )
    }

    /// Collects the facts; anything unreadable becomes "unknown".
    pub fn probe(qemu: &str, repo_dir: &Path) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(unknown);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| unknown());
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| unknown());
        let qemu_version =
            command_line(Command::new(qemu).arg("--version")).unwrap_or_else(unknown);
        let vmm_commit = git_commit(repo_dir).unwrap_or_else(unknown);
        Machine {
            date_utc: utc_now(),
            cpu,
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel,
            kvm_pvm: Path::new("/sys/module/kvm_pvm").exists(),
            thp,
            qemu_version,
            vmm_commit,
        }
    }
}

fn unknown() -> String {
    "unknown".to_string()
}

/// First line of a command's stdout, if it ran successfully.
fn command_line(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string())
}

/// `git rev-parse --short HEAD`, with "+ uncommitted changes" when the work
/// tree differs from it (the binary measured may then not match the commit).
fn git_commit(dir: &Path) -> Option<String> {
    let commit = command_line(Command::new("git").arg("-C").arg(dir).args([
        "rev-parse",
        "--short",
        "HEAD",
    ]))?;
    let dirty = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    Some(if dirty {
        format!("{commit} + uncommitted changes")
    } else {
        commit
    })
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    vmm::utc::UtcTime::now().to_minute()
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM UTC`.
pub fn format_utc(secs: u64) -> String {
    vmm::utc::UtcTime::from_unix_ms(secs.saturating_mul(1000)).to_minute()
}
