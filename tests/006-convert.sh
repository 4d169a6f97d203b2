#!/usr/bin/env bash
# vdisk convert keeps content and sparseness; options and errors.
# The list of known formats depends on the drivers linked in.
run() { "$@" 2>&1 | sed "s/(known formats: [^)]*)/(known formats: ...)/"; echo "exit ${PIPESTATUS[0]}"; }
$VDISK create -q src.img 8M
$VDISK io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 2M 1M' -c 'write -z 5M 1M' -c 'write -P 0x33 7M 4k' src.img >/dev/null
# Explicit zero bytes in the middle of data become holes.
$VDISK io -c 'write -P 0 2M 8k' src.img >/dev/null
run $VDISK convert src.img dst.img
run $VDISK compare src.img dst.img
run $VDISK map --output json dst.img
echo "== -S 0 allocates everything"
run $VDISK convert -S 0 -O raw src.img full.img
run $VDISK compare full.img src.img
run $VDISK map --output json full.img
echo "== -S 64k"
run $VDISK convert -S 64k -m 1 src.img s64.img
run $VDISK map --output json s64.img
echo "== -W -m 16 -p into raw, -o"
run $VDISK convert -W -m 16 -p -f raw -O raw -o preallocation=falloc src.img w.img
run $VDISK compare src.img w.img
echo "== -t unsafe skips the final flush"
run $VDISK convert -t unsafe src.img u.img
run $VDISK compare src.img u.img
echo "== -n into an existing image"
$VDISK create -q exist.img 8M
$VDISK io -c 'write -P 0x77 0 8M' exist.img >/dev/null
run $VDISK convert -n src.img exist.img
run $VDISK compare src.img exist.img
echo "== to and from RAM"
run $VDISK convert src.img mem:8M
# A RAM disk is new on every open: the qcow2 made by the create would be
# gone when the copy opens the target, so only raw targets are accepted.
run $VDISK convert -O qcow2 src.img mem:8M
run $VDISK convert -n -O vhd src.img mem:8M
run $VDISK convert -f mem src.img m.img
run $VDISK compare m.img src.img
echo "== -o help"
run $VDISK convert -O raw -o help
echo "== errors"
run $VDISK convert missing.img x.img
run $VDISK convert -O nosuch src.img x.img
run $VDISK convert -c src.img x.img
run $VDISK convert -m 0 src.img x.img
run $VDISK convert -m 17 src.img x.img
run $VDISK convert -S 100 src.img x.img
run $VDISK convert -S abc src.img x.img
run $VDISK convert -o nosuch=1 src.img x.img
run $VDISK convert -n src.img missing2.img
run $VDISK convert -n -o preallocation=full src.img exist.img
run $VDISK convert -t bogus src.img x.img
run $VDISK convert src.img
run $VDISK convert src.img no/such/dir/x.img
ls x.img missing2.img 2>&1 || true
