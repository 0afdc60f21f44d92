//! `/proc/<pid>/smaps`: per-mapping memory counters, the guest-RAM mapping
//! among them, and what the rest (the VMM's own overhead) is made of.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context};

/// One mapping of `/proc/<pid>/smaps`; sizes in KiB as the kernel reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub inode: u64,
    pub path: String,
    pub size_kb: u64,
    pub rss_kb: u64,
    pub pss_kb: u64,
    pub private_dirty_kb: u64,
    pub anonymous_kb: u64,
    /// Of Rss, what transparent huge pages (PMD-mapped) hold.
    pub anon_huge_kb: u64,
    pub swap_kb: u64,
}

impl Mapping {
    /// Private anonymous memory with no backing file (possibly named by
    /// `prctl(PR_SET_VMA_ANON_NAME)`).
    pub fn is_plain_anonymous(&self) -> bool {
        self.inode == 0 && (self.path.is_empty() || self.path.starts_with("[anon:"))
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} size {} KiB, Rss {} KiB",
            self.start, self.end, self.perms, self.size_kb, self.rss_kb
        )?;
        if !self.path.is_empty() {
            write!(f, " {}", self.path)?;
        }
        Ok(())
    }
}

/// Parses the text of `/proc/<pid>/smaps`.
pub fn parse(text: &str) -> anyhow::Result<Vec<Mapping>> {
    let mut maps: Vec<Mapping> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(m) = parse_header(line) {
            maps.push(m);
            continue;
        }
        let Some((key, rest)) = line.split_once(':') else {
            bail!("smaps line {}: cannot parse {line:?}", n + 1);
        };
        let Some(cur) = maps.last_mut() else {
            bail!("smaps line {}: field before the first mapping", n + 1);
        };
        let field = match key {
            "Size" => &mut cur.size_kb,
            "Rss" => &mut cur.rss_kb,
            "Pss" => &mut cur.pss_kb,
            "Private_Dirty" => &mut cur.private_dirty_kb,
            "Anonymous" => &mut cur.anonymous_kb,
            "AnonHugePages" => &mut cur.anon_huge_kb,
            "Swap" => &mut cur.swap_kb,
            _ => continue,
        };
        let value = rest.trim().trim_end_matches("kB").trim();
        *field = value
            .parse()
            .with_context(|| format!("smaps line {}: bad number in {line:?}", n + 1))?;
    }
    Ok(maps)
}

/// `start-end perms offset dev inode [path]`; `None` for a field line.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = it.next()?.to_string();
    let _offset = it.next()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim().to_string();
    Some(Mapping {
        start,
        end,
        perms,
        inode,
        path,
        ..Default::default()
    })
}

/// The guest-RAM mapping: among plain anonymous mappings at least as large
/// as guest RAM, the one with the largest Rss. (QEMU may reserve a little
/// more than the RAM size for alignment; our VMM maps exactly the RAM size.)
pub fn find_guest_ram(maps: &[Mapping], ram_bytes: u64) -> anyhow::Result<&Mapping> {
    maps.iter()
        .filter(|m| m.is_plain_anonymous() && m.size_kb * 1024 >= ram_bytes)
        .max_by_key(|m| m.rss_kb)
        .with_context(|| {
            format!("no anonymous mapping of at least {ram_bytes} bytes: cannot find guest RAM")
        })
}

/// Memory counters of one process, split into guest RAM and the rest.
#[derive(Clone, Debug)]
pub struct Footprint {
    pub total_rss_kb: u64,
    pub total_pss_kb: u64,
    pub total_private_dirty_kb: u64,
    pub total_swap_kb: u64,
    pub guest: Mapping,
    /// Rss outside guest RAM by [`Category`].
    pub by_category: BTreeMap<Category, u64>,
    /// Mappings outside guest RAM, largest Rss first.
    pub others: Vec<Mapping>,
}

impl Footprint {
    pub fn new(maps: &[Mapping], ram_bytes: u64, exe: &str) -> anyhow::Result<Footprint> {
        let guest = find_guest_ram(maps, ram_bytes)?.clone();
        let mut by_category = BTreeMap::new();
        let mut others = Vec::new();
        for m in maps {
            if m.start == guest.start {
                continue;
            }
            *by_category.entry(Category::of(m, exe)).or_insert(0) += m.rss_kb;
            if m.rss_kb > 0 {
                others.push(m.clone());
            }
        }
        others.sort_by_key(|m| std::cmp::Reverse(m.rss_kb));
        Ok(Footprint {
            total_rss_kb: maps.iter().map(|m| m.rss_kb).sum(),
            total_pss_kb: maps.iter().map(|m| m.pss_kb).sum(),
            total_private_dirty_kb: maps.iter().map(|m| m.private_dirty_kb).sum(),
            total_swap_kb: maps.iter().map(|m| m.swap_kb).sum(),
            guest,
            by_category,
            others,
        })
    }

    /// Rss outside guest RAM: the headline overhead.
    pub fn overhead_rss_kb(&self) -> u64 {
        self.total_rss_kb - self.guest.rss_kb
    }

    /// Pss outside guest RAM: shared library pages divided among sharers.
    pub fn overhead_pss_kb(&self) -> u64 {
        self.total_pss_kb - self.guest.pss_kb
    }

    /// Private dirty memory outside guest RAM: what this process alone
    /// wrote, which nobody else could share or drop without swap.
    pub fn overhead_private_dirty_kb(&self) -> u64 {
        self.total_private_dirty_kb - self.guest.private_dirty_kb
    }
}

