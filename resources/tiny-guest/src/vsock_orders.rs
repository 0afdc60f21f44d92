//! The `tiny.vsock=` actions: what the guest does with the vsock device
//! for the host's tests and measurements (see `cmdline::VsockAction` and
//! the README for the lines each prints).
//!
//! Every wait is bounded; a check that fails is printed and counted, and
//! the guest ends with [`EXIT_CHECK`] after the list if any did. At the end
//! of the list every connection still open is closed cleanly.

use crate::cmdline::{VsockAction, VsockEvil, VsockPlan};
use crate::idle;
use crate::say;
use crate::serial::exit;
use crate::tsc;
use crate::virtqueue::Buffer;
use crate::vsock::{
    Hdr, Role, St, Vsock, BUF_ALLOC, HDR, HOST_CID, MAX_CONNS, OP_REQUEST, OP_RW, OWE_SHUTDOWN,
    SHUT_SEND, TYPE_STREAM,
};

/// Exit code: a vsock check failed.
pub const EXIT_CHECK: u8 = 8;

/// How long the device may take to answer a packet.
const ANSWER_MS: u64 = 2000;
/// Bytes each `conns` connection sends and expects back.
const CONNS_BYTES: u64 = 16;
/// What `credit-overrun` sends without waiting for credit.
const OVERRUN_BYTES: u64 = 8 << 20;

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The longest the driver sleeps when nothing moved: its own timers (a
/// slowsink's hold, the credit-stall note, the status check) run at least
/// this often. Device news (packets, used tx buffers) wakes it at once.
const NAP_MS: u64 = 50;

/// After a poll in which nothing moved: sleeps in the VMM's idle port
/// until news, `NAP_MS`, or `limit` ticks after `t0` (if any).
fn nap(v: &Vsock, t0: u64, limit: Option<u64>) {
    let mut ticks = v.ticks(NAP_MS);
    if let Some(limit) = limit {
        ticks = ticks.min(limit.saturating_sub(tsc::now().wrapping_sub(t0)));
    }
    idle::sleep_ticks(v.freq, ticks);
}

/// Polls until `done` or `ms` passed; returns whether `done` held.
fn wait_until(v: &mut Vsock, ms: u64, mut done: impl FnMut(&Vsock) -> bool) -> bool {
    let t0 = tsc::now();
    let limit = v.ticks(ms);
    loop {
        // First, so that credit it frees goes out in this poll.
        v.release_slow();
        let moved = v.poll();
        if done(v) {
            return true;
        }
        if tsc::now().wrapping_sub(t0) > limit {
            return false;
        }
        if !moved {
            nap(v, t0, Some(limit));
        }
    }
}

/// Runs the actions in order; exits with [`EXIT_CHECK`] if a check failed.
pub fn run(v: &mut Vsock, plan: &VsockPlan, exit_after_ms: Option<u64>, ram_end: u64) {
    for &action in plan.actions() {
        match action {
            VsockAction::Echo { port, conns } => {
                serve(v, port, Role::Echo, 0, conns, exit_after_ms)
            }
            VsockAction::Sink { port, conns } => {
                serve(v, port, Role::Sink, 0, conns, exit_after_ms)
            }
            VsockAction::SlowSink { port, ms } => {
                serve(v, port, Role::SlowSink, ms, Some(1), exit_after_ms)
            }
            VsockAction::Send { port, bytes } => send(v, port, bytes),
            VsockAction::Conns { port, n } => conns(v, port, n),
            VsockAction::Flood { port, n } => flood(v, port, n),
            VsockAction::Wait { ms } => {
                wait_until(v, ms, |_| false);
            }
            VsockAction::Close => close_all(v),
            VsockAction::Evil { case, port } => evil(v, case, port, ram_end),
        }
    }
    close_all(v);
    if v.bad_packets > 0 {
        say!(
            "vsock: {} packets from the device had bad headers",
            v.bad_packets
        );
        v.failures += 1;
    }
    if v.failures > 0 {
        say!("vsock: {} checks failed", v.failures);
        exit(EXIT_CHECK);
    }
    say!("vsock: all actions done");
}

/// Listens on `port` until `conns` connections closed, `exit_after_ms`
/// passed, or forever.
fn serve(
    v: &mut Vsock,
    port: u32,
    role: Role,
    hold_ms: u64,
    conns: Option<u32>,
    exit_after_ms: Option<u64>,
) {
    v.listener = Some((port, role, hold_ms));
    v.accepted = 0;
    v.closed = 0;
    let verb = match role {
        Role::Echo => "echo",
        Role::Sink => "sink",
        _ => "slowsink",
    };
    say!("vsock {} {}: listening", verb, port);
    let t0 = tsc::now();
    let limit = exit_after_ms.map(|ms| v.ticks(ms));
    loop {
        // First, so that credit it frees goes out in this poll.
        v.release_slow();
        let moved = v.poll();
        if conns.is_some_and(|n| v.closed >= n) {
            break;
        }
        if limit.is_some_and(|l| tsc::now().wrapping_sub(t0) > l) {
            break;
        }
        if !moved {
            nap(v, t0, limit);
        }
    }
    v.listener = None;
    say!(
        "vsock {} {}: {} accepted, {} closed",
        verb,
        port,
        v.accepted,
        v.closed
    );
}

/// Connects; returns the connection once open, or `None` (printed) when
/// refused or unanswered.
fn open(v: &mut Vsock, port: u32, what: &str) -> Option<usize> {
    let Some(ci) = v.connect(port, Role::Send) else {
        say!("vsock {} {}: no free connection slot", what, port);
        v.failures += 1;
        return None;
    };
    wait_until(v, ANSWER_MS, |v| v.conns[ci].st != St::Connecting);
    match v.conns[ci].st {
        St::Open => Some(ci),
        St::Done => {
            say!("vsock {} {}: connection reset", what, port);
            v.release(ci);
            None
        }
        _ => {
            say!("vsock {} {}: no answer", what, port);
            v.failures += 1;
            v.abort(ci);
            v.release(ci);
            None
        }
    }
}

/// `send:<port>:<size>`.
fn send(v: &mut Vsock, port: u32, bytes: u64) {
    let Some(ci) = open(v, port, "send") else {
        return;
    };
    let t0 = tsc::now();
    v.conns[ci].send_left = bytes;
    // Everything queued and taken by the device (or the connection died).
    let sent = wait_until(v, 120_000, |v| {
        let c = &v.conns[ci];
        c.st != St::Open || (c.send_left == 0 && v.tx_idle())
    });
    let us = v.us_since(t0);
    if v.conns[ci].st == St::Open {
        let c = &mut v.conns[ci];
        c.owe |= OWE_SHUTDOWN;
        c.shut_flags = SHUT_SEND;
        // Until the host is done too (it echoes, or just closes).
        wait_until(v, 60_000, |v| {
            let c = &v.conns[ci];
            c.st != St::Open || c.peer_shut & SHUT_SEND != 0
        });
    }
    let was_reset = v.conns[ci].st == St::Done;
    v.close(ci);
    wait_until(v, ANSWER_MS, |v| v.conns[ci].st == St::Done);
    let c = v.conns[ci];
    let end = if was_reset {
        "reset"
    } else if c.st != St::Done {
        v.abort(ci);
        "timeout"
    } else if c.clean {
        "clean"
    } else {
        "reset"
    };
    if !c.pattern_ok || !sent {
        v.failures += 1;
    }
    say!(
        "vsock send {}: sent {} bytes in {} us, received {} bytes, echo ok={}, credit stalls={}, close={}",
        port,
        c.tx_bytes,
        us,
        c.rx_bytes,
        yes(c.pattern_ok && (c.rx_bytes == 0 || c.rx_bytes == c.tx_bytes)),
        c.credit_stalls,
        end
    );
    v.release(ci);
}

/// `conns:<port>:<n>`: the connections stay open.
fn conns(v: &mut Vsock, port: u32, n: u32) {
    let mut ids = [0usize; MAX_CONNS];
    let mut opened = 0;
    for _ in 0..n {
        match v.connect(port, Role::Send) {
            Some(ci) => {
                ids[opened] = ci;
                opened += 1;
            }
            None => break,
        }
    }
    let ids = &ids[..opened];
    wait_until(v, ANSWER_MS * 2, |v| {
        ids.iter().all(|&ci| v.conns[ci].st != St::Connecting)
    });
    let mut established = 0;
    let mut reset = 0;
    for &ci in ids {
        match v.conns[ci].st {
            St::Open => {
                established += 1;
                v.conns[ci].send_left = CONNS_BYTES;
            }
            St::Done => {
                reset += 1;
                v.release(ci);
            }
            _ => {
                v.abort(ci);
                v.release(ci);
            }
        }
    }
    wait_until(v, ANSWER_MS * 2, |v| {
        ids.iter()
            .all(|&ci| v.conns[ci].st != St::Open || v.conns[ci].rx_bytes >= CONNS_BYTES)
    });
    let echoed = ids
        .iter()
        .filter(|&&ci| {
            let c = &v.conns[ci];
            c.st == St::Open && c.rx_bytes == CONNS_BYTES && c.pattern_ok
        })
        .count();
    say!(
        "vsock conns {}: {} requested, {} established, {} reset, {} unanswered, {} echoed",
        port,
        n,
        established,
        reset,
        opened as u32 - established - reset,
        echoed
    );
    if opened < n as usize {
        say!("vsock conns {}: only {} connection slots", port, opened);
    }
}

/// `flood:<port>:<n>`: `REQUEST`s as fast as the queue takes them;
/// accepted connections are reset at once.
fn flood(v: &mut Vsock, port: u32, n: u32) {
    let (mut sent, mut accepted, mut reset) = (0u32, 0u32, 0u32);
    let t0 = tsc::now();
    let limit = v.ticks(30_000);
    loop {
        while sent < n && v.owed_room() > 8 && v.free_slots() > 0 {
            let Some(ci) = v.connect(port, Role::Send) else {
                break;
            };
            v.conns[ci].flood = true;
            sent += 1;
        }
        v.poll();
        let mut live = false;
        for ci in 0..MAX_CONNS {
            let c = v.conns[ci];
            if !c.flood {
                continue;
            }
            match c.st {
                St::Open => {
                    accepted += 1;
                    v.abort(ci);
                    v.release(ci);
                }
                St::Done => {
                    reset += 1;
                    v.release(ci);
                }
                St::Connecting => live = true,
                _ => {}
            }
        }
        if (sent == n && !live) || tsc::now().wrapping_sub(t0) > limit {
            break;
        }
    }
    let mut unanswered = 0;
    for ci in 0..MAX_CONNS {
        if v.conns[ci].flood && v.conns[ci].st != St::Free {
            unanswered += 1;
            v.abort(ci);
            v.release(ci);
        }
    }
    wait_until(v, 200, |v| v.tx_idle());
    say!(
        "vsock flood {}: {} requests in {} us, {} accepted, {} reset, {} unanswered",
        port,
        sent,
        v.us_since(t0),
        accepted,
        reset,
        unanswered
    );
}

/// Closes every open connection; prints how it went (if there were any).
fn close_all(v: &mut Vsock) {
    let mut n = 0;
    for ci in 0..MAX_CONNS {
        if matches!(v.conns[ci].st, St::Open | St::Connecting) {
            v.close(ci);
            n += 1;
        }
    }
    if n == 0 {
        return;
    }
    wait_until(v, ANSWER_MS, |v| {
        v.conns.iter().all(|c| c.st != St::Closing)
    });
    let (mut clean, mut reset, mut late) = (0, 0, 0);
    for ci in 0..MAX_CONNS {
        match v.conns[ci].st {
            St::Done if v.conns[ci].clean => clean += 1,
            St::Done => reset += 1,
            St::Closing => {
                late += 1;
                v.abort(ci);
            }
            _ => continue,
        }
        v.release(ci);
    }
    wait_until(v, 200, |v| v.tx_idle());
    say!(
        "vsock close: {} connections, {} closed cleanly, {} reset, {} timed out",
        n,
        clean,
        reset,
        late
    );
}

/// Whether an `RST` to our port `port` came (within `ms`).
fn rst_for(v: &mut Vsock, port: u32, ms: u64) -> bool {
    wait_until(v, ms, |v| {
        let n = v.stray_count.min(v.stray_rsts.len());
        (0..n).any(|k| v.stray_rsts[k] == port)
    })
}

/// One violation; checks the device answered as it should.
fn evil(v: &mut Vsock, case: VsockEvil, port: u32, ram_end: u64) {
    let x = v.new_port();
    let h = Hdr {
        src_cid: v.cid,
        dst_cid: HOST_CID,
        src_port: x,
        dst_port: port,
        len: 0,
        type_: TYPE_STREAM,
        op: OP_REQUEST,
        flags: 0,
        buf_alloc: BUF_ALLOC,
        fwd_cnt: 0,
    };
    let scratch = v.scratch();
    // (what came back, what should have)
    let (answer, expected): (&str, &str) = match case {
        VsockEvil::ShortHeader | VsockEvil::DescOutsideMemory | VsockEvil::DescLoop => {
            // SAFETY: the scratch bytes are ours and not with the device.
            unsafe { h.write(scratch) };
            let head = match case {
                VsockEvil::ShortHeader => v.send_raw(&[Buffer {
                    addr: scratch as u64,
                    len: 20,
                    device_writes: false,
                }]),
                VsockEvil::DescOutsideMemory => {
                    let beyond = ram_end.next_multiple_of(4096) + (1 << 30);
                    v.send_raw(&[Buffer {
                        addr: beyond,
                        len: HDR as u32,
                        device_writes: false,
                    }])
                }
                _ => v.send_loop(Buffer {
                    addr: scratch as u64,
                    len: HDR as u32,
                    device_writes: false,
                }),
            };
            let back = head.is_some() && wait_until(v, ANSWER_MS, |v| v.tx_idle());
            let rst = rst_for(v, x, 100);
            (
                match (back, rst) {
                    (true, false) => "chain returned",
                    (true, true) => "rst",
                    (false, _) => "chain kept",
                },
                "chain returned",
            )
        }
        VsockEvil::LenBeyondChain
        | VsockEvil::WrongSrcCid
        | VsockEvil::WrongDstCid
        | VsockEvil::UnknownOp
        | VsockEvil::BadType
        | VsockEvil::PayloadOnRequest => {
            let mut h = h;
            let mut payload = 0;
            match case {
                VsockEvil::LenBeyondChain => {
                    h.op = OP_RW;
                    h.len = 4096;
                    payload = 16;
                }
                VsockEvil::WrongSrcCid => h.src_cid = v.cid + 1,
                VsockEvil::WrongDstCid => h.dst_cid = 5,
                VsockEvil::UnknownOp => h.op = 42,
                VsockEvil::BadType => h.type_ = 2,
                _ => {
                    h.len = 8;
                    payload = 8;
                }
            }
            wait_until(v, ANSWER_MS, |v| v.free_slots() > 0);
            v.send_hdr(&h, payload);
            (
                if rst_for(v, x, ANSWER_MS) {
                    "rst"
                } else {
                    "none"
                },
                "rst",
            )
        }
        VsockEvil::RxReadonly => {
            v.post_evil_rx();
            // REQUESTs to nobody until the device has walked past it.
            let mut sent = 0;
            let mut last = x;
            while v.evil_rx_back.is_none() && sent < 64 {
                let mut r = h;
                r.src_port = v.new_port();
                r.dst_port = port.wrapping_add(0x1000_0000);
                last = r.src_port;
                wait_until(v, ANSWER_MS, |v| v.free_slots() > 0);
                v.send_hdr(&r, 0);
                sent += 1;
                wait_until(v, 50, |v| v.evil_rx_back.is_some());
            }
            let answered = rst_for(v, last, ANSWER_MS);
            match v.evil_rx_back {
                Some(0) if answered => ("buffer returned unused", "buffer returned unused"),
                Some(_) => ("buffer written", "buffer returned unused"),
                None => ("buffer kept", "buffer returned unused"),
            }
        }
        VsockEvil::CreditOverrun | VsockEvil::DataAfterShutdown => {
            let Some(ci) = open(v, port, case.name()) else {
                v.failures += 1;
                return;
            };
            if case == VsockEvil::CreditOverrun {
                let c = &mut v.conns[ci];
                c.ignore_credit = true;
                c.send_left = OVERRUN_BYTES;
            } else {
                let c = &mut v.conns[ci];
                c.owe |= OWE_SHUTDOWN;
                c.shut_flags = SHUT_SEND;
                c.send_left = 16;
            }
            wait_until(v, 10_000, |v| v.conns[ci].st != St::Open);
            let c = v.conns[ci];
            let answer = if c.st == St::Done && c.reset {
                "rst"
            } else {
                "none"
            };
            if c.st != St::Done {
                v.abort(ci);
            }
            say!("vsock evil {}: {} bytes sent", case.name(), c.tx_bytes);
            v.release(ci);
            (answer, "rst")
        }
    };
    let ok = answer == expected;
    if !ok {
        v.failures += 1;
    }
    say!(
        "vsock evil {}: answer={}, expected={}, ok={}",
        case.name(),
        answer,
        expected,
        yes(ok)
    );
}
