#!/usr/bin/env bash
# Narrow refcounts limit how many snapshots can share a cluster: a
# snapshot (or an apply) that would overflow one is refused before the
# image changes, so it stays clean, where qemu-img leaves leaked clusters.
# Compressed clusters are filled up to the largest refcount, as QEMU fills
# them, so a snapshot of them is refused the same way.
# needs: qemu-img qemu-io
run() { "$@" 2>&1; echo "exit ${PIPESTATUS[0]}"; }
steps() { # TOOL IMAGE: the reproducer, with vdisk or qemu-img/qemu-io
	local io=(qemu-io -c) img=qemu-img
	if [ "$1" = vdisk ]; then io=($VDISK io -c) img=$VDISK; fi
	"${io[@]}" "write 64k 64k" "$2" >/dev/null
	"$img" snapshot -c s1 "$2"
	"${io[@]}" "write 0 64k" "$2" >/dev/null
	"$img" snapshot -c s2 "$2"
	"${io[@]}" "write 128k 64k" "$2" >/dev/null
	run "$img" snapshot -c s3 "$2"
}
for tool in vdisk qemu; do
	echo "== $tool: three snapshots with 2-bit refcounts"
	qemu-img create -q -f qcow2 -o cluster_size=64k,refcount_bits=2 $tool.qcow2 1M
	steps $tool $tool.qcow2
	qemu-img snapshot -l $tool.qcow2 | awk 'NR > 2 { print $2 }'
	run qemu-img check $tool.qcow2
done
echo "== vdisk: applying s1 would need a fourth reference too"
sum=$(md5sum <vdisk.qcow2)
run $VDISK snapshot -a s1 vdisk.qcow2
[ "$(md5sum <vdisk.qcow2)" = "$sum" ] && echo "file unchanged"
run $VDISK check vdisk.qcow2
echo "== convert -c with 4-bit refcounts, then a snapshot"
for i in $(seq 1 20000); do echo "line $i of some compressible text"; done >t.raw
truncate -s 1M t.raw
run $VDISK convert -c -O qcow2 -o cluster_size=4k,refcount_bits=4 t.raw c.qcow2
sum=$(md5sum <c.qcow2)
run $VDISK snapshot -c s1 c.qcow2
[ "$(md5sum <c.qcow2)" = "$sum" ] && echo "file unchanged"
run qemu-img check c.qcow2
