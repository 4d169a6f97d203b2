#!/usr/bin/env bash
# qcow2 <-> vhd <-> raw conversions round-trip byte for byte and keep
# sparseness; qemu-img agrees on the results.
# needs: qemu-img
truncate -s 24M src.raw
for spec in "0x11 0 64k" "0x22 3M 4k" "0x33 9M 2M" "0x44 23M 1M"; do $VDISK io -f raw -c "write -P $spec" src.raw >/dev/null; done
$VDISK convert -O qcow2 src.raw a.qcow2
$VDISK convert -O vhd -o force_size=on a.qcow2 b.vhd
$VDISK convert -O qcow2 b.vhd c.qcow2
$VDISK convert -O raw c.qcow2 d.raw
cmp src.raw d.raw && echo "raw -> qcow2 -> vhd -> qcow2 -> raw: identical"
qemu-img compare -f vpc -F qcow2 b.vhd a.qcow2
qemu-img compare -f qcow2 -F raw c.qcow2 src.raw
$VDISK compare b.vhd c.qcow2
echo "== allocation stays sparse"
$VDISK map b.vhd
$VDISK map c.qcow2
echo "== vhd made by qemu-img, converted by vdisk to qcow2"
qemu-img convert -f raw -O vpc -o force_size=on src.raw q.vhd
$VDISK convert -O qcow2 q.vhd q.qcow2
qemu-img compare -f qcow2 -F raw q.qcow2 src.raw
qemu-img check q.qcow2 | head -1
echo "== differencing vhd flattened to qcow2"
$VDISK create -q -f vhd -b b.vhd -F vhd top.vhd
$VDISK io -c "write -P 0x55 5M 64k" top.vhd >/dev/null
$VDISK convert -O qcow2 top.vhd flat.qcow2
$VDISK io -f raw -c "write -P 0x55 5M 64k" src.raw >/dev/null
qemu-img compare -f qcow2 -F raw flat.qcow2 src.raw
