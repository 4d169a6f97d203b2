#!/usr/bin/env bash
# A file system on top of vdisk serve: nbdfuse exposes the export as a
# file, a loop device on it carries ext4, which is mounted, written,
# unmounted and checked.
# needs: root fuse nbdfuse fusermount3 losetup mkfs.ext4 e2fsck qemu-img
. "$SRC_DIR/nbd-common.inc"

qemu-img create -q -f raw a.raw 32M
start_serve -f raw -t -e 4 -k "$TEST_DIR/sock" a.raw
mkdir -p fuse mnt
nbdfuse -P nbdfuse.pid fuse/disk "nbd+unix:///?socket=$TEST_DIR/sock" 2>nbdfuse.log &
FPID=$!
for _ in $(seq 200); do [ -s nbdfuse.pid ] && break; sleep 0.05; done
LOOP=""
cleanup() {
	mountpoint -q mnt && umount mnt
	[ -n "$LOOP" ] && losetup -d "$LOOP"
	kill $FPID 2>/dev/null
	wait $FPID 2>/dev/null
	mountpoint -q fuse && fusermount3 -u fuse
}
trap cleanup EXIT

LOOP=$(losetup -f --show fuse/disk)
mkfs.ext4 -q -F "$LOOP" && echo "mkfs ok"
mount "$LOOP" mnt && echo "mounted"
head -c 5000000 /dev/urandom > payload
cp payload mnt/payload
sync
umount mnt && echo "unmounted"
e2fsck -fn "$LOOP" >/dev/null 2>&1 && echo "fsck clean"
mount -o ro "$LOOP" mnt && cmp payload mnt/payload && echo "payload intact"
umount mnt
losetup -d "$LOOP"; LOOP=""
kill $FPID; wait $FPID 2>/dev/null
mountpoint -q fuse && fusermount3 -u fuse
stop_serve
# The image file itself carries the file system.
e2fsck -fn a.raw >/dev/null 2>&1 && echo "image fsck clean"
