#!/usr/bin/env bash
# ext4 side by side (issue 4): `mke2fs -d` and `abforge mkfs ext4` on the same trees,
# same image size, in one run, with the ratio:
#   (a) a Debian root made by debootstrap (minbase + systemd, openssh-server,
#       iptables; cached in $BENCH_DIR/debroot, made here as root when missing) in a
#       4 GiB image, the RootFS size of manifests/eflow.yaml (target: at least 4x);
#   (b) a synthetic tree of 50 000 small files (cached in $BENCH_DIR/small-50k) in a
#       1 GiB image: mke2fs's default of one inode per 16 KiB gives 65 536 inodes,
#       enough for both (target: at least 10x);
#   and abforge's peak RSS for the 4 GiB image (target: under 256 MiB); for context,
#   the time dd takes to write the bytes of (a)'s image to the same disk.
# Both tools write a read-only-root style file system: 4 KiB blocks, 256-byte
# inodes, no journal, no reserved blocks, root-owned root directory. mke2fs keeps
# its other defaults (metadata_csum, 64bit, flex_bg, extents...: the feature set
# abforge writes). Timing rules: bench/lib.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

DEBROOT=$BENCH_DIR/debroot
if [ ! -x "$DEBROOT/bin/sh" ]; then
    [ "$(id -u)" = 0 ] || { echo "ext4: $DEBROOT is missing and only root can make it (debootstrap)" >&2; exit 1; }
    echo "creating $DEBROOT with debootstrap (cached)"
    rm -rf "$DEBROOT.tmp"
    debootstrap --variant=minbase --include=systemd,openssh-server,iptables bookworm "$DEBROOT.tmp" \
        >"$BENCH_DIR/debootstrap.log" 2>&1 || { tail -n 20 "$BENCH_DIR/debootstrap.log" >&2; exit 1; }
    mv "$DEBROOT.tmp" "$DEBROOT"
fi
SMALL=$BENCH_DIR/small-50k
if [ ! -d "$SMALL" ]; then
    echo "creating $SMALL"
    rm -rf "$SMALL.tmp"
    mkdir -p "$SMALL.tmp"
    for d in $(seq 0 49); do
        mkdir -p "$SMALL.tmp/d$d"
        for f in $(seq 0 999); do printf 'file %s/%s\n' "$d" "$f" >"$SMALL.tmp/d$d/f$f"; done
    done
    mv "$SMALL.tmp" "$SMALL"
fi

m_img=$WORK/mke2fs.img
a_img=$WORK/abforge.img
mke2fs_d() {
    rss mke2fs -q -F -t ext4 -b 4096 -I 256 -m 0 -O ^has_journal,^resize_inode \
        -E root_owner=0:0 -d "$tree" "$m_img" "$size"
}
abforge_mkfs() { rss "$ABFORGE" mkfs ext4 "$tree" "$a_img" --size "${size}iB" --owner 0:0; }

# run_pair LABEL TREE SIZE (mke2fs spelling, e.g. 4G; abforge gets 4GiB)
run_pair() {
    local label=$1
    tree=$2 size=$3
    warm "$tree"
    pair mke2fs_d "$m_img" abforge_mkfs "$a_img"
    print_pair "$label: $(find "$tree" | wc -l) entries, $(du -sm "$tree" | cut -f1) MiB, $size image" \
        "mke2fs -d" "abforge mkfs ext4"
    a_allocated=$(allocated "$a_img") # for the dd line after (a)
    local check
    for check in "$m_img" "$a_img"; do
        e2fsck -fn "$check" >/dev/null 2>&1 || echo "  WARNING: e2fsck -fn reports errors on $(basename "$check")"
    done
    rm -f "$m_img" "$a_img"
}

run_pair "(a) debootstrap root" "$DEBROOT" 4G
result "ext4 (a) debootstrap root, 4 GiB" "$(describe "$abf_wall" "$abf_cpu" "$abf_rss")" \
    "mke2fs -d $(describe "$ref_wall" "$ref_cpu" "$ref_rss")" "$(fmt %.2fx "$ratio")" ">= 4x" "$(at_least "$ratio" 4)"
root_rss=$abf_rss root_ref_rss=$ref_rss
# Context for (a): the time `dd` takes to write as many bytes as abforge's image
# holds straight to this disk (O_DIRECT, 4 MiB writes), best of $RUNS. abforge's
# run is bound by the disk, not the CPU: it ends about when its 262 MiB are stored
# (0.16-0.23 s for dd alone here, from one minute to the next, on a shared disk), so
# this line says how much of a slow (a) was the disk. mke2fs -d is CPU-bound.
disk_img=$WORK/dd.img
dd_same_bytes() {
    dd if=/dev/zero of="$disk_img" bs=4M count="$(((a_allocated + 4194303) / 4194304))" oflag=direct status=none
}
if single dd_same_bytes "$disk_img" 2>/dev/null; then
    of_dd=$(calc "$abf_wall / $one_wall")
    printf 'the disk for (a): dd writes the same %s MiB straight to it in %.2f s; abforge takes %.2fx that, mke2fs -d %.2fx\n' \
        "$(mib "$a_allocated")" "$one_wall" "$of_dd" "$(calc "$ref_wall / $one_wall")"
    result "ext4 (a) against the disk alone" "$(fmt %.2f "$abf_wall") s" "dd, same bytes $(fmt %.2f "$one_wall") s" \
        "$(fmt %.2fx "$of_dd") dd" "(context)" "-"
else
    echo "the disk for (a): not measured (dd oflag=direct failed in $WORK)"
fi
rm -f "$disk_img"
run_pair "(b) 50 000 small files" "$SMALL" 1G
result "ext4 (b) 50 000 small files, 1 GiB" "$(describe "$abf_wall" "$abf_cpu" "$abf_rss")" \
    "mke2fs -d $(describe "$ref_wall" "$ref_cpu" "$ref_rss")" "$(fmt %.2fx "$ratio")" ">= 10x" "$(at_least "$ratio" 10)"
printf 'abforge peak RSS for the 4 GiB image of (a): %s MiB (target < 256 MiB)\n' "$root_rss"
result "ext4 peak RSS, 4 GiB image" "$root_rss MiB" "mke2fs $root_ref_rss MiB" "$root_rss MiB" "< 256 MiB" \
    "$( [ "$root_rss" = "?" ] && echo "n/a" || below "$root_rss" 256)"
