#!/usr/bin/env bash
# Block-device performance of `vdisk attach`, side by side with the QEMU
# way without an nbd module (qemu-nbd + nbdfuse + loop) and with a plain
# loop device on the raw file (the limit). fio, libaio, direct=1:
# 4 KiB random read and write at queue depth 32, 1 MiB sequential read and
# write. For raw images and for a qcow2 copy; any attach that fails ends
# the run with an error.
#
#   usage: bench/attach.sh [VDISK-BINARY]    (root; env SIZE=1G RUNTIME=10)
set -euo pipefail
VDISK=${1:-${VDISK:-}}
if [ -z "$VDISK" ]; then
	VDISK=$(mktemp -d)/vdisk
	(cd "$(dirname "$0")/.." && CGO_ENABLED=0 go build -o "$VDISK" ./cmd/vdisk)
fi
SIZE=${SIZE:-1G}
RUNTIME=${RUNTIME:-10}
DIR=$(mktemp -d /var/tmp/vdisk-bench.XXXXXX)
export VDISK_STATE_DIR=$DIR/state
pids=()
loops=()
fusemnts=()

cleanup() {
	set +e
	for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done
	for m in "${fusemnts[@]}"; do fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
	[ -f "$VDISK_STATE_DIR/daemon.pid" ] && kill "$(cat "$VDISK_STATE_DIR/daemon.pid")" 2>/dev/null
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	sleep 0.5
	rm -rf "$DIR"
}
trap cleanup EXIT

workloads=("randread 4k 32" "randwrite 4k 32" "read 1M 4" "write 1M 4")

# run_fio DEV RW BS QD: prints IOPS for 4k, MiB/s for 1M.
run_fio() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	local out
	out=$(fio --name=b --filename="$1" --ioengine=libaio --direct=1 --rw="$2" --bs="$3" --iodepth="$4" \
		--runtime="$RUNTIME" --time_based --size="$SIZE" --randrepeat=0 --norandommap \
		--output-format=json 2>/dev/null)
	local dir=read
	[[ $2 == *write ]] && dir=write
	if [ "$3" = 4k ]; then
		jq -r ".jobs[0].$dir.iops | floor" <<<"$out"
	else
		jq -r ".jobs[0].$dir.bw_bytes / 1048576 | floor" <<<"$out"
	fi
}

# bench_dev NAME DEV: runs every workload, stores results in res[NAME,i].
declare -A res
bench_dev() {
	local i=0 w
	for w in "${workloads[@]}"; do
		# shellcheck disable=SC2086
		res[$1,$i]=$(run_fio "$2" $w)
		i=$((i + 1))
	done
	echo "  $1 done" >&2
}

# vdisk_attach ARGS...: prints the device; a failed attach ends the run
# with vdisk's message, since a missing column would hide a regression.
vdisk_attach() {
	local out
	# The daemon it may start keeps no descriptor of ours: a command
	# substitution would otherwise wait for it. Its notice on stderr is
	# dropped; errors are not.
	if ! out=$("$VDISK" attach "$@" 2>"$DIR/attach.err" </dev/null) || [ -z "$out" ]; then
		echo "bench: vdisk attach $* failed:" >&2
		grep -v 'started one in the background' "$DIR/attach.err" >&2
		exit 1
	fi
	echo "${out#* }"
}

vdisk_detach() { "$VDISK" detach "$1" >/dev/null; }

# qemu_path FMT FILE: qemu-nbd serving FILE on a socket, nbdfuse turning it
# into a file, a loop device on that file; the device is left in $dev.
qemu_path() {
	local sock=$DIR/nbd.$RANDOM.sock mp=$DIR/nbdfuse.$RANDOM
	mkdir -p "$mp"
	qemu-nbd -f "$1" -t -k "$sock" --cache=none --aio=native --discard=unmap "$2" >>"$DIR/qemu.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.05; done
	nbdfuse -C 4 -P "$mp.pid" "$mp/disk" --unix "$sock" >>"$DIR/qemu.log" 2>&1 &
	pids+=($!)
	for _ in $(seq 100); do [ -s "$mp.pid" ] && break; sleep 0.05; done
	fusemnts+=("$mp")
	dev=$(losetup --direct-io=on -f --show "$mp/disk")
	loops+=("$dev")
}

