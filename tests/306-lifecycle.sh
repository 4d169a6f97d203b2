#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 fsck.ext4
# Daemon lifecycle: SIGKILL while a file system is mounted and written
# leaves no loop device behind once the file system is (lazily) unmounted,
# a new daemon cleans the dead FUSE mount and attaches the image again;
# SIGTERM flushes and detaches everything.
. "$SRC_DIR/attach-lib.sh"
fuse_mounts() { grep -c " $VDISK_STATE_DIR/fuse/" /proc/mounts; }
echo "=== daemon in the background, a second one refused"
$VDISK daemon
$VDISK daemon; echo "exit $?"
$VDISK daemon --foreground; echo "exit $?"
for mode in passthrough userspace qcow2; do
	echo "=== SIGKILL while writing ($mode)"
	img=(-f raw disk.img)
	[ $mode = userspace ] && img=(-f raw --no-passthrough disk.img)
	[ $mode = qcow2 ] && img=(-f qcow2 disk.qcow2)
	rm -f disk.img disk.qcow2
	qemu-img create -f raw disk.img 64M >/dev/null
	qemu-img create -f qcow2 disk.qcow2 64M >/dev/null
	attach "${img[@]}" 2>/dev/null
	mkfs.ext4 -q "$dev"
	mnt "$dev" mnt
	copy_tree mnt
	sync
	( for i in $(seq 50); do cp -r "$GOROOT_SRC/strings" mnt/w$i 2>/dev/null || break; done ) &
	writer=$!
	sleep 0.3
	pid=$(daemon_pid)
	kill -9 "$pid"
	wait_gone "$pid" && echo "daemon killed"
	kill "$writer" 2>/dev/null; wait "$writer" 2>/dev/null
	umount -l mnt
	for _ in $(seq 200); do loop_bound "$dev" || break; sleep 0.05; done
	loop_bound "$dev" && echo "loop device still bound" || echo "no orphaned loop device"
	echo "dead FUSE mounts: $(fuse_mounts)"
	if [ $mode = qcow2 ]; then
		# Exit status 0 is clean, 3 leaked clusters only: no corruption.
		qemu-img check disk.qcow2 >check.log 2>&1; rc=$?
		[ $rc -eq 0 ] || [ $rc -eq 3 ] && echo "qemu-img check: no corruption" || cat check.log
	fi
	attach "${img[@]}" 2>&1
	echo "FUSE mounts after restart: $(fuse_mounts)"
	fsck.ext4 -fy "$dev" >fsck.log 2>&1; rc=$?
	[ $rc -le 1 ] && echo "fsck repaired or clean" || { echo "fsck exit $rc"; cat fsck.log; }
	mnt "$dev" mnt && diff -r "$GOROOT_SRC/bufio" mnt/bufio && echo "earlier data intact"
	umnt mnt
	$VDISK detach "$unit"
done
echo "=== SIGTERM detaches everything"
attach -f qcow2 disk.qcow2
attach --mem 8M
mkfs.ext4 -q "$dev" && mnt "$dev" mnt
echo hello >mnt/f
pid=$(daemon_pid)
kill "$pid"
wait_gone "$pid" && echo "daemon exited"
grep -o 'unit busy at shutdown[^"]*' "$VDISK_STATE_DIR/daemon.log" | sort -u
cat mnt/f >/dev/null 2>&1; echo 3 >/proc/sys/vm/drop_caches; ls mnt >/dev/null 2>&1
umount mnt 2>/dev/null || umount -l mnt
# The kernel clears an autoclear loop device asynchronously after its last
# close; wait for that rather than for a fixed time.
for _ in $(seq 200); do
	bound=0
	for d in "${_loops[@]}"; do loop_bound "$d" && bound=1; done
	[ $bound = 0 ] && break
	sleep 0.05
done
for d in "${_loops[@]}"; do loop_bound "$d" && echo "$d still bound"; done
echo "FUSE mounts: $(fuse_mounts)"
ls "$VDISK_STATE_DIR"
qemu-img check disk.qcow2 >/dev/null && echo "qemu-img check clean"
qemu-img convert -O raw disk.qcow2 conv.raw && fsck.ext4 -fn conv.raw >/dev/null 2>&1 && echo "fsck clean"
