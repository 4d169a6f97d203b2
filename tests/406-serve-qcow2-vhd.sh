#!/usr/bin/env bash
# qcow2 (with a backing chain) and vhd images through vdisk serve: what
# qemu-img (info, map, convert, compare) and nbdinfo see over the export
# equals what they see over qemu-nbd serving the same file; writes
# through the export (qemu-io, nbdcopy into it over several connections)
# leave a consistent image. And the other way round: a format driver stacked on
# vdisk's NBD client (-f qcow2 over an export of the qcow2 file's bytes).
# needs: qemu-img qemu-io qemu-nbd nbdinfo nbdcopy
. "$SRC_DIR/nbd-common.inc"

qemu-img create -q -f qcow2 base.qcow2 16M
qio -f qcow2 -c 'write -P 0xaa 1M 1M' -c 'write -z 4M 1M' -c 'write -P 0xbb 8M 64k' base.qcow2
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2
qio -f qcow2 -c 'write -P 0xcc 1536k 64k' -c 'write -P 0xdd 12M 128k' top.qcow2
qemu-img create -q -f vpc -o subformat=dynamic d.vhd 16M
qio -f vpc -c 'write -P 0xaa 1M 1M' -c 'write -P 0xbb 8M 64k' d.vhd

# same FMT FILE: serve FILE read-only with both servers and compare.
same() {
	local fmt=$1 file=$2 v="nbd+unix:///?socket=$TEST_DIR/v.sock" q="nbd+unix:///?socket=$TEST_DIR/q.sock"
	echo "== $fmt $file"
	start_serve -r -f "$fmt" -t -e 4 -k "$TEST_DIR/v.sock" "$file"
	qemu-nbd -r -f "$fmt" -t -e 4 -k "$TEST_DIR/q.sock" "$file" &
	QPID=$!
	for _ in $(seq 200); do [ -S "$TEST_DIR/q.sock" ] && break; sleep 0.05; done
	qemu-img map --output json "$v" > v.map
	qemu-img map --output json "$q" > q.map
	cmp v.map q.map && echo "qemu-img map: same as over qemu-nbd"
	nbdinfo --map "$v" > v.nmap
	nbdinfo --map "$q" > q.nmap
	cmp v.nmap q.nmap && echo "nbdinfo --map: same as over qemu-nbd"
	cat v.nmap
	qemu-img info "$v" | sed "s#$TEST_DIR#\$TEST_DIR#" > v.info
	qemu-img info "$q" | sed "s#$TEST_DIR#\$TEST_DIR#; s#q.sock#v.sock#" > q.info
	cmp v.info q.info && echo "qemu-img info: same as over qemu-nbd"
	grep -E '^(file format|virtual size)' v.info
	rm -f conv.qcow2
	qemu-img convert -f raw -O qcow2 "$v" conv.qcow2 && qemu-img compare -U -f "$fmt" -F qcow2 "$file" conv.qcow2
	qemu-img compare -U -f "$fmt" "$file" "$v"
	rm -f copy.raw
	nbdcopy -C 4 "$v" copy.raw && qemu-img compare -U -f "$fmt" -F raw "$file" copy.raw
	kill $QPID; wait $QPID 2>/dev/null
	stop_serve
}
same qcow2 top.qcow2
same vpc d.vhd

echo "== writes through the export"
qemu-img create -q -f raw in.raw 16M
qio -f raw -c 'write -P 0x61 0 3M' -c 'write -P 0x62 5M 1M' -c 'write -P 0x63 15M 64k' in.raw
for img in "qcow2 top.qcow2" "vpc d.vhd"; do
	set -- $img
	start_serve -f $1 -t -e 4 -k "$TEST_DIR/v.sock" $2
	qio -f raw -c 'write -P 0x42 3M 256k' -c 'write -z 1M 64k' -c 'read -P 0x42 3M 256k' -c 'read -P 0 1M 64k' "nbd+unix:///?socket=$TEST_DIR/v.sock"
	nbdcopy -C 4 "nbd+unix:///?socket=$TEST_DIR/v.sock" after.raw
	stop_serve
	[ $1 = qcow2 ] && qemu-img check -q -f $1 $2 && echo "$2: check clean"
	qemu-img compare -f $1 -F raw $2 after.raw
	rm -f after.raw
	# And into the export, over several connections.
	start_serve -f $1 -t -e 4 -k "$TEST_DIR/v.sock" $2
	nbdcopy -C 4 --flush in.raw "nbd+unix:///?socket=$TEST_DIR/v.sock"
	stop_serve
	[ $1 = qcow2 ] && qemu-img check -q -f $1 $2 && echo "$2: check clean after nbdcopy into it"
	qemu-img compare -f $1 -F raw $2 in.raw
done

echo "== -f qcow2 on vdisk's NBD client"
qemu-nbd -f raw -t -k "$TEST_DIR/r.sock" base.qcow2 &
QPID=$!
for _ in $(seq 200); do [ -S "$TEST_DIR/r.sock" ] && break; sleep 0.05; done
R="nbd+unix:///?socket=$TEST_DIR/r.sock"
$VDISK info -f qcow2 "$R" | grep -E '^(file format|virtual size)'
$VDISK map -f qcow2 --output json "$R" | sed 's/, "offset": [0-9]*//' | jq -c '.[]'
# Writes into allocated clusters work; allocating new ones would have to
# grow the export, which NBD cannot (in QEMU neither).
$VDISK io -f qcow2 -c 'write -P 0x99 1M 64k' -c 'read -P 0x99 1M 64k' -c 'read -P 0xaa 1088k 960k' "$R" | grep -v ' ops; '
$VDISK io -f qcow2 -c 'write -P 0x99 6M 64k' "$R" 2>&1 | sed "s#$TEST_DIR#\$TEST_DIR#"
kill $QPID; wait $QPID 2>/dev/null
qemu-img check -q base.qcow2 && echo "base.qcow2: check clean"
qio -f qcow2 -r -c 'read -P 0x99 1M 64k' -c 'read -P 0 6M 64k' base.qcow2
exit 0
