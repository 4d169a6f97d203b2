#!/usr/bin/env bash
# needs: root fuse qemu-img mkfs.ext4 fsck.ext4 sfdisk partx blockdev jq
# An attached image is a disk that can be partitioned: after sfdisk (and
# partx -u or vdisk rescan, for kernels built without partition table
# parsers, which find nothing when sfdisk asks them to re-read the table)
# loopNp1, loopNp2 appear, each takes a file system, detach is refused while a partition is
# mounted, the table and file systems are in the image file afterwards, and
# a later attach shows the partitions without any manual step: the daemon
# registers them when the kernel did not.
. "$SRC_DIR/attach-lib.sh"
# wait_part DEV N: waits for partition N of DEV to appear.
wait_part() {
	for _ in $(seq 100); do [ -b "$1p$2" ] && return 0; sleep 0.05; done
	echo "$1p$2 did not appear"
	return 1
}
# parts DEV: the partitions the kernel has for DEV, with their sizes.
parts() {
	local p
	for p in "$1"p*; do
		[ -b "$p" ] || continue
		echo "$p $(blockdev --getsize64 "$p")"
	done | sort -V | filter
}
# gone DEV: no partition of DEV is left once it is detached.
gone() {
	ls "$1"p* >/dev/null 2>&1 && echo "partitions left behind" || echo "no partitions left"
}

echo "=== GPT on a qcow2 image"
$VDISK create -q -f qcow2 disk.qcow2 64M
attach disk.qcow2 2>/dev/null
printf 'label: gpt\n,24M,L\n,,L\n' | sfdisk -q "$dev" && echo "partitioned"
partx -u "$dev"
wait_part "$dev" 1 && wait_part "$dev" 2 && parts "$dev"
mkfs.ext4 -q "$dev"p1 && mkfs.ext4 -q "$dev"p2 && echo "mkfs ok"
mnt "$dev"p1 p1
mnt "$dev"p2 p2
copy_tree src
copy_tree p1
echo hello >p2/hello
$VDISK detach "$unit" 2>&1 | sed "s|$TEST_DIR|\$TEST_DIR|g" | filter
echo "exit ${PIPESTATUS[0]}"
umnt p1
$VDISK detach "$unit" 2>&1 | sed "s|$TEST_DIR|\$TEST_DIR|g" | filter
echo "exit ${PIPESTATUS[0]}"
umnt p2
$VDISK detach "$unit" && echo "detached"
gone "$dev"
echo "-- the image file"
qemu-img check disk.qcow2 | head -1
qemu-img convert -O raw disk.qcow2 conv.raw
sfdisk --json conv.raw | jq -c '.partitiontable | {"label": .label, parts: [.partitions[] | {start, size}]}'
sfdisk --json conv.raw | jq -r '.partitiontable.partitions[] | "\(.start) \(.size)"' >parts
n=0
while read -r start size; do
	n=$((n + 1))
	dd if=conv.raw of=part$n.img bs=512 skip="$start" count="$size" status=none
	fsck.ext4 -fn part$n.img >/dev/null 2>&1 && echo "partition $n fscks clean"
done <parts
echo "-- attached again, read-only"
attach -r disk.qcow2
wait_part "$dev" 2 && parts "$dev"
blockdev --getro "$dev"p1
mnt "$dev"p1 p1 ro
mnt "$dev"p2 p2 ro
diff -r -x lost+found src p1 && echo "tree identical"
cat p2/hello
umnt p1
umnt p2
$VDISK detach "$unit" && echo "detached"
gone "$dev"

