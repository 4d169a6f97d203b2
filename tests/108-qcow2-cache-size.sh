#!/usr/bin/env bash
# --l2-cache-size and --refcount-cache-size (QEMU's l2-cache-size and
# refcount-cache-size): tiny caches still give the right data and a clean
# image; bad sizes are refused clearly.
# needs: qemu-img qemu-io
run() { "$@" 2>&1; echo "exit ${PIPESTATUS[0]}"; }
qemu-img create -q -f qcow2 -o cluster_size=4k c.qcow2 32M
run $VDISK io --l2-cache-size 512 --refcount-cache-size 16k -c "write -P 7 0 3M" -c "write -P 8 30M 1M" -c "read -P 7 0 3M" c.qcow2 | grep -v "/sec"
run $VDISK convert -O raw --l2-cache-size 8k c.qcow2 c.raw
qemu-io -r -c "read -P 7 0 3M" -c "read -P 8 30M 1M" c.qcow2 | grep -c "^read"
qemu-img compare c.qcow2 c.raw
qemu-img check c.qcow2 | head -1
run $VDISK info --l2-cache-size 0 c.qcow2
run $VDISK info --l2-cache-size 2T c.qcow2
run $VDISK check --refcount-cache-size 12x c.qcow2
run $VDISK serve --l2-cache-size 4P c.qcow2
