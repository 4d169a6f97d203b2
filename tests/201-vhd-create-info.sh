#!/usr/bin/env bash
# vdisk create -f vhd: dynamic, fixed, force_size and block_size; info shows
# the VHD fields; virtual sizes follow the CHS rounding qemu-img uses.
run() { "$@"; echo "exit $?"; }
mask() { sed -e 's/\(unique.id["]*: *\).*/\1X/' -e '/disk size/d' -e '/actual-size/d'; }
run $VDISK create -f vhd d.vhd 10M
$VDISK info d.vhd | mask
run $VDISK create -f vpc -o subformat=fixed f.vhd 10M
$VDISK info --output json f.vhd | mask
run $VDISK create -q -f vhd -o force_size=on,block_size=64K s.vhd 10M
$VDISK info s.vhd | mask
echo "== files"
stat -c '%n %s' d.vhd f.vhd s.vhd
echo "== big dynamic images stay small"
run $VDISK create -q -f vhd big.vhd 64G
$VDISK info --output json big.vhd | grep virtual-size
stat -c '%n %s' big.vhd
echo "== errors"
run $VDISK create -f vhd -o subformat=sparse e.vhd 1M
run $VDISK create -f vhd -o block_size=3000 e.vhd 1M
run $VDISK create -f vhd e.vhd 3T
run $VDISK create -f vhd -o subformat=fixed -b d.vhd -F vhd e.vhd
ls e.vhd 2>/dev/null || echo "no e.vhd left behind"
