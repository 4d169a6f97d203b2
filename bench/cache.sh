#!/usr/bin/env bash
# The read cache (--cache-size) on and off, for an image behind NBD: a
# fully written dynamic VHD is exported as a file by qemu-nbd over a Unix
# socket, and `vdisk io -r` reads it through its VHD driver over NBD, with
# and without a cache. Rows:
#
#   re-read 4k    random 4 KiB reads, each offset read several times, in a
#                 working set smaller than the cache (where a cache helps)
#   re-read 1M    passes over a working set in 1 MiB reads
#   one pass 1M   a single sequential pass over the whole image (where it
#                 cannot: every block is read once)
#
# Each cell is the best of RUNS runs in seconds; ratio = cached ÷ uncached
# (below 1 means the cache helps).
#
# Usage: bench/cache.sh [path/to/vdisk]   (env: RUNS, SIZE_MIB, SET_MIB, CACHE)
set -euo pipefail
VDISK=$(realpath "${1:-./bin/vdisk}")
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-256}
SET_MIB=${SET_MIB:-16}
CACHE=${CACHE:-64M}
dir=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/vdisk-cache-bench.XXXXXX")
SP=
cleanup() {
	if [ -n "$SP" ]; then kill "$SP" 2>/dev/null && wait "$SP" 2>/dev/null; fi
	rm -rf "$dir"
}
trap cleanup EXIT
command -v qemu-nbd >/dev/null || { echo "qemu-nbd not found" >&2; exit 1; }
[ -x "$VDISK" ] || { echo "vdisk binary not found: $VDISK (make build)" >&2; exit 1; }

echo "preparing a ${SIZE_MIB} MiB dynamic VHD in $dir ..." >&2
dd if=/dev/urandom of="$dir/dense.img" bs=1M count="$SIZE_MIB" status=none
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$dir/dense.img" "$dir/disk.vhd"
rm "$dir/dense.img"
sock=$dir/nbd.sock
qemu-nbd -r -t -f raw -k "$sock" "$dir/disk.vhd" &
SP=$!
for _ in $(seq 400); do [ -S "$sock" ] && break; sleep 0.025; done
[ -S "$sock" ] || { echo "qemu-nbd did not start" >&2; exit 1; }
uri="nbd+unix:///?socket=$sock"

# The workloads as vdisk io command lists (fixed seeds: the same reads with
# and without the cache).
reread4k=()
RANDOM=1
for ((i = 0; i < 4000; i++)); do
	reread4k+=(-c "read $(((RANDOM * 32768 + RANDOM) % (SET_MIB * 256) * 4096)) 4k")
done
reread1m=()
for ((pass = 0; pass < 8; pass++)); do
	for ((m = 0; m < SET_MIB; m++)); do reread1m+=(-c "read ${m}M 1M"); done
done
onepass=()
for ((m = 0; m < SIZE_MIB; m++)); do onepass+=(-c "read ${m}M 1M"); done

now() { date +%s.%N; }

# best ARGS...: the best wall time of RUNS runs of vdisk io ARGS.
best() {
	local b="" t0 t1 t
	for _ in $(seq "$RUNS"); do
		t0=$(now)
		"$VDISK" io -f vhd -r "$@" "$uri" >/dev/null
		t1=$(now)
		t=$(echo "$t1 - $t0" | bc -l)
		if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
	done
	printf '%.3f' "$b"
}

row() { # NAME ARRAY-NAME
	local -n cmds=$2
	local off on
	off=$(best "${cmds[@]}")
	on=$(best --cache-size "$CACHE" "${cmds[@]}")
	printf '%-34s %10s %10s %7s\n' "$1" "$off" "$on" "$(printf %.2f "$(echo "$on / $off" | bc -l)")"
}

printf '%-34s %10s %10s %7s\n' "row (VHD over NBD, cache $CACHE)" "off s" "on s" "ratio"
row "re-read 4k, 4000 in ${SET_MIB} MiB" reread4k
row "re-read 1M, 8 passes of ${SET_MIB} MiB" reread1m
row "one pass 1M, ${SIZE_MIB} MiB" onepass
