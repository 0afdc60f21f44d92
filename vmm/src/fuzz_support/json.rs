//! JSON bodies for the API harnesses: random values, and valid bodies
//! mutated the ways a client gets them wrong (wrong types, numbers out of
//! range, missing and unknown fields, long strings, deep nesting, broken
//! text).

use serde_json::{json, Map, Value};

use super::Rng;

/// Field names of both APIs' request bodies, and some near misses.
pub(crate) const FIELDS: &[&str] = &[
    "action_type",
    "amount_mib",
    "deflate_on_oom",
    "stats_polling_interval_s",
    "free_page_reporting",
    "id",
    "kernel",
    "initrd",
    "cmdline",
    "mem_mib",
    "vcpus",
    "balloon",
    "oom_score_adj",
    "pool",
    "numa_nodes",
    "balloon_target_mib",
    "state",
    "action",
    "kill_fastest_grower",
    "dump_vms",
    "reclaim_first",
    "no_progress_ms",
    "min_kill_interval_ms",
    "psi_some_threshold_us",
    "psi_window_us",
    "host_min_available_permille",
    "dry_run",
    "nodes",
    "amountMib",
    "",
    "\u{0}",
    "mem_mib ",
];

fn number(rng: &mut Rng) -> Value {
    match rng.below(20) {
        0 => json!(-1),
        1 => json!(0),
        2 => json!(255),
        3 => json!(256),
        4 => json!(1000),
        5 => json!(-1001),
        6 => json!(65535),
        7 => json!(65536),
        8 => json!(u32::MAX),
        9 => json!(u64::from(u32::MAX) + 1),
        10 => json!(i64::MIN),
        11 => json!(u64::MAX),
        12 => json!(0.5),
        13 => json!(-0.0),
        14 => json!(1e300),
        15 => json!(3_600_001),
        16 => json!(10_000_001),
        _ => json!(rng.below(100_000)),
    }
}

fn string(rng: &mut Rng) -> String {
    match rng.below(24) {
        0 => String::new(),
        1 => "a".into(),
        2 => "web-1".into(),
        3 => "../x".into(),
        4 => "a/b".into(),
        5 => "-rf".into(),
        6 => "x".repeat(65),
        7 => "a\0b".into(),
        8 => "\u{e9}t\u{e9}".into(),
        9 => "0-1".into(),
        10 => "0-1023".into(),
        11 => "5-2".into(),
        12 => "1,,2".into(),
        13 => "0-4294967295".into(),
        14 => "99999999999999999999".into(),
        15 => "/boot/vmlinux".into(),
        16 => "vmlinux".into(),
        17 => "x".repeat(rng.range(2000, 20_000) as usize),
        18 => rng
            .pick(&["InstanceStart", "ReleaseMemory", "FlushMetrics"])
            .into(),
        19 => rng
            .pick(&["kill", "pause", "notify", "panic", "Kill"])
            .into(),
        20 => rng
            .pick(&["running", "paused", "starting", "RUNNING"])
            .into(),
        21 => " 0 - 1 , 3 ".into(),
        _ => (0..rng.below(12))
            .map(|_| char::from_u32(rng.range(1, 0x2fff) as u32).unwrap_or('?'))
            .collect(),
    }
}

/// A random JSON value at most `depth` deep.
pub(crate) fn value(rng: &mut Rng, depth: u32) -> Value {
    let leaf = depth == 0 || rng.bool();
    match rng.below(if leaf { 4 } else { 6 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.bool()),
        2 => number(rng),
        3 => Value::String(string(rng)),
        4 => Value::Array((0..rng.below(4)).map(|_| value(rng, depth - 1)).collect()),
        _ => Value::Object(
            (0..rng.below(5))
                .map(|_| (rng.pick(FIELDS).to_string(), value(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// Changes `v` (an object, normally a valid body) a few times.
fn mutate_value(rng: &mut Rng, v: &mut Value) {
    let Some(map) = v.as_object_mut() else {
        *v = value(rng, 2);
        return;
    };
    let key = |rng: &mut Rng, map: &Map<String, Value>| -> String {
        if !map.is_empty() && rng.bool() {
            let i = rng.below(map.len() as u64) as usize;
            map.keys().nth(i).unwrap().clone()
        } else {
            rng.pick(FIELDS).to_string()
        }
    };
    for _ in 0..rng.range(1, 3) {
        let k = key(rng, map);
        match rng.below(6) {
            0 => {
                map.remove(&k);
            }
            1 => {
                map.insert(k, number(rng));
            }
            2 => {
                map.insert(k, Value::String(string(rng)));
            }
            3 => {
                // The same value, in another type.
                let old = map.get(&k).cloned().unwrap_or(Value::Null);
                let new = match old {
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::String(s) => s.parse().map(Value::Number).unwrap_or(json!([s])),
                    Value::Bool(b) => json!(u8::from(b)),
                    Value::Null => json!({}),
                    other => json!([other]),
                };
                map.insert(k, new);
            }
            4 => {
                map.insert(k, value(rng, 3));
            }
            _ => {
                let nested = value(rng, 1);
                map.insert(k, json!({ "amount_mib": nested, "deflate_on_oom": true }));
            }
        }
    }
}

/// Text-level damage JSON values cannot express.
const TOKENS: &[&str] = &[
    ",",
    "}",
    "{",
    "]",
    "\"",
    ":",
    "\\u0000",
    "\\ud800",
    "1e999",
    "-0",
    "NaN",
    "Infinity",
    "//",
    "/*",
    "\u{feff}",
    "\"amount_mib\":1,\"amount_mib\":2,",
    "\0",
    "\u{ff}",
    " ",
    "null",
    "00",
    "+1",
];

fn mutate_text(rng: &mut Rng, text: &mut Vec<u8>) {
    for _ in 0..rng.range(1, 4) {
        let at = rng.below(text.len() as u64 + 1) as usize;
        match rng.below(5) {
            0 if !text.is_empty() => {
                let i = rng.below(text.len() as u64) as usize;
                text[i] = rng.next() as u8;
            }
            1 => {
                let end = (at + rng.below(8) as usize).min(text.len());
                text.drain(at..end);
            }
            2 => text.truncate(at),
            _ => {
                let t = rng.pick(TOKENS).as_bytes().to_vec();
                text.splice(at..at, t);
            }
        }
    }
}

/// A body for a route whose valid body looks like `valid`: itself,
/// mutated, replaced by a random value, deeply nested, or broken as text.
pub(crate) fn body(rng: &mut Rng, valid: &Value) -> Vec<u8> {
    let mut v = valid.clone();
    match rng.below(12) {
        0 => v = value(rng, 4),
        1 => {
            // Deeper than any parser should follow (built as text: a
            // `Value` that deep would overflow the harness's own stack).
            let n = rng.range(100, 5000) as usize;
            let (open, close) = if rng.bool() {
                ("[", "]")
            } else {
                ("{\"a\":", "}")
            };
            let mut t = String::from("{\"amount_mib\":");
            t.push_str(&open.repeat(n));
            t.push('1');
            t.push_str(&close.repeat(n));
            t.push('}');
            return t.into_bytes();
        }
        2..=7 => mutate_value(rng, &mut v),
        _ => {}
    }
    let mut text = serde_json::to_vec(&v).unwrap();
    if rng.one_in(4) {
        mutate_text(rng, &mut text);
    }
    text
}
