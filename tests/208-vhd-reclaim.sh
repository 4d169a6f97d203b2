#!/usr/bin/env bash
# vdisk check -r leaks on VHD reclaims space leaked between blocks: the
# last blocks move into the holes and the file shrinks. Dynamic and
# differencing disks; qemu-img and libvhdi read the result.
# needs: qemu-img vhdiinfo
run() { "$@" 2>&1; echo "exit ${PIPESTATUS[0]}"; }
# drop BAT entry N of FILE, leaking its block
drop() { printf '\xff\xff\xff\xff' | dd of="$1" bs=1 seek=$((1536+4*$2)) conv=notrunc status=none; }
echo "== dynamic"
$VDISK create -q -f vhd -o block_size=64K d.vhd 1M
for b in 0 1 2 3 4 5 6 7; do echo "-c \"write -P 0x1$b $((b*64))k 64k\""; done | xargs $VDISK io d.vhd >/dev/null
drop d.vhd 1; drop d.vhd 3; drop d.vhd 4
$VDISK convert -O raw d.vhd want.raw
before=$(stat -c %s d.vhd)
run $VDISK check d.vhd
run $VDISK check -r leaks d.vhd
run $VDISK check d.vhd
echo "shrank by $(( (before - $(stat -c %s d.vhd)) / (64*1024+512) )) blocks"
run $VDISK compare d.vhd want.raw
qemu-img compare -f vpc -F raw d.vhd want.raw
vhdiinfo d.vhd | grep -E "Disk type|Media size"
$VDISK map d.vhd
echo "== differencing"
$VDISK create -q -f vhd -o block_size=64K base.vhd 1M
$VDISK io -c "write -P 0xbb 0 1M" base.vhd >/dev/null
$VDISK create -q -f vhd -b base.vhd -F vhd c.vhd
$VDISK io -c "write -P 0x21 0 64k" -c "write -P 0x22 64k 512" -c "write -P 0x23 192k 64k" -c "write -P 0x24 320k 4k" -c "write -P 0x25 900k 10k" c.vhd >/dev/null
drop c.vhd 0; drop c.vhd 3
$VDISK convert -O raw c.vhd want.raw
before=$(stat -c %s c.vhd)
run $VDISK check -r all c.vhd
run $VDISK check c.vhd
echo "shrank by $(( (before - $(stat -c %s c.vhd)) / (64*1024+512) )) blocks"
run $VDISK compare c.vhd want.raw
vhdiinfo c.vhd | grep -E "Disk type|Parent filename"
$VDISK map --output json c.vhd | jq -c '.[] | select(.depth == 0 and .data)'
