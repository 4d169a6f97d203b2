#!/usr/bin/env bash
# vdisk check on VHD: a damaged footer (the copy at offset 0 is good) opens
# read-only and check -r all repairs it; BAT entries past the end; leaks.
# needs: qemu-img
# Checksums depend on the random unique id: mask them.
run() { "$@" 2>&1 | sed 's/checksum is 0x[0-9a-f]*, computed 0x[0-9a-f]*/checksum is X, computed Y/'; echo "exit ${PIPESTATUS[0]}"; }
$VDISK create -q -f vhd -o block_size=64K a.vhd 2M
$VDISK io -c "write -P 0x11 0 100k" -c "write -P 0x22 1M 4k" a.vhd >/dev/null
$VDISK convert -O raw a.vhd want.raw
run $VDISK check a.vhd
size=$(stat -c %s a.vhd)
printf '\xde\xad' | dd of=a.vhd bs=1 seek=$((size-512+64)) conv=notrunc status=none
run $VDISK check a.vhd
run $VDISK io -c "write 0 512" a.vhd
run $VDISK compare a.vhd want.raw
run $VDISK check -r all a.vhd
run $VDISK check a.vhd
qemu-img compare -f vpc -F raw a.vhd want.raw
echo "== BAT entry past the end"
printf '\x00\x7f\xff\xff' | dd of=a.vhd bs=1 seek=$((1536+4*20)) conv=notrunc status=none
run $VDISK check --output json a.vhd
run $VDISK check -r all a.vhd
run $VDISK compare a.vhd want.raw
echo "== leaked space before the footer"
size=$(stat -c %s a.vhd)
dd if=a.vhd of=a.vhd bs=512 skip=$((size/512-1)) seek=$((size/512-1+129)) count=1 conv=notrunc status=none
run $VDISK check a.vhd
run $VDISK check -r leaks a.vhd
[ $(stat -c %s a.vhd) == $size ] && echo "file size restored"
echo "== bad fields are refused, naming them"
$VDISK create -q -f vhd b.vhd 1M
printf 'xx' | dd of=b.vhd bs=1 seek=512 conv=notrunc status=none
run $VDISK info b.vhd
head -c 512 /dev/zero > c.vhd
run $VDISK info -f vhd c.vhd
