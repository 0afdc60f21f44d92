//! The host side's connection handshake on the Unix socket (Firecracker's
//! text protocol): a host process connects to `uds_path`, writes
//! `CONNECT <port>\n`, and once the guest accepted, reads `OK <host
//! port>\n`; after that the stream carries the connection's bytes.
//!
//! Pure parsing: the muxer peeks at the socket and consumes exactly the
//! line, so bytes the host sends right after it stay in the socket for the
//! guest.

/// Longest line accepted (`CONNECT 4294967295\r\n` is 20 bytes).
pub const MAX_LINE: usize = 32;

/// What the first bytes of a host stream say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// No newline yet, and fewer than [`MAX_LINE`] bytes.
    Incomplete,
    /// `CONNECT <port>` in the first `len` bytes (newline included).
    Connect { port: u32, len: usize },
    /// Anything else: the host is told nothing and its stream is closed.
    Bad,
}

/// Parses the start of a host stream: `CONNECT`, one space, a decimal port
/// (no sign, no leading `+`), then `\n` or `\r\n`.
pub fn parse(buf: &[u8]) -> Line {
    let Some(nl) = buf.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_LINE {
            Line::Bad
        } else {
            Line::Incomplete
        };
    };
    let line = &buf[..nl];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(digits) = line.strip_prefix(b"CONNECT ") else {
        return Line::Bad;
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Line::Bad;
    }
    match std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(port) => Line::Connect { port, len: nl + 1 },
        None => Line::Bad,
    }
}

/// The answer once the guest accepted: `OK <local port>\n`.
pub fn ok_line(local_port: u32) -> String {
    format!("OK {local_port}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(
            parse(b"CONNECT 1024\n"),
            Line::Connect {
                port: 1024,
                len: 13
            }
        );
        assert_eq!(
            parse(b"CONNECT 52\r\nhello"),
            Line::Connect { port: 52, len: 12 }
        );
        assert_eq!(
            parse(b"CONNECT 4294967295\n"),
            Line::Connect {
                port: u32::MAX,
                len: 19
            }
        );
        assert_eq!(parse(b"CONNECT 0\n"), Line::Connect { port: 0, len: 10 });
    }

    #[test]
    fn incomplete_until_newline_or_limit() {
        assert_eq!(parse(b""), Line::Incomplete);
        assert_eq!(parse(b"CONNECT 10"), Line::Incomplete);
        assert_eq!(parse(&[b'C'; MAX_LINE - 1]), Line::Incomplete);
        assert_eq!(parse(&[b'C'; MAX_LINE]), Line::Bad);
        let mut long = b"CONNECT ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 40));
        long.push(b'\n');
        assert_eq!(parse(&long), Line::Bad);
    }

    #[test]
    fn everything_else_is_bad() {
        for bad in [
            &b"CONNECT\n"[..],
            b"CONNECT \n",
            b"connect 1\n",
            b"CONNECT  1\n",
            b"CONNECT -1\n",
            b"CONNECT +1\n",
            b"CONNECT 1 \n",
            b"CONNECT 4294967296\n",
            b"CONNECT 0x10\n",
            b"GET / HTTP/1.1\r\n",
            b"\n",
        ] {
            assert_eq!(parse(bad), Line::Bad, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn ok_line_format() {
        assert_eq!(ok_line(1 << 30), "OK 1073741824\n");
    }
}
