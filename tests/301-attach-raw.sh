#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 fsck.ext4 jq
# Attach a raw image, make a file system on it, copy a real tree, compare,
# detach; a fresh read-only attach fscks clean; list and stat report the
# file as given.
. "$SRC_DIR/attach-lib.sh"
qemu-img create -f raw disk.img 48M >/dev/null
echo "== attach (the daemon starts)"
attach -f raw disk.img 2>&1
$VDISK list --counters=false | filter
mkfs.ext4 -q "$dev" && echo mkfs ok
mnt "$dev" mnt
copy_tree src
copy_tree mnt
diff -r -x lost+found src mnt && echo "tree identical"
sync
umnt mnt
$VDISK detach "$unit" && echo "detached"
$VDISK list --counters=false | filter
echo "== read-only attach, fsck, the tree read back from the image"
sync
echo 3 >/proc/sys/vm/drop_caches
attach -r -f raw disk.img
fsck.ext4 -n -f "$dev" >fsck.log 2>&1 && echo "fsck clean" || cat fsck.log
mnt "$dev" mnt ro && diff -r -x lost+found src mnt && echo "tree read back identical"
umnt mnt
$VDISK list --output json | jq -c '.[] | {unit, file, format, "read-only", "sector-size", "virtual-size"}'
echo "== stat matches stat(1)"
stat_matches "$unit" disk.img
$VDISK stat "$unit" | head -1
$VDISK detach "$dev" && echo "detached by device"
echo "== relative and absolute names as given"
mkdir -p sub
mv disk.img sub/
(cd sub && attach -f raw ./disk.img >/dev/null)
attach -f raw "$TEST_DIR/sub/disk.img" >/dev/null 2>&1 || echo "second writer refused (image lock)"
# A reader of a raw image lets others write it, as QEMU's raw format does.
attach -r -f raw "$TEST_DIR/sub/disk.img"
$VDISK list --output json | jq -r '.[].file'
$VDISK detach vd1
$VDISK detach vd0
$VDISK list --counters=false | filter
echo "== mem"
attach --mem 32M
mkfs.ext4 -q "$dev" && mnt "$dev" mnt && copy_tree mnt && diff -r -x lost+found src mnt && echo "mem tree identical"
umnt mnt
$VDISK list --counters=false | filter
$VDISK detach "$unit"
stop_daemon
ls "$VDISK_STATE_DIR"
