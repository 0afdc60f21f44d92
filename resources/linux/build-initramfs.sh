#!/usr/bin/env bash
# Build the tiny Linux guest's initramfs: a newc cpio with /init and
# /bin/hog (static C programs from resources/linux/initramfs/), /dev/console,
# and optionally the guest agent as /bin/guest-agent, which /init starts.
#
#   resources/linux/build-initramfs.sh [--agent PATH] [--out FILE]
#   INITRD=$(resources/linux/build-initramfs.sh)
#
#   --agent PATH   include this static binary as /bin/guest-agent (or set
#                  GUEST_AGENT=PATH); /init starts it in the background
#   --out FILE     where to write the archive
#                  (default: <cache>/linux-guest/initramfs.cpio)
#   --ext4 SIZE    write the same tree as an ext4 file system image of
#                  SIZE (e.g. 16M) instead, for a root disk
#                  (`vmm run --drive ...,root=true`, `init=/init`); needs
#                  mkfs.ext4 (e2fsprogs) for its -d option
#
# Environment: VMM_CACHE_DIR (cache root, default <repo>/.cache), CC (the C
# compiler: musl-gcc when installed, else gcc).
# Needs musl-gcc (Debian: musl-tools) or gcc with the static glibc
# (libc6-dev). musl's programs are ~40 KB, glibc's ~700 KB, and the kernel
# unpacks and pages in every byte at an emulated CPL0 (see README.md). No
# root: the archive is written directly (owner root, mtime 0, so the same
# inputs give the same bytes). Takes about a second. stdout carries only
# the archive's path.
# The /init orders (init.hold, init.oom_hog=16M, ...) are in README.md.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)
cache_root=${VMM_CACHE_DIR:-$repo/.cache}
out=$cache_root/linux-guest/initramfs.cpio
agent=${GUEST_AGENT:-}
ext4_size=
if [[ -n ${CC:-} ]]; then
    cc=$CC
elif command -v musl-gcc >/dev/null; then
    cc=musl-gcc
else
    cc=gcc
fi

log() { printf 'build-initramfs: %s\n' "$*" >&2; }
die() { printf 'build-initramfs: error: %s\n' "$*" >&2; exit 1; }

while (($#)); do
    case $1 in
        --agent) (($# >= 2)) || die "--agent needs a path"; agent=$2; shift 2 ;;
        --agent=*) agent=${1#--agent=}; shift ;;
        --out) (($# >= 2)) || die "--out needs a path"; out=$2; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        --ext4) (($# >= 2)) || die "--ext4 needs a size"; ext4_size=$2; shift 2 ;;
        --ext4=*) ext4_size=${1#--ext4=}; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

command -v "$cc" >/dev/null || die "'$cc' not found (apt-get install musl-tools, or gcc libc6-dev)"
[[ $cc == musl-gcc ]] || log "building with $cc, not musl-gcc: the programs are ~15 times larger (apt-get install musl-tools)"
command -v readelf >/dev/null || die "'readelf' not found (apt-get install binutils)"

is_static_elf() {
    readelf -h "$1" 2>/dev/null | grep -q 'Machine:.*X86-64' &&
        ! readelf -l "$1" 2>/dev/null | grep -q 'INTERP'
}

if [[ -n $agent ]]; then
    [[ -f $agent && -r $agent ]] || die "agent '$agent' is not a readable file"
    is_static_elf "$agent" ||
        die "agent '$agent' is not a static x86-64 ELF (the initramfs has no libc or loader)"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT

cflags=(-static -Os -s -Wall -Wextra -Werror -fno-asynchronous-unwind-tables)
for prog in init hog; do
    "$cc" "${cflags[@]}" -o "$work/$prog" "$script_dir/initramfs/$prog.c" ||
        die "cannot compile $prog.c with $cc"
    is_static_elf "$work/$prog" || die "$prog is not a static ELF"
done

# --- or an ext4 image of the same tree ---------------------------------------
if [[ -n $ext4_size ]]; then
    command -v mkfs.ext4 >/dev/null || die "'mkfs.ext4' not found (apt-get install e2fsprogs)"
    tree=$work/tree
    mkdir -p "$tree"/{bin,dev,proc,sys,tmp}
    cp "$work/init" "$tree/init"
    cp "$work/hog" "$tree/bin/hog"
    [[ -n $agent ]] && cp "$agent" "$tree/bin/guest-agent"
    mkdir -p "$(dirname "$out")"
    rm -f "$out.tmp.$$"
    # Root owns everything (-E root_owner), as in the archive; no journal:
    # a 16 MiB disk does not need one, and it is less for the guest to
    # write through its emulated CPL0.
    mkfs.ext4 -q -F -O ^has_journal -E root_owner=0:0 -d "$tree" "$out.tmp.$$" "$ext4_size" >&2 ||
        die "mkfs.ext4 failed"
    mv -f "$out.tmp.$$" "$out"
    log "$out: ext4, $ext4_size (init $(stat -c %s "$work/init"), hog $(stat -c %s "$work/hog"))"
    echo "$out"
    exit 0
fi

# --- a newc archive, written by hand ----------------------------------------
# Header: "070701" and 13 eight-digit hex fields (ino, mode, uid, gid, nlink,
# mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize with
# its NUL, check), the name, NUL, padding to 4 bytes; then the data, padded
# to 4 bytes. The kernel's usr/gen_init_cpio.c writes the same.
ino=1
pad4() { local n=$(( (4 - $1 % 4) % 4 )); ((n)) && head -c "$n" /dev/zero; return 0; }
entry() { # name mode(octal) size rdevmajor rdevminor [file]
    local name=$1 mode=$2 size=$3 rmaj=$4 rmin=$5 file=${6:-}
    local namesize=$((${#name} + 1)) nlink=1
    [[ $((mode & 0170000)) -eq $((040000)) ]] && nlink=2
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$mode" 0 0 "$nlink" 0 "$size" 0 0 "$rmaj" "$rmin" "$namesize" 0
    printf '%s\0' "$name"
    pad4 $((110 + namesize))
    if [[ -n $file ]]; then
        cat "$file"
        pad4 "$size"
    fi
    ino=$((ino + 1))
}
dir() { entry "$1" $((040755)) 0 0 0; }
file() { entry "$1" $((0100755)) "$(stat -c %s "$2")" 0 0 "$2"; }

mkdir -p "$(dirname "$out")"
{
    for d in bin dev proc sys tmp; do dir "$d"; done
    # The kernel opens /dev/console for /init before anything is mounted.
    entry dev/console $((020600)) 0 5 1
    file init "$work/init"
    file bin/hog "$work/hog"
    [[ -n $agent ]] && file bin/guest-agent "$agent"
    entry TRAILER!!! 0 0 0 0
} >"$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"

log "$out: $(stat -c %s "$out") bytes (init $(stat -c %s "$work/init"), hog $(stat -c %s "$work/hog")${agent:+, guest-agent $(stat -c %s "$agent") from $agent})"
echo "$out"
