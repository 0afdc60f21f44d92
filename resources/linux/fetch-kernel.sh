#!/usr/bin/env bash
# Fetch Debian's stock cloud kernel and extract an uncompressed ELF vmlinux
# that can be booted through its PVH entry (XEN_ELFNOTE_PHYS32_ENTRY).
#
#   resources/linux/fetch-kernel.sh            # prints <cache>/linux/vmlinux
#   VMLINUX=$(resources/linux/fetch-kernel.sh)
#
# Output in <cache>/linux/: vmlinux (PVH ELF), bzImage (the package's
# boot/vmlinuz-*, unchanged), VERSION (key=value), config, pkg/ (the unpacked
# package: boot/, lib/modules/).
#
# Environment:
#   VMM_CACHE_DIR        cache root (default: <repo>/.cache); output in $VMM_CACHE_DIR/linux
#   LINUX_IMAGE_PACKAGE  apt package to fetch (default: linux-image-cloud-amd64, a
#                        metapackage resolved to the real linux-image-<ver>-cloud-amd64)
#   LINUX_DEB            use this already downloaded .deb instead of apt-get download
#   FORCE=1              re-extract even if a valid vmlinux is already cached
#
# The package is only unpacked (dpkg-deb -x), never installed. stdout carries
# only the path of vmlinux; everything else goes to stderr.
# See resources/linux/README.md and EARLY-BOOT.md.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$script_dir/../.." && pwd)
cache_root=${VMM_CACHE_DIR:-$repo/.cache}
out=$cache_root/linux
pkg=${LINUX_IMAGE_PACKAGE:-linux-image-cloud-amd64}

log() { printf 'fetch-kernel: %s\n' "$*" >&2; }
die() { printf 'fetch-kernel: error: %s\n' "$*" >&2; exit 1; }

need() {
    local tool=$1 hint=$2
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (install: $hint)"
}

# --- small binary readers (little endian) -----------------------------------
u8()  { od -A n -t u1 -j "$2" -N 1 "$1" | tr -d ' \n'; }
u16() { od -A n -t u2 -j "$2" -N 2 --endian=little "$1" | tr -d ' \n'; }
u32() { od -A n -t u4 -j "$2" -N 4 --endian=little "$1" | tr -d ' \n'; }
hexat() { od -A n -t x1 -j "$2" -N "$3" "$1" | tr -d ' \n'; }

is_elf64_x86() {
    local f=$1
    [[ -s $f ]] || return 1
    [[ $(hexat "$f" 0 5) == 7f454c4602 ]] || return 1          # \x7fELF, ELFCLASS64
    readelf -h "$f" 2>/dev/null | grep -q 'Machine:.*X86-64' || return 1
}

# Print the PVH entry point (hex) from the Xen ELF note of type 18
# (XEN_ELFNOTE_PHYS32_ENTRY); fail if there is none. Linux emits it as an
# 8-byte (_ASM_PTR) value, other guests as 4 bytes; both are little endian.
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

valid_vmlinux() { is_elf64_x86 "$1" && pvh_entry "$1" >/dev/null; }

# --- decompression -----------------------------------------------------------
# name of the compression whose magic starts at offset $2 of file $1
compression_at() {
    local m
    m=$(hexat "$1" "$2" 6)
    case $m in
        1f8b*)         echo gzip ;;
        fd377a585a00)  echo xz ;;
        28b52ffd*)     echo zstd ;;
        02214c18*)     echo lz4 ;;      # lz4 legacy frame (lz4 -l), what Kbuild emits
        5d0000*)       echo lzma ;;
        425a68*)       echo bzip2 ;;
        894c5a4f*)     echo lzo ;;
        *)             return 1 ;;
    esac
}

# the tool that decompresses $1, and the package that ships it
tool_for() {
    case $1 in
        gzip)  echo "gzip gzip" ;;
        xz)    echo "xz xz-utils" ;;
        zstd)  echo "zstd zstd" ;;
        lz4)   echo "lz4 lz4" ;;
        lzma)  echo "xz xz-utils" ;;
        bzip2) echo "bzip2 bzip2" ;;
        lzo)   echo "lzop lzop" ;;
    esac
}

