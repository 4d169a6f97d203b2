#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 fsck.ext4 jq
# Detach refuses a busy device (mounted, or open by a process) with EBUSY
# and the unit stays; -f detaches anyway, the holder gets EIO, the image is
# consistent. Both with FUSE passthrough (raw) and with requests served in
# userspace.
. "$SRC_DIR/attach-lib.sh"
for mode in passthrough userspace; do
	echo "=== $mode"
	extra=()
	[ $mode = userspace ] && extra=(--no-passthrough)
	rm -f disk.img
	qemu-img create -f raw disk.img 32M >/dev/null
	attach -f raw "${extra[@]}" disk.img 2>/dev/null
	$VDISK list --output json | jq -r '.[0].passthrough'
	mkfs.ext4 -q "$dev"
	mnt "$dev" mnt
	copy_tree mnt
	echo "-- mounted"
	$VDISK detach "$unit" 2>&1 | filter
	echo "exit ${PIPESTATUS[0]}"
	$VDISK list --counters=false | filter
	umnt mnt
	echo "-- open by a process"
	exec 7<>"$dev"
	$VDISK detach "$unit" 7>&- 2>err
	echo "exit $?"
	filter <err
	$VDISK list --output json 7>&- >list.json
	jq -r '.[].unit' list.json
	dd if="$dev" of=/dev/null bs=4k count=1 iflag=direct status=none <&7 && echo "read before -f ok"
	$VDISK detach -f "$unit" 7>&- && echo "forced detach ok"
	$VDISK list --counters=false 7>&- | filter
	timeout 10 dd of=/dev/null bs=4k count=1 iflag=direct status=none <&7 2>&1 | sed 's/.*: //'
	timeout 10 dd if=/dev/zero of=/dev/stdout bs=4k count=1 seek=100 oflag=direct status=none 2>&1 >&7 | sed 's/.*: //'
	exec 7>&-
	for _ in $(seq 200); do loop_bound "$dev" || break; sleep 0.05; done
	loop_bound "$dev" && echo "loop device still bound" || echo "loop device released"
	fsck.ext4 -n -f disk.img >fsck.log 2>&1 && echo "fsck clean" || cat fsck.log
	echo "-- forced detach of a mounted device"
	attach -f raw "${extra[@]}" disk.img
	mnt "$dev" mnt
	dd if=/dev/urandom of=mnt/file bs=64k count=8 status=none
	sync
	$VDISK detach -f "$unit" && echo "forced detach ok"
	cat mnt/file >/dev/null 2>&1; echo 3 >/proc/sys/vm/drop_caches
	timeout 10 cat mnt/bufio/bufio.go >/dev/null 2>&1 && echo "read after -f succeeded" || echo "read after -f failed"
	umount mnt 2>/dev/null || umount -l mnt
	for _ in $(seq 200); do loop_bound "$dev" || break; sleep 0.05; done
	loop_bound "$dev" && echo "loop device still bound" || echo "loop device released"
	# The file system was live when the disk went away: what sync committed
	# may still sit in the journal, so check it as a kernel would after a
	# crash, replaying the journal first (exit 0 or 1); 4 and up is damage.
	cp disk.img recover.img
	fsck.ext4 -f -p recover.img >fsck.log 2>&1
	rc=$?
	[ $rc -le 1 ] && echo "fsck clean after journal recovery" || { echo "fsck found errors (exit $rc)"; cat fsck.log; }
	rm -f recover.img
done
echo "=== unknown units"
$VDISK detach vd7
$VDISK detach /dev/null
$VDISK stat vd3; echo "exit $?"
