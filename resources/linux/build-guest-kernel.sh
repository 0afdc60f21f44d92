#!/usr/bin/env bash
# Build the tiny Linux guest kernel: Debian's linux-source-6.12, `make
# tinyconfig` + tiny-guest.config, patched with pvm-host.patch so that it
# boots to userspace on PVM hosts (KVM without VMX/SVM) and still boots
# normally elsewhere. The result is an uncompressed ELF vmlinux with a PVH
# entry (XEN_ELFNOTE_PHYS32_ENTRY), for `vmm run --kernel` and QEMU.
#
#   resources/linux/build-guest-kernel.sh          # prints <cache>/linux-guest/vmlinux
#   VMLINUX=$(resources/linux/build-guest-kernel.sh)
#
# A build takes ~15 min on 2 loaded cores; a cached run takes well under a
# second. The cache is reused while its stamp matches: the hashes of the
# config fragment and the patch, the source package's version and RECIPE
# below. Anything else (FORCE=1 aside) rebuilds what changed: a changed
# fragment rebuilds incrementally; a changed patch or source version starts
# from a fresh source tree and build directory.
#
# Environment:
#   VMM_CACHE_DIR   cache root (default: <repo>/.cache); output in $VMM_CACHE_DIR/linux-guest
#   JOBS            parallel make jobs (default: the number of CPUs, at most 2)
#   NICE            niceness of the build (default: 10)
#   FORCE=1         rebuild even when the stamp matches
#
# Needs: tar, xz, patch, make, gcc, flex, bison, bc, perl, libelf-dev (objtool),
# readelf; and /usr/src/linux-source-6.12.tar.xz (Debian package
# linux-source-6.12). When run as root, missing Debian packages are
# installed with apt-get; otherwise it says what to install.
# stdout carries only the path of vmlinux; everything else goes to stderr.
# See resources/linux/README.md.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)
cache_root=${VMM_CACHE_DIR:-$repo/.cache}
out=$cache_root/linux-guest
fragment=$script_dir/tiny-guest.config
patchfile=$script_dir/pvm-host.patch
src_pkg=linux-source-6.12
tarball=/usr/src/$src_pkg.tar.xz
# Bump when the way the kernel is built changes (not its inputs above).
RECIPE=1

log() { printf 'build-guest-kernel: %s\n' "$*" >&2; }
die() { printf 'build-guest-kernel: error: %s\n' "$*" >&2; exit 1; }

[[ -r $fragment ]] || die "missing config fragment $fragment"
[[ -r $patchfile ]] || die "missing patch $patchfile"

# --- tools and source, installed with apt-get when we are root -------------
# tool:package pairs; libelf-dev has no tool, its header is checked below.
deps=(make:make gcc:gcc flex:flex bison:bison bc:bc perl:perl patch:patch
      tar:tar xz:xz-utils readelf:binutils flock:util-linux sha256sum:coreutils)
missing=()
for d in "${deps[@]}"; do
    command -v "${d%%:*}" >/dev/null 2>&1 || missing+=("${d#*:}")
done
[[ -e /usr/include/gelf.h ]] || missing+=(libelf-dev)
[[ -r $tarball ]] || missing+=("$src_pkg")
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        die "missing Debian packages: ${missing[*]} (run as root: apt-get install ${missing[*]})"
    fi
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        apt-get update -q >&2 || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
            die "apt-get install ${missing[*]} failed"
    fi
fi
[[ -r $tarball ]] || die "$tarball is missing after installing $src_pkg"

src_version=$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null || true)
[[ -n $src_version ]] || src_version="unknown (tarball $(stat -c %s "$tarball") bytes)"

stamp_text() {
    printf 'recipe=%s\n' "$RECIPE"
    printf 'source_package=%s\n' "$src_pkg"
    printf 'source_version=%s\n' "$src_version"
    printf 'fragment_sha256=%s\n' "$(sha256sum <"$fragment" | cut -d' ' -f1)"
    printf 'patch_sha256=%s\n' "$(sha256sum <"$patchfile" | cut -d' ' -f1)"
}

# Print the PVH entry point (hex) from the Xen ELF note of type 18
# (XEN_ELFNOTE_PHYS32_ENTRY); fail if there is none.
pvh_entry() {
    readelf -n "$1" 2>/dev/null | awk '
        /^[[:space:]]+Xen[[:space:]]/ {
            want = ($0 ~ /\(0x0*12\)/ || $0 ~ /PHYS32_ENTRY/); next
        }
        want && /description data:/ {
            sub(/.*description data:[[:space:]]*/, "")
            n = split($0, b, /[[:space:]]+/)
            v = ""
            for (i = n; i >= 1; i--) if (b[i] != "") v = v b[i]
            sub(/^0+/, "", v); if (v == "") v = "0"
            print "0x" v; found = 1; exit
        }
        { want = 0 }
        END { exit(found ? 0 : 1) }'
}

