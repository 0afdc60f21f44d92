//! Parsers for the small text files the agent reads on its tick:
//! `/proc/meminfo`, `/proc/vmstat`, `/proc/pressure/memory` and cgroup v2
//! `memory.events`. They take the bytes of one `pread` and never allocate.

use crate::protocol::{MemcgEvents, Pressure, PsiLine};

/// The `/proc/meminfo` fields the summary carries, in kB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub available: u64,
    pub swap_total: Option<u64>,
    pub swap_free: Option<u64>,
}

fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

fn num<T: std::str::FromStr>(b: &[u8]) -> Option<T> {
    std::str::from_utf8(b).ok()?.trim().parse().ok()
}

/// `MemTotal:       118000 kB` …; `None` without MemTotal.
pub fn parse_meminfo(buf: &[u8]) -> Option<MemInfo> {
    let mut m = MemInfo::default();
    let mut have_total = false;
    for line in lines(buf) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (key, rest) = (&line[..colon], &line[colon + 1..]);
        let rest = rest.strip_suffix(b"kB").unwrap_or(rest);
        let slot = match key {
            b"MemTotal" => {
                have_total = true;
                &mut m.total
            }
            b"MemFree" => &mut m.free,
            b"MemAvailable" => &mut m.available,
            b"SwapTotal" => m.swap_total.insert(0),
            b"SwapFree" => m.swap_free.insert(0),
            _ => continue,
        };
        *slot = num(rest).unwrap_or(0);
    }
    have_total.then_some(m)
}

/// `oom_kill N` from `/proc/vmstat` (Linux 4.13+).
pub fn parse_vmstat_oom_kill(buf: &[u8]) -> Option<u64> {
    lines(buf).find_map(|l| num(l.strip_prefix(b"oom_kill ")?))
}

/// `some avg10=0.12 avg60=0.00 avg300=0.00 total=1234` (and `full …`).
pub fn parse_pressure(buf: &[u8]) -> Option<Pressure> {
    let mut some = None;
    let mut full = None;
    for line in lines(buf) {
        let (slot, rest) = if let Some(r) = line.strip_prefix(b"some ") {
            (&mut some, r)
        } else if let Some(r) = line.strip_prefix(b"full ") {
            (&mut full, r)
        } else {
            continue;
        };
        let mut p = PsiLine::default();
        for tok in rest.split(|&b| b == b' ') {
            let Some(eq) = tok.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (k, v) = (&tok[..eq], &tok[eq + 1..]);
            match k {
                b"avg10" => p.avg10 = centi(v)?,
                b"avg60" => p.avg60 = centi(v)?,
                b"avg300" => p.avg300 = centi(v)?,
                b"total" => p.total_us = num(v)?,
                _ => {}
            }
        }
        *slot = Some(p);
    }
    Some(Pressure { some: some?, full })
}

/// `12.34` → 1234 (the kernel prints `%lu.%02lu`).
fn centi(v: &[u8]) -> Option<u32> {
    let v = std::str::from_utf8(v).ok()?;
    let (int, frac) = v.split_once('.').unwrap_or((v, "0"));
    let int: u32 = int.parse().ok()?;
    let frac = frac.as_bytes();
    if frac.is_empty() || frac.len() > 2 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut f = u32::from(frac[0] - b'0') * 10;
    if frac.len() == 2 {
        f += u32::from(frac[1] - b'0');
    }
    int.checked_mul(100)?.checked_add(f)
}

/// cgroup v2 `memory.events`: `low N`, `high N`, `max N`, `oom N`,
/// `oom_kill N`, `oom_group_kill N` (Linux 6.12 `__memory_events_show`).
/// Fills everything but `cgroup`.
pub fn parse_memory_events(buf: &[u8]) -> Option<MemcgEvents> {
    let mut e = MemcgEvents::default();
    let mut any = false;
    for line in lines(buf) {
        let Some(sp) = line.iter().position(|&b| b == b' ') else {
            continue;
        };
        let slot = match &line[..sp] {
            b"low" => &mut e.low,
            b"high" => &mut e.high,
            b"max" => &mut e.max,
            b"oom" => &mut e.oom,
            b"oom_kill" => &mut e.oom_kill,
            b"oom_group_kill" => &mut e.oom_group_kill,
            _ => continue,
        };
        *slot = num(&line[sp + 1..])?;
        any = true;
    }
    any.then_some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo() {
        let m = parse_meminfo(
            b"MemTotal:         118000 kB\nMemFree:           90000 kB\nMemAvailable:      95000 kB\nBuffers:               0 kB\nSwapTotal:             0 kB\nSwapFree:              0 kB\n",
        )
        .unwrap();
        assert_eq!(
            m,
            MemInfo {
                total: 118000,
                free: 90000,
                available: 95000,
                swap_total: Some(0),
                swap_free: Some(0)
            }
        );
        assert_eq!(parse_meminfo(b"garbage\n"), None);
        // A buffer cut mid-file still gives what it has.
        assert_eq!(parse_meminfo(b"MemTotal: 5 kB\nMemFr").unwrap().total, 5);
    }

    #[test]
    fn vmstat() {
        let v = b"nr_free_pages 1\noom_kill_x 9\npgfault 2\noom_kill 3\ncompact_stall 0\n";
        assert_eq!(parse_vmstat_oom_kill(v), Some(3));
        assert_eq!(parse_vmstat_oom_kill(b"nr_free_pages 1\n"), None);
    }

    #[test]
    fn pressure() {
        let p = parse_pressure(
            b"some avg10=12.34 avg60=0.05 avg300=100.00 total=987654\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=12\n",
        )
        .unwrap();
        assert_eq!(
            p.some,
            PsiLine {
                avg10: 1234,
                avg60: 5,
                avg300: 10000,
                total_us: 987654
            }
        );
        assert_eq!(p.full.unwrap().total_us, 12);
        assert!(parse_pressure(b"some avg10=x avg60=0.00 avg300=0.00 total=1\n").is_none());
        assert!(parse_pressure(b"").is_none());
        assert_eq!(centi(b"1.5"), Some(150));
        assert_eq!(centi(b"7"), Some(700));
        assert_eq!(centi(b"99999999999.00"), None);
    }

    #[test]
    fn memory_events() {
        let e =
            parse_memory_events(b"low 0\nhigh 3\nmax 41\noom 2\noom_kill 2\noom_group_kill 1\n")
                .unwrap();
        assert_eq!(
            (e.high, e.max, e.oom, e.oom_kill, e.oom_group_kill),
            (3, 41, 2, 2, 1)
        );
        assert!(parse_memory_events(b"").is_none());
    }
}
