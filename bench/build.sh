#!/usr/bin/env bash
# The whole EFLOW build (issue 5), side by side on the same root tree:
#   (b) `abforge build` of bench/eflow-debroot.yaml.in (manifests/eflow.yaml's layout,
#       the debootstrap root of bench/ext4.sh as rootfs.source, verity appended, the
#       system profile, VHDX) against bench/pipeline.sh, the standard-tool pipeline
#       (mke2fs -d, veritysetup, mkfs.vfat + mcopy, sgdisk, dd, qemu-img convert)
#       producing the same layout (target: at least 5x);
#   (c) the same abforge build with a 2 GiB and a 2 TiB Data partition: build time
#       and VHDX file size (target: the same).
# Timing rules: bench/lib.sh.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)

for tool in mke2fs veritysetup mkfs.vfat mcopy sgdisk qemu-img; do
    command -v "$tool" >/dev/null || { echo "build: $tool is needed (scripts/install-test-deps.sh)" >&2; exit 1; }
done
DEBROOT=$BENCH_DIR/debroot
[ -x "$DEBROOT/bin/sh" ] || { echo "build: $DEBROOT missing (bench/ext4.sh makes it)" >&2; exit 1; }
ESP=$bench_root/manifests/demo-esp

# manifest DATA_SIZE: writes the manifest for that Data size, prints its path.
manifest() {
    local path=$WORK/eflow-debroot-$1.yaml
    sed -e "s|@ROOTFS@|$DEBROOT|; s|@ESP@|$ESP|; s|@DATA_SIZE@|$1|" "$here/eflow-debroot.yaml.in" >"$path"
    echo "$path"
}
m2g=$(manifest 2GiB)
m2t=$(manifest 2TiB)

out_abf=$WORK/build-abforge
out_ref=$WORK/build-pipeline
abforge_build() { rss "$ABFORGE" build "$m" -o "$out_abf" --quiet; }
pipeline() {
    mkdir -p "$out_ref"
    rss env ROOT_FS_BLOCKS="$root_blocks" bash "$here/pipeline.sh" "$DEBROOT" "$ESP" "$out_ref/eflow.vhdx"
}

# The root file system's size (in 4 KiB blocks) abforge chose, so the pipeline makes
# the same split between file system and verity tree (untimed).
m=$m2g
"$ABFORGE" build "$m" -o "$out_abf" --quiet --json >"$WORK/report.json"
root_blocks=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["verity"][0]["data_blocks"])' "$WORK/report.json" 2>/dev/null ||
    sed -n 's/.*"data_blocks": *\([0-9]*\).*/\1/p' "$WORK/report.json" | head -n 1)

warm "$DEBROOT"
pair pipeline "$out_ref" abforge_build "$out_abf"
a_vhdx=$(ls "$out_abf"/*.vhdx)
r_vhdx=$out_ref/eflow.vhdx
for f in "$a_vhdx" "$r_vhdx"; do
    qemu-img check -q -f vhdx "$f" || echo "  WARNING: qemu-img check reports errors on $f"
done
[ "$(qemu-img info --output=json "$a_vhdx" | grep -o '"virtual-size": [0-9]*')" = \
    "$(qemu-img info --output=json "$r_vhdx" | grep -o '"virtual-size": [0-9]*')" ] ||
    echo "  WARNING: the two disks' virtual sizes differ"
print_pair "(b) whole EFLOW build from the debootstrap root ($(find "$DEBROOT" | wc -l) entries, $(du -sm "$DEBROOT" | cut -f1) MiB)" \
    "standard-tool pipeline (pipeline.sh)" "abforge build"
sed -n 's/^phase /  pipeline (last run) phase /p' "$WORK/pipeline.log"
printf '  VHDX: abforge %d MiB (allocated %d MiB), pipeline %d MiB (allocated %d MiB)\n' \
    "$(mib "$(stat -c %s "$a_vhdx")")" "$(mib "$(allocated "$a_vhdx")")" \
    "$(mib "$(stat -c %s "$r_vhdx")")" "$(mib "$(allocated "$r_vhdx")")"
result "build (b) whole EFLOW build vs pipeline" "$(describe "$abf_wall" "$abf_cpu" "$abf_rss")" \
    "pipeline $(describe "$ref_wall" "$ref_cpu" "$ref_rss")" "$(fmt %.2fx "$ratio")" ">= 5x" "$(at_least "$ratio" 5)"
rm -rf "$out_ref"

# (c) Data 2 GiB against 2 TiB: the same build, only Data's size differs.
m=$m2g
single abforge_build "$out_abf"
t2g=$one_wall c2g=$one_cpu r2g=$one_rss
s2g=$(stat -c %s "$(ls "$out_abf"/*.vhdx)") a2g=$(allocated "$(ls "$out_abf"/*.vhdx)")
m=$m2t
single abforge_build "$out_abf"
t2t=$one_wall c2t=$one_cpu r2t=$one_rss
s2t=$(stat -c %s "$(ls "$out_abf"/*.vhdx)") a2t=$(allocated "$(ls "$out_abf"/*.vhdx)")
qemu-img check -q -f vhdx "$(ls "$out_abf"/*.vhdx)" || echo "  WARNING: qemu-img check reports errors on the 2 TiB VHDX"
rm -rf "$out_abf"
time_ratio=$(calc "$t2t / $t2g")
echo "(c) Data 2 GiB against 2 TiB (best of $RUNS each)"
printf '  2 GiB: %s, VHDX %d MiB (allocated %d MiB)\n' "$(describe "$t2g" "$c2g" "$r2g")" "$(mib "$s2g")" "$(mib "$a2g")"
printf '  2 TiB: %s, VHDX %d MiB (allocated %d MiB)\n' "$(describe "$t2t" "$c2t" "$r2t")" "$(mib "$s2t")" "$(mib "$a2t")"
printf '  time 2 TiB / 2 GiB = %.2f; file size difference %+d MiB\n' "$time_ratio" $(((s2t - s2g) / 1048576))
# "The same": within 10 % in time (the noise of this shared machine) and within one
# 32 MiB VHDX block in file size.
result "build (c) Data 2 TiB vs 2 GiB: time" "2 TiB $(fmt %.2f "$t2t") s" "2 GiB $(fmt %.2f "$t2g") s" \
    "$(fmt %.2fx "$time_ratio")" "same (<= 1.10x)" "$(awk "BEGIN { print ($time_ratio <= 1.10) ? \"yes\" : \"NO\" }")"
result "build (c) Data 2 TiB vs 2 GiB: VHDX size" "2 TiB $(mib "$s2t") MiB (alloc $(mib "$a2t"))" \
    "2 GiB $(mib "$s2g") MiB (alloc $(mib "$a2g"))" "$(printf '%+d MiB' $(((s2t - s2g) / 1048576)))" "same (<= +32 MiB)" \
    "$(below $((s2t - s2g)) $(((32 << 20) + 1)))"
