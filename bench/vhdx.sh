#!/usr/bin/env bash
# VHDX output (issue 5), side by side on the same inputs, with ratios and file sizes:
#   1. `abforge convert` raw -> VHDX against `qemu-img convert -O vhdx -o
#      subformat=dynamic` of a 4 GiB sparse raw disk holding 600 MiB of data
#      (no target: context for 2).
#   2. (a) `abforge build --format vhdx` of manifests/eflow.yaml against the same
#      build `--format raw` followed by `qemu-img convert -O vhdx -o subformat=dynamic`
#      (target: at least 1.5x), with the VHDX file size against the bytes of real
#      (non-zero) content (target: the file is no larger than the content plus one
#      32 MiB block per partition boundary plus 8 MiB). The same comparison on the
#      whole-build manifest of bench/build.sh (the debootstrap root) follows, for
#      context.
# Timing rules: bench/lib.sh. qemu-img does not fsync; the timed run ends with `sync`
# of the output for both sides anyway.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)

command -v qemu-img >/dev/null || { echo "qemu-img is needed (package qemu-utils)" >&2; exit 1; }

# nonzero_bytes FILE: bytes in 4 KiB blocks of FILE that are not all zero (only the
# data extents are read). Falls back to the allocated bytes without python3.
nonzero_bytes() {
    if command -v python3 >/dev/null; then
        python3 - "$1" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
end = os.fstat(fd).st_size
zero = bytes(1 << 20)
total = pos = 0
while pos < end:
    try:
        start = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    stop = os.lseek(fd, start, os.SEEK_HOLE)
    at = start
    while at < stop:
        chunk = os.pread(fd, min(1 << 20, stop - at), at)
        if chunk != zero[: len(chunk)]:
            for i in range(0, len(chunk), 4096):
                block = chunk[i : i + 4096]
                if block.count(0) != len(block):
                    total += len(block)
        at += len(chunk)
    pos = stop
print(total)
EOF
    else
        allocated "$1"
    fi
}

# --- 1. convert: 4 GiB sparse raw with 600 MiB of data in 150 extents of 4 MiB ---
raw=$BENCH_DIR/vhdx-convert-4g.raw
if [ "$(stat -c %s "$raw" 2>/dev/null || echo 0)" != $((4 << 30)) ]; then
    echo "creating $raw"
    rm -f "$raw.tmp"
    truncate -s 4G "$raw.tmp"
    for i in $(seq 0 149); do
        # Extents spread over the disk, not block aligned, incompressible.
        head -c $((4 << 20)) /dev/urandom |
            dd of="$raw.tmp" bs=1M seek=$((i * 27 + (i % 7))) conv=notrunc status=none
    done
    mv "$raw.tmp" "$raw"
fi
ours=$WORK/abforge.vhdx
theirs=$WORK/qemu.vhdx
abf_convert() { rss "$ABFORGE" convert "$raw" "$ours" --format vhdx; }
qemu_convert() { rss qemu-img convert -f raw -O vhdx -o subformat=dynamic "$raw" "$theirs"; }
warm "$raw"
pair qemu_convert "$theirs" abf_convert "$ours"
qemu-img compare -q -f vhdx -F vhdx "$ours" "$theirs" || echo "  WARNING: the two VHDX files differ in content"
qemu-img check -q -f vhdx "$ours" || echo "  WARNING: qemu-img check reports errors on abforge's VHDX"
print_pair "1. convert 4 GiB sparse raw (600 MiB data) -> dynamic VHDX" "qemu-img convert" "abforge convert"
printf '  files: abforge %d MiB (allocated %d), qemu-img %d MiB (allocated %d)\n' \
    "$(mib "$(stat -c %s "$ours")")" "$(mib "$(allocated "$ours")")" "$(mib "$(stat -c %s "$theirs")")" "$(mib "$(allocated "$theirs")")"
result "vhdx convert 4 GiB raw (600 MiB data)" "$(describe "$abf_wall" "$abf_cpu" "$abf_rss")" \
    "qemu-img $(describe "$ref_wall" "$ref_cpu" "$ref_rss")" "$(fmt %.2fx "$ratio")" "(none)" "-"
rm -f "$ours" "$theirs"

