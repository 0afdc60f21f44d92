//! `vsock`: what the vsock device carries with the tiny guest, and what its
//! connections cost the VMM.
//!
//! - **host → guest**: a host process connects to the VMM's socket,
//!   `CONNECT`s to the guest's `sink` (which checks the pattern and
//!   consumes at once), writes N MiB, shuts down writing and waits for the
//!   guest's close (end of file). Timed from the `OK` line to that end of
//!   file.
//! - **guest → host**: the guest's `send` to a host listener at
//!   `<uds_path>_<port>`, which reads N MiB to end of file. Timed from
//!   `accept` to end of file. Each send waits for a gate (a connection of
//!   ours to the guest's `sink` on another port, closed at once), so it
//!   starts when we are ready to accept, not during another transfer.
//! - **reference**: N MiB through a Unix socket pair between two threads
//!   of this process: the host side's copies without any VM.
//!
//! Runs are interleaved (host → guest, guest → host, reference; then the
//! next round). Then the VMM's memory outside guest RAM (smaps) with an
//! echoing guest: no connection, C idle connections, the same C
//! connections each with 256 KiB sent by a host that does not read the
//! echo (so the device's per-connection buffers fill up to their bound),
//! and all closed again.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::child::Guest;
use crate::common::{
    describe_binary, display_path, fmt_summary, median_ratio, PinnedBinary, Scratch,
};
use crate::control::HttpCall;
use crate::machine::Machine;
use crate::smaps::{self, Footprint};
use crate::stats::Summary;

/// Guest RAM of the benchmark VMs.
const MEM: &str = "64M";
const MEM_BYTES: u64 = 64 << 20;
const BOOT: Duration = Duration::from_secs(30);
const IO: Duration = Duration::from_secs(60);
/// The guest's sink port, and the host port the guest sends to.
const SINK: u32 = 1024;
const HOST_PORT: u32 = 1025;
/// The guest's gate before each send.
const GATE: u32 = 1026;
/// The guest's gate + `send` pairs per VM (the list holds 16 actions).
const SENDS_PER_VM: usize = 8;

pub struct Options {
    pub runs: usize,
    pub vmm: PathBuf,
    /// MiB per transfer.
    pub mib: u64,
    /// Connections for the memory part.
    pub conns: usize,
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n as u64).map(|o| (o % 251) as u8).collect()
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64()
}

fn vmm_cmd(vmm: &Path, uds: &Path, api: Option<&Path>, orders: &str) -> Command {
    let mut c = Command::new(vmm);
    c.args(["run", "--mem", MEM, "--vsock"])
        .arg(format!("cid=3,uds={}", uds.display()));
    if let Some(api) = api {
        c.arg("--api-sock").arg(api).arg("--boot-now");
    }
    c.args(["--cmdline", &format!("tiny.vsock={orders}")]);
    c
}

/// `CONNECT`s to guest `port` through `uds`; the stream after `OK`.
fn connect_guest(uds: &Path, port: u32) -> anyhow::Result<UnixStream> {
    let mut s = UnixStream::connect(uds).with_context(|| format!("connect {}", uds.display()))?;
    s.set_read_timeout(Some(IO))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        bail!("no OK from the guest: {:?}", String::from_utf8_lossy(&line));
    }
    Ok(s)
}

/// Reads to end of file; returns the bytes read.
fn drain(s: &mut UnixStream) -> anyhow::Result<u64> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(n),
            k => n += k as u64,
        }
    }
}

fn host_to_guest(uds: &Path, data: &[u8]) -> anyhow::Result<Duration> {
    let mut s = connect_guest(uds, SINK)?;
    let t0 = Instant::now();
    s.write_all(data)?;
    s.shutdown(std::net::Shutdown::Write)?;
    // The guest closes once it has everything: end of file.
    drain(&mut s)?;
    Ok(t0.elapsed())
}

fn guest_to_host(listener: &UnixListener, bytes: u64) -> anyhow::Result<Duration> {
    let (mut s, _) = listener.accept().context("accept the guest's connection")?;
    let t0 = Instant::now();
    s.set_read_timeout(Some(IO))?;
    let n = drain(&mut s)?;
    let d = t0.elapsed();
    if n != bytes {
        bail!("the guest sent {n} bytes, not {bytes}");
    }
    Ok(d)
}

