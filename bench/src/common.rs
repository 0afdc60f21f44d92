//! Helpers shared by the benchmarks: printable commands, a pinned copy of
//! the vmm binary, a scratch directory, and report formatting.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::machine::format_utc;
use crate::stats::Summary;

/// Program and arguments of one command, printable as a shell line.
#[derive(Clone)]
pub(crate) struct Cmd {
    pub program: String,
    pub args: Vec<String>,
}

impl Cmd {
    pub(crate) fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        c.args(&self.args);
        c
    }

    pub(crate) fn shell(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

pub(crate) fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A name for the vmm binary that a rebuild cannot redirect: a hard link
/// next to it (same inode, so the same page cache pages as the original),
/// or, where linking fails, a copy. Either is flushed to disk first: the
/// page cache pages of a freshly built binary are dirty until writeback
/// (~30 s), and smaps would count them as the VMM's Private_Dirty.
pub(crate) struct PinnedBinary {
    pub path: PathBuf,
    pub how: &'static str,
}

impl PinnedBinary {
    pub(crate) fn new(original: &Path, scratch: &Path) -> anyhow::Result<PinnedBinary> {
        flush(original)?;
        let name = format!(".vmm-bench-{}", std::process::id());
        let link = original.with_file_name(name);
        if std::fs::hard_link(original, &link).is_ok() {
            return Ok(PinnedBinary {
                path: link,
                how: "a private hard link to the binary",
            });
        }
        let copy = scratch.join("vmm");
        std::fs::copy(original, &copy)
            .with_context(|| format!("cannot copy {} to {}", original.display(), copy.display()))?;
        flush(&copy)?;
        Ok(PinnedBinary {
            path: copy,
            how: "a private copy of the binary, flushed to disk",
        })
    }
}

/// fsync(2): writes the file's dirty page cache pages back.
pub(crate) fn flush(path: &Path) -> anyhow::Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot flush {} to disk", path.display()))
}

impl Drop for PinnedBinary {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Temporary directory for the guest image and stderr captures.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new() -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("vmm-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Path, size and modification time of a binary, to tell builds apart.
pub(crate) fn describe_binary(path: &Path) -> String {
    let shown = display_path(path);
    match std::fs::metadata(path) {
        Ok(md) => {
            let mtime = md
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or_else(|| "unknown".to_string(), |d| format_utc(d.as_secs()));
            format!("`{shown}`, {} bytes, modified {mtime}", md.len())
        }
        Err(_) => format!("`{shown}`"),
    }
}

/// `path` relative to the current directory when it lies below it.
pub(crate) fn display_path(path: &Path) -> String {
    let abs = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = abs.strip_prefix(&cwd) {
            return rel.to_string_lossy().into_owned();
        }
    }
    abs.to_string_lossy().into_owned()
}

pub(crate) fn fmt_summary(s: &Summary, decimals: usize) -> String {
    format!(
        "{:.d$} / **{:.d$}** / {:.d$}",
        s.min,
        s.median,
        s.max,
        d = decimals
    )
}

pub(crate) fn median_ratio(a: &[f64], b: &[f64]) -> f64 {
    match (Summary::of(a), Summary::of(b)) {
        (Some(a), Some(b)) if b.median > 0.0 => a.median / b.median,
        _ => f64::INFINITY,
    }
}

pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("-append"), "-append");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(
            shell_quote("tiny.touch=64M tiny.hold=forever"),
            "'tiny.touch=64M tiny.hold=forever'"
        );
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
