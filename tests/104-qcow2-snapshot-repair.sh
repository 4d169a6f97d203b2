#!/usr/bin/env bash
# A damaged snapshot table: check reports it; -r leaks repairs nothing and
# leaves the file alone; -r all drops the broken snapshots, keeps the
# sound ones, and frees what only the dropped ones held. qemu-img then
# finds the image clean, and every kept snapshot reads as taken.
# needs: qemu-img qemu-io
run() { "$@" 2>&1; echo "exit ${PIPESTATUS[0]}"; }
be64() { printf "$(printf '%016x' "$1" | sed 's/../\\x&/g')"; }
u64() { od -An -tu8 --endian=big -j "$2" -N8 "$1" | tr -d ' '; }
# qread ARGS...: qemu-io pattern reads; qemu-io prints "read" even after a
# mismatch, so success is its exit status and no verification failure.
qread() {
	local out
	if out=$(qemu-io "$@" 2>&1) && ! grep -q "verification failed" <<<"$out"; then
		echo "reads ok"
	else
		echo "$out"
	fi
}
qemu-img create -q -f qcow2 s.qcow2 4M
qemu-io -c "write -P 1 0 1M" s.qcow2 >/dev/null
qemu-img snapshot -c one s.qcow2
qemu-io -c "write -P 2 0 512k" s.qcow2 >/dev/null
qemu-img snapshot -c two s.qcow2
qemu-io -c "write -P 3 0 64k" s.qcow2 >/dev/null
echo "== snapshot one's L1 table offset made unaligned"
table=$(u64 s.qcow2 64)
l1=$(u64 s.qcow2 "$table")
be64 $((l1 + 512)) | dd of=s.qcow2 bs=1 seek="$table" conv=notrunc status=none
run $VDISK snapshot -l s.qcow2
run $VDISK check s.qcow2
sum=$(md5sum <s.qcow2)
run $VDISK check -r leaks s.qcow2
[ "$(md5sum <s.qcow2)" = "$sum" ] && echo "file unchanged"
run $VDISK check -r all s.qcow2
run $VDISK check s.qcow2
qemu-img check s.qcow2
qemu-img snapshot -l s.qcow2 | awk 'NR > 2 { print $2 }'
qread -r -c "read -P 3 0 64k" -c "read -P 2 64k 448k" -c "read -P 1 512k 512k" s.qcow2
qemu-img convert -l snapshot.name=two -O raw s.qcow2 two.raw
qread -f raw -r -c "read -P 2 0 512k" -c "read -P 1 512k 512k" two.raw
echo "== snapshot table offset past the end of the file"
qemu-img snapshot -c three s.qcow2
be64 $((1 << 40)) | dd of=s.qcow2 bs=1 seek=64 conv=notrunc status=none
run $VDISK check -r all s.qcow2
qemu-img check s.qcow2
qemu-img snapshot -l s.qcow2 | wc -l
qread -r -c "read -P 3 0 64k" -c "read -P 2 64k 448k" -c "read -P 1 512k 512k" s.qcow2
