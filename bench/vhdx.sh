#!/usr/bin/env bash
# VHDX output: abforge against the pipeline people script today, on the same input,
# side by side, with the ratio and the file sizes. Never an assertion: it prints.
#
#   bench/vhdx.sh [MANIFEST]
#
# 1. Always: `abforge convert` raw -> VHDX against `qemu-img convert -O vhdx
#    -o subformat=dynamic` of a 4 GiB sparse raw disk holding ~600 MiB of data.
# 2. When `abforge build` exists and MANIFEST (default manifests/eflow.yaml) is
#    there: `abforge build --format vhdx` against `abforge build --format raw`
#    followed by `qemu-img convert -O vhdx -o subformat=dynamic`.
#
# Environment: ABFORGE (default target/release/abforge, built if missing),
# BENCH_DIR (scratch, default a temporary directory), RUNS (default 3; the best run
# of each side is reported).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
abforge=${ABFORGE:-$root/target/release/abforge}
runs=${RUNS:-3}
manifest=${1:-$root/manifests/eflow.yaml}

if [[ ! -x $abforge ]]; then
    (cd "$root" && cargo build --release -p abforge >&2)
fi
command -v qemu-img >/dev/null || { echo "bench/vhdx.sh: qemu-img is needed (package qemu-utils)" >&2; exit 1; }

work=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/abforge-bench-vhdx.XXXXXX")}
mkdir -p "$work"
trap '[[ -z ${BENCH_DIR:-} ]] && rm -rf "$work"' EXIT

now() { date +%s.%N; }

# best_of OUT CMD...: runs CMD $runs times, each time after removing OUT and
# flushing the page cache's dirty data (untimed), and prints the fastest
# wall-clock time in seconds.
best_of() {
    local out=$1 best="" start end elapsed
    shift
    for _ in $(seq "$runs"); do
        rm -rf "$out"
        sync
        start=$(now)
        "$@" >/dev/null 2>&1
        end=$(now)
        elapsed=$(echo "$end - $start" | bc -l)
        if [[ -z $best ]] || (( $(echo "$elapsed < $best" | bc -l) )); then best=$elapsed; fi
    done
    printf '%.3f' "$best"
}

mib() { echo $(( ($1 + 1048575) / 1048576 )); }
allocated() { echo $(( $(stat -c %b "$1") * $(stat -c %B "$1") )); }

report() { # name abforge_seconds reference_seconds abforge_file reference_file content_bytes
    local ratio
    ratio=$(echo "$3 / $2" | bc -l)
    printf '%s\n' "$1"
    printf '  abforge    %8.3f s   file %6d MiB (allocated %d MiB)\n' "$2" "$(mib "$(stat -c %s "$4")")" "$(mib "$(allocated "$4")")"
    printf '  reference  %8.3f s   file %6d MiB (allocated %d MiB)\n' "$3" "$(mib "$(stat -c %s "$5")")" "$(mib "$(allocated "$5")")"
    printf '  content    %d MiB of non-hole data\n' "$(mib "$6")"
    printf '  ratio      %.2fx (reference time / abforge time)\n' "$ratio"
}

# --- 1. convert: 4 GiB sparse raw with ~600 MiB of data in 150 extents of 4 MiB ---
raw=$work/disk.raw
rm -f "$raw"
truncate -s 4G "$raw"
for i in $(seq 0 149); do
    # Extents spread over the disk, not block aligned, incompressible.
    offset=$(( i * 27 + (i % 7) ))
    head -c $((4 << 20)) /dev/urandom | dd of="$raw" bs=1M seek="$offset" conv=notrunc status=none
done
sync
content=$(allocated "$raw")

ours=$work/abforge.vhdx
theirs=$work/qemu.vhdx
# abforge's output is complete only once it is on disk (it fsyncs before renaming);
# qemu-img does not fsync, so the reference pipeline ends with `sync FILE`.
qemu_convert() { qemu-img convert -f raw -O vhdx -o subformat=dynamic "$1" "$2" && sync "$2"; }
t_ours=$(best_of "$ours" "$abforge" convert "$raw" "$ours" --format vhdx)
t_theirs=$(best_of "$theirs" qemu_convert "$raw" "$theirs")
qemu-img compare -q -f vhdx -F vhdx "$ours" "$theirs" || echo "  WARNING: the two VHDX files differ in content"
qemu-img check -q -f vhdx "$ours" || echo "  WARNING: qemu-img check reports errors on abforge's VHDX"
report "convert 4 GiB sparse raw (~600 MiB data) -> dynamic VHDX" "$t_ours" "$t_theirs" "$ours" "$theirs" "$content"

# --- 2. build: direct VHDX against raw + qemu-img convert (once build exists) ---
if "$abforge" build --help >/dev/null 2>&1 && [[ -f $manifest ]]; then
    direct=$work/direct
    via_raw=$work/via-raw
    build_vhdx() { "$abforge" build "$manifest" -o "$direct" --format vhdx --quiet; }
    build_raw_then_convert() {
        "$abforge" build "$manifest" -o "$via_raw" --format raw --quiet &&
            qemu_convert "$(ls "$via_raw"/*.raw)" "$via_raw/converted.vhdx"
    }
    t_direct=$(best_of "$direct" build_vhdx)
    t_via=$(best_of "$via_raw" build_raw_then_convert)
    raw_image=$(ls "$via_raw"/*.raw)
    report "build $(basename "$manifest"): --format vhdx vs --format raw + qemu-img convert" \
        "$t_direct" "$t_via" "$(ls "$direct"/*.vhdx)" "$via_raw/converted.vhdx" "$(allocated "$raw_image")"
else
    echo "build: skipped (abforge build is not available yet, or $manifest is missing)"
fi
