//! The guest's orders, read from the kernel command line.
//!
//! The command line is split into tokens at ASCII whitespace; a double quote
//! starts or ends a quoted stretch in which whitespace does not split (as in
//! Linux, so `foo="a b"` stays one token). Tokens whose key does not start
//! with `tiny.` belong to someone else (`console=ttyS0`, `virtio_mmio.…`)
//! and are ignored. Tokens with the `tiny.` prefix must be one of the orders
//! below, as `key=value`, or the whole command line is rejected, so a typo
//! is not silently ignored:
//!
//! * `tiny.touch=<size>`: bytes of RAM to fill and verify; a number with an
//!   optional `K`, `M`, `G` or `T` suffix (powers of 1024, either case).
//! * `tiny.exit=<n>`: exit code when done, 0..=255 (default 0).
//! * `tiny.hold=<time>|forever`: busy-wait after the memory test; a number
//!   of milliseconds, or with an `ms` or `s` suffix.
//! * `tiny.alloc=<size>`, `tiny.free=<size>`: take memory from the page pool
//!   and write a pattern into it, then give some of it back (still touched).
//! * `tiny.balloon=on|off`: drive the virtio-balloon device in a loop.
//! * `tiny.exit-after=<time>`: end the balloon loop after this long.
//! * `tiny.report-every=<time>`: free page reporting period (default 1 s,
//!   `0` turns it off).
//! * `tiny.balloon-log=rounds|settled`: a line per balloon round (the
//!   default), or only when the balloon stops moving (see [`BalloonLog`]).
//! * `tiny.evil=<case>`: one deliberate protocol violation (see [`Evil`]).
//! * `tiny.vsock=<action>[,<action>...]`: drive the virtio-vsock device,
//!   running the actions in order (see [`VsockAction`]).
//! * `tiny.blk=<action>[,<action>...]`: drive the first virtio-blk device,
//!   running the actions in order (see [`BlkAction`]).
//! * `tiny.net=<action>[,<action>...]`: drive the first virtio-net device,
//!   running the actions in order (see [`NetAction`]).
//!
//! Numbers are decimal or `0x` hexadecimal. A later order overrides an
//! earlier one with the same key.
//!
//! [`virtio_mmio_devices`] reads the `virtio_mmio.device=` tokens (Linux
//! syntax) that VMMs such as QEMU's microvm append to the command line.
//!
//! This file depends on nothing else in the guest, so its tests run on the
//! host: `rustc --edition 2021 --test cmdline.rs -o /tmp/t && /tmp/t`.

/// How long to stay alive after the memory test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Busy-wait this many milliseconds.
    Millis(u64),
    /// Never exit.
    Forever,
}

/// A deliberate violation of the virtio-balloon protocol (`tiny.evil`),
/// for the host's malicious-guest tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Evil {
    /// Inflate (and deflate) PFNs beyond the end of RAM.
    PfnOutsideRam,
    /// Inflate (and deflate) PFNs in the MMIO hole and legacy holes.
    PfnInMmioHole,
    /// A descriptor whose `next` points to itself.
    DescLoop,
    /// A descriptor whose buffer lies beyond RAM.
    DescOutsideMemory,
    /// A stats buffer far longer than the 16 known tags.
    OversizedStats,
    /// A stats buffer with tags no specification defines.
    UnknownStatsTag,
}

impl Evil {
    /// Every case with its name on the command line.
    pub const ALL: [(Evil, &'static str); 6] = [
        (Evil::PfnOutsideRam, "pfn-outside-ram"),
        (Evil::PfnInMmioHole, "pfn-in-mmio-hole"),
        (Evil::DescLoop, "desc-loop"),
        (Evil::DescOutsideMemory, "desc-outside-memory"),
        (Evil::OversizedStats, "oversized-stats"),
        (Evil::UnknownStatsTag, "unknown-stats-tag"),
    ];

    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        Evil::ALL
            .iter()
            .find(|(case, _)| *case == self)
            .map_or("?", |(_, name)| name)
    }
}

/// How much the balloon loop prints while the balloon moves
/// (`tiny.balloon-log`). Each line costs about two VM exits per byte on
/// the polled UART, ~2.5 ms per line on PVM hosts, so a line per round
/// can take as long as the rounds themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BalloonLog {
    /// `balloon target= actual=` after every round (up to 32 MiB).
    #[default]
    Rounds,
    /// Only the lines that end a run of rounds (`settled`, `deflated`,
    /// `short`).
    Settled,
}

