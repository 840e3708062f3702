#!/usr/bin/env bash
# Prepares the real inputs of the VM boot test (`make boot-test`) in DIR, from
# Debian's packages:
#   DIR/rootfs.tar    a debootstrap bookworm root (systemd, sshd, iptables, the
#                     linux-image-amd64 kernel in /boot with its /lib/modules and
#                     modules.dep), packed as a pax tar so abforge reads it as any user
#   DIR/BOOTX64.EFI   a GRUB EFI image from grub-mkstandalone whose embedded config is
#                     abforge_kernels::grub::EMBEDDED_CONFIG (finds and runs the ESP's
#                     /EFI/abforge/select.cfg)
#   DIR/abforge-init  the static initramfs PID 1 (kernels/init)
#   DIR/versions      what each input was made from (kernel and package versions)
#
# Usage: scripts/boot-inputs.sh DIR [all|rootfs|grub|init]   (default all)
#
# Cached: each part has a stamp file (DIR/<part>.stamp) holding the recipe it was made
# with; when the stamp matches and the outputs exist, the part is skipped. So a second
# run does nothing (apart from `cargo` checking that the init is up to date). Delete DIR
# (or a stamp) to force a rebuild. The rootfs part needs root (debootstrap, chroot) and
# network access to Debian's mirror; the other parts need grub-mkstandalone and cargo.
set -euo pipefail

dir=${1:?usage: boot-inputs.sh DIR [all|rootfs|grub|init]}
part=${2:-all}
repo=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the root must hold to boot to multi-user.target with systemd as PID 1, run
# sshd, load iptables rules and let the kernel load modules (kmod's modprobe):
# udev makes the /dev/disk links and device units systemd waits for.
include=systemd,systemd-sysv,udev,kmod,openssh-server,iptables,linux-image-amd64
# Module directories no VM boot needs (sound, graphics, radio, exotic buses): removed
# from the root (and modules.dep regenerated) to halve the tree abforge packs twice.
# (Kept: drivers/scsi for virtio_scsi and hv_storvsc, drivers/hv, drivers/md, fs, netfilter.)
prune_modules="sound drivers/gpu drivers/media drivers/net/wireless drivers/net/ethernet
  drivers/infiniband drivers/staging drivers/bluetooth drivers/iio drivers/isdn
  drivers/video/fbdev drivers/usb net/bluetooth net/wireless net/mac80211"
# Documentation and translations: an image without a package manager never shows them.
prune_dirs="usr/share/doc usr/share/man usr/share/info usr/share/locale"
grub_modules="part_gpt fat ext2 search search_fs_file search_fs_uuid configfile echo serial
  terminal loadenv test halt linux normal reboot sleep regexp"
# The ESP is 8 MiB and holds the bootloader twice at most: keep GRUB well below.
grub_max_bytes=$((2 * 1024 * 1024))

log() { printf 'boot-inputs: %s\n' "$*" >&2; }
elapsed() { printf '%ds' $(($(date +%s) - $1)); }

# The recipe of each part (its stamp): a change to it rebuilds that part.
rootfs_recipe() {
  printf 'recipe 1\nsuite %s\ninclude %s\nprune %s\nprune-dirs %s\n' "$suite" "$include" \
    "$(echo $prune_modules)" "$(echo $prune_dirs)"
}
grub_recipe() {
  printf 'recipe 1\ngrub %s\nmodules %s\nconfig-sha256 %s\n' \
    "$(dpkg-query -W -f='${Version}' grub-efi-amd64-bin 2>/dev/null || echo unknown)" \
    "$(echo $grub_modules)" "$(embedded_config | sha256sum | cut -d' ' -f1)"
}
stamp_ok() { # PART FILE...
  local part=$1; shift
  [ -f "$dir/$part.stamp" ] || return 1
  for f in "$@"; do [ -s "$dir/$f" ] || return 1; done
  [ "$(cat "$dir/$part.stamp")" = "$("${part}_recipe")" ]
}

