#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 blockdev
# -s picks the logical sector size the loop driver presents; -u picks the
# unit, and a unit in use is EBUSY.
. "$SRC_DIR/attach-lib.sh"
qemu-img create -f raw disk.img 32M >/dev/null
echo "=== -s 12"
attach -f raw -s 12 disk.img 2>/dev/null
blockdev --getss "$dev"
$VDISK list --counters=false | filter
copy_tree src
mkfs.ext4 -q "$dev" && mnt "$dev" mnt && copy_tree mnt && diff -r -x lost+found src mnt && echo "tree identical"
umnt mnt
$VDISK detach "$unit"
echo "=== -s 9, -s 0"
attach -f raw -s 9 disk.img >/dev/null && blockdev --getss "$dev" && $VDISK detach "$unit"
attach -f raw -s 0 disk.img >/dev/null && blockdev --getss "$dev" && $VDISK detach "$unit"
echo "=== -s 7, -s 20, -s 13"
for s in 7 20 13; do $VDISK attach -f raw -s $s disk.img; echo "exit $?"; done
$VDISK list --counters=false
echo "=== -u"
attach -u vd3 -f raw disk.img
attach -u 3 --mem 1M; echo "exit $?"
attach -u vd3 --mem 1M; echo "exit $?"
attach -u bogus --mem 1M; echo "exit $?"
attach --mem 1M
attach --mem 1M
$VDISK list --counters=false | filter
blockdev --getsize64 "$dev"
$VDISK detach vd0
$VDISK detach vd1
$VDISK detach vd3
$VDISK list --counters=false