/// A deliberate violation of the virtio-vsock protocol
/// (`tiny.vsock=evil:<case>`), for the host's malicious-guest tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsockEvil {
    /// A tx chain of 20 bytes: shorter than the 44-byte header.
    ShortHeader,
    /// A header whose `len` is 4096 with 16 bytes of payload in the chain.
    LenBeyondChain,
    /// A `REQUEST` from a CID that is not ours.
    WrongSrcCid,
    /// A `REQUEST` to CID 5 instead of the host.
    WrongDstCid,
    /// An `op` of 42.
    UnknownOp,
    /// A seqpacket (`type` 2) `REQUEST`.
    BadType,
    /// A `REQUEST` carrying 8 bytes of payload.
    PayloadOnRequest,
    /// A tx chain whose header lies 1 GiB beyond RAM.
    DescOutsideMemory,
    /// A tx descriptor whose `next` is itself.
    DescLoop,
    /// An rx buffer the device may not write (no `WRITE` flag).
    RxReadonly,
    /// Connect to the port, then send 96 KiB at once without waiting for
    /// credit (the device grants 64 KiB).
    CreditOverrun,
    /// Connect to the port, shut down sending, then send data.
    DataAfterShutdown,
}

impl VsockEvil {
    /// Every case with its name on the command line.
    pub const ALL: [(VsockEvil, &'static str); 12] = [
        (VsockEvil::ShortHeader, "short-header"),
        (VsockEvil::LenBeyondChain, "len-beyond-chain"),
        (VsockEvil::WrongSrcCid, "wrong-src-cid"),
        (VsockEvil::WrongDstCid, "wrong-dst-cid"),
        (VsockEvil::UnknownOp, "unknown-op"),
        (VsockEvil::BadType, "bad-type"),
        (VsockEvil::PayloadOnRequest, "payload-on-request"),
        (VsockEvil::DescOutsideMemory, "desc-outside-memory"),
        (VsockEvil::DescLoop, "desc-loop"),
        (VsockEvil::RxReadonly, "rx-readonly"),
        (VsockEvil::CreditOverrun, "credit-overrun"),
        (VsockEvil::DataAfterShutdown, "data-after-shutdown"),
    ];

    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        VsockEvil::ALL
            .iter()
            .find(|(case, _)| *case == self)
            .map_or("?", |(_, name)| name)
    }
}

/// One action of `tiny.vsock=`. Ports are decimal or `0x` numbers below
/// 2^32; sizes and times as elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsockAction {
    /// `echo:<port>[:<n>]`: listen on the port and echo every byte back,
    /// until `n` connections closed (or `tiny.exit-after`, or forever).
    Echo { port: u32, conns: Option<u32> },
    /// `sink:<port>[:<n>]`: listen, read and check the pattern, until `n`
    /// connections closed (or `tiny.exit-after`, or forever).
    Sink { port: u32, conns: Option<u32> },
    /// `slowsink:<port>:<time>`: listen for one connection with a 16 KiB
    /// receive buffer, consume nothing for `<time>` after it opened (the
    /// device must stop at our credit), then read it all.
    SlowSink { port: u32, ms: u64 },
    /// `send:<port>:<size>`: connect to the host port, send `<size>` bytes
    /// of the pattern within the host's credit, shut down sending, read
    /// (and check) what comes back until the host shuts down, close.
    Send { port: u32, bytes: u64 },
    /// `conns:<port>:<n>`: open `n` connections to the host port at once,
    /// send 16 pattern bytes on each one that is accepted and expect them
    /// echoed; they stay open until `close` or the end of the list.
    Conns { port: u32, n: u32 },
    /// `flood:<port>:<n>`: send `n` `REQUEST`s as fast as the queue takes
    /// them, count the answers, then reset the accepted ones.
    Flood { port: u32, n: u32 },
    /// `wait:<time>`: keep serving open connections for this long.
    Wait { ms: u64 },
    /// `close`: close every open connection (`SHUTDOWN`, then the host's
    /// `RST`).
    Close,
    /// `evil:<case>[:<port>]`: one violation (see [`VsockEvil`]); the port
    /// is where the cases that need a connection connect (default 1024).
    Evil { case: VsockEvil, port: u32 },
}

/// Most actions in one `tiny.vsock=` list.
pub const MAX_VSOCK_ACTIONS: usize = 16;

/// The `tiny.vsock=` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VsockPlan {
    pub actions: [VsockAction; MAX_VSOCK_ACTIONS],
    pub len: usize,
}

impl Default for VsockPlan {
    fn default() -> Self {
        VsockPlan {
            actions: [VsockAction::Close; MAX_VSOCK_ACTIONS],
            len: 0,
        }
    }
}

impl VsockPlan {
    /// The actions, in order.
    pub fn actions(&self) -> &[VsockAction] {
        &self.actions[..self.len]
    }
}

/// Parses a port: a number below 2^32.
fn parse_port(s: &[u8]) -> Option<u32> {
    u32::try_from(parse_number(s)?).ok()
}

