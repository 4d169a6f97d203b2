#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 fsck.ext4 fio jq vhdiinfo
# vhd (dynamic): attach, mkfs, mount, copy a real tree, diff, detach; a
# fresh -r attach fscks clean; qemu-img convert holds the same file
# system; fio verify; forced detach of a busy device leaves an image QEMU
# and libvhdi read; -r never changes the file.
. "$SRC_DIR/attach-lib.sh"
qemu-img create -f vpc -o subformat=dynamic disk.vhd 64M >/dev/null
attach disk.vhd 2>/dev/null
$VDISK list --counters=false | filter
mkfs.ext4 -q "$dev"
mnt "$dev" mnt
copy_tree src
copy_tree mnt
diff -r -x lost+found src mnt && echo "tree identical"
umnt mnt
$VDISK detach "$unit"
qemu-img convert -f vpc -O raw disk.vhd conv.raw
fsck.ext4 -fn conv.raw >/dev/null 2>&1 && echo "converted image fscks clean"
mkdir -p cmnt && mnt conv.raw cmnt loop,ro && diff -r -x lost+found src cmnt && echo "converted image holds the tree"
umnt cmnt
echo "=== -r"
# An old mtime with nanoseconds: a write would change it to now.
touch -d '2020-01-02 03:04:05.123456789' disk.vhd
sum() { md5sum disk.vhd | cut -d' ' -f1; stat -c %.9Y disk.vhd; }
sum >before
attach -r disk.vhd
fsck.ext4 -fn "$dev" >/dev/null 2>&1 && echo "fsck clean"
mnt "$dev" mnt ro && diff -r -x lost+found src mnt && echo "read-only mount reads the tree"
dd if=/dev/zero of="$dev" bs=4k count=1 oflag=direct status=none 2>&1 | sed 's/.*: //'
umnt mnt
$VDISK detach "$unit"
sum | cmp - before && echo "image bytes and mtime unchanged"
echo "=== stat matches stat(1)"
attach -r disk.vhd >/dev/null
stat_matches "$unit" disk.vhd
$VDISK detach "$unit"
echo "=== fio verify"
attach -f vhd disk.vhd
run_fio "$dev"
echo "=== forced detach of a device open by a process"
exec 7<>"$dev"
$VDISK detach "$unit" 7>&- 2>err; echo "exit $?"
filter <err
$VDISK detach -f "$unit" 7>&- && echo "forced detach ok"
dd if=/dev/zero bs=4k count=1 seek=10 oflag=direct status=none 2>&1 >&7 | sed 's/.*: //'
exec 7>&-
qemu-img convert -f vpc -O raw disk.vhd after.raw && echo "qemu-img reads the image"
vhdiinfo disk.vhd >/dev/null && echo "libvhdi reads the image"
echo "=== forced detach while mounted and being written"
detach_while_writing -f vhd disk.vhd
$VDISK check disk.vhd >check.log 2>&1 && echo "vdisk check clean" || cat check.log
echo "=== truncated and invalid images"
head -c 1000 disk.vhd >trunc.vhd
$VDISK attach trunc.vhd; echo "truncated: exit $?"
$VDISK attach -f vhd conv.raw; echo "raw as vhd: exit $?"
$VDISK list --counters=false
ls "$VDISK_STATE_DIR/fuse"
echo "loop devices on our files: $(our_loops)"
