#!/usr/bin/env bash
# needs: root fuse qemu-img qemu-nbd nbdkit mkfs.ext4 fsck.ext4
# vdisk attach on exports of servers nobody here wrote: qemu-nbd serving a
# raw file, and -f qcow2 over the raw bytes of a qcow2 file that qemu-nbd
# serves; nbdkit's memory plugin. Each carries a file system.
. "$SRC_DIR/attach-lib.sh"

# start_bg SOCK CMD...: run a server in the background until stop_bg.
start_bg() {
	local sock=$1; shift
	"$@" 2>server.log &
	BPID=$!
	for _ in $(seq 200); do [ -S "$sock" ] && return; sleep 0.05; done
	echo "server did not start"; cat server.log
}
stop_bg() { kill $BPID; wait $BPID 2>/dev/null; }

# fs_round URI ARGS...: attach, mkfs, mount, copy, compare, detach.
fs_round() {
	local uri=$1; shift
	attach "$@" "$uri" 2>/dev/null || return
	mkfs.ext4 -q "$dev" && mnt "$dev" mnt
	copy_tree mnt
	diff -r -x lost+found src mnt && echo "tree identical"
	umnt mnt
	fsck.ext4 -n -f "$dev" >fsck.log 2>&1 && echo "fsck clean" || cat fsck.log
	$VDISK detach "$unit" && echo "detached"
}
copy_tree src

echo "=== qemu-nbd, raw"
qemu-img create -q -f raw disk.raw 32M
start_bg "$TEST_DIR/q.sock" qemu-nbd -t -f raw -k "$TEST_DIR/q.sock" -x disk disk.raw
fs_round "nbd+unix:///disk?socket=$TEST_DIR/q.sock" -f raw
stop_bg
fsck.ext4 -n -f disk.raw >/dev/null 2>&1 && echo "disk.raw: fsck clean"

echo "=== qemu-nbd serving a qcow2 file's bytes, -f qcow2 on vdisk's side"
qemu-img create -q -f qcow2 -o preallocation=metadata disk.qcow2 32M
start_bg "$TEST_DIR/q.sock" qemu-nbd -t -f raw -k "$TEST_DIR/q.sock" disk.qcow2
fs_round "nbd+unix:///?socket=$TEST_DIR/q.sock" -f qcow2
stop_bg
qemu-img check -q disk.qcow2 && echo "disk.qcow2: check clean"
qemu-img convert -O raw disk.qcow2 conv.raw && fsck.ext4 -n -f conv.raw >/dev/null 2>&1 && echo "disk.qcow2: fsck clean"

echo "=== nbdkit memory"
start_bg "$TEST_DIR/m.sock" nbdkit -f -U "$TEST_DIR/m.sock" memory 32M
fs_round "nbd+unix:///?socket=$TEST_DIR/m.sock" -f raw
stop_bg
