#!/usr/bin/env bash
# --l2-cache-size and --refcount-cache-size (QEMU's l2-cache-size and
# refcount-cache-size): tiny caches still give the right data and a clean
# image; bad sizes are refused clearly.
# needs: qemu-img qemu-io root fuse
. "$SRC_DIR/attach-lib.sh"
pattern() { "$@" 2>&1 | grep -q "verification failed" && echo "pattern MISMATCH" || echo "patterns ok"; }
run() { "$@" 2>&1; echo "exit ${PIPESTATUS[0]}"; }
qemu-img create -q -f qcow2 -o cluster_size=4k c.qcow2 32M
run $VDISK io --l2-cache-size 512 --refcount-cache-size 16k -c "write -P 7 0 3M" -c "write -P 8 30M 1M" -c "read -P 7 0 3M" c.qcow2 | grep -v "/sec"
run $VDISK convert -O raw --l2-cache-size 8k c.qcow2 c.raw
pattern qemu-io -r -c "read -P 7 0 3M" -c "read -P 8 30M 1M" c.qcow2
qemu-img compare c.qcow2 c.raw
qemu-img check c.qcow2 | head -1
run $VDISK info --l2-cache-size 0 c.qcow2
run $VDISK info --l2-cache-size 2T c.qcow2
run $VDISK check --refcount-cache-size 12x c.qcow2
run $VDISK serve --l2-cache-size 4P c.qcow2
echo "== attach passes the sizes to the daemon"
qemu-img create -q -f qcow2 -o cluster_size=4k a.qcow2 32M
attach --l2-cache-size 16k --refcount-cache-size 1 a.qcow2 2>/dev/null
for i in 0 9 18 27; do
	head -c 1M /dev/zero | tr '\0' "\\$(printf %o $((65 + i / 9)))" | dd of="$dev" bs=1M seek=$i oflag=direct status=none
done
$VDISK detach "$unit"
qemu-img check a.qcow2 | head -1
pattern qemu-io -r -c "read -P 0x41 0 1M" -c "read -P 0x42 9M 1M" -c "read -P 0x43 18M 1M" -c "read -P 0x44 27M 1M" a.qcow2
run $VDISK attach --l2-cache-size 2T a.qcow2
stop_daemon
