#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 fsck.ext4
# vdisk attach on an NBD URI: a qcow2 image served by vdisk serve is
# attached as a block device through vdisk's NBD client, carries a file
# system, and is a clean qcow2 afterwards.
. "$SRC_DIR/attach-lib.sh"
. "$SRC_DIR/nbd-common.inc"

qemu-img create -q -f qcow2 disk.qcow2 48M
start_serve -f qcow2 -t -e 4 -k "$TEST_DIR/s.sock" disk.qcow2
URI="nbd+unix:///?socket=$TEST_DIR/s.sock"
attach -f raw "$URI" 2>&1
mkfs.ext4 -q "$dev" && echo "mkfs ok"
mnt "$dev" mnt
copy_tree src
copy_tree mnt
diff -r -x lost+found src mnt && echo "tree identical"
sync
umnt mnt
fsck.ext4 -n -f "$dev" >fsck.log 2>&1 && echo "fsck clean" || cat fsck.log
# An NBD export has no local file to stat.
$VDISK stat "$unit"; echo "exit $?"
$VDISK detach "$unit" && echo "detached"
stop_serve
qemu-img check -q disk.qcow2 && echo "disk.qcow2: check clean"
qemu-img convert -O raw disk.qcow2 disk.raw
fsck.ext4 -n -f disk.raw >fsck.log 2>&1 && echo "image fsck clean" || cat fsck.log
