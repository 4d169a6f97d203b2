#!/usr/bin/env bash
# Writing qcow2 through vdisk: snapshots, check and repair, resize, and
# compressed conversion, each verified with qemu-img.
# needs: qemu-img qemu-io
# qcount ARGS...: qemu-io pattern reads, counted; qemu-io prints "read"
# even after a mismatch, so a failure prints its output instead.
qcount() {
	local out
	if out=$(qemu-io "$@" 2>&1) && ! grep -q "verification failed" <<<"$out"; then
		grep -c '^read' <<<"$out"
	else
		echo "$out"
	fi
}
chk() { qemu-img check -q "$1" && echo "$1: qemu-img check clean" || echo "$1: QEMU-IMG CHECK FAILED"; }
nodate() { sed -E 's/ +20[0-9]{2}-[0-9-]+ [0-9:]+ / DATE /'; }

echo "== snapshots"
$VDISK create -f qcow2 -q s.qcow2 4M
$VDISK io -c 'write -P 1 0 1M' s.qcow2 >/dev/null
$VDISK snapshot -c one s.qcow2
$VDISK io -c 'write -P 2 512k 1M' s.qcow2 >/dev/null
$VDISK snapshot -c two s.qcow2
chk s.qcow2
$VDISK snapshot -l s.qcow2 | nodate
qemu-img snapshot -l s.qcow2 | nodate
$VDISK snapshot -a one s.qcow2
chk s.qcow2
qcount -c 'read -P 1 0 1M' -c 'read -P 0 1M 3M' s.qcow2
$VDISK snapshot -d one s.qcow2
$VDISK snapshot -a 2 s.qcow2
qcount -c 'read -P 1 0 512k' -c 'read -P 2 512k 1M' s.qcow2
$VDISK snapshot -d two s.qcow2
chk s.qcow2
$VDISK snapshot -l s.qcow2
$VDISK snapshot -a nope s.qcow2; echo "exit $?"
$VDISK snapshot -d nope s.qcow2; echo "exit $?"
$VDISK create -f raw -q r.raw 1M
$VDISK snapshot -c x -f raw r.raw; echo "exit $?"

echo "== check and repair"
qemu-img create -q -f qcow2 l.qcow2 8M
qemu-io -c 'write -P 1 0 64k' l.qcow2 >/dev/null
# refcount of cluster 9, past the end of the file: not looked at, as by
# qemu-img (nothing can refer to it, and allocations skip it)
printf '\x00\x01' | dd of=l.qcow2 bs=1 seek=$((128*1024+18)) conv=notrunc status=none
$VDISK check l.qcow2; echo "exit $?"
qemu-img check l.qcow2; echo "exit $?"
# with the file long enough to hold cluster 9, a leak
truncate -s 640k l.qcow2
$VDISK check l.qcow2; echo "exit $?"
$VDISK check -r leaks l.qcow2; echo "exit $?"
chk l.qcow2
# refcount of the data cluster 0: a corruption
printf '\x00\x00' | dd of=l.qcow2 bs=1 seek=$((128*1024+10)) conv=notrunc status=none
$VDISK check l.qcow2; echo "exit $?"
$VDISK check -r all l.qcow2; echo "exit $?"
chk l.qcow2
qcount -c 'read -P 1 0 64k' l.qcow2

echo "== resize"
$VDISK create -f qcow2 -q -o cluster_size=4k g.qcow2 1M
$VDISK io -c 'write -P 3 0 1M' g.qcow2 >/dev/null
$VDISK resize g.qcow2 64M
chk g.qcow2
qemu-img info g.qcow2 | grep 'virtual size'
$VDISK resize g.qcow2 512k; echo "exit $?"
$VDISK resize --shrink g.qcow2 512k
chk g.qcow2
$VDISK resize g.qcow2 2M
qcount -c 'read -P 3 0 512k' -c 'read -P 0 512k 1536k' g.qcow2
chk g.qcow2

