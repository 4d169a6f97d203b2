#!/usr/bin/env bash
# qcow2 images made by qemu-img/qemu-io read through vdisk: map, check,
# info and conversion to raw agree with qemu-img.
# needs: qemu-img qemu-io
agree() { # label, args...: run qemu-img and vdisk with the same arguments
	local label=$1; shift
	q=$(qemu-img "$@" 2>&1 | grep -v '^disk size'); qs=$?
	v=$($VDISK "$@" 2>&1 | grep -v '^disk size'); vs=$?
	if [ "$q" == "$v" ]; then echo "$label: agree"; else
		echo "$label: DISAGREE"; diff <(echo "$q") <(echo "$v"); fi
}
raw_same() { # image
	qemu-img convert -O raw "$1" q.raw; $VDISK convert -O raw "$1" v.raw
	cmp q.raw v.raw && echo "$1: convert to raw identical"
}
pattern() {
	qemu-io -c 'write -P 0x11 0 64k' -c 'write -P 0x22 100k 7k' -c 'write -P 0x33 1M 1M' \
		-c 'write -z 1200k 100k' -c 'discard 1500k 64k' -c 'write -P 0x55 5000k 4k' "$1" >/dev/null
}
for o in cluster_size=512 cluster_size=4k cluster_size=2M compat=0.10 refcount_bits=1 refcount_bits=64 \
	lazy_refcounts=on extended_l2=on preallocation=metadata; do
	qemu-img create -q -f qcow2 -o $o i.qcow2 6M
	pattern i.qcow2
	agree "$o map" map --output json i.qcow2
	agree "$o check" check i.qcow2
	agree "$o info" info i.qcow2
	raw_same i.qcow2
done
# Compressed (zlib and zstd).
qemu-img create -q -f raw src.raw 6M
pattern src.raw
for c in zlib zstd; do
	qemu-img convert -c -O qcow2 -o compression_type=$c src.raw c.qcow2
	agree "$c map" map --output json c.qcow2
	agree "$c check" check c.qcow2
	raw_same c.qcow2
done
# A 3-deep chain mixing raw and qcow2, relative names.
mkdir -p sub
qemu-img create -q -f raw sub/base.raw 4M
qemu-io -f raw -c 'write -P 1 0 4M' sub/base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw sub/mid.qcow2 6M
qemu-io -c 'write -P 2 64k 64k' -c 'write -z 256k 128k' -c 'write -P 3 4M 1M' sub/mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4k -b sub/mid.qcow2 -F qcow2 top.qcow2
qemu-io -c 'write -P 4 100k 8k' -c 'discard 0 64k' top.qcow2 >/dev/null
agree "chain map" map --output json top.qcow2
agree "chain map human" map top.qcow2
agree "chain info" info --backing-chain top.qcow2
raw_same top.qcow2
# Internal snapshots.
qemu-img create -q -f qcow2 s.qcow2 4M
qemu-io -c 'write -P 1 0 1M' s.qcow2 >/dev/null
qemu-img snapshot -c first s.qcow2
qemu-io -c 'write -P 2 512k 1M' s.qcow2 >/dev/null
agree "snapshots check" check s.qcow2
agree "snapshots map" map --output json s.qcow2
raw_same s.qcow2
qemu-img info s.qcow2 | grep -A2 '^Snapshot list' | sed 's/  20[0-9-]* [0-9:]* / DATE /' | cut -c1-30
$VDISK info s.qcow2 | grep -A2 '^Snapshot list' | sed 's/  20[0-9-]* [0-9:]* / DATE /' | cut -c1-30
# Persistent bitmaps are counted by check.
qemu-img create -q -f qcow2 bm.qcow2 16M
qemu-io -c 'write -P 1 0 1M' bm.qcow2 >/dev/null
qemu-img bitmap --add bm.qcow2 b0
qemu-img bitmap --add bm.qcow2 b1
qemu-io -c 'write 2M 1M' bm.qcow2 >/dev/null
agree "bitmaps check" check bm.qcow2
qemu-img bitmap --add --granularity 128k --disable bm.qcow2 b2
agree "bitmaps info" info bm.qcow2
[ "$(qemu-img info --output json bm.qcow2 | grep -v actual-size)" == "$($VDISK info --output json bm.qcow2 | grep -v actual-size)" ] && echo "bitmaps info json: agree"
