#!/usr/bin/env bash
# Installs the Debian packages whose tools the tests check images with.
# Called by `make test`. As root it installs what is missing; as another user it
# only reports, and the tests that need a missing tool are reported as ignored.
# Under CI (CI set) a tool that is still missing afterwards is a failure.
set -euo pipefail

# tool -> Debian package
declare -A packages=(
  [sgdisk]=gdisk
  [fsck.vfat]=dosfstools
  [mkfs.vfat]=dosfstools
  [mdir]=mtools
  [mcopy]=mtools
  [veritysetup]=cryptsetup-bin
  [e2fsck]=e2fsprogs
  [mke2fs]=e2fsprogs
  [debugfs]=e2fsprogs
  [qemu-img]=qemu-utils
  [qemu-system-x86_64]=qemu-system-x86
  [openssl]=openssl
  [sbverify]=sbsigntool
  [getfattr]=attr
  [getcap]=libcap2-bin
  [iptables-restore]=iptables
  [ip6tables-restore]=iptables
  [sshd]=openssh-server
  [cpio]=cpio
  [bsdcpio]=libarchive-tools
  [grub-editenv]=grub-common
  [grub-mkstandalone]=grub-common
  [debootstrap]=debootstrap
  [depmod]=kmod
  [ip]=iproute2
  [unshare]=util-linux
  [nsenter]=util-linux
  [ssh-keygen]=openssh-client
  [bsdcat]=libarchive-tools
  [grub-script-check]=grub-common
)
# Files (not commands) that tests need, and their packages.
declare -A files=(
  [/usr/share/OVMF/OVMF_CODE_4M.fd]=ovmf
  [/usr/lib/grub/x86_64-efi/linux.mod]=grub-efi-amd64-bin
)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }

missing=()
for tool in "${!packages[@]}"; do have "$tool" || missing+=("${packages[$tool]}"); done
for file in "${!files[@]}"; do [ -e "$file" ] || missing+=("${files[$file]}"); done
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

if [ ${#missing[@]} -eq 0 ]; then
  echo "test tools: all present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "test tools: missing packages ${missing[*]} (not root: the tests that need them are ignored)" >&2
  [ -z "${CI:-}" ] || { echo "CI is set: missing test tools are a failure" >&2; exit 1; }
  exit 0
fi

echo "test tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# qemu-system-x86 and qemu-utils must come from the same qemu release: a newer
# qemu-utils on the machine blocks qemu-system-x86, so pin qemu-utils to the
# version qemu-system-x86 will be installed at (a downgrade if need be).
extra=()
if printf '%s\n' "${missing[@]}" | grep -qx 'qemu-system-x86'; then
  version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  missing=("${missing[@]/qemu-utils/}")
  extra+=("qemu-utils=$version" ovmf)
fi
apt-get install -y -qq --allow-downgrades --no-install-recommends "${missing[@]}" "${extra[@]}" >/dev/null

still=()
for tool in "${!packages[@]}"; do have "$tool" || still+=("$tool"); done
for file in "${!files[@]}"; do [ -e "$file" ] || still+=("$file"); done
if [ ${#still[@]} -ne 0 ]; then
  echo "test tools: still missing after install: ${still[*]}" >&2
  [ -z "${CI:-}" ] || exit 1
fi
echo "test tools: installed"
