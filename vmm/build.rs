//! Build script of the `vmm` crate: compiles the tiny test guest
//! (`resources/tiny-guest`) into `$OUT_DIR/tiny-guest.elf`, which the crate
//! embeds with `include_bytes!(concat!(env!("OUT_DIR"), "/tiny-guest.elf"))`
//! (the same path is also exported as the `TINY_GUEST_ELF` compile-time
//! environment variable).
//!
//! The guest is a freestanding `#![no_std]` binary for the host triple
//! (x86_64-unknown-linux-gnu; no other target can be installed here), built
//! by calling `$RUSTC` directly: no nested cargo, no extra target, and none of
//! the flags meant for the vmm itself (`RUSTFLAGS`, `-C target-cpu=native`,
//! the profile's opt-level) reach the guest. It is always built optimised.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The only triple the guest can be built for.
const GUEST_TRIPLE: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let guest_dir = manifest_dir.join("../resources/tiny-guest");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let elf = out_dir.join("tiny-guest.elf");

    println!("cargo:rerun-if-changed={}", guest_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        guest_dir.join("linker.ld").display()
    );

    let host = env::var("HOST").unwrap_or_default();
    if host != GUEST_TRIPLE {
        panic!("the tiny guest is built for {GUEST_TRIPLE} and needs that host, not {host:?}");
    }

    let rustc = env::var_os("RUSTC").unwrap_or_else(|| OsString::from("rustc"));
    let mut cmd = Command::new(&rustc);
    cmd.args(guest_rustc_args(&guest_dir, &elf));
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {rustc:?} to build the tiny guest: {e}"));
    if !status.success() {
        panic!("building the tiny guest failed ({status}): {cmd:?}");
    }
    check_elf(&elf);
    println!("cargo:rustc-env=TINY_GUEST_ELF={}", elf.display());
}

/// The rustc command line that builds the guest at `guest_dir` into `elf`.
fn guest_rustc_args(guest_dir: &Path, elf: &Path) -> Vec<OsString> {
    let linker_script = guest_dir.join("linker.ld");
    let mut args: Vec<OsString> = [
        "--edition=2021",
        "--crate-type=bin",
        "--crate-name=tiny_guest",
        "--target",
        GUEST_TRIPLE,
        "-C",
        "panic=abort",
        "-C",
        "opt-level=s",
        "-C",
        "codegen-units=1",
        "-C",
        "relocation-model=static",
        "-C",
        "target-feature=+crt-static",
        "-C",
        "force-unwind-tables=no",
        "-C",
        "debuginfo=0",
        "-C",
        "strip=debuginfo",
        "-C",
        "link-arg=-nostartfiles",
        "-C",
        "link-arg=-nostdlib",
        "-C",
        "link-arg=-static",
        "-C",
        "link-arg=-no-pie",
        "-C",
        "link-arg=-Wl,--build-id=none",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    let mut script_arg = OsString::from("link-arg=-Wl,-T,");
    script_arg.push(&linker_script);
    args.extend([OsString::from("-C"), script_arg]);
    args.extend([OsString::from("-o"), elf.as_os_str().to_owned()]);
    args.push(guest_dir.join("src/main.rs").into_os_string());
    args
}

/// Fails the build early if the output is not an ELF64 x86-64 executable
/// with the PVH entry note where the loaders expect it (a single PT_NOTE).
fn check_elf(elf: &Path) {
    let bytes = std::fs::read(elf).unwrap_or_else(|e| panic!("cannot read {}: {e}", elf.display()));
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap());
    assert!(
        bytes.len() > 64 && &bytes[..5] == b"\x7fELF\x02",
        "tiny guest is not an ELF64 file"
    );
    assert_eq!(u16_at(18), 62, "tiny guest is not x86-64");
    let (phoff, phentsize, phnum) = (
        u64_at(32) as usize,
        u16_at(54) as usize,
        u16_at(56) as usize,
    );
    let notes: Vec<usize> = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| u32_at(ph) == 4) // PT_NOTE
        .collect();
    assert_eq!(
        notes.len(),
        1,
        "tiny guest must have exactly one PT_NOTE segment"
    );
    let note = u64_at(notes[0] + 8) as usize; // p_offset
    let (namesz, descsz, kind) = (u32_at(note), u32_at(note + 4), u32_at(note + 8));
    assert!(
        namesz == 4 && descsz == 8 && kind == 18 && &bytes[note + 12..note + 16] == b"Xen\0",
        "tiny guest lacks the Xen PHYS32_ENTRY note"
    );
    let entry = u64_at(note + 16);
    assert!(
        (0x10_0000..1 << 32).contains(&entry),
        "tiny guest PVH entry {entry:#x} out of range"
    );
}
