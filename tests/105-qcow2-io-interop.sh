#!/usr/bin/env bash
# vdisk io against qemu-io on qcow2 images (timing lines dropped): the same
# output, including info's vm state offset, and images with the same
# content. (Not the same allocation: on v3 images without a backing file,
# write -z and discard leave QEMU's clusters as zero clusters, vdisk's
# unallocated; both read zeros.)
# needs: qemu-img qemu-io
cmds=(-c 'write -P 0xab 0 4k' -c 'read -P 0xab 0 4k' -c 'read -P 0xac 0 4k' -c 'read -v 4090 40'
	-c 'write 100k 1000' -c 'write -P 7 1M 192k' -c 'write -z 1088k 64k' -c 'discard 1152k 64k'
	-c 'flush' -c 'info')
for spec in "cluster_size=64k 1G" "cluster_size=512 4M" "cluster_size=2M 3G" \
	"compat=0.10 4M" "extended_l2=on 1G"; do
	{
		read -r o size
		rm -f q.qcow2 v.qcow2
		qemu-img create -q -f qcow2 -o $o q.qcow2 $size
		cp q.qcow2 v.qcow2
		q=$(qemu-io "${cmds[@]}" q.qcow2 | grep -v ' ops; '); qs=$?
		v=$($VDISK io "${cmds[@]}" v.qcow2); vs=$?
		[ "$q" == "$v" ] && echo "$o $size: io output agrees (exit $vs)" || { echo "$o $size: io DISAGREES"; diff <(echo "$q") <(echo "$v"); }
		qemu-img compare -q q.qcow2 v.qcow2 && echo "$o $size: same content"
		qemu-img check -q v.qcow2 || echo "$o $size: CHECK FAILED"
	} <<<"$spec"
done
$VDISK io -c info v.qcow2 | grep 'vm state'
