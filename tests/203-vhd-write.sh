#!/usr/bin/env bash
# Images written by vdisk, with a raw mirror written alike: qemu-img
# compare calls them identical and libvhdi reads them.
# needs: qemu-img vhdiinfo
ops=(-c "write -P 0x11 0 64k" -c "write -P 0x22 1000 3000" -c "write -P 0x33 2095000 8k"
	-c "write -z 10k 20k" -c "write -P 0x44 5M 1M" -c "write -P 0x55 9437000 7" -c "write -z 6M 64k")
for o in "subformat=dynamic" "subformat=fixed" "force_size=on" "block_size=128K"; do
	rm -f w.vhd m.raw
	$VDISK create -q -f vhd -o $o w.vhd 9M
	size=$($VDISK info --output json w.vhd | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
	$VDISK create -q -f raw m.raw $size
	$VDISK io "${ops[@]}" w.vhd >/dev/null
	$VDISK io -f raw "${ops[@]}" m.raw >/dev/null
	echo "== $o ($size bytes)"
	qemu-img compare -f vpc -F raw w.vhd m.raw
	$VDISK compare w.vhd m.raw
	$VDISK check w.vhd | head -1
	vhdiinfo w.vhd | grep -E "Disk type|Media size"
	diff <($VDISK map --output json w.vhd) <(qemu-img map -f vpc --output json w.vhd) && echo "map agrees with qemu-img"
done
