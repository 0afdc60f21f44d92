//! What the daemon must remember about a live VM to take it back after a
//! crash: `<state-dir>/vms/<id>/vm.json`.
//!
//! A daemon killed with SIGKILL leaves its VMMs running (re-parented to
//! init), holding their memory. A restarted daemon on the same state
//! directory re-adopts each one whose record names a process that is still
//! the same process: same pid, same start time (`/proc/<pid>/stat` field
//! 22, in clock ticks since boot) and same executable. Pids are reused, so
//! the pid alone would let a restarted daemon signal a stranger; the start
//! time of a pid cannot repeat within one boot.
//!
//! Records are written whole: to a temporary file, `fsync`ed, renamed over
//! the old one, and the directory `fsync`ed, so a crash at any point leaves
//! the old record or the new one, never a torn one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::daemon_api::{VmSpec, VmState};

/// The record's file name in the VM's directory.
pub const RECORD: &str = "vm.json";

/// A live VM as a restarted daemon needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecordOnDisk {
    /// The spec it was created with (its `id` set).
    pub spec: VmSpec,
    /// Who the VMM process is.
    pub process: ProcessIdentity,
    /// Running or paused (the other states are not live or not adopted).
    pub state: VmState,
    /// The operator's adj as the daemon's policy uses it.
    pub oom_score_adj: i16,
    pub created_at_ms: u64,
}

/// A process, told apart from any later process with the same pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// `/proc/<pid>/stat` field 22: clock ticks after boot it started.
    pub start_time: u64,
    /// `/proc/<pid>/exe`.
    pub exe: PathBuf,
}

impl ProcessIdentity {
    /// Reads who `pid` is now.
    pub fn of(pid: u32) -> io::Result<Self> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let start_time = start_time_from_stat(&stat).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat has no start time"),
            )
        })?;
        let exe = fs::read_link(format!("/proc/{pid}/exe"))?;
        Ok(ProcessIdentity {
            pid,
            start_time,
            exe,
        })
    }
}

/// Field 22 of a `/proc/<pid>/stat` line. The command name (field 2) is
/// in parentheses and may itself hold spaces and parentheses, so fields
/// are counted after its last `)`.
fn start_time_from_stat(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields 3, 4, ... follow; field 22 is the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Writes `record` into `dir` atomically and durably.
pub fn save(dir: &Path, record: &VmRecordOnDisk) -> io::Result<()> {
    let tmp = dir.join(format!(".{RECORD}.tmp"));
    let bytes = serde_json::to_vec_pretty(record).map_err(io::Error::other)?;
    let mut f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(RECORD))?;
    File::open(dir)?.sync_all()
}

/// Removes the record: the VM is no longer live.
pub fn forget(dir: &Path) {
    let _ = fs::remove_file(dir.join(RECORD));
}

/// Every VM directory under `<state-dir>/vms` with its record, or why it
/// cannot be read.
pub fn load_all(state_dir: &Path) -> Vec<(PathBuf, Result<VmRecordOnDisk, String>)> {
    let Ok(entries) = fs::read_dir(state_dir.join("vms")) else {
        return Vec::new();
    };
    let mut out: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|dir| dir.join(RECORD).exists())
        .map(|dir| {
            let record = fs::read(dir.join(RECORD))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()));
            (dir, record)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_field_22_even_when_the_name_has_parentheses() {
        let stat = "4242 (vmm (x) y) S 1 4242 4242 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 3 0 987654 12345 67 18446744073709551615";
        assert_eq!(start_time_from_stat(stat), Some(987654));
        assert_eq!(start_time_from_stat("4242 (vmm) S 1"), None);
    }

    #[test]
    fn our_own_identity_is_stable_and_distinct_from_our_parent() {
        let me = ProcessIdentity::of(std::process::id()).unwrap();
        assert_eq!(me, ProcessIdentity::of(std::process::id()).unwrap());
        assert_eq!(me.exe, std::env::current_exe().unwrap());
        // SAFETY: getppid cannot fail.
        let parent = ProcessIdentity::of(unsafe { libc::getppid() } as u32).unwrap();
        assert_ne!(me, parent);
    }

    #[test]
    fn records_round_trip_and_replace_each_other_whole() {
        let state = std::env::temp_dir().join(format!("vmm-persist-{}", std::process::id()));
        let dir = state.join("vms").join("a");
        fs::create_dir_all(&dir).unwrap();
        let mut record = VmRecordOnDisk {
            spec: VmSpec::with_mem(64),
            process: ProcessIdentity::of(std::process::id()).unwrap(),
            state: VmState::Running,
            oom_score_adj: -500,
            created_at_ms: 1,
        };
        save(&dir, &record).unwrap();
        record.state = VmState::Paused;
        save(&dir, &record).unwrap();
        fs::create_dir_all(state.join("vms").join("b")).unwrap();
        fs::write(state.join("vms").join("b").join(RECORD), "{torn").unwrap();
        let loaded = load_all(&state);
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded[0].1.as_ref().unwrap(), &record);
        assert!(loaded[1].1.is_err());
        assert!(!dir.join(format!(".{RECORD}.tmp")).exists());
        forget(&dir);
        assert_eq!(load_all(&state).len(), 1);
        fs::remove_dir_all(&state).unwrap();
    }
}
