#!/usr/bin/env bash
# The standard-tool pipeline a release engineer scripts today for the EFLOW A/B disk
# (the layout of manifests/eflow.yaml and bench/eflow-debroot.yaml.in), the reference
# side of bench/build.sh:
#
#   bench/pipeline.sh ROOT_TREE ESP_DIR OUT.vhdx
#
#   1. In parallel (background jobs; the machine's cores are shared by them):
#      - RootFS: `mke2fs -t ext4 -d ROOT_TREE` (no journal, read-only root), then
#        `veritysetup format --hash-offset` appending the tree in the same image. Built
#        ONCE and written into both slots: the two slots' roots are the same bytes
#        (as abforge makes them), so building it twice would only slow this side down;
#      - BootA, BootB (192 MiB), Log (1 GiB), Data (2 GiB): `mke2fs -t ext4`,
#        with a journal (they are mounted read-write); they have no contents;
#      - BootEFIA, BootEFIB (8 MiB): `mkfs.vfat` + `mcopy -s` of ESP_DIR;
#      - the raw disk: `truncate` + `sgdisk` writing the GPT with the same partitions,
#        sizes, types and names (read-only attribute 60 on the roots).
#   2. `dd conv=sparse,notrunc` of every partition image into the raw disk at its
#      offset, all at once in parallel (disjoint regions of one file).
#   3. `qemu-img convert -O vhdx -o subformat=dynamic`, then `sync` of the VHDX.
#
# Not done here, and done by abforge's build: the manifest's `system:` profile (a
# handful of small files written into the root: the pipeline takes the tree as it is),
# reproducible UUIDs and GUIDs (mke2fs, mkfs.vfat and sgdisk pick random ones), the
# JSON report. Each of these is extra work on abforge's side only.
#
# Intermediate files go to OUT.vhdx's directory (pipeline.tmp/), removed at the end
# unless PIPELINE_KEEP is set.
# Environment: DATA_MIB (size of Data, default 2048), ROOT_FS_BLOCKS (4 KiB blocks of the root
# file system, before the verity tree; default 1040382, the split abforge's build
# report gives for a 4 GiB RootFS, so both sides hash the same number of blocks).
set -euo pipefail

tree=$1 esp=$2 out=$3
mib=$((1 << 20))
data_mib=${DATA_MIB:-2048}
root_blocks=${ROOT_FS_BLOCKS:-1040382}
root_fs_bytes=$((root_blocks * 4096))
root_mib=4096 boot_mib=192 esp_mib=8 unused_mib=4096 log_mib=1024

tmp=$(dirname "$out")/pipeline.tmp
rm -rf "$tmp"
mkdir -p "$tmp"
[ -n "${PIPELINE_KEEP:-}" ] || trap 'rm -rf "$tmp"' EXIT  # PIPELINE_KEEP=1 keeps the raw disk

# The layout: 1 MiB for the primary GPT, the partitions back to back (all sizes are
# whole MiB, so sgdisk's 1 MiB alignment adds no gap), 1 MiB at the end for the backup GPT.
names=(BootEFIA BootA RootFSA BootEFIB BootB RootFSB Unused Log Data)
sizes=($esp_mib $boot_mib $root_mib $esp_mib $boot_mib $root_mib $unused_mib $log_mib $data_mib)
types=(ef00 8300 8304 ef00 8300 8304 8300 8300 8300)
images=("$tmp/espA.img" "$tmp/bootA.img" "$tmp/root.img" "$tmp/espB.img" "$tmp/bootB.img" "$tmp/root.img" "" "$tmp/log.img" "$tmp/data.img")
offsets=() at=1
for s in "${sizes[@]}"; do offsets+=("$at"); at=$((at + s)); done
disk_mib=$((at + 1))
disk=$tmp/disk.raw

pids=()
bg() { "$@" & pids+=($!); }
wait_all() {
    local pid failed=0
    for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
    pids=()
    return $failed
}

make_root() {
    mke2fs -q -F -t ext4 -b 4096 -I 256 -m 0 -O ^has_journal,^resize_inode -E root_owner=0:0 \
        -L RootFS -d "$tree" "$tmp/root.img" "$root_blocks"
    veritysetup format "$tmp/root.img" "$tmp/root.img" --hash-offset="$root_fs_bytes" \
        --data-blocks="$root_blocks" >"$tmp/root.verity"
    truncate -s $((root_mib * mib)) "$tmp/root.img"
}
make_esp() {
    mkfs.vfat -n BOOTEFI -C "$1" $((esp_mib * 1024)) >/dev/null
    mcopy -s -Q -i "$1" "$esp"/* ::/
}
make_gpt() {
    truncate -s $((disk_mib * mib)) "$disk"
    local args=(-o) i
    for i in "${!names[@]}"; do
        args+=(-n "$((i + 1)):0:+${sizes[i]}M" -t "$((i + 1)):${types[i]}" -c "$((i + 1)):${names[i]}")
    done
    args+=(-A 3:set:60 -A 6:set:60)
    sgdisk "${args[@]}" "$disk" >/dev/null
}

# Phase times on stdout (bench/build.sh prints them): where the pipeline's time goes.
t0=$(date +%s.%N)
phase() { local t; t=$(date +%s.%N); awk -v a="$t0" -v b="$t" -v n="$1" 'BEGIN { printf "phase %-44s %6.2f s\n", n, b - a }'; t0=$t; }

# 1. Partition images and the partitioned raw disk, in parallel.
bg make_root
bg mke2fs -q -F -t ext4 -L Boot "$tmp/bootA.img" ${boot_mib}M
bg mke2fs -q -F -t ext4 -L Boot "$tmp/bootB.img" ${boot_mib}M
bg mke2fs -q -F -t ext4 -L Log "$tmp/log.img" ${log_mib}M
bg mke2fs -q -F -t ext4 -L Data "$tmp/data.img" ${data_mib}M
bg make_esp "$tmp/espA.img"
bg make_esp "$tmp/espB.img"
bg make_gpt
wait_all
phase "1 mke2fs x5, veritysetup, mkfs.vfat+mcopy x2, sgdisk"

# 2. Every partition image into the disk at its offset.
for i in "${!names[@]}"; do
    [ -n "${images[i]}" ] || continue
    bg dd if="${images[i]}" of="$disk" bs=1M seek="${offsets[i]}" conv=sparse,notrunc status=none
done
wait_all
phase "2 dd conv=sparse x8 (parallel)"

# 3. The container.
qemu-img convert -f raw -O vhdx -o subformat=dynamic "$disk" "$out"
sync "$out"
phase "3 qemu-img convert + sync"
grep '^Root hash:' "$tmp/root.verity"
