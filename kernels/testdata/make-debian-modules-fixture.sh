#!/bin/bash
# Regenerates kernels/testdata/debian-amd64/: excerpts of the module index files of
# Debian's real amd64 kernel package, and what modprobe itself says the load order
# is, for the module-closure tests (tests/tests/kernels.rs).
#
# Usage: kernels/testdata/make-debian-modules-fixture.sh [linux-image-package]
# Needs apt-get (Debian's package registry), dpkg-deb, depmod and modprobe (kmod).
# No root needed; works in a scratch directory.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out="$here/debian-amd64"
package=${1:-$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')}
# The modules the boot chain needs (issue 7) and the disk drivers of the VM targets.
wanted=(dm-verity ext4 virtio_blk overlay virtio_pci virtio_scsi vfat hv_storvsc ahci)
# Unrelated modules sharing dependencies with those, so the excerpt is not only the answer.
neighbours=(dm-thin-pool dm-crypt ubifs xfs btrfs fuse nbd loop sd_mod hv_netvsc virtio_net)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download "$package" >/dev/null)
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/root"
version=$(ls "$work/root/lib/modules")
depmod -b "$work/root" "$version"
dir="$work/root/lib/modules/$version"
pkgver=$(dpkg-deb -f "$deb" Version)

show() { modprobe -d "$work/root" -S "$version" --show-depends "$@" | awk '/^insmod/ {print $2}' | sed "s|^$dir/||"; }

header() {
    cat <<HDR
# Excerpt of $1 from Debian's $package $pkgver (kernel $version),
# made by kernels/testdata/make-debian-modules-fixture.sh: apt-get download, dpkg-deb -x,
# depmod -b, then only the lines about the modules the tests use (and some neighbours).
HDR
}

mkdir -p "$out"
paths=$( { for m in "${wanted[@]}" "${neighbours[@]}"; do show "$m" || true; done; } | sort -u)
{
    header modules.dep
    while read -r p; do grep -E "^$p:" "$dir/modules.dep"; done <<<"$paths"
} >"$out/modules.dep"

names=$(sed 's|.*/||; s|\.ko.*||; s|-|_|g' <<<"$paths" | sort -u)
{
    header modules.softdep
    while read -r n; do
        grep -E "^softdep ($n|${n//_/-}) " "$dir/modules.softdep" || true
    done <<<"$names"
} >"$out/modules.softdep"

aliases=$(awk '/^softdep/ {for (i = 3; i <= NF; i++) if ($i != "pre:" && $i != "post:") print $i}' "$out/modules.softdep" | sort -u)
{
    header modules.alias
    while read -r a; do
        [ -n "$a" ] && grep -E "^alias $a " "$dir/modules.alias" || true
    done <<<"$aliases"
} >"$out/modules.alias"

{
    header modules.builtin
    grep -E '/(crc32_generic|virtio_console|unix|ipv6|efivarfs|vfat_builtin_example)\.ko$' "$dir/modules.builtin" || true
    head -n 5 "$dir/modules.builtin"
} >"$out/modules.builtin"

{
    echo "# modprobe -d ROOT -S $version --show-depends NAME for each line 'NAME: load order'"
    echo "# ($package $pkgver), paths relative to lib/modules/$version."
    for m in "${wanted[@]}"; do
        echo "$m: $(show "$m" | tr '\n' ' ' | sed 's/ $//')"
    done
} >"$out/expected-closure.txt"

echo "wrote $out from $package $pkgver"