# Installs the Debian packages this script needs (as root; as another user it
# checks they are there).
install_packages() {
  local need=() tool
  declare -A by_tool=([debootstrap]=debootstrap [grub-mkstandalone]=grub-common
    [qemu-system-x86_64]=qemu-system-x86 [qemu-img]=qemu-utils)
  for tool in "${!by_tool[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || need+=("${by_tool[$tool]}")
  done
  [ -e /usr/lib/grub/x86_64-efi/linux.mod ] || need+=(grub-efi-amd64-bin)
  [ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
  [ ${#need[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages ${need[*]}: run as root to install them"
    exit 1
  fi
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # qemu-system-x86 and qemu-utils must come from the same qemu release (see
  # scripts/install-test-deps.sh): pin qemu-utils to qemu-system-x86's candidate.
  local extra=()
  if printf '%s\n' "${need[@]}" | grep -qx 'qemu-system-x86\|qemu-utils'; then
    local version
    version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    need=("${need[@]/qemu-utils/}")
    need=("${need[@]/qemu-system-x86/}")
    extra+=("qemu-system-x86=$version" "qemu-utils=$version" ovmf)
  fi
  apt-get install -y -qq --allow-downgrades --no-install-recommends ${need[@]+"${need[@]}"} "${extra[@]}" >/dev/null
}

# The embedded config text: from EMBEDDED_CONFIG_FILE when set (the tests write the
# constant themselves), otherwise printed by the abforge-kernels example.
embedded_config() {
  if [ -n "${EMBEDDED_CONFIG_FILE:-}" ]; then
    cat "$EMBEDDED_CONFIG_FILE"
  else
    (cd "$repo" && cargo run -q -p abforge-kernels --example embedded-config)
  fi
}

make_rootfs() {
  if stamp_ok rootfs rootfs.tar; then log "rootfs.tar: up to date"; return 0; fi
  if [ "$(id -u)" -ne 0 ]; then log "the root file system needs root (debootstrap)"; exit 1; fi
  local start
  start=$(date +%s)
  rm -rf "$dir/rootfs" "$dir/rootfs.tar" "$dir/rootfs.stamp"
  log "debootstrap $suite ($include) from $mirror"
  # INITRD=No: the kernel's postinst hook skips update-initramfs (abforge builds the
  # initramfs); the root needs only the kernel image and its modules.
  INITRD=No debootstrap --variant=minbase --include="$include" "$suite" "$dir/rootfs" "$mirror" \
    >"$dir/debootstrap.log" 2>&1 || { tail -n 30 "$dir/debootstrap.log" >&2; exit 1; }
  log "debootstrap took $(elapsed "$start")"
  local root=$dir/rootfs kver
  kver=$(ls "$root/lib/modules")
  [ "$(echo "$kver" | wc -w)" -eq 1 ] || { log "expected one kernel in $root/lib/modules, found: $kver"; exit 1; }
  for p in $prune_modules; do rm -rf "${root:?}/lib/modules/$kver/kernel/$p"; done
  chroot "$root" depmod -a "$kver"
  for p in $prune_dirs; do
    if [ -d "$root/$p" ]; then find "${root:?}/$p" -mindepth 1 -delete; fi
  done
  # Nothing a booted image needs: package caches, initrds, logs of the install.
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/boot/initrd.img* \
    "$root"/initrd.img "$root"/initrd.img.old "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
  [ -f "$root/boot/vmlinuz-$kver" ] || { log "no kernel at /boot/vmlinuz-$kver in the root"; exit 1; }
  [ -f "$root/lib/modules/$kver/modules.dep" ] || { log "no modules.dep for $kver"; exit 1; }
  tar -C "$root" --format=pax --xattrs --numeric-owner --sort=name -cf "$dir/rootfs.tar.tmp" .
  chmod 0644 "$dir/rootfs.tar.tmp"
  {
    echo "kernel $kver"
    chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' systemd openssh-server iptables "linux-image-$kver"
  } >"$dir/versions.rootfs"
  # abforge reads the tar; the directory would only double the cache's size.
  rm -rf "$root"
  mv "$dir/rootfs.tar.tmp" "$dir/rootfs.tar"
  rootfs_recipe >"$dir/rootfs.stamp"
  log "rootfs.tar ($(du -h "$dir/rootfs.tar" | cut -f1), kernel $kver) took $(elapsed "$start")"
}

make_grub() {
  if stamp_ok grub BOOTX64.EFI; then log "BOOTX64.EFI: up to date"; return 0; fi
  local start cfg size
  start=$(date +%s)
  cfg=$(mktemp)
  embedded_config >"$cfg"
  grep -q '/EFI/abforge/select.cfg' "$cfg" || { log "the embedded config does not name the selector"; exit 1; }
  # $grub_modules is a space-separated list on purpose.
  # shellcheck disable=SC2086
  grub-mkstandalone -O x86_64-efi --install-modules="$(echo $grub_modules)" --modules="part_gpt fat" \
    --locales= --fonts= --themes= -o "$dir/BOOTX64.EFI.tmp" "boot/grub/grub.cfg=$cfg"
  rm -f "$cfg"
  size=$(stat -c %s "$dir/BOOTX64.EFI.tmp")
  if [ "$size" -ge "$grub_max_bytes" ]; then
    log "BOOTX64.EFI is $size bytes, over the $grub_max_bytes-byte limit for an 8 MiB ESP"
    exit 1
  fi
  mv "$dir/BOOTX64.EFI.tmp" "$dir/BOOTX64.EFI"
  grub_recipe >"$dir/grub.stamp"
  log "BOOTX64.EFI ($size bytes) took $(elapsed "$start")"
}

make_init() {
  local start
  start=$(date +%s)
  (cd "$repo" && cargo rustc -q -p abforge-init --bin abforge-init --profile init-release \
    -- -C target-feature=+crt-static)
  local built=${CARGO_TARGET_DIR:-$repo/target}/init-release/abforge-init
  if ! cmp -s "$built" "$dir/abforge-init" 2>/dev/null; then
    cp "$built" "$dir/abforge-init.tmp"
    mv "$dir/abforge-init.tmp" "$dir/abforge-init"
  fi
  if file "$dir/abforge-init" 2>/dev/null | grep -q 'dynamically linked'; then
    log "abforge-init is dynamically linked: it must be static to run as the initramfs PID 1"
    exit 1
  fi
  log "abforge-init ($(stat -c %s "$dir/abforge-init") bytes) took $(elapsed "$start")"
}

case $part in
  all) install_packages; make_rootfs; make_grub; make_init ;;
  rootfs) install_packages; make_rootfs ;;
  grub)
    # Only GRUB's tools are needed here (the tests build a GRUB image alone).
    if ! command -v grub-mkstandalone >/dev/null || [ ! -e /usr/lib/grub/x86_64-efi/linux.mod ]; then
      install_packages
    fi
    make_grub ;;
  init) make_init ;;
  *) log "unknown part '$part': use all, rootfs, grub or init"; exit 2 ;;
esac
if [ -f "$dir/versions.rootfs" ]; then
  { cat "$dir/versions.rootfs"; [ -f "$dir/grub.stamp" ] && grep '^grub ' "$dir/grub.stamp"; } >"$dir/versions"
fi
