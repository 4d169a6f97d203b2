#!/usr/bin/env bash
# vdisk compare: messages and exit statuses as qemu-img compare.
# The list of known formats depends on the drivers linked in.
run() { "$@" 2>&1 | sed "s/(known formats: [^)]*)/(known formats: ...)/"; echo "exit ${PIPESTATUS[0]}"; }
$VDISK create -q a.img 2M
$VDISK create -q b.img 2M
$VDISK create -q big.img 3M
$VDISK io -c 'write -P 5 4k 4k' a.img b.img >/dev/null 2>&1
$VDISK io -c 'write -P 5 4k 4k' a.img >/dev/null
$VDISK io -c 'write -P 5 4k 4k' b.img >/dev/null
$VDISK io -c 'write -P 5 4k 4k' big.img >/dev/null
run $VDISK compare a.img b.img
run $VDISK compare -s a.img b.img
run $VDISK compare a.img big.img
run $VDISK compare big.img a.img
run $VDISK compare -s a.img big.img
run $VDISK compare -f raw -F raw -U a.img b.img
echo "== content differs"
$VDISK io -c 'write -P 6 5000 1' b.img >/dev/null
run $VDISK compare a.img b.img
$VDISK io -c 'write -P 6 1M 1' a.img >/dev/null
run $VDISK compare a.img big.img
echo "== extra data beyond the smaller image"
$VDISK io -c 'write -P 6 1M 1' big.img >/dev/null
$VDISK io -c 'write -P 7 2900k 10' big.img >/dev/null
run $VDISK compare a.img big.img
echo "== RAM disk"
run $VDISK compare mem:2M mem:2M
echo "== errors"
run $VDISK compare a.img missing.img
run $VDISK compare -f nosuch a.img b.img
run $VDISK compare a.img
run $VDISK compare --bogus a.img b.img
