//! The agent's side of the wire format: encoding its lines and reading the
//! host's acks.

use serde::Serialize;

use crate::protocol::{AgentMessage, Envelope, Hello};

/// `{"seq":N,"type":…,…}\n`
pub fn envelope_line(seq: u64, message: &AgentMessage) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    // Serializing these types cannot fail: no maps with non-string keys,
    // no floats.
    let _ = serde_json::to_writer(
        &mut v,
        &Envelope {
            seq,
            message: message.clone(),
        },
    );
    v.push(b'\n');
    v
}

#[derive(Serialize)]
struct HelloLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    hello: &'a Hello,
}

/// `{"type":"hello",…}\n`
pub fn hello_line(hello: &Hello) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    let _ = serde_json::to_writer(
        &mut v,
        &HelloLine {
            kind: "hello",
            hello,
        },
    );
    v.push(b'\n');
    v
}

/// The seq of a host line `{"ack":N}` (whitespace allowed, other fields
/// ignored); `None` for anything else, which the agent skips.
pub fn parse_ack(line: &[u8]) -> Option<u64> {
    let line = line.trim_ascii();
    if line.first() != Some(&b'{') || line.last() != Some(&b'}') {
        return None;
    }
    let key = b"\"ack\"";
    let at = line.windows(key.len()).position(|w| w == key)?;
    let rest = line[at + key.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start();
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Ack, KmsgLost};

    #[test]
    fn acks() {
        assert_eq!(parse_ack(b"{\"ack\":42}"), Some(42));
        assert_eq!(parse_ack(b"  { \"ack\" : 7 }\r"), Some(7));
        assert_eq!(parse_ack(&Ack { ack: 9 }.to_line()), Some(9));
        assert_eq!(parse_ack(b"{\"ack\":-1}"), None);
        assert_eq!(parse_ack(b"{\"ack\":99999999999999999999999}"), None);
        assert_eq!(parse_ack(b"ack 5"), None);
        assert_eq!(parse_ack(b"{\"nack\":5}"), None);
    }

    #[test]
    fn lines_decode_on_the_host() {
        let h = Hello {
            proto: 1,
            agent: "a".into(),
            kernel: "k\"\n".into(),
            boot_id: "b".into(),
            instance: "i".into(),
            interval_ms: 5,
        };
        let line = hello_line(&h);
        assert_eq!(*line.last().unwrap(), b'\n');
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "hello");
        let back: Hello = serde_json::from_value(v).unwrap();
        assert_eq!(back, h);
        let m = AgentMessage::KmsgLost(KmsgLost {
            records: 3,
            resumed_at: 9,
            before_start: true,
        });
        let e: Envelope = serde_json::from_slice(&envelope_line(5, &m)).unwrap();
        assert_eq!((e.seq, e.message), (5, m));
    }
}
