#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 blkdiscard fstrim jq
# Flush (fsync) and discard (blkdiscard, fstrim) on the device reach the
# image; --trace logs each request; counters count them, passthrough I/O
# (which never reaches the daemon) too.
. "$SRC_DIR/attach-lib.sh"
$VDISK daemon --trace 2>/dev/null
qemu-img create -f raw disk.img 32M >/dev/null
attach -f raw --no-passthrough disk.img
counter() { $VDISK list --output json | jq -r ".[0].counters.$1"; }
dd if=/dev/urandom of="$dev" bs=1M count=8 oflag=direct status=none
f0=$(counter flushes)
dd if=/dev/zero of="$dev" bs=4k count=1 conv=fsync status=none
[ "$(counter flushes)" -gt "$f0" ] && echo "fsync reached Flush"
echo "allocated before discard: $(du -k disk.img | cut -f1) KiB"
blkdiscard -o 0 -l 4M "$dev"
echo "allocated after discard: $(du -k disk.img | cut -f1) KiB"
[ "$(counter discards)" -gt 0 ] && echo "discard counted"
cmp -n 4194304 "$dev" /dev/zero && echo "discarded range reads zeros"
blkdiscard -z -o 4M -l 1M "$dev"
cmp -i 4194304:0 -n 1048576 "$dev" /dev/zero && echo "zeroed range reads zeros"
echo "=== trace"
grep -c 'msg=request unit=vd0 op=write offset=[0-9]* length=[0-9]* latency=' "$VDISK_STATE_DIR/daemon.log" | awk '$1 > 0 {print "writes traced"}'
grep -q 'op=flush' "$VDISK_STATE_DIR/daemon.log" && echo "flush traced"
grep -q 'op=discard offset=0 length=4194304' "$VDISK_STATE_DIR/daemon.log" && echo "discard traced"
grep -q 'op=write-zeroes' "$VDISK_STATE_DIR/daemon.log" && echo "write-zeroes traced"
echo "=== fstrim on a mounted file system"
mkfs.ext4 -q -E nodiscard "$dev"
mnt "$dev" mnt
dd if=/dev/urandom of=mnt/big bs=1M count=12 status=none
sync
before=$(du -k disk.img | cut -f1)
rm mnt/big
sync
fstrim mnt && echo "fstrim ok"
after=$(du -k disk.img | cut -f1)
[ "$after" -lt $((before - 8192)) ] && echo "fstrim freed space in the image"
umnt mnt
$VDISK detach "$unit"
$VDISK list --output json
echo "=== counters move: passthrough raw, userspace qcow2"
stop_daemon
qemu-img create -f qcow2 c.qcow2 32M >/dev/null
counters() { $VDISK list --output json | jq -r '.[0].counters | "\(.reads) \(.writes) \(."bytes-read") \(."bytes-written")"'; }
for args in "-f raw disk.img" "-f qcow2 c.qcow2"; do
	attach $args 2>/dev/null
	$VDISK list --output json | jq -r '"passthrough: \(.[0].passthrough)"'
	read -r r0 w0 br0 bw0 < <(counters)
	dd if=/dev/urandom of="$dev" bs=1M count=4 seek=8 oflag=direct status=none
	dd if="$dev" of=/dev/null bs=1M count=4 skip=16 iflag=direct status=none
	read -r r1 w1 br1 bw1 < <(counters)
	[ $((w1 - w0)) -ge 4 ] && [ $((bw1 - bw0)) -ge 4194304 ] && echo "writes and bytes written counted"
	[ $((r1 - r0)) -ge 4 ] && [ $((br1 - br0)) -ge 4194304 ] && echo "reads and bytes read counted"
	$VDISK detach "$unit"
done
