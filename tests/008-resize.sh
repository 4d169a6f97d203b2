#!/usr/bin/env bash
# vdisk resize: absolute and relative sizes, shrinking needs --shrink.
# The list of known formats depends on the drivers linked in.
run() { "$@" 2>&1 | sed "s/(known formats: [^)]*)/(known formats: ...)/"; echo "exit ${PIPESTATUS[0]}"; }
$VDISK create -q a.img 1M
$VDISK io -c 'write -P 9 1020k 4k' a.img >/dev/null
run $VDISK resize a.img 2M
stat -c '%s' a.img
run $VDISK resize a.img +512k
stat -c '%s' a.img
run $VDISK resize a.img -512k
run $VDISK resize --shrink a.img -1536k
stat -c '%s' a.img
run $VDISK io -c 'read -P 9 1020k 4k' a.img
echo "== errors"
# qemu-img refuses an empty image, however it is asked for.
run $VDISK resize -f raw --shrink a.img 0
run $VDISK resize -f raw --shrink a.img -- -1M
run $VDISK resize -f raw --shrink a.img -2M
stat -c '%s' a.img
run $VDISK resize a.img -1M
run $VDISK resize a.img 1Q
run $VDISK resize missing.img 1M
run $VDISK resize a.img
