# Shared by the bench/<area>.sh sections (sourced, not run).
#
# How a measurement is taken (`pair`): the reference command and abforge's run
# alternately, $RUNS times each, on the same inputs, writing into the same scratch
# directory ($WORK, on the file system of the cached inputs). Before each run the
# output is removed and `sync` flushes what earlier runs left dirty (untimed). Each
# timed run ends with `sync OUTPUT` (fsync of every output file), because some tools
# fsync their output and others do not: the time is always "until the output is on
# disk". Reported: the best wall-clock time of the runs, the CPU time (user + system,
# of the process and its children) of that best run, and the highest peak RSS of
# any single process seen over the runs (GNU time's %M).
#
# Environment: ABFORGE (default $CARGO_TARGET_DIR/release/abforge, else
# target/release/abforge), BENCH_DIR (cached inputs, default /var/tmp/abforge-bench),
# RUNS (default 3), BENCH_RESULTS (a file the summary rows are appended to; run.sh
# sets it and prints the table at the end).

bench_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ABFORGE=${ABFORGE:-${CARGO_TARGET_DIR:-$bench_root/target}/release/abforge}
BENCH_DIR=${BENCH_DIR:-/var/tmp/abforge-bench}
RUNS=${RUNS:-3}
WORK=$BENCH_DIR/work
BENCH_RESULTS=${BENCH_RESULTS:-$WORK/results.tsv}
mkdir -p "$WORK"

[ -x "$ABFORGE" ] || { echo "missing $ABFORGE: run make build (or cargo build --release)" >&2; exit 1; }

# GNU time gives the peak RSS. Debian package `time`; installed here when missing
# and root (scripts/install-test-deps.sh does not know it).
GNU_TIME=/usr/bin/time
if ! "$GNU_TIME" -f %M true >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y -q time >/dev/null 2>&1 || true
    fi
    "$GNU_TIME" -f %M true >/dev/null 2>&1 || { GNU_TIME=""; echo "note: no GNU time (package time): peak RSS not measured" >&2; }
fi

calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
fmt() { awk -v v="$2" "BEGIN { printf \"$1\", v }"; }

# rss CMD...: runs CMD, appending its peak RSS (KiB) to $WORK/.rss.
rss() {
    if [ -n "$GNU_TIME" ]; then
        "$GNU_TIME" -f %M -a -o "$WORK/.rss" "$@"
    else
        "$@"
    fi
}

# sync_outputs PATH...: fsync every regular file under each PATH.
sync_outputs() {
    local p
    for p in "$@"; do
        [ -e "$p" ] && find "$p" -type f -exec sync {} +
    done
    return 0
}

# timed_once FUNCTION OUTPUT...: one timed run of the shell function FUNCTION (which
# should run its main commands through `rss`); sets run_wall, run_cpu, run_rss (MiB).
timed_once() {
    local fn=$1; shift
    local log=$WORK/$fn.log TIMEFORMAT='%3R %3U %3S' user sys
    rm -rf "$@" "$WORK/.rss"
    sync
    if ! { time { "$fn" >"$log" 2>&1 && sync_outputs "$@"; }; } 2>"$WORK/.time"; then
        echo "!! $fn failed; last lines of $log:" >&2
        tail -n 5 "$log" >&2
        return 1
    fi
    read -r run_wall user sys <"$WORK/.time"
    run_cpu=$(calc "$user + $sys")
    run_rss=$( [ -s "$WORK/.rss" ] && awk 'max < $1 { max = $1 } END { printf "%.0f", max / 1024 }' "$WORK/.rss" || echo "?")
}

# pair REF_FN REF_OUT ABF_FN ABF_OUT: runs both functions alternately $RUNS times;
# sets ref_wall ref_cpu ref_rss abf_wall abf_cpu abf_rss and ratio (ref/abforge wall).
pair() {
    local ref_fn=$1 ref_out=$2 abf_fn=$3 abf_out=$4 i
    ref_wall=""; abf_wall=""; ref_rss=0; abf_rss=0
    for ((i = 0; i < RUNS; i++)); do
        timed_once "$ref_fn" "$ref_out" || return 1
        if [ -z "$ref_wall" ] || awk "BEGIN { exit !($run_wall < $ref_wall) }"; then ref_wall=$run_wall; ref_cpu=$run_cpu; fi
        [ "$run_rss" = "?" ] || [ "$run_rss" -le "$ref_rss" ] || ref_rss=$run_rss
        timed_once "$abf_fn" "$abf_out" || return 1
        if [ -z "$abf_wall" ] || awk "BEGIN { exit !($run_wall < $abf_wall) }"; then abf_wall=$run_wall; abf_cpu=$run_cpu; fi
        [ "$run_rss" = "?" ] || [ "$run_rss" -le "$abf_rss" ] || abf_rss=$run_rss
    done
    ratio=$(calc "$ref_wall / $abf_wall")
}

# single FN OUT: like pair for one command; sets one_wall one_cpu one_rss.
single() {
    local fn=$1 out=$2 i
    one_wall=""; one_rss=0
    for ((i = 0; i < RUNS; i++)); do
        timed_once "$fn" "$out" || return 1
        if [ -z "$one_wall" ] || awk "BEGIN { exit !($run_wall < $one_wall) }"; then one_wall=$run_wall; one_cpu=$run_cpu; fi
        [ "$run_rss" = "?" ] || [ "$run_rss" -le "$one_rss" ] || one_rss=$run_rss
    done
}

# describe WALL CPU RSS: "1.23 s (cpu 2.10 s, 45 MiB)".
describe() { printf '%.2f s (cpu %.2f s, %s MiB)' "$1" "$2" "$3"; }

# print_pair TITLE REF_NAME ABF_NAME: the side-by-side lines of the last `pair`.
print_pair() {
    printf '%s\n' "$1"
    printf '  %-40s %s\n' "$2" "$(describe "$ref_wall" "$ref_cpu" "$ref_rss")"
    printf '  %-40s %s\n' "$3" "$(describe "$abf_wall" "$abf_cpu" "$abf_rss")"
    printf '  speed-up %.2fx (best wall clock of %d runs each); CPU time ratio %.2fx\n' "$ratio" "$RUNS" \
        "$(calc "$ref_cpu / ($abf_cpu > 0 ? $abf_cpu : 0.001)")"
}

# result MEASURE ABFORGE REFERENCE RESULT TARGET MET: one row of the summary table.
result() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$BENCH_RESULTS"
}

# at_least VALUE TARGET / below VALUE TARGET: "yes" or "NO".
at_least() { awk "BEGIN { print ($1 >= $2) ? \"yes\" : \"NO\" }"; }
below() { awk "BEGIN { print ($1 < $2) ? \"yes\" : \"NO\" }"; }

mib() { echo $((($1 + 1048575) / 1048576)); }
allocated() { echo $(($(stat -c %b "$1") * $(stat -c %B "$1"))); }

# warm TREE_OR_FILE...: read every byte once, so the page cache is warm for both tools.
warm() {
    local p
    for p in "$@"; do
        if [ -d "$p" ]; then { tar -C "$p" -cf - . 2>/dev/null || true; } | cat >/dev/null; else cat "$p" >/dev/null; fi
    done
}
