#!/usr/bin/env bash
# needs: root fuse qemu-img
# attach --cache-size: data written through the device reads back through
# the cache and reaches the image; SIGINT on the daemon flushes and
# detaches every unit, as SIGTERM does; truncated or invalid images are
# refused with nothing left behind; a probed raw image refuses a write
# through the device that would make it probe as qcow2.
. "$SRC_DIR/attach-lib.sh"
# qcount ARGS...: qemu-io pattern reads, counted; qemu-io prints "read"
# even after a mismatch, so a failure prints its output instead.
qcount() {
	local out
	if out=$(qemu-io "$@" 2>&1) && ! grep -q "verification failed" <<<"$out"; then
		grep -c '^read' <<<"$out"
	else
		echo "$out"
	fi
}
qemu-img create -q -f qcow2 disk.qcow2 16M
head -c 2M /dev/urandom >rnd
echo "=== --cache-size"
attach --cache-size 1M -f qcow2 disk.qcow2 2>/dev/null
dd if=rnd of="$dev" bs=1M oflag=direct status=none
dd if="$dev" of=back bs=1M count=2 iflag=direct status=none
cmp rnd back && echo "read back through the cache"
# A second pass overwrites cached blocks: the cache must not serve stale data.
head -c 1M /dev/urandom >rnd2
dd if=rnd2 of="$dev" bs=64k seek=4 oflag=direct status=none
dd if="$dev" of=back bs=64k count=16 skip=4 iflag=direct status=none
cmp rnd2 back && echo "overwritten blocks read back new"
$VDISK detach "$unit"
qemu-img check -q disk.qcow2 && echo "qemu-img check clean"
qcount -r -c "read -P 0 3M 1M" disk.qcow2
qemu-img convert -O raw disk.qcow2 conv.raw
cmp -n 262144 rnd conv.raw && cmp -n 1048576 rnd2 conv.raw 0 262144 && echo "image holds what was written"
$VDISK attach --cache-size lots disk.qcow2; echo "exit $?"
echo "=== SIGINT"
attach -f qcow2 disk.qcow2
attach --mem 4M
dd if=rnd of="$dev" bs=1M count=1 oflag=direct status=none
pid=$(daemon_pid)
kill -INT "$pid"
wait_gone "$pid" && echo "daemon exited"
sleep 0.2
for d in "${_loops[@]}"; do loop_bound "$d" && echo "$d still bound"; done
echo "FUSE mounts: $(grep -c " $VDISK_STATE_DIR/fuse" /proc/mounts)"
qemu-img check -q disk.qcow2 && echo "qemu-img check clean"
echo "=== truncated or invalid images: a clear error, nothing left behind"
qemu-img create -q -f qcow2 tr.qcow2 8M
truncate -s 100 tr.qcow2
head -c 4096 /dev/zero >junk.vhd
$VDISK attach tr.qcow2 2>&1; echo "exit $?"
$VDISK attach -f vpc junk.vhd 2>&1; echo "exit $?"
$VDISK list --counters=false
ls "$VDISK_STATE_DIR/fuse" 2>/dev/null
echo "FUSE mounts: $(grep -c " $VDISK_STATE_DIR/fuse" /proc/mounts)"
echo "loop devices on our files: $(cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -c "^$VDISK_STATE_DIR/")"
echo "=== a probed raw image refuses a qcow2 header written through the device"
qemu-img create -q -f raw pr.raw 8M
qemu-img create -q -f qcow2 hdr.qcow2 1M
attach pr.raw
dd if=hdr.qcow2 of="$dev" bs=4k count=1 oflag=direct 2>&1 | grep -o 'Input/output error' | head -1
dd if=rnd of="$dev" bs=4k count=1 oflag=direct status=none && echo "ordinary data written"
$VDISK detach "$unit"
$VDISK info pr.raw | grep 'file format'
