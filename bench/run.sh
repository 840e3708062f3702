#!/usr/bin/env bash
# Runs every bench/*.sh section (except this file) in name order.
set -euo pipefail
cd "$(dirname "$0")"
for section in *.sh; do
    [ "$section" = run.sh ] && continue
    echo "== $section"
    bash "$section"
done