echo "== discard on a version 2 image with a backing file"
# No zero clusters in version 2: the data stays rather than the backing
# file's showing through again, as with qemu-io.
qemu-img create -q -f raw b.raw 1M
qemu-io -f raw -c 'write -P 0xaa 0 1M' b.raw >/dev/null
for tool in vdisk qemu; do
	qemu-img create -q -f qcow2 -o compat=0.10 -b b.raw -F raw d-$tool.qcow2
	qemu-io -c 'write -P 0x55 0 128k' d-$tool.qcow2 >/dev/null
done
$VDISK io -c 'discard 0 128k' d-vdisk.qcow2 >/dev/null
qemu-io -c 'discard 0 128k' d-qemu.qcow2 >/dev/null
qcount -c 'read -P 0x55 0 128k' d-vdisk.qcow2
[ "$(qemu-img map --output json d-vdisk.qcow2)" = "$(qemu-img map --output json d-qemu.qcow2)" ] && echo "same map as after qemu-io"

echo "== resize with snapshots"
# As qemu-img 7.2: a version 2 image with snapshots cannot be resized at
# all; a version 3 one grows and shrinks, and applying a snapshot brings
# back its size and data.
$VDISK create -f qcow2 -q -o compat=0.10 v2.qcow2 1M
$VDISK snapshot -c s v2.qcow2
$VDISK resize v2.qcow2 2M; echo "exit $?"
qemu-img resize -q v2.qcow2 2M; echo "exit $?"
$VDISK create -f qcow2 -q -o cluster_size=4k v3.qcow2 1M
$VDISK io -c 'write -P 4 0 1M' v3.qcow2 >/dev/null
$VDISK snapshot -c s v3.qcow2
$VDISK resize --shrink v3.qcow2 256k
chk v3.qcow2
$VDISK io -c 'write -P 5 0 256k' v3.qcow2 >/dev/null
qemu-img snapshot -a s v3.qcow2
chk v3.qcow2
qemu-img info v3.qcow2 | grep 'virtual size'
qcount -c 'read -P 4 0 1M' v3.qcow2
$VDISK resize v3.qcow2 3M
$VDISK io -c 'write -P 6 2M 1M' v3.qcow2 >/dev/null
chk v3.qcow2
$VDISK snapshot -c big v3.qcow2
$VDISK snapshot -a s v3.qcow2
chk v3.qcow2
qemu-img info v3.qcow2 | grep 'virtual size'
qcount -c 'read -P 4 0 1M' v3.qcow2
qemu-img snapshot -a big v3.qcow2
chk v3.qcow2
qcount -c 'read -P 4 0 1M' -c 'read -P 0 1M 1M' -c 'read -P 6 2M 1M' v3.qcow2

echo "== compressed convert"
qemu-img create -q -f raw src.raw 4M
qemu-io -f raw -c 'write -P 7 0 1M' -c 'write -P 9 2M 64k' src.raw >/dev/null
for c in zlib zstd; do
	$VDISK convert -c -f raw -O qcow2 -o compression_type=$c src.raw c-$c.qcow2
	chk c-$c.qcow2
	qemu-img compare -q -f raw src.raw c-$c.qcow2 && echo "c-$c.qcow2: same content"
	qemu-img check c-$c.qcow2 | grep compressed
done
# Small clusters: every cluster that shrinks at all is compressed, as with
# qemu-img (the stream may run on into the next host cluster).
seq 1 300000 | head -c 1M >text.raw
for cs in 512 4k; do
	$VDISK convert -c -f raw -O qcow2 -o cluster_size=$cs text.raw t-$cs.qcow2
	chk t-$cs.qcow2
	qemu-img compare -q -f raw text.raw t-$cs.qcow2 && echo "t-$cs.qcow2: same content"
	qemu-img check t-$cs.qcow2 | grep compressed
	qemu-img convert -c -f raw -O qcow2 -o cluster_size=$cs text.raw q-$cs.qcow2
	qemu-img check q-$cs.qcow2 | grep compressed
done
