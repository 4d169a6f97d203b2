#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 fsck.ext4 fio jq
# qcow2: attach, mkfs, mount, copy a real tree, diff, detach; a fresh -r
# attach fscks clean; qemu-img check is clean and qemu-img convert holds
# the same file system; fio verify; forced detach of a busy device leaves
# a consistent image; -r never changes the file.
. "$SRC_DIR/attach-lib.sh"
qemu-img create -f qcow2 disk.qcow2 64M >/dev/null
attach disk.qcow2 2>/dev/null
$VDISK list --counters=false | filter
mkfs.ext4 -q "$dev"
mnt "$dev" mnt
copy_tree src
copy_tree mnt
diff -r -x lost+found src mnt && echo "tree identical"
umnt mnt
$VDISK detach "$unit"
qemu-img check disk.qcow2 2>&1 | head -1
qemu-img convert -f qcow2 -O raw disk.qcow2 conv.raw
fsck.ext4 -fn conv.raw >/dev/null 2>&1 && echo "converted image fscks clean"
mkdir -p cmnt && mnt conv.raw cmnt loop,ro && diff -r -x lost+found src cmnt && echo "converted image holds the tree"
umnt cmnt
echo "=== -r"
# An old mtime with nanoseconds: a write would change it to now.
touch -d '2020-01-02 03:04:05.123456789' disk.qcow2
sum() { md5sum disk.qcow2 | cut -d' ' -f1; stat -c %.9Y disk.qcow2; }
sum >before
attach -r disk.qcow2
fsck.ext4 -fn "$dev" >/dev/null 2>&1 && echo "fsck clean"
mnt "$dev" mnt ro && diff -r -x lost+found src mnt && echo "read-only mount reads the tree"
dd if=/dev/zero of="$dev" bs=4k count=1 oflag=direct status=none 2>&1 | sed 's/.*: //'
umnt mnt
$VDISK detach "$unit"
sum | cmp - before && echo "image bytes and mtime unchanged"
echo "=== stat matches stat(1)"
attach -r disk.qcow2 >/dev/null
stat_matches "$unit" disk.qcow2
$VDISK detach "$unit"
echo "=== fio verify"
attach -f qcow2 disk.qcow2
run_fio "$dev"
echo "=== forced detach of a device open by a process"
exec 7<>"$dev"
$VDISK detach "$unit" 7>&- 2>err; echo "exit $?"
filter <err
$VDISK detach -f "$unit" 7>&- && echo "forced detach ok"
dd if=/dev/zero bs=4k count=1 seek=10 oflag=direct status=none 2>&1 >&7 | sed 's/.*: //'
exec 7>&-
qemu-img check disk.qcow2 2>&1 | head -1
echo "=== forced detach while mounted and being written"
detach_while_writing -f qcow2 disk.qcow2
qemu-img check disk.qcow2 >check.log 2>&1 && echo "qemu-img check clean" || cat check.log
echo "=== truncated and invalid images"
head -c 1000 disk.qcow2 >trunc.qcow2
$VDISK attach trunc.qcow2; echo "truncated: exit $?"
$VDISK attach -f qcow2 conv.raw; echo "raw as qcow2: exit $?"
$VDISK list --counters=false
ls "$VDISK_STATE_DIR/fuse"
echo "loop devices on our files: $(our_loops)"