/// Parses one action of `tiny.vsock=`.
pub fn parse_vsock_action(s: &[u8]) -> Option<VsockAction> {
    let mut fields = s.split(|&b| b == b':');
    let verb = fields.next()?;
    let mut next = || fields.next();
    let action = match verb {
        b"echo" | b"sink" => {
            let port = parse_port(next()?)?;
            let conns = match next() {
                None => None,
                Some(n) => Some(u32::try_from(parse_number(n)?).ok().filter(|&n| n > 0)?),
            };
            if verb == b"echo" {
                VsockAction::Echo { port, conns }
            } else {
                VsockAction::Sink { port, conns }
            }
        }
        b"slowsink" => VsockAction::SlowSink {
            port: parse_port(next()?)?,
            ms: parse_millis(next()?)?,
        },
        b"send" => VsockAction::Send {
            port: parse_port(next()?)?,
            bytes: parse_size(next()?)?,
        },
        b"conns" | b"flood" => {
            let port = parse_port(next()?)?;
            let n = u32::try_from(parse_number(next()?)?).ok()?;
            if verb == b"conns" {
                VsockAction::Conns { port, n }
            } else {
                VsockAction::Flood { port, n }
            }
        }
        b"wait" => VsockAction::Wait {
            ms: parse_millis(next()?)?,
        },
        b"close" => VsockAction::Close,
        b"evil" => {
            let name = next()?;
            let (case, _) = VsockEvil::ALL.iter().find(|(_, n)| n.as_bytes() == name)?;
            let port = match next() {
                None => 1024,
                Some(p) => parse_port(p)?,
            };
            VsockAction::Evil { case: *case, port }
        }
        _ => return None,
    };
    if fields.next().is_some() {
        return None;
    }
    Some(action)
}

/// Parses `tiny.vsock=`'s comma-separated list.
pub fn parse_vsock_plan(s: &[u8]) -> Option<VsockPlan> {
    let mut plan = VsockPlan::default();
    for item in s.split(|&b| b == b',') {
        if plan.len == MAX_VSOCK_ACTIONS {
            return None;
        }
        plan.actions[plan.len] = parse_vsock_action(item)?;
        plan.len += 1;
    }
    Some(plan)
}

/// One action of `tiny.blk=`. Sectors are 512 bytes; numbers as
/// elsewhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlkAction {
    /// `read:<sector>:<sectors>`: read and print the status and the
    /// FNV-1a hash of what was read.
    Read { sector: u64, sectors: u64 },
    /// `write:<sector>:<sectors>:<byte>`: write that many sectors of the
    /// byte and print the status.
    Write { sector: u64, sectors: u64, byte: u8 },
    /// `flush`: a `FLUSH` request.
    Flush,
    /// `id`: a `GET_ID` request; prints the id.
    Id,
    /// `readall`: read the whole disk, print its hash and the throughput.
    ReadAll,
}

/// Most actions in one `tiny.blk=` list.
pub const MAX_BLK_ACTIONS: usize = 16;

/// The `tiny.blk=` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkPlan {
    pub actions: [BlkAction; MAX_BLK_ACTIONS],
    pub len: usize,
}

impl Default for BlkPlan {
    fn default() -> Self {
        BlkPlan {
            actions: [BlkAction::Flush; MAX_BLK_ACTIONS],
            len: 0,
        }
    }
}

impl BlkPlan {
    /// The actions, in order.
    pub fn actions(&self) -> &[BlkAction] {
        &self.actions[..self.len]
    }
}

/// Parses one action of `tiny.blk=`.
pub fn parse_blk_action(s: &[u8]) -> Option<BlkAction> {
    let mut fields = s.split(|&b| b == b':');
    let verb = fields.next()?;
    let mut next = || fields.next();
    let action = match verb {
        b"read" => BlkAction::Read {
            sector: parse_number(next()?)?,
            sectors: parse_number(next()?)?,
        },
        b"write" => BlkAction::Write {
            sector: parse_number(next()?)?,
            sectors: parse_number(next()?)?,
            byte: u8::try_from(parse_number(next()?)?).ok()?,
        },
        b"flush" => BlkAction::Flush,
        b"id" => BlkAction::Id,
        b"readall" => BlkAction::ReadAll,
        _ => return None,
    };
    if fields.next().is_some() {
        return None;
    }
    Some(action)
}

/// Parses `tiny.blk=`'s comma-separated list.
pub fn parse_blk_plan(s: &[u8]) -> Option<BlkPlan> {
    let mut plan = BlkPlan::default();
    for item in s.split(|&b| b == b',') {
        if plan.len == MAX_BLK_ACTIONS {
            return None;
        }
        plan.actions[plan.len] = parse_blk_action(item)?;
        plan.len += 1;
    }
    Some(plan)
}