/// What a mapping outside guest RAM is, for the overhead breakdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Category {
    /// The VMM's own executable (text, rodata, data).
    Executable,
    /// Shared libraries and the dynamic loader.
    Libraries,
    /// `[heap]` (brk).
    Heap,
    /// Other anonymous memory: thread stacks, malloc arenas, mmap'd buffers.
    OtherAnonymous,
    /// The main thread's stack.
    Stack,
    /// KVM's shared mappings (`anon_inode:kvm-vcpu`: the kvm_run page).
    Kvm,
    /// `[vdso]`, `[vvar]`, `[vsyscall]`.
    Kernel,
    /// Other file-backed or special mappings.
    Other,
}

impl Category {
    pub const ALL: [Category; 8] = [
        Category::Executable,
        Category::Libraries,
        Category::Heap,
        Category::OtherAnonymous,
        Category::Stack,
        Category::Kvm,
        Category::Kernel,
        Category::Other,
    ];

    pub fn of(m: &Mapping, exe: &str) -> Category {
        let p = m.path.as_str();
        if !exe.is_empty() && p == exe {
            Category::Executable
        } else if p.ends_with(".so") || p.contains(".so.") {
            Category::Libraries
        } else if p == "[heap]" {
            Category::Heap
        } else if p == "[stack]" {
            Category::Stack
        } else if p.starts_with("anon_inode:kvm") {
            Category::Kvm
        } else if matches!(p, "[vdso]" | "[vvar]" | "[vvar_vclock]" | "[vsyscall]") {
            Category::Kernel
        } else if m.is_plain_anonymous() {
            Category::OtherAnonymous
        } else {
            Category::Other
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Category::Executable => "executable (file-backed text/rodata, data)",
            Category::Libraries => "shared libraries + ld.so",
            Category::Heap => "[heap] (malloc via brk)",
            Category::OtherAnonymous => "other anonymous (thread stacks, malloc arenas)",
            Category::Stack => "[stack] (main thread)",
            Category::Kvm => "KVM mappings (kvm_run pages)",
            Category::Kernel => "[vdso], [vvar]",
            Category::Other => "other mappings",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
55a00c25c000-55a00c2c8000 r--p 00000000 fe:00 5324943                    /work/main/target/release/vmm
Size:                432 kB
KernelPageSize:        4 kB
Rss:                 400 kB
Pss:                 400 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
Swap:                  0 kB
VmFlags: rd mr mw me sd
7f9294400000-7f929c400000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:               65860 kB
Pss:               65860 kB
Private_Dirty:     65860 kB
Anonymous:         65860 kB
AnonHugePages:     63488 kB
Swap:                  0 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0 
Size:              65536 kB
Rss:                 132 kB
Pss:                 132 kB
Private_Dirty:       132 kB
Anonymous:           132 kB
7f929c575000-7f929c6cb000 r-xp 00026000 fe:00 326279                     /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1368 kB
Rss:                 940 kB
Pss:                  90 kB
Private_Dirty:         0 kB
7fff00000000-7fff00003000 rw-s 00000000 00:10 1234                       anon_inode:kvm-vcpu:0
Size:                 12 kB
Rss:                   4 kB
Pss:                   4 kB
Private_Dirty:         4 kB
";

    #[test]
    fn parses_mappings_and_fields() {
        let maps = parse(SAMPLE).unwrap();
        assert_eq!(maps.len(), 5);
        assert_eq!(maps[0].path, "/work/main/target/release/vmm");
        assert_eq!(maps[0].rss_kb, 400);
        assert_eq!(maps[1].start, 0x7f9294400000);
        assert_eq!(maps[1].size_kb, 131072);
        assert_eq!(maps[1].anon_huge_kb, 63488);
        assert!(maps[1].is_plain_anonymous());
        assert_eq!(maps[3].pss_kb, 90);
        assert_eq!(maps[4].path, "anon_inode:kvm-vcpu:0");
    }

    #[test]
    fn guest_ram_is_the_big_anonymous_mapping_with_most_rss() {
        let maps = parse(SAMPLE).unwrap();
        let g = find_guest_ram(&maps, 128 << 20).unwrap();
        assert_eq!(g.start, 0x7f9294400000);
        // A guest RAM size that no mapping covers is an error, not a guess.
        assert!(find_guest_ram(&maps, 256 << 20).is_err());
    }

    #[test]
    fn overhead_excludes_guest_ram_and_is_categorised() {
        let maps = parse(SAMPLE).unwrap();
        let f = Footprint::new(&maps, 128 << 20, "/work/main/target/release/vmm").unwrap();
        assert_eq!(f.overhead_rss_kb(), 400 + 132 + 940 + 4);
        assert_eq!(f.overhead_pss_kb(), 400 + 132 + 90 + 4);
        assert_eq!(f.overhead_private_dirty_kb(), 132 + 4);
        assert_eq!(f.by_category[&Category::Executable], 400);
        assert_eq!(f.by_category[&Category::Libraries], 940);
        assert_eq!(f.by_category[&Category::OtherAnonymous], 132);
        assert_eq!(f.by_category[&Category::Kvm], 4);
        assert_eq!(f.others[0].rss_kb, 940);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(parse("Rss: 4 kB\n").is_err());
        assert!(parse("00-10 r--p 0 0:0 0\nRss: lots kB\n").is_err());
    }
}
