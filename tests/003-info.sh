#!/usr/bin/env bash
# vdisk info: human and JSON output, backing chain, errors.
# The list of known formats depends on the drivers linked in.
run() { "$@" 2>&1 | sed "s/(known formats: [^)]*)/(known formats: ...)/"; echo "exit ${PIPESTATUS[0]}"; }
$VDISK create -q a.img 10M
run $VDISK info a.img
run $VDISK info --output json a.img
run $VDISK info --output=json --backing-chain a.img
run $VDISK info -f raw -U --backing-chain a.img
$VDISK info --cache-size 1M a.img | head -1
# A raw file counts in whole sectors, as in qemu-img: the rest of the last
# sector reads as zeros.
printf 'hello' > small
run $VDISK info small
run $VDISK map --output json small
run $VDISK io -r -c 'read -v 0 16' -c 'read -P 0 5 507' small
echo "== errors"
run $VDISK info missing.img
run $VDISK info --output xml a.img
run $VDISK info -f qcow9 a.img
run $VDISK info --cache-size lots a.img
run $VDISK info
run $VDISK info a.img a.img
mkdir dir
run $VDISK info dir