# decompress stdin to stdout
decompress() {
    case $1 in
        gzip)  gzip -dc ;;
        xz)    xz -dc ;;
        zstd)  zstd -dcq ;;
        lz4)   lz4 -dc ;;
        lzma)  xz --format=lzma -dc ;;
        bzip2) bzip2 -dc ;;
        lzo)   lzop -dc ;;
    esac
}

# Extract vmlinux from bzImage $1 into $2 using the x86 boot protocol header
# (setup_sects at 0x1f1, "HdrS" at 0x202, version at 0x206, payload_offset at
# 0x248 and payload_length at 0x24c, protocol >= 2.08). Kbuild appends the
# uncompressed size as le32 after every payload (for gzip it is the ISIZE
# trailer itself); we strip it for the others and check the output against it.
extract_by_header() {
    local bz=$1 dst=$2 setup_sects version poff plen start comp expected got
    [[ $(hexat "$bz" $((0x202)) 4) == 48647253 ]] || { log "no HdrS boot header"; return 1; }
    version=$(u16 "$bz" $((0x206)))
    (( version >= 0x208 )) || { log "boot protocol $(printf '%#x' "$version") has no payload fields"; return 1; }
    setup_sects=$(u8 "$bz" $((0x1f1)))
    (( setup_sects == 0 )) && setup_sects=4
    poff=$(u32 "$bz" $((0x248)))
    plen=$(u32 "$bz" $((0x24c)))
    start=$(( (setup_sects + 1) * 512 + poff ))
    comp=$(compression_at "$bz" "$start") || { log "unknown compression magic at $start"; return 1; }
    # shellcheck disable=SC2046
    need $(tool_for "$comp")
    expected=$(u32 "$bz" $((start + plen - 4)))
    log "payload: $comp, offset $start, $plen bytes, uncompressed $expected bytes"
    local feed=$((plen - 4))
    [[ $comp == gzip ]] && feed=$plen
    tail -c +"$((start + 1))" "$bz" | head -c "$feed" | decompress "$comp" >"$dst" 2>/dev/null || true
    got=$(stat -c %s "$dst")
    [[ $got == "$expected" ]] || { log "decompressed $got bytes, header says $expected"; return 1; }
    COMPRESSION=$comp
}

# Fallback, like scripts/extract-vmlinux: try every known magic in the file.
extract_by_scan() {
    local bz=$1 dst=$2 comp pat off tool
    for comp in gzip xz zstd lz4 lzma bzip2 lzo; do
        case $comp in
            gzip)  pat='\x1f\x8b\x08' ;;
            xz)    pat='\xfd7zXZ\x00' ;;
            zstd)  pat='\x28\xb5\x2f\xfd' ;;
            lz4)   pat='\x02\x21\x4c\x18' ;;
            lzma)  pat='\x5d\x00\x00\x00' ;;
            bzip2) pat='BZh' ;;
            lzo)   pat='\x89LZO' ;;
        esac
        read -r tool _ < <(tool_for "$comp")
        command -v "$tool" >/dev/null 2>&1 || continue
        for off in $(LC_ALL=C grep -obUaP "$pat" "$bz" 2>/dev/null | cut -d: -f1); do
            tail -c +"$((off + 1))" "$bz" | decompress "$comp" >"$dst" 2>/dev/null || true
            if is_elf64_x86 "$dst"; then
                log "payload found by scanning: $comp at offset $off"
                COMPRESSION=$comp
                return 0
            fi
        done
    done
    return 1
}

# --- main --------------------------------------------------------------------
need readelf binutils
need od coreutils
need dpkg-deb dpkg
need flock util-linux

mkdir -p "$out"
exec 9>"$out/.lock"
flock 9

vmlinux=$out/vmlinux
if [[ ${FORCE:-0} != 1 ]] && valid_vmlinux "$vmlinux" && [[ -s $out/bzImage ]]; then
    log "cached: $vmlinux ($(stat -L -c %s "$vmlinux") bytes, PVH entry $(pvh_entry "$vmlinux"))"
    echo "$vmlinux"
    exit 0
fi

