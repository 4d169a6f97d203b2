#!/usr/bin/env bash
# Images made and written by qemu-img: vdisk agrees on virtual size, map and
# content, for fixed and dynamic disks with and without force_size, sizes
# that are and are not CHS-exact, up to 64 GiB.
# needs: qemu-img qemu-io
for spec in "dynamic off 10M" "dynamic off 10486272" "dynamic on 10486272" "fixed off 10M" \
	"fixed on 3000000" "dynamic off 1G" "dynamic on 64G" "dynamic off 64G"; do
	set -- $spec
	f=q-$1-$2-$3.vhd
	qemu-img create -q -f vpc -o subformat=$1,force_size=$2 $f $3
	size=$(qemu-img info -f vpc --output json $f | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
	qemu-io -f vpc -c "write -P 0x5a 0 4k" -c "write -P 0x33 $((size/2 - 2048)) 8k" -c "write -P 0x77 $((size-512)) 512" $f >/dev/null
	v=$($VDISK info --output json $f | sed -n 's/.*"virtual-size": \([0-9]*\).*/\1/p')
	if [ "$v" == "$size" ]; then echo "$f: size $size agrees"; else echo "$f: size vdisk $v qemu $size"; fi
	if diff <($VDISK map --output json $f) <(qemu-img map -f vpc --output json $f) >/dev/null; then
		echo "$f: map agrees"; else echo "$f: map DIFFERS"; diff <($VDISK map --output json $f) <(qemu-img map -f vpc --output json $f); fi
	if [ $size -le $((1<<30)) ]; then
		$VDISK convert -O raw $f v.raw
		qemu-img convert -f vpc -O raw $f q.raw
		cmp v.raw q.raw && echo "$f: convert -O raw identical"
		rm -f v.raw q.raw
	else
		$VDISK compare $f -f vpc $f >/dev/null && echo "$f: compare with itself identical"
		$VDISK io -c "read -P 0x77 $((size-512)) 512" -c "read -P 0x33 $((size/2 - 2048)) 8k" -c "read -P 0 $((size/2 + 8192)) 1M" $f | grep -v '^read'
		echo "$f: patterns read back: exit ${PIPESTATUS[0]}"
	fi
done
