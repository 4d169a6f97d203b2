#!/usr/bin/env bash
# needs: root fuse qemu-img fio jq
# Several fio jobs write and verify (crc32c) on the device at once: raw
# with passthrough, raw served in userspace, 4 KiB sectors, and a RAM disk.
. "$SRC_DIR/attach-lib.sh"
qemu-img create -f raw disk.img 32M >/dev/null
run_fio() {
	fio --name=verify --filename="$1" --ioengine=libaio --direct=1 --iodepth=16 \
		--rw=randwrite --bsrange=4k-256k --numjobs=4 --size=8M --offset_increment=8M \
		--verify=crc32c --verify_fatal=1 --do_verify=1 --randseed=1 \
		--output-format=terse --terse-version=3 >fio.out 2>fio.err
	local rc=$?
	# terse field 5 is the job's error number.
	grep -v '^fio:' fio.out >fio.terse
	echo "fio exit $rc, job errors: $(cut -d';' -f5 fio.terse | sort -u | tr '\n' ' ')"
	# Field 6 is the KiB read back, the verify pass: every job read all it wrote.
	awk -F';' '$6 == 8192 {n++} END {print n " jobs verified 8 MiB each"}' fio.terse
	[ $rc -eq 0 ] || cat fio.err
}
for args in "-f raw" "-f raw --no-passthrough" "-f raw -s 12" "--mem 32M"; do
	echo "=== $args"
	if [ "$args" = "--mem 32M" ]; then attach --mem 32M 2>/dev/null; else attach $args disk.img 2>/dev/null; fi
	run_fio "$dev"
	$VDISK list --output json | jq -r '.[0].counters.errors'
	$VDISK detach "$unit"
done
