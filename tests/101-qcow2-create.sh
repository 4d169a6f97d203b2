#!/usr/bin/env bash
# vdisk create -f qcow2 with each option: qemu-img check and info accept
# the images, qcowinfo (libqcow) opens them, and info matches qemu-img's.
# needs: qemu-img qcowinfo
ok() { # name: qemu-img check, qemu-img info, qcowinfo
	qemu-img check -q "$1" && echo "$1: check ok" || echo "$1: CHECK FAILED"
	q=$(qemu-img info --output json "$1" | grep -v actual-size)
	v=$($VDISK info --output json "$1" | grep -v actual-size)
	[ "$q" == "$v" ] && echo "$1: info agrees" || { echo "$1: INFO DIFFERS"; diff <(echo "$q") <(echo "$v"); }
	# libqcow does not know extended L2, zstd or empty L1 tables (it refuses
	# qemu-img's own such images too).
	[ "$2" == noqcowinfo ] && return
	qcowinfo "$1" >/dev/null 2>&1 && echo "$1: qcowinfo ok" || echo "$1: QCOWINFO FAILED"
}
$VDISK create -f qcow2 -q default.qcow2 64M; ok default.qcow2
$VDISK create -f qcow2 -q -o cluster_size=512 c512.qcow2 8M; ok c512.qcow2
$VDISK create -f qcow2 -q -o cluster_size=2M c2m.qcow2 64M; ok c2m.qcow2
$VDISK create -f qcow2 -q -o compat=0.10 v2.qcow2 64M; ok v2.qcow2
for rb in 1 2 4 8 16 32 64; do $VDISK create -f qcow2 -q -o refcount_bits=$rb rb$rb.qcow2 16M; ok rb$rb.qcow2; done
$VDISK create -f qcow2 -q -o lazy_refcounts=on lazy.qcow2 16M; ok lazy.qcow2
$VDISK create -f qcow2 -q -o extended_l2=on ext.qcow2 16M; ok ext.qcow2 noqcowinfo
$VDISK create -f qcow2 -q -o compression_type=zstd zstd.qcow2 16M; ok zstd.qcow2 noqcowinfo
for p in metadata falloc full; do $VDISK create -f qcow2 -q -o preallocation=$p,cluster_size=64k p$p.qcow2 4M; ok p$p.qcow2; done
$VDISK create -f qcow2 -q zero.qcow2 0; ok zero.qcow2 noqcowinfo
$VDISK create -f qcow2 -q -b default.qcow2 -F qcow2 top.qcow2; ok top.qcow2
$VDISK create -f qcow2 -q -o cluster_size=4k -b c512.qcow2 -F qcow2 top2.qcow2 32M; ok top2.qcow2
# qemu-img's map of a preallocated image is ours.
[ "$(qemu-img map --output json pmetadata.qcow2)" == "$($VDISK map --output json pmetadata.qcow2)" ] && echo "prealloc map agrees"
# Invalid options fail cleanly.
$VDISK create -f qcow2 -q -o cluster_size=1000 bad.qcow2 1M; echo "exit $?"
$VDISK create -f qcow2 -q -o compat=0.10,refcount_bits=8 bad.qcow2 1M; echo "exit $?"
$VDISK create -f qcow2 -q -o extended_l2=on,cluster_size=4k bad.qcow2 1M; echo "exit $?"
$VDISK create -f qcow2 -q -o compression_type=lz4 bad.qcow2 1M; echo "exit $?"
$VDISK create -f qcow2 -q bad.qcow2 1000; echo "exit $?"
ls bad.qcow2 2>/dev/null
$VDISK create -f qcow2 -o help | head -3