t0=$(date +%s.%N)
rm -rf "$out"/tmp.*     # left by a killed run; we hold the lock
work=$(mktemp -d "$out/tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [[ -n ${LINUX_DEB:-} ]]; then
    [[ -f $LINUX_DEB ]] || die "LINUX_DEB=$LINUX_DEB does not exist"
    deb=$LINUX_DEB
    log "using $deb"
else
    need apt-get apt
    need apt-cache apt

    # The package must be known to apt; refresh the lists once if it is not.
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then
        log "'$pkg' unknown to apt, running apt-get update"
        if (( EUID != 0 )); then
            die "apt-get update needs root; run it, or set LINUX_DEB=<path to a linux-image .deb>"
        fi
        apt-get update -qq >&2 || die "apt-get update failed"
        apt-cache show "$pkg" >/dev/null 2>&1 || die "apt has no package '$pkg'"
    fi

    # linux-image-cloud-amd64 is a metapackage: follow its Depends to the real
    # image package (linux-image-<abi>-cloud-amd64), which ships boot/vmlinuz-*.
    real=$(apt-cache depends "$pkg" 2>/dev/null |
        awk '$1 ~ /^\|?(Pre)?Depends:$/ && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    real=${real:-$pkg}
    [[ $real != "$pkg" ]] && log "$pkg -> $real"

    log "downloading $real"
    apt_opts=(-q)
    # apt drops to user _apt for downloads and warns that it cannot write to a
    # root-owned directory; as root, download as root instead.
    (( EUID == 0 )) && apt_opts+=(-o APT::Sandbox::User=root)
    (cd "$work" && apt-get download "${apt_opts[@]}" "$real" >&2) || die "apt-get download $real failed"
    deb=$(ls "$work"/*.deb 2>/dev/null | head -n 1)
    [[ -n $deb ]] || die "apt-get download produced no .deb"
fi

deb_pkg=$(dpkg-deb -f "$deb" Package)
deb_ver=$(dpkg-deb -f "$deb" Version)
log "unpacking $deb_pkg $deb_ver"
dpkg-deb -x "$deb" "$work/pkg"

bz=$(ls "$work"/pkg/boot/vmlinuz-* 2>/dev/null | head -n 1)
[[ -n $bz ]] || die "$deb_pkg contains no boot/vmlinuz-* (is it a metapackage? set LINUX_IMAGE_PACKAGE)"
release=${bz##*/vmlinuz-}

COMPRESSION=
if ! extract_by_header "$bz" "$work/vmlinux" || ! is_elf64_x86 "$work/vmlinux"; then
    log "boot header extraction failed, scanning for compressed payloads"
    extract_by_scan "$bz" "$work/vmlinux" || die "could not extract an ELF vmlinux from $bz"
fi

entry=$(pvh_entry "$work/vmlinux") ||
    die "vmlinux has no Xen PVH note (owner Xen, type 18 XEN_ELFNOTE_PHYS32_ENTRY); kernel built without CONFIG_PVH?"

# Publish: the unpacked tree (modules, config) first, vmlinux last, so that a
# valid vmlinux implies a complete cache. Files are renamed into place, so a
# reader never sees a half-written one.
rm -rf "$out/pkg"
mv "$work/pkg" "$out/pkg"
cp "$out/pkg/boot/config-$release" "$work/config" && mv -f "$work/config" "$out/config"
cp "$out/pkg/boot/vmlinuz-$release" "$work/bzImage" && mv -f "$work/bzImage" "$out/bzImage"
cat >"$work/VERSION" <<EOF
package=$deb_pkg
version=$deb_ver
release=$release
compression=$COMPRESSION
pvh_entry=$entry
EOF
mv -f "$work/VERSION" "$out/VERSION"
mv -f "$work/vmlinux" "$vmlinux"

t1=$(date +%s.%N)
log "kernel $release ($deb_pkg $deb_ver)"
log "vmlinux: $(stat -L -c %s "$vmlinux") bytes, ELF64 x86-64, PVH entry (XEN_ELFNOTE_PHYS32_ENTRY) $entry"
log "took $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s"
echo "$vmlinux"
