#!/usr/bin/env bash
# dm-verity: `veritysetup format` vs `abforge verity format`, side by side on the
# same inputs in the same run (issue 3):
#   (a) a 2 GiB file of random bytes (target: at least 2.5x);
#   (b) a 4 GiB sparse file holding 300 MiB of data, holes elsewhere (at least 20x),
#       and abforge's peak RSS on it (under 64 MiB plus the size of the tree);
#   (c) abforge's hashing throughput on (a) against the SHA-256 limit of this
#       machine, `openssl speed -evp sha256 -bytes 4096` times the cores (at least 80 %).
# Both tools get the same salt and UUID, the tree goes to a separate file, and the
# outputs are compared byte for byte. Inputs are cached under $BENCH_DIR/verity.
# Timing rules: bench/lib.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

dir=$BENCH_DIR/verity
cores=$(nproc)
salt=5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a
uuid=01234567-89ab-4def-8123-456789abcdef
command -v veritysetup >/dev/null || { echo "veritysetup not installed (package cryptsetup-bin)" >&2; exit 1; }
mkdir -p "$dir"

gib=$((1 << 30)); mib=$((1 << 20))

# Deterministic fast "random" bytes: AES-CTR keystream of zeros.
# openssl dies of SIGPIPE when head has enough: that is expected, not a failure.
stream() { { openssl enc -aes-128-ctr -nosalt -pass pass:abforge-bench -pbkdf2 -in /dev/zero 2>/dev/null || true; } | head -c "$1"; }

random=$dir/random-2g.img
if [ "$(stat -c %s "$random" 2>/dev/null || echo 0)" != $((2 * gib)) ]; then
    echo "creating $random"
    stream $((2 * gib)) >"$random.tmp" && mv "$random.tmp" "$random"
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

v_hash=$WORK/veritysetup.hash
a_hash=$WORK/abforge.hash
opts=(--salt="$salt" --uuid="$uuid")
ref_format() { rss veritysetup format "$data" "$v_hash" "${opts[@]}"; }
abf_format() { rss "$ABFORGE" verity format "$data" "$a_hash" "${opts[@]}"; }

compare() {
    local label=$1 bytes=$2
    warm "$data"
    pair ref_format "$v_hash" abf_format "$a_hash"
    local same="identical output"
    if ! cmp -s "$v_hash" "$a_hash" ||
        [ "$(awk '/^Root hash:/ {print $3}' "$WORK/ref_format.log")" != "$(awk '/^Root hash:/ {print $3}' "$WORK/abf_format.log")" ]; then
        same="DIFFERENT OUTPUT"
    fi
    tree_bytes=$(stat -c %s "$a_hash")
    print_pair "$label" "veritysetup format" "abforge verity format"
    printf '  %.0f MiB/s vs %.0f MiB/s; trees and root hashes: %s\n' \
        "$(calc "$bytes / $mib / $ref_wall")" "$(calc "$bytes / $mib / $abf_wall")" "$same"
    rm -f "$v_hash" "$a_hash"
}

echo "verity: $cores cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
grep -qw sha_ni /proc/cpuinfo && echo "  CPU has SHA extensions (sha_ni)" || echo "  CPU lacks SHA extensions"

data=$random
compare "(a) 2 GiB random" $((2 * gib))
result "verity (a) 2 GiB random" "$(describe "$abf_wall" "$abf_cpu" "$abf_rss")" \
    "veritysetup $(describe "$ref_wall" "$ref_cpu" "$ref_rss")" "$(fmt %.2fx "$ratio")" ">= 2.5x" "$(at_least "$ratio" 2.5)"
random_secs=$abf_wall

data=$sparse
compare "(b) 4 GiB, 300 MiB data + holes" $((4 * gib))
result "verity (b) 4 GiB, 300 MiB data" "$(describe "$abf_wall" "$abf_cpu" "$abf_rss")" \
    "veritysetup $(describe "$ref_wall" "$ref_cpu" "$ref_rss")" "$(fmt %.1fx "$ratio")" ">= 20x" "$(at_least "$ratio" 20)"
limit_rss=$((64 + $(mib "$tree_bytes")))
printf '  abforge peak RSS %s MiB; limit 64 MiB + tree %s MiB = %s MiB\n' "$abf_rss" "$(mib "$tree_bytes")" "$limit_rss"
result "verity peak RSS, 4 GiB input" "$abf_rss MiB" "veritysetup $ref_rss MiB" "$abf_rss MiB" "< $limit_rss MiB (64 + tree)" \
    "$( [ "$abf_rss" = "?" ] && echo "n/a" || below "$abf_rss" "$limit_rss")"

# (c) The limit, as the issue defines it: `openssl speed -evp sha256` (4 KiB blocks,
# one process) times the number of cores. One process needs one free core, so it is
# less disturbed by other load than `-multi`, which is printed for context.
openssl_k() { # [openssl speed options...] -> thousands of bytes per second
    openssl speed "$@" -seconds 3 -evp sha256 -bytes 4096 2>/dev/null |
        awk '$1 == "sha256" || $1 == "evp" {v=$NF} END {sub(/k$/, "", v); print v}'
}
one_core=$(calc "$(openssl_k) * 1000")
multi=$(calc "$(openssl_k -multi "$cores") * 1000")
limit=$(calc "$one_core * $cores")
ours=$(calc "2 * $gib / $random_secs")
share=$(calc "100 * $ours / $limit")
printf '(c) SHA-256 limit: openssl speed %.0f MiB/s x %d cores = %.0f MiB/s (openssl -multi %d measured %.0f MiB/s)\n' \
    "$(calc "$one_core / $mib")" "$cores" "$(calc "$limit / $mib")" "$cores" "$(calc "$multi / $mib")"
printf '    abforge on (a) %.0f MiB/s = %.0f%% of the limit\n' "$(calc "$ours / $mib")" "$share"
result "verity (c) throughput vs SHA-256 limit" "$(fmt %.0f "$(calc "$ours / $mib")") MiB/s" \
    "openssl $(fmt %.0f "$(calc "$one_core / $mib")") MiB/s x$cores (-multi $(fmt %.0f "$(calc "$multi / $mib")"))" \
    "$(fmt %.0f "$share")%" ">= 80%" "$(at_least "$share" 80)"
