//! `/dev/kmsg`: the kernel log, one record per `read()`.
//!
//! ```text
//! 6,1234,5678901,-;Out of memory: Killed process 95 (stress) total-vm:…
//!  SUBSYSTEM=…            <- dictionary lines start with a space
//! ```
//!
//! The header is `<facility*8+level>,<seq>,<µs since boot>,<flags>[,more];`
//! (Linux 6.12 `info_print_ext_header`; `flags` is `c` for a continuation
//! fragment of the previous record that printk could not merge, `-`
//! otherwise; with CONFIG_PRINTK_CALLER a `,caller=T<pid>` field follows).
//! Non-printable bytes and `\` in the text are escaped as `\xNN`.
//!
//! A read of a record that was already overwritten fails with `EPIPE` and
//! moves the reader to the oldest record left; the sequence numbers show
//! how many were lost. The reader here works on whatever `read` returns, so
//! it also takes a plain file of such lines (chunks, partial lines) for
//! tests on the host.

/// Longest record `/dev/kmsg` returns (the kernel's CONSOLE_EXT_LOG_MAX);
/// a read into a smaller buffer fails with EINVAL *and loses the record*.
pub const READ_BUF: usize = 8192;

/// Kernel log facility of the kernel itself. Records written by user space
/// through `/dev/kmsg` never have it (the kernel turns facility 0 into
/// LOG_USER), so an OOM line with another facility is forged and ignored.
pub const FACILITY_KERNEL: u8 = 0;

/// One parsed record. `text` is unescaped, trailing newline removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub facility: u8,
    pub level: u8,
    pub seq: u64,
    pub ts_us: u64,
    /// Flag `c`: a continuation fragment of the previous record.
    pub cont: bool,
    /// The caller (`T<pid>` or `C<cpu>`) when the kernel has
    /// CONFIG_PRINTK_CALLER.
    pub caller: Option<&'a str>,
    pub text: std::borrow::Cow<'a, str>,
}

/// Why a line is not a record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    NoSemicolon,
    BadPrefix,
    BadSeq,
    BadTimestamp,
}

/// Parses one record line (no dictionary lines, no trailing newline).
pub fn parse_record(line: &[u8]) -> Result<Record<'_>, ParseError> {
    let semi = line
        .iter()
        .position(|&b| b == b';')
        .ok_or(ParseError::NoSemicolon)?;
    let header = std::str::from_utf8(&line[..semi]).map_err(|_| ParseError::BadPrefix)?;
    let mut fields = header.split(',');
    let prefix: u32 = fields
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or(ParseError::BadPrefix)?;
    let seq: u64 = fields
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or(ParseError::BadSeq)?;
    let ts_us: u64 = fields
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or(ParseError::BadTimestamp)?;
    // Flags are optional in the oldest kernels' format; anything after
    // them (caller=…) is optional too.
    let mut cont = false;
    let mut caller = None;
    if let Some(flags) = fields.next() {
        cont = flags.contains('c');
    }
    for f in fields {
        if let Some(c) = f.strip_prefix("caller=") {
            caller = Some(c);
        }
    }
    let mut text = &line[semi + 1..];
    if let [rest @ .., b'\n'] = text {
        text = rest;
    }
    Ok(Record {
        facility: (prefix >> 3).min(255) as u8,
        level: (prefix & 7) as u8,
        seq,
        ts_us,
        cont,
        caller,
        text: unescape(text),
    })
}