/// One action of `tiny.net=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetAction {
    /// `ip:<a.b.c.d>`: the guest's IPv4 address from now on.
    Ip([u8; 4]),
    /// `serve:<time>`: answer ARP requests for the address, ICMP echo
    /// requests and UDP datagrams to it for that long, then print what
    /// was received and sent.
    Serve { millis: u64 },
    /// `evil-long`: a transmit chain of more than 65562 bytes (the same
    /// buffer 43 times), which the device must refuse.
    EvilLong,
    /// `evil-bad-desc`: a transmit chain with a descriptor outside RAM.
    EvilBadDesc,
}

/// Most actions in one `tiny.net=` list.
pub const MAX_NET_ACTIONS: usize = 8;

/// The `tiny.net=` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetPlan {
    pub actions: [NetAction; MAX_NET_ACTIONS],
    pub len: usize,
}

impl Default for NetPlan {
    fn default() -> Self {
        NetPlan {
            actions: [NetAction::EvilLong; MAX_NET_ACTIONS],
            len: 0,
        }
    }
}

impl NetPlan {
    /// The actions, in order.
    pub fn actions(&self) -> &[NetAction] {
        &self.actions[..self.len]
    }
}

/// Parses a dotted-quad IPv4 address (decimal, each part 0..=255).
pub fn parse_ipv4(s: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for o in &mut out {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 || !p.iter().all(u8::is_ascii_digit) {
            return None;
        }
        *o = u8::try_from(parse_number(p)?).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(out)
}

/// Parses one action of `tiny.net=`.
pub fn parse_net_action(s: &[u8]) -> Option<NetAction> {
    if let Some(ip) = s.strip_prefix(b"ip:") {
        return parse_ipv4(ip).map(NetAction::Ip);
    }
    if let Some(t) = s.strip_prefix(b"serve:") {
        return parse_millis(t).map(|millis| NetAction::Serve { millis });
    }
    match s {
        b"evil-long" => Some(NetAction::EvilLong),
        b"evil-bad-desc" => Some(NetAction::EvilBadDesc),
        _ => None,
    }
}

/// Parses `tiny.net=`'s comma-separated list.
pub fn parse_net_plan(s: &[u8]) -> Option<NetPlan> {
    let mut plan = NetPlan::default();
    for item in s.split(|&b| b == b',') {
        if plan.len == MAX_NET_ACTIONS {
            return None;
        }
        plan.actions[plan.len] = parse_net_action(item)?;
        plan.len += 1;
    }
    Some(plan)
}

/// Free page reporting period when `tiny.report-every` is not given (ms).
pub const DEFAULT_REPORT_EVERY_MS: u64 = 1000;

/// Everything the command line asks of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Orders {
    /// Bytes of RAM to touch and verify.
    pub touch: Option<u64>,
    /// Exit code when done.
    pub exit: u8,
    /// Wait before exiting.
    pub hold: Option<Hold>,
    /// Bytes to allocate from the page pool and fill with a pattern.
    pub alloc: Option<u64>,
    /// Bytes of the allocation to give back to the pool.
    pub free: Option<u64>,
    /// Run the balloon loop.
    pub balloon: bool,
    /// End the balloon loop after this many milliseconds.
    pub exit_after: Option<u64>,
    /// Free page reporting period in ms (`None`: the default, `Some(0)`: off).
    pub report_every: Option<u64>,
    /// What the balloon loop prints while the balloon moves.
    pub balloon_log: BalloonLog,
    /// A deliberate protocol violation after the device is set up.
    pub evil: Option<Evil>,
    /// What to do with the virtio-vsock device.
    pub vsock: VsockPlan,
    /// What to do with the virtio-blk device.
    pub blk: BlkPlan,
    /// What to do with the virtio-net device.
    pub net: NetPlan,
}

impl Orders {
    /// True if any order needs the page pool.
    pub fn wants_pool(&self) -> bool {
        self.alloc.is_some() || self.free.is_some() || self.wants_balloon()
    }

    /// True if the balloon device is to be driven (`tiny.evil` implies it).
    pub fn wants_balloon(&self) -> bool {
        self.balloon || self.evil.is_some()
    }

    /// The free page reporting period in ms, 0 when off.
    pub fn report_every_ms(&self) -> u64 {
        self.report_every.unwrap_or(DEFAULT_REPORT_EVERY_MS)
    }
}

/// Prefix of the keys that are ours.
const PREFIX: &[u8] = b"tiny.";

/// Splits a command line into tokens (see the module documentation).
pub struct Tokens<'a> {
    rest: &'a [u8],
}

