#!/bin/sh
# Manual smoke test of abforge-init under qemu (TCG) with Debian's 6.1 kernel: builds a
# GPT disk (verity root with the tree appended, Log, Data), an initramfs holding the
# static init and the module closure, boots it, and shows the init's lines and the
# mounts a tiny static "real init" prints before powering off.
# Usage: qemu-smoke.sh KERNEL_TREE INIT_BINARY WORKDIR
#   KERNEL_TREE: an unpacked linux-image-*-amd64 package (boot/vmlinuz-*, lib/modules/*)
# Needs: gcc (static glibc), mkfs.ext4, veritysetup, sgdisk, depmod, modprobe, cpio, qemu-system-x86_64.
# Run as root (mknod for /dev/console).
set -eu
KT=$1; INIT=$2; W=$3
K=$(ls "$KT/lib/modules"); mkdir -p "$W"; cd "$W"
cat > realinit.c <<'C'
#include <stdio.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/reboot.h>
int main(void){char b[8192];int f=open("/proc/self/mounts",O_RDONLY);int n=read(f,b,sizeof b-1);b[n>0?n:0]=0;
printf("REALINIT: pid=%d\n%s",getpid(),b);int w=open("/etc/written-by-test",O_WRONLY|O_CREAT,0644);
printf("REALINIT: write /etc -> %s\n",w>=0?"ok":"fail");fflush(stdout);sync();reboot(RB_POWER_OFF);return 0;}
C
gcc -static -O2 realinit.c -o realinit
ROOTUUID=06196e49-d8eb-6d49-2e30-42596c2dbb79; LOGUUID=2f3e4d5c-6b7a-4891-a0b1-c2d3e4f5a6b7; DATAUUID=8d1c2b7e-5a4f-4e3b-9c2d-1f0e9d8c7b6a
rm -rf root ird; mkdir -p root/sbin root/proc root/sys root/dev root/run root/var root/logs root/etc root/home root/root root/usr/lib/abforge
cp realinit root/sbin/init
cat > root/usr/lib/abforge/profile.json <<J
{"record_version":1,"mounts":[{"mount":"/var","partuuid":"$DATAUUID","options":"defaults,nodev"},{"mount":"/logs","partuuid":"$LOGUUID","options":"defaults,nodev,nosuid,noexec"}],
"overlays":[{"path":"/etc","upper":"/var/.eflow/overlays/etc/upper","work":"/var/.eflow/overlays/etc/work"},{"path":"/home","upper":"/var/.eflow/overlays/home/upper","work":"/var/.eflow/overlays/home/work"}]}
J
rm -f root.img rootv.img data.img log.img disk.img
truncate -s 16M root.img; mkfs.ext4 -q -b 4096 -d root root.img
truncate -s 20M rootv.img; dd if=root.img of=rootv.img conv=notrunc status=none
veritysetup format rootv.img rootv.img --data-blocks=4096 --hash-offset=16777216 --salt=abab > vfmt.txt
RH=$(awk '/Root hash/{print $3}' vfmt.txt)
truncate -s 16M data.img; mkfs.ext4 -q data.img; truncate -s 8M log.img; mkfs.ext4 -q log.img
truncate -s 64M disk.img
sgdisk -o -n 1:2048:+20M -c 1:RootFSA -u 1:$ROOTUUID -n 2:0:+8M -c 2:Log -u 2:$LOGUUID -n 3:0:+16M -c 3:Data -u 3:$DATAUUID disk.img >/dev/null
dd if=rootv.img of=disk.img bs=512 seek=2048 conv=notrunc status=none
dd if=log.img of=disk.img bs=512 seek=43008 conv=notrunc status=none
dd if=data.img of=disk.img bs=512 seek=59392 conv=notrunc status=none
[ -e "$KT/lib/modules/$K/modules.dep" ] || depmod -b "$KT" "$K"
mkdir -p ird/etc/abforge ird/dev
for m in virtio_blk virtio_pci dm-verity ext4 overlay crc32c_generic; do modprobe -d "$KT" -S "$K" --show-depends $m; done \
  | awk '{print $2}' | awk '!seen[$0]++' | sed "s|.*/lib/modules/$K/||" > ird/etc/abforge/modules.load
while read -r p; do mkdir -p "ird/lib/modules/$K/$(dirname "$p")"; cp "$KT/lib/modules/$K/$p" "ird/lib/modules/$K/$p"; done < ird/etc/abforge/modules.load
cp "$INIT" ird/init; mknod ird/dev/console c 5 1
(cd ird && find . | LC_ALL=C sort | cpio -o -H newc --quiet) > initrd.img
APPEND="console=ttyS0 abforge.slot=a abforge.root=PARTUUID=$ROOTUUID abforge.verity.roothash=$RH abforge.verity.salt=abab abforge.verity.hashoffset=16777216 abforge.verity.datablocks=4096 abforge.wait=20"
timeout 300 qemu-system-x86_64 -accel tcg -cpu max -m 512 -nographic -no-reboot -kernel "$KT/boot/vmlinuz-$K" -initrd initrd.img \
  -append "$APPEND" -drive file=disk.img,if=virtio,format=raw > console.txt 2>&1 || true
grep -E "^abforge-init|^REALINIT|^overlay|^/dev" console.txt
