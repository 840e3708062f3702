#!/usr/bin/env bash
# Manual check of the boot test's root and report unit WITHOUT abforge build or GRUB:
# makes a raw disk by hand (verity root from DIR/rootfs.tar with the report unit, a
# hand-written profile record, no firewall), an initramfs with abforge-init and the
# root's modules, and boots the kernel directly (qemu -kernel, TCG, OVMF). Prints
# the init's lines and the ABFORGE-REPORT line. For debugging the guest side while the
# image build is not there; the real test is tests/tests/boot.rs.
# Usage: tests/boot/direct-boot.sh INPUTS_DIR WORKDIR   (as root: mkfs -d keeps owners)
# Needs: tar, mkfs.ext4, veritysetup, sgdisk, modprobe, cpio, qemu-system-x86_64, ovmf.
set -euo pipefail
inputs=$(cd "$1" && pwd); work=$2; here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work"; cd "$work"
rm -rf root ird; mkdir root ird
tar -C root -xf "$inputs/rootfs.tar"
kver=$(ls root/usr/lib/modules)

# What abforge's profile and system.files would add (a subset: no firewall).
install -m 0755 "$here/abforge-boot-report" root/usr/local/sbin/abforge-boot-report
install -m 0644 "$here/abforge-boot-report.service" root/usr/lib/systemd/system/
ln -sf /usr/lib/systemd/system/abforge-boot-report.service root/etc/systemd/system/multi-user.target.wants/
rm -f root/etc/ssh/ssh_host_*
cat >root/usr/lib/systemd/system/ssh-hostkeys.service <<'U'
[Unit]
DefaultDependencies=no
After=local-fs.target
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
U
ln -sf /usr/lib/systemd/system/ssh-hostkeys.service root/etc/systemd/system/multi-user.target.wants/
echo "PasswordAuthentication no" >root/etc/ssh/sshd_config.d/abforge.conf
: >root/etc/machine-id
mkdir -p root/logs root/usr/lib/abforge
data_uuid=8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a; log_uuid=2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7
root_uuid=06196e49-d8eb-6d49-2e30-42596c2dbb79
cat >root/usr/lib/abforge/profile.json <<J
{"record_version":1,
 "mounts":[{"mount":"/var","partuuid":"$data_uuid","options":"defaults,nodev"},
           {"mount":"/logs","partuuid":"$log_uuid","options":"defaults,nodev,nosuid,noexec"}],
 "overlays":[{"path":"/etc","upper":"/var/.eflow/overlays/etc/upper","work":"/var/.eflow/overlays/etc/work"},
             {"path":"/root","upper":"/var/.eflow/overlays/root/upper","work":"/var/.eflow/overlays/root/work"}]}
J
# The root's /var moves to Data (the init mounts Data over it).
mkdir -p data; cp -a root/var/. data/; rm -rf root/var; mkdir root/var

rm -f rootfs.img data.img log.img disk.img
mkfs.ext4 -q -b 4096 -d root rootfs.img 1200M
blocks=$(( $(stat -c %s rootfs.img) / 4096 ))
hash_offset=$(stat -c %s rootfs.img)
truncate -s $((hash_offset + 16 * 1024 * 1024)) rootfs.img
veritysetup format rootfs.img rootfs.img --data-blocks="$blocks" --hash-offset="$hash_offset" --salt=abab >verity.txt
root_hash=$(awk '/Root hash/ {print $3}' verity.txt)
mkfs.ext4 -q -d data data.img 512M
mkfs.ext4 -q log.img 64M
root_mib=$(( $(stat -c %s rootfs.img) / 1048576 + 1 ))
truncate -s $(( (root_mib + 512 + 64 + 4) * 1048576 )) disk.img
sgdisk -o -n 1:0:+${root_mib}M -c 1:RootFSA -u 1:$root_uuid -n 2:0:+64M -c 2:Log -u 2:$log_uuid \
  -n 3:0:+512M -c 3:Data -u 3:$data_uuid disk.img >/dev/null
start() { sgdisk -i "$1" disk.img | awk '/First sector/ {print $3}'; }
dd if=rootfs.img of=disk.img bs=512 seek="$(start 1)" conv=notrunc,sparse status=none
dd if=log.img of=disk.img bs=512 seek="$(start 2)" conv=notrunc,sparse status=none
dd if=data.img of=disk.img bs=512 seek="$(start 3)" conv=notrunc,sparse status=none

mods=root/usr/lib/modules/$kver
mkdir -p ird/etc/abforge ird/dev
for m in virtio_pci virtio_blk dm-verity ext4 overlay crc32c_generic; do
  modprobe -d root -S "$kver" --show-depends "$m"
done | awk '$1 == "insmod" {print $2}' | awk '!seen[$0]++' | sed "s|.*/lib/modules/$kver/||" >ird/etc/abforge/modules.load
while read -r p; do mkdir -p "ird/lib/modules/$kver/$(dirname "$p")"; cp "$mods/$p" "ird/lib/modules/$kver/$p"; done <ird/etc/abforge/modules.load
cp "$inputs/abforge-init" ird/init
mknod ird/dev/console c 5 1
(cd ird && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >initrd.img
cp root/boot/vmlinuz-"$kver" vmlinuz

cmdline="console=ttyS0 abforge.slot=a abforge.root=PARTUUID=$root_uuid abforge.verity.roothash=$root_hash"
cmdline="$cmdline abforge.verity.salt=abab abforge.verity.hashoffset=$hash_offset abforge.verity.datablocks=$blocks abforge.wait=30"
cp /usr/share/OVMF/OVMF_VARS_4M.fd vars.fd
for boot in 1 2; do
  begin=$(date +%s)
  timeout 600 qemu-system-x86_64 -machine q35 -accel tcg -cpu max -m 1024 -smp 2 -nodefaults -display none \
    -monitor none -serial file:console-$boot.log \
    -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,unit=1,file=vars.fd \
    -drive file=disk.img,format=raw,if=virtio -kernel vmlinuz -initrd initrd.img -append "$cmdline" || true
  echo "boot $boot: $(( $(date +%s) - begin )) s"
  grep -a -E "abforge-init|ABFORGE-REPORT" console-$boot.log || tail -n 40 console-$boot.log
done
