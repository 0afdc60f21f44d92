#!/usr/bin/env bash
# Builds the guest agent as one static x86_64 Linux binary and prints its
# path. Static through glibc's static libraries (+crt-static): fresh
# machines have no musl target and cannot download one. Not PIE
# (relocation-model=static): a static PIE relocates itself at start, and
# every page it writes is a page fault, which costs milliseconds in our
# emulated guests.
#
# RUSTFLAGS with an explicit --target apply to the target only; without
# --target they would also reach proc-macros (serde_derive), which cannot
# be linked statically.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-gnu
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static -C relocation-model=static" \
    cargo build --release -p guest-agent --target "$target" "$@" >&2
out="${CARGO_TARGET_DIR:-target}/$target/release/guest-agent"
if ! file "$out" | grep -q ', statically linked'; then
    echo "build-static.sh: $out is not statically linked:" >&2
    file "$out" >&2
    exit 1
fi
echo "$out"
