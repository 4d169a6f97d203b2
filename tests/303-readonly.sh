#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 jq
# -r is read-only everywhere; a read-only image file without -r, a missing
# or invalid image are refused with nothing left behind.
. "$SRC_DIR/attach-lib.sh"
qemu-img create -f raw disk.img 32M >/dev/null
attach -f raw disk.img 2>/dev/null
mkfs.ext4 -q "$dev" && mnt "$dev" mnt && copy_tree mnt && umnt mnt
$VDISK detach "$unit"
touch -d '2020-01-02 03:04:05' disk.img
sum() { md5sum disk.img | cut -d' ' -f1; stat -c %Y disk.img; }
sum >before
for mode in passthrough userspace; do
	echo "=== -r ($mode)"
	extra=()
	[ $mode = userspace ] && extra=(--no-passthrough)
	attach -r -f raw "${extra[@]}" disk.img
	$VDISK list --output json | jq -c '.[] | {unit, "read-only"}'
	blockdev --getro "$dev"
	mnt "$dev" mnt ro
	diff -r -x lost+found "$GOROOT_SRC/bufio" mnt/bufio && echo "read-only mount reads the tree"
	touch mnt/new 2>&1 | sed 's/.*: //'
	umnt mnt
	dd if=/dev/zero of="$dev" bs=4k count=1 oflag=direct status=none 2>&1 | sed 's/.*: //'
	fuse_file=$VDISK_STATE_DIR/fuse/$unit/disk
	dd if=/dev/zero of="$fuse_file" bs=4k count=1 conv=notrunc status=none 2>&1 | sed "s|$fuse_file|FUSE file|"
	$VDISK detach "$unit"
	sum | cmp - before && echo "image bytes and mtime unchanged"
done
echo "=== read-only image file without -r"
chmod 444 disk.img
$VDISK attach -f raw disk.img; echo "exit $?"
$VDISK list --counters=false
echo "loop devices on our files: $(cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -c "^$VDISK_STATE_DIR/")"
ls "$VDISK_STATE_DIR/fuse"
attach -r -f raw disk.img && $VDISK detach "$unit"
chmod 644 disk.img
echo "=== read-only file system without -r"
mkdir -p rofs
mount -t tmpfs -o size=40M tmpfs rofs && _mounts+=(rofs)
cp disk.img rofs/ && mount -o remount,ro rofs
$VDISK attach -f raw rofs/disk.img; echo "exit $?"
attach -r -f raw rofs/disk.img && $VDISK detach "$unit"
echo "=== missing, invalid, wrong format"
$VDISK attach nosuch.img; echo "exit $?"
mkdir adir
$VDISK attach adir; echo "exit $?"
$VDISK attach -f nosuchformat disk.img 2>&1 | sed "s/ (known formats[^)]*)//"
$VDISK attach --mem 0; echo "exit $?"
: >empty.img
$VDISK attach -f raw empty.img; echo "exit $?"
$VDISK list --counters=false
ls "$VDISK_STATE_DIR/fuse"
echo "loop devices on our files: $(cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -c "^$VDISK_STATE_DIR/")"
echo done
