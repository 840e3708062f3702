#!/usr/bin/env bash
# `make bench`: runs the benchmark sections in order (verity, ext4, vhdx, build; the
# helpers lib.sh and pipeline.sh are not sections), then prints one summary table
# with every ratio next to its target from the issues. Each section compares abforge
# with the reference tools on the same inputs in the same run (timing rules in
# bench/lib.sh); nothing here is a pass/fail assertion: the exit status only says
# whether every section ran.
#
#   bench/run.sh [SECTION...]     e.g. bench/run.sh verity ext4
# Environment: RUNS (runs per side, default 3), BENCH_DIR, ABFORGE (see lib.sh).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(verity ext4 vhdx build)

BENCH_DIR=${BENCH_DIR:-/var/tmp/abforge-bench}
mkdir -p "$BENCH_DIR/work"
export BENCH_RESULTS=$BENCH_DIR/work/results.tsv
: >"$BENCH_RESULTS"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
echo "abforge bench: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), RUNS=${RUNS:-3}"
echo
status=0
for name in "${sections[@]}"; do
    echo "== $name (load average $(loadavg))"
    if ! bash "$here/$name.sh"; then
        echo "!! $name failed" >&2
        status=1
    fi
    echo
done

echo "== summary (load average at the end $(loadavg); times: best wall clock of ${RUNS:-3} runs, cpu = user + system, RSS = peak of one process)"
{
    printf 'measure\tabforge\treference\tresult\ttarget\tmet\n'
    cat "$BENCH_RESULTS"
} | awk -F'\t' '
    { for (i = 1; i <= NF; i++) { cell[NR, i] = $i; if (length($i) > width[i]) width[i] = length($i) } rows = NR; if (NF > cols) cols = NF }
    END {
        for (r = 1; r <= rows; r++) {
            line = ""
            for (i = 1; i <= cols; i++) line = line sprintf("%-*s  ", width[i], cell[r, i])
            sub(/ +$/, "", line); print line
            if (r == 1) { line = ""; for (i = 1; i <= cols; i++) { d = sprintf("%*s", width[i], ""); gsub(/ /, "-", d); line = line d "  " } sub(/ +$/, "", line); print line }
        }
    }'
exit $status
