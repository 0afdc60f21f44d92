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
//!
//! Numbers are decimal or `0x` hexadecimal. A later order overrides an
//! earlier one with the same key.
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

/// Everything the command line asks of the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Orders {
    /// Bytes of RAM to touch and verify.
    pub touch: Option<u64>,
    /// Exit code when done.
    pub exit: u8,
    /// Wait before exiting.
    pub hold: Option<Hold>,
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
    if let Some(ms) = s.strip_suffix(b"ms") {
        return parse_number(ms).map(Hold::Millis);
    }
    if let Some(secs) = s.strip_suffix(b"s") {
        return parse_number(secs)?.checked_mul(1000).map(Hold::Millis);
    }
    parse_number(s).map(Hold::Millis)
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
                hold: None
            }
        );
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
    fn later_orders_win() {
        let o = parse(b"tiny.exit=1 tiny.exit=0x7 tiny.hold=1s tiny.hold=forever").unwrap();
        assert_eq!(o.exit, 7);
        assert_eq!(o.hold, Some(Hold::Forever));
    }
}
