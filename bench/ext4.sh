#!/usr/bin/env bash
# ext4 side by side: `mke2fs -t ext4 -d` and `abforge mkfs ext4` on the same trees,
# with the ratio. Trees: a Debian root made by debootstrap (cached) and a synthetic
# tree of 50 000 small files. Needs root for debootstrap the first time.
#
# Contract used (DESIGN.md): abforge mkfs ext4 SOURCE IMAGE --size SIZE
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ABFORGE=${ABFORGE:-$ROOT/target/release/abforge}
CACHE=${ABFORGE_BENCH_CACHE:-/var/tmp/abforge-bench}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$CACHE"

if ! "$ABFORGE" mkfs ext4 --help >/dev/null 2>&1; then
    echo "ext4: skipped: $ABFORGE has no 'mkfs ext4' subcommand yet" >&2
    exit 0
fi

DEBROOT=$CACHE/debroot
if [ ! -x "$DEBROOT/bin/sh" ]; then
    debootstrap --variant=minbase --include=systemd,openssh-server,iptables bookworm "$DEBROOT" >"$CACHE/debootstrap.log" 2>&1
fi
SMALL=$CACHE/small-50k
if [ ! -d "$SMALL" ]; then
    mkdir -p "$SMALL.tmp"
    for d in $(seq 0 49); do
        mkdir -p "$SMALL.tmp/d$d"
        for f in $(seq 0 999); do printf 'file %s/%s\n' "$d" "$f" >"$SMALL.tmp/d$d/f$f"; done
    done
    mv "$SMALL.tmp" "$SMALL"
fi

now() { date +%s.%N; }

# Seconds one command takes: the best of two runs (page cache warm for both tools).
best_of_two() {
    local best="" t0 t1 d
    for _ in 1 2; do
        rm -f "$WORK/out.img"
        sync
        t0=$(now)
        "$@" >/dev/null
        t1=$(now)
        d=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
        if [ -z "$best" ] || awk -v d="$d" -v b="$best" 'BEGIN { exit !(d < b) }'; then best=$d; fi
    done
    rm -f "$WORK/out.img"
    echo "$best"
}

run_pair() {
    local name=$1 tree=$2 size=$3
    local m f
    m=$(best_of_two env E2FSPROGS_FAKE_TIME=1700000000 mke2fs -q -F -t ext4 -b 4096 -I 256 \
        -O ^has_journal,^resize_inode -E root_owner=0:0 -d "$tree" "$WORK/out.img" "$size")
    f=$(best_of_two env SOURCE_DATE_EPOCH=1700000000 "$ABFORGE" mkfs ext4 "$tree" "$WORK/out.img" --size "$size")
    awk -v n="$name" -v m="$m" -v f="$f" 'BEGIN {
        printf "ext4 %-22s mke2fs -d %7.3fs   abforge %7.3fs   ratio %5.1fx\n", n, m, f, m / f }'
}

run_pair "debootstrap root" "$DEBROOT" 1G
# 1G, not less: mke2fs's default of one inode per 16 KiB must number 50 000 files.
run_pair "50000 small files" "$SMALL" 1G