qemu_done() {
	losetup -d "$1"
	fusermount3 -u "${fusemnts[-1]}"
	kill "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
	wait "${pids[-1]}" "${pids[-2]}" 2>/dev/null || true
	sleep 0.3
}

echo "preparing a $SIZE raw image with random data in $DIR" >&2
fio --name=fill --filename="$DIR/disk.raw" --rw=write --bs=1M --size="$SIZE" --ioengine=libaio --direct=1 \
	--iodepth=4 --refill_buffers --output-format=terse >/dev/null 2>&1

echo "vdisk (raw, passthrough)" >&2
dev=$(vdisk_attach -f raw "$DIR/disk.raw")
passthrough=$("$VDISK" list --output json | jq -r '.[0].passthrough')
bench_dev vdisk "$dev"
vdisk_detach "$dev"

echo "vdisk (raw, served in userspace)" >&2
dev=$(vdisk_attach -f raw --no-passthrough "$DIR/disk.raw")
bench_dev vdisk-us "$dev"
vdisk_detach "$dev"

echo "qemu-nbd + nbdfuse + loop (raw)" >&2
qemu_path raw "$DIR/disk.raw"
bench_dev qemu "$dev"
qemu_done "$dev"

echo "plain loop (raw)" >&2
dev=$(losetup --direct-io=on -f --show "$DIR/disk.raw")
loops+=("$dev")
bench_dev loop "$dev"
losetup -d "$dev"

qemu-img convert -f raw -O qcow2 "$DIR/disk.raw" "$DIR/disk.qcow2"
echo "vdisk (qcow2)" >&2
dev=$(vdisk_attach -f qcow2 "$DIR/disk.qcow2")
bench_dev vdisk-q "$dev"
vdisk_detach "$dev"
echo "qemu-nbd + nbdfuse + loop (qcow2)" >&2
qemu_path qcow2 "$DIR/disk.qcow2"
bench_dev qemu-q "$dev"
qemu_done "$dev"
cols=(vdisk vdisk-us qemu loop vdisk-q qemu-q)

echo
echo "fio libaio direct=1, $SIZE image, ${RUNTIME}s per run; 4k: IOPS, 1M: MiB/s"
echo "vdisk    = vdisk attach, raw (FUSE passthrough: $passthrough)"
echo "vdisk-us = vdisk attach, raw, --no-passthrough (every request served by vdisk)"
echo "qemu     = qemu-nbd --cache=none --aio=native + nbdfuse + loop (direct-io)"
echo "loop     = losetup --direct-io=on on the raw file (the limit)"
echo "vdisk-q / qemu-q = the same for a qcow2 copy of the image"
printf "%-22s" workload
for c in "${cols[@]}"; do printf "%10s" "$c"; done
printf "%12s%12s" "vdisk/qemu" "vdisk/loop"
printf "%16s" "vdisk-q/qemu-q"
printf "%15s\n" "vdisk-us/qemu"
i=0
for w in "${workloads[@]}"; do
	printf "%-22s" "$w"
	for c in "${cols[@]}"; do printf "%10s" "${res[$c,$i]}"; done
	ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else printf "-" }'; }
	printf "%12s%12s" "$(ratio "${res[vdisk,$i]}" "${res[qemu,$i]}")" "$(ratio "${res[vdisk,$i]}" "${res[loop,$i]}")"
	printf "%16s" "$(ratio "${res[vdisk-q,$i]}" "${res[qemu-q,$i]}")"
	printf "%15s\n" "$(ratio "${res[vdisk-us,$i]}" "${res[qemu,$i]}")"
	i=$((i + 1))
done