/// Undoes the kernel's `\xNN` escaping; invalid UTF-8 becomes U+FFFD.
pub fn unescape(text: &[u8]) -> std::borrow::Cow<'_, str> {
    if !text.contains(&b'\\') {
        return String::from_utf8_lossy(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\' && i + 3 < text.len() && text[i + 1] == b'x' {
            if let (Some(h), Some(l)) = (hex(text[i + 2]), hex(text[i + 3])) {
                out.push(h << 4 | l);
                i += 4;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    std::borrow::Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What the reader saw besides records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loss {
    /// Records skipped over (sequence number gaps).
    pub records: u64,
    /// The first seq after the gap.
    pub resumed_at: u64,
    /// The gap was before the first record read (the ring had already
    /// dropped them when the agent started).
    pub before_start: bool,
}

/// Turns `read()` results into records, tracking sequence numbers.
///
/// Feed each successful read to [`KmsgReader::feed`] and each EPIPE to
/// [`KmsgReader::overrun`]. Partial lines (plain files) are carried over,
/// bounded by [`READ_BUF`]; longer lines are dropped.
#[derive(Debug)]
pub struct KmsgReader {
    carry: Vec<u8>,
    skipping: bool,
    last_seq: Option<u64>,
    /// Total records lost since start.
    pub lost: u64,
    /// EPIPE results seen.
    pub overruns: u64,
    /// Lines that did not parse as records.
    pub bad_lines: u64,
}

impl Default for KmsgReader {
    fn default() -> Self {
        Self::new()
    }
}

impl KmsgReader {
    pub fn new() -> Self {
        KmsgReader {
            carry: Vec::new(),
            skipping: false,
            last_seq: None,
            lost: 0,
            overruns: 0,
            bad_lines: 0,
        }
    }

    /// The kernel said EPIPE: records were overwritten. The next record's
    /// seq shows how many; nothing else to do but count.
    pub fn overrun(&mut self) {
        self.overruns += 1;
        // A partial line before an overrun cannot be completed.
        self.carry.clear();
    }

    /// Bytes held for a partial line (at most [`READ_BUF`]).
    pub fn buffered(&self) -> usize {
        self.carry.len()
    }

    /// Sequence number of the last record delivered.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Takes the bytes of one read; calls `on_record` for every record and
    /// `on_loss` for every gap in sequence numbers, in log order.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        on_record: &mut dyn FnMut(&Record<'_>),
        on_loss: &mut dyn FnMut(Loss),
    ) {
        while !bytes.is_empty() {
            let nl = bytes.iter().position(|&b| b == b'\n');
            let (part, rest, complete) = match nl {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            bytes = rest;
            if self.skipping {
                self.skipping = !complete;
                continue;
            }
            if self.carry.len() + part.len() > READ_BUF {
                self.carry.clear();
                self.bad_lines += 1;
                self.skipping = !complete;
                continue;
            }
            if !complete {
                self.carry.extend_from_slice(part);
                continue;
            }
            if self.carry.is_empty() {
                self.line(part, on_record, on_loss);
            } else {
                let mut line = std::mem::take(&mut self.carry);
                line.extend_from_slice(part);
                self.line(&line, on_record, on_loss);
                line.clear();
                self.carry = line;
            }
        }
    }

    fn line(
        &mut self,
        line: &[u8],
        on_record: &mut dyn FnMut(&Record<'_>),
        on_loss: &mut dyn FnMut(Loss),
    ) {
        // Dictionary lines (" SUBSYSTEM=…") belong to the record before;
        // nothing we report needs them.
        if line.is_empty() || line[0] == b' ' {
            return;
        }
        let rec = match parse_record(line) {
            Ok(r) => r,
            Err(_) => {
                self.bad_lines += 1;
                return;
            }
        };
        match self.last_seq {
            None if rec.seq > 0 => {
                self.lost += rec.seq;
                on_loss(Loss {
                    records: rec.seq,
                    resumed_at: rec.seq,
                    before_start: true,
                });
            }
            Some(last) if rec.seq > last.saturating_add(1) => {
                let n = rec.seq - last - 1;
                self.lost += n;
                on_loss(Loss {
                    records: n,
                    resumed_at: rec.seq,
                    before_start: false,
                });
            }
            // seq going backwards: the log was cleared or a test file was
            // rewritten; start counting from here.
            _ => {}
        }
        self.last_seq = Some(rec.seq);
        on_record(&rec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(r: &mut KmsgReader, b: &[u8]) -> (Vec<(u64, String, bool)>, Vec<Loss>) {
        let mut recs = Vec::new();
        let mut losses = Vec::new();
        r.feed(
            b,
            &mut |rec| recs.push((rec.seq, rec.text.to_string(), rec.cont)),
            &mut |l| losses.push(l),
        );
        (recs, losses)
    }

    #[test]
    fn header_fields() {
        let r = parse_record(b"6,1234,5678901,-;hello world\n").unwrap();
        assert_eq!((r.facility, r.level, r.seq, r.ts_us), (0, 6, 1234, 5678901));
        assert!(!r.cont);
        assert_eq!(r.text, "hello world");
        let r = parse_record(b"12,7,100,c,caller=T95;,task_memcg=/a").unwrap();
        assert_eq!((r.facility, r.level), (1, 4));
        assert!(r.cont);
        assert_eq!(r.caller, Some("T95"));
        assert_eq!(r.text, ",task_memcg=/a");
        // Old kernels: no flags field.
        assert_eq!(parse_record(b"6,1,2;x").unwrap().text, "x");
    }

    #[test]
    fn bad_headers() {
        assert_eq!(parse_record(b"no semicolon"), Err(ParseError::NoSemicolon));
        assert_eq!(parse_record(b"x,1,2,-;t"), Err(ParseError::BadPrefix));
        assert_eq!(parse_record(b"6,x,2,-;t"), Err(ParseError::BadSeq));
        assert_eq!(parse_record(b"6,1,,-;t"), Err(ParseError::BadTimestamp));
        assert_eq!(parse_record(b";t"), Err(ParseError::BadPrefix));
    }

    #[test]
    fn escapes() {
        let r = parse_record(b"6,1,2,-;a\\x5cb\\x0ac \\xe2\\x9c\\x93 \\xZZ").unwrap();
        assert_eq!(r.text, "a\\b\nc \u{2713} \\xZZ");
        assert_eq!(unescape(b"end\\x4"), "end\\x4");
        assert_eq!(unescape(b"end\\x41"), "endA");
    }

    #[test]
    fn dictionary_lines_are_skipped() {
        let mut r = KmsgReader::new();
        let (recs, losses) = collect(
            &mut r,
            b"0,0,1,-;first\n SUBSYSTEM=virtio\n DEVICE=+virtio:virtio0\n6,1,2,-;second\n",
        );
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].1, "second");
        assert!(losses.is_empty());
    }

    #[test]
    fn one_record_per_read_and_partial_chunks() {
        let mut r = KmsgReader::new();
        let (recs, _) = collect(&mut r, b"6,0,1,-;a\n");
        assert_eq!(recs.len(), 1);
        let (recs, _) = collect(&mut r, b"6,1,1,-;par");
        assert!(recs.is_empty());
        let (recs, _) = collect(&mut r, b"tial\n6,2,5,-;b\n");
        assert_eq!(recs[0].1, "partial");
        assert_eq!(recs[1].1, "b");
    }

    #[test]
    fn epipe_gap_is_counted() {
        let mut r = KmsgReader::new();
        collect(&mut r, b"6,0,1,-;a\n");
        collect(&mut r, b"6,1,1,-;b\n");
        // The ring was overwritten: read() failed with EPIPE and the next
        // read returns the oldest record left.
        r.overrun();
        let (recs, losses) = collect(&mut r, b"6,41,9,-;c\n");
        assert_eq!(recs.len(), 1);
        assert_eq!(
            losses,
            vec![Loss {
                records: 39,
                resumed_at: 41,
                before_start: false
            }]
        );
        assert_eq!((r.lost, r.overruns), (39, 1));
    }

    #[test]
    fn ring_already_wrapped_at_start() {
        let mut r = KmsgReader::new();
        let (_, losses) = collect(&mut r, b"6,100,1,-;a\n");
        assert_eq!(
            losses,
            vec![Loss {
                records: 100,
                resumed_at: 100,
                before_start: true
            }]
        );
    }

    #[test]
    fn overlong_lines_are_dropped_bounded() {
        let mut r = KmsgReader::new();
        for _ in 0..100 {
            collect(&mut r, &[b'x'; 1000]);
            assert!(r.carry.len() <= READ_BUF);
        }
        let (recs, _) = collect(&mut r, b"\n6,0,1,-;ok\n");
        assert_eq!(recs.len(), 1);
        assert_eq!(r.bad_lines, 1);
    }
}
