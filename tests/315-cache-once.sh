#!/usr/bin/env bash
# needs: root fuse qemu-img fincore jq
# Data is cached once: what is read and written through an attached
# device sits in the device's cache, not also in the image file's page
# cache (the daemon reads and writes the image with O_DIRECT where it is
# aligned; passthrough hands the kernel the device's direct I/O).
. "$SRC_DIR/attach-lib.sh"
qemu-img create -q -f qcow2 disk.qcow2 64M
qemu-img create -q -f vpc -o subformat=dynamic disk.vhd 64M
qemu-img create -q -f raw disk.raw 64M
qemu-img create -q -f raw pt.raw 64M
cached() { fincore -b -n -o RES "$1" | tr -d ' '; }
for args in "-f qcow2 disk.qcow2" "-f vhd disk.vhd" "-f raw --no-passthrough disk.raw" "-f raw pt.raw"; do
	echo "=== $args"
	img=${args##* }
	attach $args 2>/dev/null
	$VDISK list --output json | jq -r '"passthrough: \(.[0].passthrough)"'
	dd if=/dev/urandom of="$dev" bs=1M count=32 status=none
	sync "$dev"
	n=$(cached $img)
	[ "$n" -lt 1048576 ] && echo "written: image pages cached < 1 MiB" || echo "written: $n bytes of the image cached"
	# Drop the device's copy so the next read comes from the image.
	blockdev --flushbufs "$dev"
	r0=$($VDISK list --output json | jq '.[0].counters."bytes-read"')
	dd if="$dev" of=/dev/null bs=1M count=32 status=none
	r1=$($VDISK list --output json | jq '.[0].counters."bytes-read"')
	[ $((r1 - r0)) -ge 33554432 ] && echo "read from the image"
	n=$(cached $img)
	[ "$n" -lt 1048576 ] && echo "read: image pages cached < 1 MiB" || echo "read: $n bytes of the image cached"
	$VDISK detach "$unit"
done
