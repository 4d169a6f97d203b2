#!/usr/bin/env bash
# A differencing chain of three made and written by vdisk reads correctly;
# writing a child never changes its parent; parents are found through the
# locators and checked by unique id.
# needs: vhdiinfo qemu-io
run() { "$@"; echo "exit $?"; }
$VDISK create -q -f vhd base.vhd 6M
$VDISK io -c "write -P 0x11 0 3M" -c "write -P 0x12 5M 100k" base.vhd >/dev/null
$VDISK create -f vhd -b base.vhd -F vhd mid.vhd | sed 's/,.*//'
sum_base=$(md5sum < base.vhd)
$VDISK io -c "write -P 0x21 1M 1000" -c "write -P 0x22 4M 1M" mid.vhd >/dev/null
mkdir sub
$VDISK create -q -f vhd -b ../mid.vhd -F vhd sub/top.vhd
sum_mid=$(md5sum < mid.vhd)
$VDISK io -c "write -P 0x31 1000 10" -c "write -z 5M 4k" sub/top.vhd >/dev/null
[ "$sum_base" == "$(md5sum < base.vhd)" ] && echo "base unchanged"
[ "$sum_mid" == "$(md5sum < mid.vhd)" ] && echo "mid unchanged"
# The same writes on a raw image give the expected content.
$VDISK create -q -f raw want.raw 6301696
$VDISK io -f raw -c "write -P 0x11 0 3M" -c "write -P 0x12 5M 100k" -c "write -P 0x21 1M 1000" -c "write -P 0x22 4M 1M" \
	-c "write -P 0x31 1000 10" -c "write -z 5M 4k" want.raw >/dev/null
$VDISK compare sub/top.vhd want.raw
# Without --backing-chain the parent is not opened, but named from the locator.
$VDISK info sub/top.vhd | grep -E "^backing file|parent locator"
$VDISK info --backing-chain sub/top.vhd | grep -E "^image|backing file|parent|subformat" | sed 's/unique id: .*/unique id: X/' 
$VDISK map sub/top.vhd
vhdiinfo sub/top.vhd | grep -E "Disk type|Parent filename"
echo "== errors"
mv base.vhd moved.vhd
$VDISK info mid.vhd | grep -E "^backing file|parent locator"
run $VDISK map mid.vhd
$VDISK create -q -f vhd base.vhd 6M
run $VDISK map mid.vhd 2>&1 | sed 's/[0-9a-f]\{8\}-[0-9a-f-]*/UUID/g'
run $VDISK map -f vhd sub/top.vhd 2>&1 | sed 's/[0-9a-f]\{8\}-[0-9a-f-]*/UUID/g' 
echo "== a child of a parent that another process writes (as qemu-img create, the parent is only looked at)"
$VDISK create -q -f vhd busy.vhd 1M
qemu-io -f vpc -c 'sleep 100000' busy.vhd &
HPID=$!
for _ in $(seq 200); do grep -q ":$(stat -c %i busy.vhd) " /proc/locks && break; sleep 0.05; done
run $VDISK io -c 'write 0 512' busy.vhd 2>&1
run $VDISK create -q -f vhd -b busy.vhd -F vhd busy-child.vhd
run $VDISK create -q -f vhd -b busy.vhd busy-child2.vhd
kill $HPID; wait $HPID 2>/dev/null
$VDISK check busy-child.vhd