fn socketpair(data: &[u8]) -> anyhow::Result<Duration> {
    let (mut a, mut b) = UnixStream::pair()?;
    let owned = data.to_vec();
    let t0 = Instant::now();
    let writer = std::thread::spawn(move || {
        let r = a.write_all(&owned);
        drop(a);
        r
    });
    let n = drain(&mut b)?;
    writer
        .join()
        .expect("writer thread")
        .context("socket pair write")?;
    let d = t0.elapsed();
    if n != data.len() as u64 {
        bail!("socket pair carried {n} bytes");
    }
    Ok(d)
}

/// The VMM's memory now: (Rss outside guest RAM, total Rss), KiB.
fn footprint(pid: u32, exe: &str) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let maps = smaps::parse(&text)?;
    let f = Footprint::new(&maps, MEM_BYTES, exe)?;
    Ok((f.overhead_rss_kb(), f.total_rss_kb))
}

fn metrics(api: &Path) -> anyhow::Result<serde_json::Value> {
    let (status, body) = HttpCall::call(api, "GET", "/vsock/metrics", "")?;
    if status != 200 {
        bail!("GET /vsock/metrics: {status} {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

struct MemRow {
    what: String,
    overhead_kb: u64,
    total_kb: u64,
    connections: u64,
    buffered: u64,
    capacity: u64,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.runs == 0 || opts.mib == 0 {
        bail!("--runs and --mib must be at least 1");
    }
    if !opts.vmm.is_file() {
        bail!(
            "no vmm binary at {}: build it first with `cargo build --release`, or pass --vmm",
            opts.vmm.display()
        );
    }
    let scratch = Scratch::new()?;
    let pinned = PinnedBinary::new(&opts.vmm, &scratch.0)?;
    let vmm = pinned.path.clone();
    let exe = vmm.to_string_lossy().into_owned();
    let repo_dir = opts
        .vmm
        .canonicalize()
        .ok()
        .and_then(|p| p.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let machine = Machine::probe("qemu-system-x86_64", &repo_dir);
    let bytes = opts.mib << 20;
    let data = pattern(bytes as usize);
    let stderr = scratch.0.join("stderr.txt");

    // The sink VM serves every host → guest run.
    let sink_uds = scratch.0.join("h.sock");
    let mut sink_cmd = vmm_cmd(&vmm, &sink_uds, None, &format!("sink:{SINK}"));
    let (_, mut sink) = Guest::spawn("vmm (sink)", &mut sink_cmd, &stderr)?;
    sink.wait_line(&format!("tiny-guest: vsock sink {SINK}: listening"), BOOT)?;

    let g_uds = scratch.0.join("g.sock");
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", g_uds.display()))?;
    let mut sender: Option<Guest> = None;
    let mut sends_left = 0;

    let (mut h2g, mut g2h, mut pair) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..opts.runs {
        eprintln!("vsock: run {}/{}", run + 1, opts.runs);
        let d = host_to_guest(&sink_uds, &data)?;
        h2g.push(mib_per_s(bytes, d));
        let (_, line) =
            sink.wait_line_text(&format!("tiny-guest: vsock sink {SINK}: host port"), IO)?;
        if !line.contains("pattern ok=yes") {
            bail!("the guest's sink saw a broken stream: {line}");
        }

        if sends_left == 0 {
            if let Some(mut old) = sender.take() {
                old.kill();
            }
            let orders = std::iter::repeat_n(
                format!("sink:{GATE}:1,send:{HOST_PORT}:{}M", opts.mib),
                SENDS_PER_VM,
            )
            .collect::<Vec<_>>()
            .join(",");
            let mut cmd = vmm_cmd(&vmm, &g_uds, None, &orders);
            let (_, g) = Guest::spawn("vmm (send)", &mut cmd, &stderr)?;
            sender = Some(g);
            sends_left = SENDS_PER_VM;
        }
        let g = sender.as_mut().expect("started above");
        g.wait_line(&format!("tiny-guest: vsock sink {GATE}: listening"), BOOT)?;
        let mut gate = connect_guest(&g_uds, GATE)?;
        gate.shutdown(std::net::Shutdown::Write)?;
        drain(&mut gate)?;
        let d = guest_to_host(&listener, bytes)?;
        g2h.push(mib_per_s(bytes, d));
        sends_left -= 1;
        let prefix = format!("tiny-guest: vsock send {HOST_PORT}: sent");
        g.wait_line(&prefix, IO)?;

        pair.push(mib_per_s(bytes, socketpair(&data)?));
    }
    sink.kill();
    if let Some(mut g) = sender.take() {
        g.kill();
    }
    drop(listener);

    let mem = memory(&vmm, &exe, &scratch.0, opts.conns)?;

    let mut out = String::new();
    writeln!(out, "### Result ({})\n", machine.date_utc)?;
    writeln!(out, "- machine: {}", machine.describe())?;
    writeln!(
        out,
        "- vmm: {}, commit {}",
        describe_binary(&opts.vmm),
        machine.vmm_commit
    )?;
    writeln!(
        out,
        "- command: `vmm-bench vsock --runs {} --mib {} --conns {} --vmm {}`",
        opts.runs,
        opts.mib,
        opts.conns,
        display_path(&opts.vmm)
    )?;
    writeln!(
        out,
        "- {} MiB per transfer, tiny guest with {MEM}, runs interleaved\n",
        opts.mib
    )?;
    writeln!(out, "| transfer | MiB/s, min / **median** / max | runs |")?;
    writeln!(out, "|---|---|---|")?;
    // Timed on the host only: the tiny guest's clock assumes a 2 GHz TSC
    // when the VMM's CPUID gives it no frequency.
    let rows: [(&str, &Vec<f64>); 3] = [
        ("host → guest (`OK` to end of file)", &h2g),
        ("guest → host (accept to end of file)", &g2h),
        (
            "reference: Unix socket pair, two threads of one process",
            &pair,
        ),
    ];
    for (name, v) in rows {
        if let Some(s) = Summary::of(v) {
            writeln!(out, "| {name} | {} | {} |", fmt_summary(&s, 1), s.n)?;
        }
    }
    writeln!(
        out,
        "\nMedian ratios to the socket pair: host → guest {:.3}, guest → host {:.3}.\n",
        median_ratio(&h2g, &pair),
        median_ratio(&g2h, &pair)
    )?;
    writeln!(
        out,
        "| VMM with an echoing guest | Rss outside guest RAM, KiB | Rss, KiB | connections | buffered guest data, bytes | buffer memory, bytes |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|")?;
    for r in &mem {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            r.what, r.overhead_kb, r.total_kb, r.connections, r.buffered, r.capacity
        )?;
    }
    print!("{out}");
    Ok(())
}

/// The memory part: an echoing guest with 0, `conns` idle and `conns`
/// stuffed connections.
fn memory(vmm: &Path, exe: &str, dir: &Path, conns: usize) -> anyhow::Result<Vec<MemRow>> {
    let uds = dir.join("m.sock");
    let api = dir.join("m-api.sock");
    let mut cmd = vmm_cmd(vmm, &uds, Some(&api), &format!("echo:{SINK}"));
    let (_, mut g) = Guest::spawn("vmm (echo)", &mut cmd, &dir.join("stderr-m.txt"))?;
    g.wait_line(&format!("tiny-guest: vsock echo {SINK}: listening"), BOOT)?;
    let mut rows = Vec::new();
    let mut sample = |what: String, g: &Guest| -> anyhow::Result<()> {
        std::thread::sleep(Duration::from_millis(300));
        let (overhead_kb, total_kb) = footprint(g.pid(), exe)?;
        let m = metrics(&api)?;
        let n = |k: &str| m[k].as_u64().unwrap_or(0);
        rows.push(MemRow {
            what,
            overhead_kb,
            total_kb,
            connections: n("connections"),
            buffered: n("buffered_bytes"),
            capacity: n("buffer_capacity_bytes"),
        });
        Ok(())
    };
    sample("no connection".into(), &g)?;
    let mut open = Vec::new();
    for _ in 0..conns {
        match connect_guest(&uds, SINK) {
            Ok(s) => open.push(s),
            Err(_) => break,
        }
    }
    sample(format!("{} idle connections", open.len()), &g)?;
    let chunk = pattern(256 * 1024);
    for s in &mut open {
        s.set_write_timeout(Some(Duration::from_millis(200)))?;
        let _ = s.write_all(&chunk);
    }
    sample(
        format!(
            "{} connections, 256 KiB each sent, echo not read",
            open.len()
        ),
        &g,
    )?;
    drop(open);
    std::thread::sleep(Duration::from_millis(500));
    sample("all closed again".into(), &g)?;
    g.kill();
    Ok(rows)
}