valid_vmlinux() {
    [[ -s $1 ]] && readelf -h "$1" 2>/dev/null | grep -q 'Machine:.*X86-64' &&
        pvh_entry "$1" >/dev/null
}

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

want_stamp=$(stamp_text)
if [[ ${FORCE:-0} != 1 && -f $out/STAMP && $(cat "$out/STAMP") == "$want_stamp" ]] &&
    valid_vmlinux "$out/vmlinux"; then
    log "cached: $out/vmlinux (PVH entry $(pvh_entry "$out/vmlinux"))"
    echo "$out/vmlinux"
    exit 0
fi

# --- source tree: unpacked and patched once per (source version, patch) ----
src=$out/src
build=$out/build
src_stamp=$(printf '%s\n' "$want_stamp" | grep -E '^(recipe|source_|patch_)')
if [[ ! -f $src/.vmm-src-stamp || $(cat "$src/.vmm-src-stamp") != "$src_stamp" ]]; then
    log "unpacking $tarball ($src_version) into $src"
    # A new tree gets old mtimes from the tarball; objects of an earlier
    # build could look newer than reverted files, so the build dir goes too.
    rm -rf "$src" "$src.tmp" "$build"
    mkdir -p "$src.tmp"
    tar -xJf "$tarball" -C "$src.tmp" --strip-components=1 ||
        die "cannot unpack $tarball"
    [[ -f $src.tmp/Makefile ]] || die "$tarball has no top-level Makefile"
    log "applying $(basename "$patchfile")"
    patch -d "$src.tmp" -p1 --forward --batch <"$patchfile" >&2 ||
        die "$(basename "$patchfile") does not apply to $src_pkg $src_version"
    printf '%s\n' "$src_stamp" >"$src.tmp/.vmm-src-stamp"
    mv "$src.tmp" "$src"
fi
kver=$(make -s -C "$src" kernelversion)
log "Linux $kver ($src_pkg $src_version)"

# --- config: tinyconfig + fragment, then checked line by line --------------
mkdir -p "$build"
log "config: tinyconfig + $(basename "$fragment")"
make -s -C "$src" O="$build" tinyconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "$fragment" >/dev/null ||
    die "merge_config.sh failed"
make -s -C "$src" O="$build" olddefconfig >&2

bad=0
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        opt=${BASH_REMATCH[1]}
        if ! grep -qxF -- "$line" "$build/.config"; then
            have=$(grep -E "^$opt=|^# $opt is not set" "$build/.config" || echo "absent")
            log "config check FAILED: want '$line', .config has '$have'"
            bad=1
        fi
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        opt=${BASH_REMATCH[1]}
        if have=$(grep -E "^$opt=" "$build/.config"); then
            log "config check FAILED: want '$opt' unset, .config has '$have'"
            bad=1
        fi
    fi
done <"$fragment"
((bad == 0)) || die "the final .config does not have what $(basename "$fragment") asks for (a dependency is missing or the option does not exist in $kver)"
log "config check: every line of $(basename "$fragment") holds"

# --- build ------------------------------------------------------------------
jobs=${JOBS:-$(nproc)}
((jobs > 2)) && [[ -z ${JOBS:-} ]] && jobs=2
log "building vmlinux with make -j$jobs under nice -n ${NICE:-10} (about 15 min on 2 busy cores)"
start=$(date +%s)
nice -n "${NICE:-10}" make -C "$src" O="$build" -j"$jobs" vmlinux >"$out/build.log" 2>&1 || {
    tail -n 40 "$out/build.log" >&2
    die "kernel build failed; full log in $out/build.log"
}
log "built in $(($(date +%s) - start)) s"

valid_vmlinux "$build/vmlinux" ||
    die "$build/vmlinux is not an x86-64 ELF with a Xen PVH note (CONFIG_PVH missing?)"
cp "$build/.config" "$out/config.tmp"
cp "$build/vmlinux" "$out/vmlinux.tmp"
mv -f "$out/config.tmp" "$out/config"
mv -f "$out/vmlinux.tmp" "$out/vmlinux"
printf '%s\nkernel_version=%s\npvh_entry=%s\n' "$want_stamp" "$kver" "$(pvh_entry "$out/vmlinux")" >"$out/VERSION"
# The stamp goes last: a matching stamp means a complete, valid output.
printf '%s\n' "$want_stamp" >"$out/STAMP.tmp"
mv -f "$out/STAMP.tmp" "$out/STAMP"
log "vmlinux: $(stat -c %s "$out/vmlinux") bytes, PVH entry $(pvh_entry "$out/vmlinux")"
echo "$out/vmlinux"
