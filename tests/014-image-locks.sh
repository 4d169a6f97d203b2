#!/usr/bin/env bash
# QEMU's image locks between vdisk and qemu-img/qemu-io. A raw image read
# by vdisk can be written (not resized) by QEMU, as with qemu-nbd -r, and
# the other way round; a qcow2 reader refuses writers,
# whose metadata changes it could not follow. Writers always exclude
# each other.
# needs: qemu-img qemu-io
qemu-img create -q -f raw r.img 1M
qemu-img create -q -f qcow2 q.qcow2 1M
start_bg() { # socket, command...
	local sock=$1; shift
	"$@" 2>server.log &
	BPID=$!
	for _ in $(seq 200); do [ -S "$sock" ] && return; sleep 0.05; done
	echo "server did not start"; cat server.log
}
stop_bg() { kill $BPID; wait $BPID 2>/dev/null || true; }
# hold FORMAT FILE: qemu-io keeps FILE open for writing until unhold.
hold() {
	qemu-io -f "$1" -c 'sleep 100000' "$2" &
	HPID=$!
	# Its "write" lock byte (101) shows in /proc/locks once it holds the
	# image (merged into a range with its neighbours).
	local ino=$(stat -c %i "$2")
	for _ in $(seq 200); do
		awk -v ino=":$ino" '$(NF-2) ~ ino"$" && $(NF-1) <= 101 && $NF >= 101 { f = 1 } END { exit !f }' /proc/locks && return
		sleep 0.05
	done
	echo "qemu-io did not take its locks"
}
unhold() { kill $HPID; wait $HPID 2>/dev/null || true; }
ops() { grep -v ' ops; '; }

echo "== vdisk serve -r raw: QEMU may write, not resize"
start_bg "$TEST_DIR/r.sock" $VDISK serve -r -t -k "$TEST_DIR/r.sock" r.img
qemu-io -f raw -c 'write -P 0x5a 0 512' r.img 2>&1 | ops
qemu-io -f raw -c 'write -P 0x5b 512 512' r.img 2>&1 | ops
qemu-img info r.img >/dev/null && echo "qemu-img info works"
qemu-img resize -f raw r.img 2M 2>&1 | head -1
$VDISK resize r.img 2M 2>&1
$VDISK io -r -c 'read -P 0x5a 0 512' -c 'read -P 0x5b 512 512' r.img | ops
stop_bg
echo "== vdisk serve -r qcow2: QEMU may not"
start_bg "$TEST_DIR/q.sock" $VDISK serve -r -t -k "$TEST_DIR/q.sock" q.qcow2
qemu-io -f qcow2 -c 'write -P 0x5a 0 512' q.qcow2 2>&1 | sed "s#$TEST_DIR/##" | head -1
qemu-io -r -f qcow2 -c 'read 0 512' q.qcow2 2>&1 | ops
stop_bg
echo "== vdisk serve (writable) raw: readers work, writers do not"
start_bg "$TEST_DIR/w.sock" $VDISK serve -t -k "$TEST_DIR/w.sock" r.img
qemu-img info r.img >/dev/null && echo "qemu-img info works"
$VDISK info r.img | head -2
$VDISK io -r -c 'read -P 0x5a 0 512' r.img | ops
$VDISK io -c 'write -P 0x5c 0 512' r.img 2>&1
$VDISK resize r.img 2M 2>&1
qemu-io -f raw -c 'write -P 0x5c 0 512' r.img 2>&1 | sed "s#$TEST_DIR/##" | head -1
stop_bg
echo "== qemu-io writes raw: vdisk reads"
hold raw r.img
$VDISK info r.img | head -2
$VDISK info -f raw --output json r.img | grep '"format"'
$VDISK map --output json r.img
$VDISK compare r.img r.img
$VDISK io -r -c 'read -P 0x5a 0 512' r.img | ops
$VDISK io -f raw -c 'write -P 0x5c 0 512' r.img 2>&1
unhold
echo "== qemu-io writes qcow2: vdisk reads only with -U"
hold qcow2 q.qcow2
$VDISK info q.qcow2 2>&1
$VDISK info -U q.qcow2 | head -2
unhold