echo "=== MBR with logical partitions on a raw image"
qemu-img create -q -f raw dos.img 48M
attach -f raw dos.img
printf 'label: dos\n,8M,L\n,,E\n,12M,L\n,,L\n' | sfdisk -q "$dev" && echo "partitioned"
# vdisk rescan does what partx -u would, without its limits (partx -u looks
# at as many partition numbers as the table has entries, four here, which
# misses p6, and keeps partitions the table dropped).
$VDISK rescan "$unit" | filter
parts "$dev"
mkfs.ext4 -q "$dev"p5 && mkfs.ext4 -q "$dev"p6 && echo "mkfs ok"
mnt "$dev"p6 p6
echo logical >p6/file
umnt p6
echo "-- repartitioned while p5 is mounted: p6 deleted, then added smaller"
# The kernel refuses to re-read the table of a disk in use; rescan syncs
# the partitions one by one.
mnt "$dev"p5 p5
sfdisk -q --no-reread --delete "$dev" 6 2>/dev/null && echo "p6 deleted from the table"
$VDISK rescan "$unit" | filter
printf ',8M,L\n' | sfdisk -q --no-reread -a "$dev" 2>/dev/null && echo "p6 added"
$VDISK rescan "$dev" | filter
parts "$dev"
echo "-- p5 shrunk while mounted: refused until unmounted"
printf ',8M\n' | sfdisk -q --no-reread -N 5 "$dev" 2>/dev/null && echo "p5 shrunk in the table"
$VDISK rescan "$unit" 2>&1 | filter
echo "exit ${PIPESTATUS[0]}"
parts "$dev"
umnt p5
$VDISK rescan "$unit" | filter
parts "$dev"
mkfs.ext4 -q "$dev"p5 && echo "mkfs p5 ok"
$VDISK detach "$unit" && echo "detached"
gone "$dev"
sfdisk --json dos.img | jq -c '.partitiontable | {"label": .label, parts: [.partitions[] | {node, type, start, size}]}'
echo "-- attached again"
attach -f raw dos.img
wait_part "$dev" 5 && parts "$dev"
fsck.ext4 -fn "$dev"p5 >/dev/null 2>&1 && echo "p5 fscks clean"
$VDISK detach "$unit" && echo "detached"
gone "$dev"

echo "=== 4096-byte sectors (-s 12)"
$VDISK create -q -f qcow2 4k.qcow2 32M
attach -s 12 4k.qcow2
printf 'label: gpt\n,8M,L\n,,L\n' | sfdisk -q "$dev" && echo "partitioned"
$VDISK rescan "$unit" | filter
parts "$dev"
blockdev --getss "$dev"p1
mkfs.ext4 -q "$dev"p2 && mnt "$dev"p2 p2
copy_tree p2
umnt p2
$VDISK detach "$unit" && echo "detached"
gone "$dev"
echo "-- attached again with 4096-byte sectors, read-only"
attach -r -s 12 4k.qcow2
wait_part "$dev" 2 && parts "$dev"
sfdisk --json "$dev" | jq -c '.partitiontable | {"label": .label, sectorsize, parts: [.partitions[] | {start, size}]}'
mnt "$dev"p2 p2 ro
diff -r src p2 -x lost+found && echo "tree identical"
umnt p2
$VDISK detach "$unit" && echo "detached"
echo "-- attached with 512-byte sectors: no GPT where 512-byte sectors put it"
attach -r 4k.qcow2
sleep 0.2
parts "$dev"
echo "partitions: $(ls "$dev"p* 2>/dev/null | wc -l)"
$VDISK detach "$unit" && echo "detached"

echo "=== no table, and a broken one: attach still succeeds"
qemu-img create -q -f raw plain.img 8M
attach -f raw plain.img
echo "partitions: $(ls "$dev"p* 2>/dev/null | wc -l)"
$VDISK detach "$unit" && echo "detached"
printf 'label: gpt\n,,L\n' | sfdisk -q plain.img
printf 'EFI PARX' | dd of=plain.img bs=1 seek=512 conv=notrunc status=none
printf 'EFI PARX' | dd of=plain.img bs=1 seek=$((8 * 1024 * 1024 - 512)) conv=notrunc status=none
attach -f raw plain.img
echo "partitions: $(ls "$dev"p* 2>/dev/null | wc -l)"
$VDISK detach "$unit" && echo "detached"
# The daemon logged why it used no table; attach said nothing.
grep "partition table not used" state/daemon.log | sed 's/.*error=//'