/// Iterates over the tokens of `cmdline`.
pub fn tokens(cmdline: &[u8]) -> Tokens<'_> {
    Tokens { rest: cmdline }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.rest.iter().position(|b| !b.is_ascii_whitespace())?;
        let rest = &self.rest[start..];
        let mut quoted = false;
        let mut end = rest.len();
        for (i, &b) in rest.iter().enumerate() {
            if b == b'"' {
                quoted = !quoted;
            } else if b.is_ascii_whitespace() && !quoted {
                end = i;
                break;
            }
        }
        self.rest = &rest[end..];
        Some(&rest[..end])
    }
}

/// Parses the orders; on error returns the offending token.
pub fn parse(cmdline: &[u8]) -> Result<Orders, &[u8]> {
    let mut orders = Orders::default();
    for token in tokens(cmdline) {
        let Some(order) = token.strip_prefix(PREFIX) else {
            continue;
        };
        let eq = order.iter().position(|&b| b == b'=').ok_or(token)?;
        let (key, value) = (&order[..eq], &order[eq + 1..]);
        match key {
            b"touch" => orders.touch = Some(parse_size(value).ok_or(token)?),
            b"exit" => {
                let n = parse_number(value).ok_or(token)?;
                orders.exit = u8::try_from(n).map_err(|_| token)?;
            }
            b"hold" => orders.hold = Some(parse_hold(value).ok_or(token)?),
            b"alloc" => orders.alloc = Some(parse_size(value).ok_or(token)?),
            b"free" => orders.free = Some(parse_size(value).ok_or(token)?),
            b"balloon" => {
                orders.balloon = match value {
                    b"on" => true,
                    b"off" => false,
                    _ => return Err(token),
                }
            }
            b"exit-after" => orders.exit_after = Some(parse_millis(value).ok_or(token)?),
            b"report-every" => orders.report_every = Some(parse_millis(value).ok_or(token)?),
            b"balloon-log" => {
                orders.balloon_log = match value {
                    b"rounds" => BalloonLog::Rounds,
                    b"settled" => BalloonLog::Settled,
                    _ => return Err(token),
                }
            }
            b"vsock" => orders.vsock = parse_vsock_plan(value).ok_or(token)?,
            b"blk" => orders.blk = parse_blk_plan(value).ok_or(token)?,
            b"net" => orders.net = parse_net_plan(value).ok_or(token)?,
            b"evil" => {
                let (case, _) = Evil::ALL
                    .iter()
                    .find(|(_, name)| name.as_bytes() == value)
                    .ok_or(token)?;
                orders.evil = Some(*case);
            }
            _ => return Err(token),
        }
    }
    Ok(orders)
}

/// Parses a decimal or `0x` hexadecimal number without sign; `None` on
/// empty input, a stray character or overflow.
pub fn parse_number(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s {
        [b'0', b'x' | b'X', hex @ ..] => (hex, 16),
        _ => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        let d = char::from(b).to_digit(radix)?;
        n = n.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(n)
}

/// Parses a size: a number with an optional `K`/`M`/`G`/`T` suffix (either
/// case, powers of 1024).
pub fn parse_size(s: &[u8]) -> Option<u64> {
    let (number, shift) = match s.split_last() {
        Some((b'k' | b'K', rest)) => (rest, 10),
        Some((b'm' | b'M', rest)) => (rest, 20),
        Some((b'g' | b'G', rest)) => (rest, 30),
        Some((b't' | b'T', rest)) => (rest, 40),
        _ => (s, 0),
    };
    // K, M, G and T are not hex digits, so `0x10M` is unambiguous.
    let n = parse_number(number)?;
    n.checked_mul(1u64 << shift)
}

/// Parses a hold time: `forever`, or milliseconds with an optional `ms` or
/// `s` suffix.
pub fn parse_hold(s: &[u8]) -> Option<Hold> {
    if s == b"forever" {
        return Some(Hold::Forever);
    }
    parse_millis(s).map(Hold::Millis)
}

/// Parses a time in milliseconds: a number with an optional `ms` or `s`
/// suffix.
pub fn parse_millis(s: &[u8]) -> Option<u64> {
    if let Some(ms) = s.strip_suffix(b"ms") {
        return parse_number(ms);
    }
    if let Some(secs) = s.strip_suffix(b"s") {
        return parse_number(secs)?.checked_mul(1000);
    }
    parse_number(s)
}

/// One `virtio_mmio.device=<size>@<base>:<irq>[:<id>]` token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioDevice {
    /// Bytes of the register window.
    pub size: u64,
    /// Guest-physical address of the registers.
    pub base: u64,
    /// Interrupt line (unused: the guest polls).
    pub irq: u32,
    /// Platform device id, if given.
    pub id: Option<u32>,
}

