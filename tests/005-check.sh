#!/usr/bin/env bash
# vdisk check on a format without checks behaves like qemu-img on raw.
# The list of known formats depends on the drivers linked in.
run() { "$@" 2>&1 | sed "s/(known formats: [^)]*)/(known formats: ...)/"; echo "exit ${PIPESTATUS[0]}"; }
$VDISK create -q a.img 1M
run $VDISK check a.img
run $VDISK check --output json a.img
run $VDISK check -r leaks a.img
run $VDISK check -r all -f raw a.img
echo "== errors"
run $VDISK check -r some a.img
run $VDISK check --output xml a.img
run $VDISK check missing.img
