#!/usr/bin/env bash
# Runs every benchmark section bench/<area>.sh present, in name order (`make bench`).
# Each section compares abforge with the reference tool on the same inputs in the
# same run and prints ratios; nothing here is a pass/fail assertion.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
status=0
for script in "$here"/*.sh; do
    [ "$(basename "$script")" = run.sh ] && continue
    echo "== $(basename "$script" .sh)"
    if ! bash "$script"; then
        echo "!! $(basename "$script") failed" >&2
        status=1
    fi
    echo
done
exit $status
