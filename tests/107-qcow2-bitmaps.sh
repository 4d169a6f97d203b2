#!/usr/bin/env bash
# Persistent dirty bitmaps (made by qemu-img bitmap --add) survive vdisk's
# writes as QEMU leaves bitmaps it cannot maintain: marked in-use, their
# clusters still referenced, so qemu-img check finds no leaks and QEMU can
# remove them. Read-only opens change nothing; resize is refused, as QEMU
# refuses to resize inconsistent bitmaps; a malformed extension refuses a
# writable open.
# needs: qemu-img qemu-io
pattern() { "$@" 2>&1 | grep -q "verification failed" && echo "pattern MISMATCH" || echo "patterns ok"; }
run() { "$@" 2>&1; echo "exit ${PIPESTATUS[0]}"; }
bitmaps() { qemu-img info -U "$1" | sed -n '/bitmaps:/,/refcount bits/p' | grep -v 'refcount bits'; }
qcheck() { qemu-img check "$1" 2>&1 | grep -v "allocated\|Image end"; echo "exit ${PIPESTATUS[0]}"; }
qemu-img create -q -f qcow2 b.qcow2 4M
qemu-img bitmap --add b.qcow2 b0
qemu-io -c "write -P 1 0 64k" b.qcow2 >/dev/null
qemu-img bitmap --add -g 4096 b.qcow2 b1
cp b.qcow2 orig.qcow2
echo "== read-only opens change nothing"
sum=$(md5sum <b.qcow2)
$VDISK info b.qcow2 | sed -n '/bitmaps:/,/refcount bits/p' | grep -v 'refcount bits'
pattern $VDISK io -r -c "read -P 1 0 64k" b.qcow2
[ "$(md5sum <b.qcow2)" = "$sum" ] && echo "file unchanged"
echo "== plain, allocating, zero and discard writes"
run $VDISK io -c "write -P 2 0 4k" -c "write -P 3 1M 1M" -c "write -z 3M 64k" -c "discard 2M 64k" b.qcow2 | grep -v "^wrote\|^discard\|/sec"
qcheck b.qcow2
bitmaps b.qcow2
run $VDISK check b.qcow2
echo "== snapshots"
run $VDISK snapshot -c s1 b.qcow2
run $VDISK io -c "write -P 4 0 2M" b.qcow2 | grep -v "^wrote\|/sec"
run $VDISK snapshot -a s1 b.qcow2
run $VDISK snapshot -d s1 b.qcow2
qcheck b.qcow2
pattern qemu-io -r -c "read -P 2 0 4k" -c "read -P 3 1M 1M" b.qcow2
echo "== check -r all keeps the bitmaps' clusters"
run $VDISK check -r all b.qcow2
qcheck b.qcow2
bitmaps b.qcow2
echo "== resize is refused, as qemu-img does for in-use bitmaps"
run $VDISK resize b.qcow2 8M
qemu-img resize b.qcow2 8M 2>&1 | head -1
echo "== qemu-img removes them"
qemu-img bitmap --remove b.qcow2 b0
qemu-img bitmap --remove b.qcow2 b1
qcheck b.qcow2
bitmaps b.qcow2 | wc -l
run $VDISK resize b.qcow2 8M
echo "== a malformed extension (reserved field set) refuses a writable open"
cp orig.qcow2 m.qcow2
ext=$(grep -obUaP '\x23\x85\x28\x75' m.qcow2 | head -1 | cut -d: -f1)
printf '\x01' | dd of=m.qcow2 bs=1 seek=$((ext + 12)) conv=notrunc status=none
sum=$(md5sum <m.qcow2)
run $VDISK io -c "write 0 4k" m.qcow2
$VDISK info m.qcow2 | grep -c "^image:"
[ "$(md5sum <m.qcow2)" = "$sum" ] && echo "file unchanged"
echo "== check -r all drops it, and frees its clusters"
run $VDISK check -r all m.qcow2 | grep -v "allocated\|Image end"
qcheck m.qcow2
run $VDISK io -c "write -P 5 0 4k" m.qcow2 | grep -v "^wrote\|/sec"
qcheck m.qcow2
echo "== a dirty lazy-refcounts image: the rebuild counts the bitmaps"
qemu-img create -q -f qcow2 -o lazy_refcounts=on l.qcow2 4M
qemu-img bitmap --add l.qcow2 b0
qemu-io -c "write -P 1 0 64k" l.qcow2 >/dev/null
sh -c 'qemu-io -c "write -P 2 1M 128k" -c abort l.qcow2; true' >/dev/null 2>&1
qemu-img info -U --output json l.qcow2 | grep -c '"dirty-flag": true'
run $VDISK io -c "write -P 3 2M 64k" l.qcow2 | grep -v "^wrote\|/sec"
qcheck l.qcow2
bitmaps l.qcow2
pattern qemu-io -r -c "read -P 1 0 64k" -c "read -P 2 1M 128k" -c "read -P 3 2M 64k" l.qcow2
