#!/usr/bin/env bash
# needs: root fuse qemu-img fio jq
# Several fio jobs write and verify (crc32c) on the device at once: raw
# with passthrough, raw served in userspace, 4 KiB sectors, and a RAM disk.
. "$SRC_DIR/attach-lib.sh"
qemu-img create -f raw disk.img 32M >/dev/null
for args in "-f raw" "-f raw --no-passthrough" "-f raw -s 12" "--mem 32M"; do
	echo "=== $args"
	if [ "$args" = "--mem 32M" ]; then attach --mem 32M 2>/dev/null; else attach $args disk.img 2>/dev/null; fi
	run_fio "$dev"
	$VDISK list --output json | jq -r '.[0].counters.errors'
	$VDISK detach "$unit"
done
