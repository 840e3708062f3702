#!/usr/bin/env bash
# dm-verity: `veritysetup format` vs `abforge verity format`, side by side on the
# same inputs in the same run (issue 3):
#   (a) a 2 GiB file of random bytes;
#   (b) a 4 GiB sparse file holding 300 MiB of data, holes elsewhere;
#   (c) abforge's hashing throughput on (a) against the SHA-256 limit of this
#       machine, `openssl speed -evp sha256 -bytes 4096` on every core.
# Inputs are cached under ${BENCH_DIR:-/var/tmp/abforge-bench}/verity. Expects
# `cargo build --release` to have run (uses $CARGO_TARGET_DIR if set).
# Peak RSS comes from GNU time (/usr/bin/time, Debian package `time`) when present.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
abforge=${CARGO_TARGET_DIR:-$root/target}/release/abforge
dir=${BENCH_DIR:-/var/tmp/abforge-bench}/verity
cores=$(nproc)
salt=5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a
uuid=01234567-89ab-4def-8123-456789abcdef
gnu_time=/usr/bin/time

[ -x "$abforge" ] || { echo "missing $abforge: run cargo build --release" >&2; exit 1; }
command -v veritysetup >/dev/null || { echo "veritysetup not installed (package cryptsetup-bin)" >&2; exit 1; }
[ -x "$gnu_time" ] && "$gnu_time" -f %M true >/dev/null 2>&1 || gnu_time=""
mkdir -p "$dir"

gib=$((1 << 30)); mib=$((1 << 20))
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }

# Deterministic fast "random" bytes: AES-CTR keystream of zeros.
# openssl dies of SIGPIPE when head has enough: that is expected, not a failure.
stream() { { openssl enc -aes-128-ctr -nosalt -pass pass:abforge-bench -pbkdf2 -in /dev/zero 2>/dev/null || true; } | head -c "$1"; }

random=$dir/random-2g.img
if [ "$(stat -c %s "$random" 2>/dev/null || echo 0)" != $((2 * gib)) ]; then
    echo "creating $random"
    stream $((2 * gib)) > "$random.tmp" && mv "$random.tmp" "$random"
fi
sparse=$dir/sparse-4g.img
if [ "$(stat -c %s "$sparse" 2>/dev/null || echo 0)" != $((4 * gib)) ]; then
    echo "creating $sparse"
    rm -f "$sparse.tmp"
    truncate -s $((4 * gib)) "$sparse.tmp"
    # 300 MiB of data in three 100 MiB runs; the rest are holes.
    for at_mib in 0 1536 3996; do
        stream $((100 * mib)) | dd of="$sparse.tmp" bs=1M iflag=fullblock seek="$at_mib" conv=notrunc status=none
    done
    mv "$sparse.tmp" "$sparse"
fi

# run NAME OUT CMD...: runs CMD, prints nothing, sets $secs, $rss_mib and $root.
run() {
    local out=$1; shift
    rm -f "$out"
    local start end log=$dir/run.log
    start=$(date +%s.%N)
    if [ -n "$gnu_time" ]; then
        "$gnu_time" -f %M -o "$dir/rss" "$@" > "$log"
        rss_mib=$(awk '{printf "%.0f", $1 / 1024}' "$dir/rss")
    else
        "$@" > "$log"
        rss_mib="?"
    fi
    end=$(date +%s.%N)
    secs=$(calc "$end - $start")
    root=$(awk '/^Root hash:/ {print $3}' "$log")
}

compare() {
    local label=$1 data=$2 bytes=$3
    cat "$data" > /dev/null   # same page-cache state for both tools
    local opts=(--salt="$salt" --uuid="$uuid")
    run "$dir/v.hash" veritysetup format "$data" "$dir/v.hash" "${opts[@]}"
    local v_secs=$secs v_rss=$rss_mib v_root=$root
    run "$dir/a.hash" "$abforge" verity format "$data" "$dir/a.hash" "${opts[@]}"
    local a_secs=$secs a_rss=$rss_mib a_root=$root
    local same=identical
    [ "$v_root" = "$a_root" ] && cmp -s "$dir/v.hash" "$dir/a.hash" || same="DIFFERENT OUTPUT"
    printf '%s\n' "$label"
    printf '  veritysetup format      %7.2f s  %8.0f MiB/s  peak RSS %s MiB\n' "$v_secs" "$(calc "$bytes / $mib / $v_secs")" "$v_rss"
    printf '  abforge verity format   %7.2f s  %8.0f MiB/s  peak RSS %s MiB\n' "$a_secs" "$(calc "$bytes / $mib / $a_secs")" "$a_rss"
    printf '  speed-up %.2fx, outputs %s\n' "$(calc "$v_secs / $a_secs")" "$same"
    last_abforge_secs=$a_secs
    rm -f "$dir/v.hash" "$dir/a.hash"
}

echo "verity: $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
grep -qw sha_ni /proc/cpuinfo && echo "  CPU has SHA extensions (sha_ni): sha2 uses them" || echo "  CPU lacks SHA extensions"
compare "(a) 2 GiB random" "$random" $((2 * gib))
random_secs=$last_abforge_secs
compare "(b) 4 GiB, 300 MiB data + holes" "$sparse" $((4 * gib))

# (c) The limit: openssl's SHA-256 over 4 KiB blocks on all cores (1000s of bytes/s).
limit_k=$(openssl speed -multi "$cores" -seconds 3 -evp sha256 -bytes 4096 2>/dev/null \
    | awk '$1 == "sha256" || $1 == "evp" {v=$NF} END {sub(/k$/, "", v); print v}')
limit=$(calc "$limit_k * 1000")
ours=$(calc "2 * $gib / $random_secs")
printf '(c) SHA-256 limit (openssl speed x %d cores) %.0f MiB/s; abforge on (a) %.0f MiB/s = %.0f%% of the limit\n' \
    "$cores" "$(calc "$limit / $mib")" "$(calc "$ours / $mib")" "$(calc "100 * $ours / $limit")"
