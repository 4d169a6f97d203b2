#!/usr/bin/env bash
# raw -> vhd -> raw round-trips byte for byte and keeps sparseness; with
# --cache-size the results are the same.
# needs: qemu-img
truncate -s 20M src.raw
for spec in "0x11 0 64k" "0x22 3M 4k" "0x33 9M 2M" "0x44 19M 1M"; do $VDISK io -f raw -c "write -P $spec" src.raw >/dev/null; done
for sub in dynamic fixed; do
	$VDISK convert -O vhd -o subformat=$sub,force_size=on src.raw $sub.vhd
	$VDISK convert -O raw $sub.vhd back-$sub.raw
	cmp src.raw back-$sub.raw && echo "$sub: round trip identical"
	qemu-img compare -f vpc -F raw $sub.vhd src.raw
	$VDISK map --output json $sub.vhd | grep -c '"data": true' | sed "s/^/$sub: data extents: /"
	$VDISK map --output json back-$sub.raw | grep -c '"data": true' | sed "s/^/$sub back: data extents: /"
done
stat -c '%n %s' dynamic.vhd
$VDISK convert --cache-size 1M -O vhd -o force_size=on src.raw cached.vhd 2>&1
$VDISK compare --cache-size 1M cached.vhd src.raw 2>&1
