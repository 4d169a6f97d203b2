#!/usr/bin/env bash
# vdisk map of a sparse raw image: JSON and human, with ranges.
# The list of known formats depends on the drivers linked in.
run() { "$@" 2>&1 | sed "s/(known formats: [^)]*)/(known formats: ...)/"; echo "exit ${PIPESTATUS[0]}"; }
$VDISK create -q a.img 4M
$VDISK io -c 'write -P 1 64k 128k' -c 'write -P 2 1M 4k' -c 'write -P 3 3M 1M' a.img >/dev/null
run $VDISK map a.img
run $VDISK map --output json a.img
run $VDISK map --output json -s 1M -l 1M a.img
run $VDISK map --output json --start-offset 5M a.img
run $VDISK map -U -f raw --output=human a.img
echo "== empty ranges: one entry of length 0, as qemu-img prints"
: >empty.img
for args in "-s 4M" "-s 5M -l 4k" "-l 0" "-s 1M -l 0"; do
	run $VDISK map --output json $args a.img
	run $VDISK map $args a.img
done
run $VDISK map --output json empty.img
run $VDISK map empty.img
echo "== mem"
run $VDISK map --output json mem:1M
echo "== errors"
run $VDISK map nonexistent
run $VDISK map --output yaml a.img
run $VDISK map -s abc a.img