/// The key VMMs (and Linux) use to announce virtio-mmio devices.
const VIRTIO_MMIO_KEY: &[u8] = b"virtio_mmio.device=";

/// Iterates over the `virtio_mmio.device=` tokens of `cmdline`: `Ok` for a
/// well-formed one, `Err(token)` for a malformed one. Other tokens are
/// skipped.
///
/// Syntax as in Linux's `virtio_mmio` module parameter: `<size>` is a size
/// with an optional `K`/`M`/`G`/`T` suffix, `<base>` and `<irq>` numbers
/// (decimal or `0x` hexadecimal; Linux's octal is not supported), `<id>` an
/// optional platform device id.
pub fn virtio_mmio_devices(cmdline: &[u8]) -> impl Iterator<Item = Result<MmioDevice, &[u8]>> + '_ {
    tokens(cmdline).filter_map(|token| {
        let value = token.strip_prefix(VIRTIO_MMIO_KEY)?;
        Some(parse_mmio_device(value).ok_or(token))
    })
}

/// Parses `<size>@<base>:<irq>[:<id>]`.
pub fn parse_mmio_device(s: &[u8]) -> Option<MmioDevice> {
    let at = s.iter().position(|&b| b == b'@')?;
    let size = parse_size(&s[..at])?;
    let mut fields = s[at + 1..].split(|&b| b == b':');
    let base = parse_number(fields.next()?)?;
    let irq = u32::try_from(parse_number(fields.next()?)?).ok()?;
    let id = match fields.next() {
        None => None,
        Some(id) => Some(u32::try_from(parse_number(id)?).ok()?),
    };
    if fields.next().is_some() || size == 0 {
        return None;
    }
    Some(MmioDevice {
        size,
        base,
        irq,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_style_tokens_are_ignored() {
        let line = b"console=ttyS0 reboot=k panic=1 tiny.touch=64M quiet tiny.exit=5";
        let orders = parse(line).unwrap();
        assert_eq!(
            orders,
            Orders {
                touch: Some(64 << 20),
                exit: 5,
                ..Orders::default()
            }
        );
        assert!(!orders.wants_pool());
    }

    #[test]
    fn empty_command_line_gives_defaults() {
        assert_eq!(parse(b"").unwrap(), Orders::default());
        assert_eq!(parse(b"   \t\n").unwrap(), Orders::default());
    }

    #[test]
    fn quotes_keep_spaces_inside_one_token() {
        let toks: Vec<&[u8]> = tokens(b"a=\"x tiny.exit=zz\" tiny.exit=3").collect();
        assert_eq!(
            toks,
            vec![&b"a=\"x tiny.exit=zz\""[..], &b"tiny.exit=3"[..]]
        );
        assert_eq!(parse(b"a=\"x tiny.exit=zz\" tiny.exit=3").unwrap().exit, 3);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size(b"0"), Some(0));
        assert_eq!(parse_size(b"4096"), Some(4096));
        assert_eq!(parse_size(b"64M"), Some(64 << 20));
        assert_eq!(parse_size(b"64m"), Some(64 << 20));
        assert_eq!(parse_size(b"2G"), Some(2 << 30));
        assert_eq!(parse_size(b"512k"), Some(512 << 10));
        assert_eq!(parse_size(b"1T"), Some(1 << 40));
        assert_eq!(parse_size(b"0x1000"), Some(0x1000));
        assert_eq!(parse_size(b"0x10M"), Some(16 << 20));
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"M"), None);
        assert_eq!(parse_size(b"0x"), None);
        assert_eq!(parse_size(b"12MB"), None);
        assert_eq!(parse_size(b"-1"), None);
        assert_eq!(parse_size(b"1.5G"), None);
        assert_eq!(parse_size(b"16777216T"), None);
        assert_eq!(parse_size(b"99999999999999999999"), None);
    }

    #[test]
    fn holds() {
        assert_eq!(parse_hold(b"forever"), Some(Hold::Forever));
        assert_eq!(parse_hold(b"250"), Some(Hold::Millis(250)));
        assert_eq!(parse_hold(b"250ms"), Some(Hold::Millis(250)));
        assert_eq!(parse_hold(b"2s"), Some(Hold::Millis(2000)));
        assert_eq!(parse_hold(b"s"), None);
        assert_eq!(parse_hold(b"soon"), None);
    }

    #[test]
    fn bad_orders_name_the_token() {
        assert_eq!(
            parse(b"console=ttyS0 tiny.touch=lots"),
            Err(&b"tiny.touch=lots"[..])
        );
        assert_eq!(parse(b"tiny.exit=256"), Err(&b"tiny.exit=256"[..]));
        assert_eq!(parse(b"tiny.touch"), Err(&b"tiny.touch"[..]));
        assert_eq!(parse(b"tiny.tuch=1M"), Err(&b"tiny.tuch=1M"[..]));
        assert_eq!(parse(b"tiny.hold="), Err(&b"tiny.hold="[..]));
    }

    #[test]
    fn balloon_orders() {
        let o = parse(
            b"tiny.alloc=128M tiny.free=96M tiny.balloon=on tiny.exit-after=10s \
              tiny.report-every=250ms",
        )
        .unwrap();
        assert_eq!(o.alloc, Some(128 << 20));
        assert_eq!(o.free, Some(96 << 20));
        assert!(o.balloon && o.wants_balloon() && o.wants_pool());
        assert_eq!(o.exit_after, Some(10_000));
        assert_eq!(o.report_every_ms(), 250);
        assert_eq!(o.evil, None);
        assert_eq!(parse(b"").unwrap().report_every_ms(), 1000);
        assert_eq!(parse(b"tiny.report-every=0").unwrap().report_every_ms(), 0);
        assert!(!parse(b"tiny.balloon=off").unwrap().wants_balloon());
        assert!(parse(b"tiny.alloc=1M").unwrap().wants_pool());
        assert!(!parse(b"tiny.alloc=1M").unwrap().wants_balloon());
        assert_eq!(parse(b"tiny.balloon=yes"), Err(&b"tiny.balloon=yes"[..]));
        assert_eq!(
            parse(b"tiny.exit-after=forever"),
            Err(&b"tiny.exit-after=forever"[..])
        );
        assert_eq!(parse(b"tiny.alloc=lots"), Err(&b"tiny.alloc=lots"[..]));
    }

    #[test]
    fn balloon_log() {
        assert_eq!(parse(b"").unwrap().balloon_log, BalloonLog::Rounds);
        let o = parse(b"tiny.balloon=on tiny.balloon-log=settled").unwrap();
        assert_eq!(o.balloon_log, BalloonLog::Settled);
        // It only says how to log: no balloon without `tiny.balloon`.
        assert!(!parse(b"tiny.balloon-log=settled").unwrap().wants_pool());
        let o = parse(b"tiny.balloon-log=settled tiny.balloon-log=rounds").unwrap();
        assert_eq!(o.balloon_log, BalloonLog::Rounds);
        assert_eq!(
            parse(b"tiny.balloon-log=off"),
            Err(&b"tiny.balloon-log=off"[..])
        );
    }

    #[test]
    fn evil_cases() {
        for (case, name) in Evil::ALL {
            let token = [&b"tiny.evil="[..], name.as_bytes()].concat();
            let o = parse(&token).unwrap();
            assert_eq!(o.evil, Some(case));
            assert_eq!(case.name(), name);
            assert!(o.wants_balloon());
        }
        assert_eq!(parse(b"tiny.evil=nice"), Err(&b"tiny.evil=nice"[..]));
        assert_eq!(parse(b"tiny.evil="), Err(&b"tiny.evil="[..]));
    }

    #[test]
    fn blk_plans() {
        let o = parse(b"tiny.blk=id,read:0:8,write:0x10:2:0xab,flush,readall").unwrap();
        assert_eq!(
            o.blk.actions(),
            [
                BlkAction::Id,
                BlkAction::Read {
                    sector: 0,
                    sectors: 8
                },
                BlkAction::Write {
                    sector: 16,
                    sectors: 2,
                    byte: 0xab
                },
                BlkAction::Flush,
                BlkAction::ReadAll,
            ]
        );
        assert_eq!(parse(b"").unwrap().blk.actions(), []);
        for bad in [
            &b"tiny.blk="[..],
            b"tiny.blk=read",
            b"tiny.blk=read:1",
            b"tiny.blk=write:1:1",
            b"tiny.blk=write:1:1:256",
            b"tiny.blk=flush:1",
            b"tiny.blk=read:1:1,,flush",
            b"tiny.blk=erase:1",
        ] {
            assert_eq!(parse(bad), Err(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn net_plans() {
        let o = parse(b"tiny.net=ip:10.0.0.2,evil-long,evil-bad-desc,serve:5s").unwrap();
        assert_eq!(
            o.net.actions(),
            [
                NetAction::Ip([10, 0, 0, 2]),
                NetAction::EvilLong,
                NetAction::EvilBadDesc,
                NetAction::Serve { millis: 5000 },
            ]
        );
        for bad in [
            &b"tiny.net="[..],
            b"tiny.net=ip:10.0.0",
            b"tiny.net=ip:10.0.0.256",
            b"tiny.net=ip:10.0.0.2.1",
            b"tiny.net=ip:10.0.0.0x2",
            b"tiny.net=serve",
            b"tiny.net=serve:x",
            b"tiny.net=evil",
        ] {
            assert_eq!(parse(bad), Err(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn vsock_plans() {
        let o = parse(b"tiny.vsock=echo:1024,sink:0x10:2,send:5000:1M,conns:5000:70,wait:2s,close")
            .unwrap();
        assert_eq!(
            o.vsock.actions(),
            [
                VsockAction::Echo {
                    port: 1024,
                    conns: None
                },
                VsockAction::Sink {
                    port: 16,
                    conns: Some(2)
                },
                VsockAction::Send {
                    port: 5000,
                    bytes: 1 << 20
                },
                VsockAction::Conns { port: 5000, n: 70 },
                VsockAction::Wait { ms: 2000 },
                VsockAction::Close,
            ]
        );
        assert!(!o.wants_pool());
        let o = parse(
            b"tiny.vsock=slowsink:7:500ms,flood:9:1000,evil:unknown-op,evil:credit-overrun:77",
        )
        .unwrap();
        assert_eq!(
            o.vsock.actions(),
            [
                VsockAction::SlowSink { port: 7, ms: 500 },
                VsockAction::Flood { port: 9, n: 1000 },
                VsockAction::Evil {
                    case: VsockEvil::UnknownOp,
                    port: 1024
                },
                VsockAction::Evil {
                    case: VsockEvil::CreditOverrun,
                    port: 77
                },
            ]
        );
        for (case, name) in VsockEvil::ALL {
            let token = [&b"tiny.vsock=evil:"[..], name.as_bytes()].concat();
            assert_eq!(
                parse(&token).unwrap().vsock.actions()[0],
                VsockAction::Evil { case, port: 1024 }
            );
            assert_eq!(case.name(), name);
        }
        assert_eq!(parse(b"").unwrap().vsock.actions(), []);
        for bad in [
            &b"tiny.vsock="[..],
            b"tiny.vsock=echo",
            b"tiny.vsock=echo:",
            b"tiny.vsock=echo:1:0",
            b"tiny.vsock=echo:4294967296",
            b"tiny.vsock=send:1",
            b"tiny.vsock=send:1:lots",
            b"tiny.vsock=close:1",
            b"tiny.vsock=evil:nice",
            b"tiny.vsock=echo:1,,close",
            b"tiny.vsock=dance:1",
            b"tiny.vsock=wait:1,wait:1,wait:1,wait:1,wait:1,wait:1,wait:1,wait:1,\
              wait:1,wait:1,wait:1,wait:1,wait:1,wait:1,wait:1,wait:1,wait:1",
        ] {
            assert_eq!(parse(bad), Err(bad), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn virtio_mmio_tokens() {
        let line = b"console=ttyS0 virtio_mmio.device=512@0xfeb00e00:12 tiny.exit=1 \
            virtio_mmio.device=4K@0xd0000000:5:3 virtio_mmio.device=1M@4096:7 \
            virtio_mmio.device=bad virtio_mmio.device=4K@0x1000 virtio_mmio.device=0@1:2 \
            virtio_mmio.device=4K@1:2:3:4 virtio_mmio.foo=1";
        let found: Vec<_> = virtio_mmio_devices(line).collect();
        assert_eq!(
            found,
            vec![
                Ok(MmioDevice {
                    size: 512,
                    base: 0xfeb0_0e00,
                    irq: 12,
                    id: None
                }),
                Ok(MmioDevice {
                    size: 4096,
                    base: 0xd000_0000,
                    irq: 5,
                    id: Some(3)
                }),
                Ok(MmioDevice {
                    size: 1 << 20,
                    base: 4096,
                    irq: 7,
                    id: None
                }),
                Err(&b"virtio_mmio.device=bad"[..]),
                Err(&b"virtio_mmio.device=4K@0x1000"[..]),
                Err(&b"virtio_mmio.device=0@1:2"[..]),
                Err(&b"virtio_mmio.device=4K@1:2:3:4"[..]),
            ]
        );
        // The devices are someone else's keys: the orders ignore them.
        assert_eq!(parse(line).unwrap().exit, 1);
        assert_eq!(
            parse_mmio_device(b"0x200@0xfeb00000:12:0x10").unwrap().id,
            Some(16)
        );
        assert_eq!(parse_mmio_device(b"512@0xfeb00000:99999999999"), None);
    }

    #[test]
    fn later_orders_win() {
        let o = parse(b"tiny.exit=1 tiny.exit=0x7 tiny.hold=1s tiny.hold=forever").unwrap();
        assert_eq!(o.exit, 7);
        assert_eq!(o.hold, Some(Hold::Forever));
    }
}
