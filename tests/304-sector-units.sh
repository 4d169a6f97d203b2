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
echo "=== -s 13, -s 16: sectors larger than a page, where the kernel presents them"
head -c 1M /dev/urandom >pat
for s in 13 16; do
	attach -f raw -s $s disk.img 2>/dev/null
	blockdev --getss "$dev"
	$VDISK list --output json | jq -r '.[0]."sector-size"'
	dd if=pat of="$dev" bs=1M seek=3 oflag=direct status=none && cmp -i 0:3145728 -n 1048576 pat "$dev" && echo "data reads back"
	dd if=pat of="$dev" bs=4k count=1 oflag=direct status=none 2>&1 | sed 's/.*: //'
	# ext4 makes such a file system, but Linux 6.18 does not mount ext4
	# with blocks larger than a page.
	[ $s = 13 ] && mkfs.ext4 -q -F "$dev" >/dev/null 2>&1 && dumpe2fs -h "$dev" 2>/dev/null | grep '^Block size'
	$VDISK detach "$unit"
done
echo "=== -s 7, -s 20, -s 17, -s 31: refused, nothing left behind"
for s in 7 20 17 31; do $VDISK attach -f raw -s $s disk.img; echo "exit $?"; done
$VDISK list --counters=false
ls "$VDISK_STATE_DIR/fuse"
echo "loop devices on our files: $(cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -c "^$VDISK_STATE_DIR/")"
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
