#!/usr/bin/env bash
# vdisk io, a qemu-io subset: read, write, verify, discard, map, info.
# The list of known formats depends on the drivers linked in.
run() { "$@" 2>&1 | sed "s/(known formats: [^)]*)/(known formats: ...)/"; echo "exit ${PIPESTATUS[0]}"; }
$VDISK create -q a.img 1M
run $VDISK io -c 'write -P 0xab 0 4k' -c 'read -P 0xab 0 4k' -c 'read -v 4090 20' -c 'write -z 64k 64k' \
	-c 'write 128k 512' -c 'read -P 0xcd 128k 512' -c 'discard 512k 64k' -c flush -c map -c info -c length a.img
echo "== verification failure continues, then fails"
run $VDISK io -c 'read -P 0xab 4000 200' -c 'read -q 0 1' a.img
run $VDISK io -r -c 'read -q -P 0xab 0 4k' a.img
echo "== read-only"
run $VDISK io -r -c 'write 0 1' a.img
run $VDISK io -r -U -c 'read 0 1' a.img
echo "== errors"
run $VDISK io -c 'read 1M 1' a.img
run $VDISK io -c 'read 0' a.img
run $VDISK io -c 'write -P 0x100 0 1' a.img
run $VDISK io -c 'frob' a.img
run $VDISK io -c 'read x 1' a.img
run $VDISK io a.img
run $VDISK io -U -c 'read 0 1' a.img
run $VDISK io -c 'read 0 1' missing.img
