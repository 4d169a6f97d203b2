#!/usr/bin/env bash
# needs: root fuse qemu-img blkdiscard fstrim mkfs.ext4 fsck.ext4 jq
# Discard (blkdiscard, fstrim) on attached qcow2, dynamic vhd and raw
# with passthrough: the range reads back as zeros and the image file gives
# the space back (qcow2 frees the clusters, vhd punches the data of its
# blocks, raw punches holes); the image checks clean afterwards.
. "$SRC_DIR/attach-lib.sh"
kib() { du -k "$1" | cut -f1; }
qemu-img create -q -f qcow2 disk.qcow2 64M
qemu-img create -q -f vpc -o subformat=dynamic disk.vhd 64M
qemu-img create -q -f raw disk.raw 64M
for img in disk.qcow2 disk.vhd disk.raw; do
	echo "=== $img: blkdiscard"
	args=()
	[ $img = disk.raw ] && args=(-f raw)
	attach "${args[@]}" $img 2>/dev/null
	$VDISK list --output json | jq -r '"passthrough: \(.[0].passthrough)"'
	dd if=/dev/urandom of="$dev" bs=1M count=16 oflag=direct status=none
	sync "$dev"
	before=$(kib $img)
	blkdiscard -o 1M -l 8M "$dev"
	sync "$dev"
	after=$(kib $img)
	[ "$after" -le $((before - 8000)) ] && echo "file gave back 8 MiB" || echo "file: $before KiB before, $after KiB after"
	cmp -i 1048576:0 -n 8388608 "$dev" /dev/zero && echo "discarded range reads zeros"
	if [ $img = disk.qcow2 ]; then
		# Runs of one status, whatever the order the clusters were allocated in.
		qemu-img map -U --output=json $img | jq -r 'reduce .[] as $e ([];
			if length > 0 and .[-1].data == $e.data and .[-1].zero == $e.zero then .[-1].length += $e.length else . + [$e] end)
			| .[] | select(.start < 16777216) | "\(.start) +\(.length) data=\(.data) zero=\(.zero)"'
	fi
	echo "=== $img: fstrim"
	mkfs.ext4 -q -E nodiscard "$dev"
	mnt "$dev" mnt
	dd if=/dev/urandom of=mnt/big bs=1M count=24 status=none
	sync
	before=$(kib $img)
	rm mnt/big
	sync
	fstrim mnt && echo "fstrim ok"
	sync "$dev"
	after=$(kib $img)
	[ "$after" -le $((before - 16384)) ] && echo "fstrim gave back space" || echo "file: $before KiB before, $after KiB after"
	umnt mnt
	$VDISK detach "$unit"
	case $img in
	disk.qcow2) qemu-img check -q $img && echo "qemu-img check clean" ;;
	disk.vhd) $VDISK check $img >/dev/null && echo "vdisk check clean" ;;
	esac
	qemu-img convert -O raw $img conv.raw && fsck.ext4 -fn conv.raw >/dev/null 2>&1 && echo "converted image fscks clean"
	rm -f conv.raw
done