# --- 2. build: direct VHDX against raw + qemu-img convert ---
direct=$WORK/build-vhdx
via_raw=$WORK/build-raw
build_vhdx() { rss "$ABFORGE" build "$manifest" -o "$direct" --format vhdx --quiet; }
build_raw_then_convert() {
    rss "$ABFORGE" build "$manifest" -o "$via_raw" --format raw --quiet &&
        rss qemu-img convert -f raw -O vhdx -o subformat=dynamic "$(ls "$via_raw"/*.raw)" "$via_raw/converted.vhdx"
}

# build_pair LABEL ROW MANIFEST TARGETED: one comparison; TARGETED=yes adds the target rows.
build_pair() {
    local label=$1 row=$2 targeted=$4
    manifest=$3
    pair build_raw_then_convert "$via_raw" build_vhdx "$direct"
    local vhdx raw_image size alloc content parts bound
    vhdx=$(ls "$direct"/*.vhdx)
    raw_image=$(ls "$via_raw"/*.raw)
    qemu-img compare -q -f raw -F vhdx "$raw_image" "$vhdx" || echo "  WARNING: the VHDX and the raw build differ in content"
    qemu-img check -q -f vhdx "$vhdx" || echo "  WARNING: qemu-img check reports errors on abforge's VHDX"
    size=$(stat -c %s "$vhdx")
    alloc=$(allocated "$vhdx")
    content=$(nonzero_bytes "$raw_image")
    parts=$(sgdisk -p "$raw_image" 2>/dev/null | awk '/^ +[0-9]+ +[0-9]+/ { n++ } END { print n }')
    # The issue's bound: the content, one 32 MiB block per partition boundary (the
    # partitions plus one), and 8 MiB of headers, metadata and BAT.
    bound=$((content + (parts + 1) * (32 << 20) + (8 << 20)))
    print_pair "$label" "build --format raw + qemu-img convert" "build --format vhdx"
    printf '  VHDX: abforge %d MiB (allocated %d MiB), via qemu-img %d MiB (allocated %d MiB)\n' \
        "$(mib "$size")" "$(mib "$alloc")" \
        "$(mib "$(stat -c %s "$via_raw/converted.vhdx")")" "$(mib "$(allocated "$via_raw/converted.vhdx")")"
    printf '  real content %d MiB (non-zero 4 KiB blocks of the raw build), %d partitions: bound %d MiB\n' \
        "$(mib "$content")" "$parts" "$(mib "$bound")"
    result "vhdx (a) build $row: direct vs raw+qemu-img" "$(describe "$abf_wall" "$abf_cpu" "$abf_rss")" \
        "raw+convert $(describe "$ref_wall" "$ref_cpu" "$ref_rss")" "$(fmt %.2fx "$ratio")" \
        "$([ "$targeted" = yes ] && echo ">= 1.5x" || echo "(context)")" \
        "$([ "$targeted" = yes ] && at_least "$ratio" 1.5 || echo "-")"
    result "vhdx (a) file size, $row" "$(mib "$size") MiB (alloc $(mib "$alloc"))" \
        "qemu-img $(mib "$(stat -c %s "$via_raw/converted.vhdx")") MiB" "content $(mib "$content") MiB" \
        "<= $(mib "$bound") MiB" "$(below "$size" $((bound + 1)))"
    rm -rf "$direct" "$via_raw"
}

build_pair "2. (a) build manifests/eflow.yaml (demo root)" "eflow.yaml" "$bench_root/manifests/eflow.yaml" yes

# The debootstrap-root manifest of bench/build.sh, when its root is cached.
if [ -x "$BENCH_DIR/debroot/bin/sh" ]; then
    sed -e "s|@ROOTFS@|$BENCH_DIR/debroot|; s|@ESP@|$bench_root/manifests/demo-esp|; s|@DATA_SIZE@|2GiB|" \
        "$here/eflow-debroot.yaml.in" >"$WORK/eflow-debroot.yaml"
    warm "$BENCH_DIR/debroot"
    build_pair "2. (a') the same with the debootstrap root (bench/eflow-debroot.yaml.in)" "debootstrap root" \
        "$WORK/eflow-debroot.yaml" no
fi
