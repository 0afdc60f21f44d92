//! Command line. Hand-parsed: an argument parser crate would cost more
//! binary than the rest of the agent.

use std::path::PathBuf;

use crate::protocol::{HOST_CID, VSOCK_PORT};

use super::outbox::DEFAULT_CAPACITY;
use super::sys::Target;

pub const USAGE: &str = "\
guest-agent: reports in-guest OOM kills, memory and pressure to the host

usage: guest-agent [options]
  --vsock-cid N        host CID to connect to (default 2)
  --vsock-port N       vsock port (default 1025)
  --unix PATH          connect to a Unix socket instead of vsock (tests on the host)
  --proc-root DIR      where /proc is (default /proc)
  --kmsg PATH          the kernel log (default /dev/kmsg); a plain file is
                       read to its end on every tick
  --cgroup-root DIR    the cgroup2 mount (default /sys/fs/cgroup)
  --interval-ms N      summary / heartbeat period (default 5000)
  --psi-trigger SPEC   PSI trigger for /proc/pressure/memory, e.g.
                       \"some 150000 1000000\" (default), or \"off\"
  --queue N            messages kept for the host at most (default 256)
  --cgroup-rescan N    walk the cgroup tree every N ticks (default 12)
  --run-for-ms N       exit after N ms (tests and measurements)
  -v, --verbose        log connections and losses to stderr
  -h, --help           this text
";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub target: Target,
    pub proc_root: PathBuf,
    pub kmsg: PathBuf,
    pub cgroup_root: PathBuf,
    pub interval_ms: u64,
    /// `None`: no trigger, PSI is read on the tick only.
    pub psi_trigger: Option<String>,
    pub queue: usize,
    pub cgroup_rescan_ticks: u64,
    pub run_for_ms: Option<u64>,
    pub verbose: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            target: Target::Vsock {
                cid: HOST_CID,
                port: VSOCK_PORT,
            },
            proc_root: PathBuf::from("/proc"),
            kmsg: PathBuf::from("/dev/kmsg"),
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            interval_ms: 5000,
            psi_trigger: Some("some 150000 1000000".to_owned()),
            queue: DEFAULT_CAPACITY,
            cgroup_rescan_ticks: 12,
            run_for_ms: None,
            verbose: false,
        }
    }
}

/// What the command line asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    Help,
}

impl Config {
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
        let mut c = Config::default();
        let mut cid = HOST_CID;
        let mut port = VSOCK_PORT;
        let mut unix = None;
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
            match a.as_str() {
                "-h" | "--help" => return Ok(Command::Help),
                "-v" | "--verbose" => c.verbose = true,
                "--vsock-cid" => cid = number(&a, &val(&a)?)?,
                "--vsock-port" => port = number(&a, &val(&a)?)?,
                "--unix" => unix = Some(PathBuf::from(val(&a)?)),
                "--proc-root" => c.proc_root = PathBuf::from(val(&a)?),
                "--kmsg" => c.kmsg = PathBuf::from(val(&a)?),
                "--cgroup-root" => c.cgroup_root = PathBuf::from(val(&a)?),
                "--interval-ms" => {
                    c.interval_ms = number(&a, &val(&a)?)?;
                    if c.interval_ms < 10 {
                        return Err("--interval-ms must be at least 10".into());
                    }
                }
                "--psi-trigger" => {
                    let v = val(&a)?;
                    c.psi_trigger = if v == "off" {
                        None
                    } else {
                        check_trigger(&v)?;
                        Some(v)
                    };
                }
                "--queue" => c.queue = number::<usize>(&a, &val(&a)?)?.clamp(2, 65536),
                "--cgroup-rescan" => c.cgroup_rescan_ticks = number::<u64>(&a, &val(&a)?)?.max(1),
                "--run-for-ms" => c.run_for_ms = Some(number(&a, &val(&a)?)?),
                other => return Err(format!("unknown argument {other:?} (see --help)")),
            }
        }
        c.target = match unix {
            Some(p) => Target::Unix(p),
            None => Target::Vsock { cid, port },
        };
        Ok(Command::Run(c))
    }
}

fn number<T: std::str::FromStr>(name: &str, v: &str) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{name}: {v:?} is not a valid number"))
}

/// `some|full <stall µs> <window µs>` as the kernel takes it (window
/// 500 ms..10 s, stall below the window).
fn check_trigger(v: &str) -> Result<(), String> {
    let bad =
        || format!("--psi-trigger {v:?}: want \"some|full <stall_us> <window_us>\" or \"off\"");
    let mut parts = v.split_ascii_whitespace();
    let kind = parts.next().ok_or_else(bad)?;
    let stall: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let window: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    if !matches!(kind, "some" | "full")
        || parts.next().is_some()
        || !(500_000..=10_000_000).contains(&window)
        || stall == 0
        || stall >= window
    {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Command, String> {
        Config::parse(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_are_vsock_to_the_host() {
        let Command::Run(c) = parse(&[]).unwrap() else {
            panic!()
        };
        assert_eq!(
            c.target,
            Target::Vsock {
                cid: 2,
                port: VSOCK_PORT
            }
        );
        assert_eq!(c.interval_ms, 5000);
    }

    #[test]
    fn host_test_mode() {
        let Command::Run(c) = parse(&[
            "--unix",
            "/tmp/s",
            "--proc-root",
            "/tmp/p",
            "--kmsg",
            "/tmp/k",
            "--interval-ms",
            "100",
            "--psi-trigger",
            "off",
        ])
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.target, Target::Unix("/tmp/s".into()));
        assert_eq!(c.kmsg, PathBuf::from("/tmp/k"));
        assert_eq!(c.psi_trigger, None);
    }

    #[test]
    fn bad_arguments() {
        assert!(parse(&["--interval-ms"]).is_err());
        assert!(parse(&["--interval-ms", "x"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--psi-trigger", "some 2000000 1000000"]).is_err());
        assert!(parse(&["--psi-trigger", "full 100000 1000000"]).is_ok());
        assert_eq!(parse(&["-h"]).unwrap(), Command::Help);
    }
}
