#!/usr/bin/env bash
# Times `vdisk convert` against `qemu-img convert` on the same 2 GiB raw
# images, one sparse (about 10% data in scattered runs) and one dense
# (random data throughout), for raw->raw and, when vdisk has the driver,
# raw->qcow2; then the read paths: a fully written 2 GiB qcow2 and a fully
# written dynamic VHD (both made by qemu-img from the dense image), each
# converted to raw; and compressed conversion (-c, zlib and zstd) of a
# compressible image (base64 and numbered lines, about 2:1 with zlib) to
# qcow2, with the output sizes. Each case runs RUNS times (default 3), alternating the
# tools; the table shows medians and vdisk's time relative to qemu-img's
# (below 1.00 means vdisk is faster).
#
# Two cache modes: "unsafe" is qemu-img convert's default (no flush at the
# end, data may still be in the page cache), compared with vdisk -t unsafe;
# "durable" is vdisk's default (target on stable storage when convert
# exits), compared with qemu-img -t writeback.
#
# Usage: bench/convert.sh [path/to/vdisk]   (env: RUNS, SIZE_MIB, BENCH_DIR,
# ONLY: a regular expression that picks rows by "image conversion", e.g.
# ONLY=-c for the compressed ones)
set -euo pipefail
VDISK=$(realpath "${1:-./bin/vdisk}")
RUNS=${RUNS:-3}
ONLY=${ONLY:-}
SIZE_MIB=${SIZE_MIB:-2048}
dir=$(mktemp -d "${BENCH_DIR:-${TMPDIR:-/tmp}}/vdisk-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT

command -v qemu-img >/dev/null || { echo "qemu-img not found" >&2; exit 1; }
[ -x "$VDISK" ] || { echo "vdisk binary not found: $VDISK (make build)" >&2; exit 1; }

echo "preparing ${SIZE_MIB} MiB images in $dir ..." >&2
# Sparse: a 1 MiB run of random data every 10 MiB, plus some small runs.
truncate -s "${SIZE_MIB}M" "$dir/sparse.img"
for ((m = 0; m < SIZE_MIB; m += 10)); do
	dd if=/dev/urandom of="$dir/sparse.img" bs=1M count=1 seek=$m conv=notrunc status=none
	dd if=/dev/urandom of="$dir/sparse.img" bs=4k count=1 seek=$((m * 256 + 700)) conv=notrunc status=none
done
dd if=/dev/urandom of="$dir/dense.img" bs=1M count="$SIZE_MIB" status=none
# Compressible: base64 of random data and numbered text lines in turn.
# The loop ends when head has had enough and the writes fail.
{ while :; do
	head -c 512K /dev/urandom | base64 -w 100 || break
	seq -f 'line %g of a compressible text file' 1 20000 || break
done; } | head -c "${SIZE_MIB}M" >"$dir/text.img" || true
# Fully written images of the other formats, made by qemu-img so that
# neither tool reads a layout of its own making.
qemu-img convert -f raw -O qcow2 "$dir/dense.img" "$dir/full.qcow2"
qemu-img convert -f raw -O vpc -o subformat=dynamic "$dir/dense.img" "$dir/full.vhd"
sync

now() { date +%s.%N; }

# time_one TOOL MODE SRC SRCFMT FMT [ARGS...]: seconds for one conversion,
# to stdout; ARGS go to both tools (-c -o compression_type=...), and the
# output's size is kept in $dir/size.TOOL. Formats are vdisk's names;
# qemu-img calls VHD "vpc".
time_one() {
	local tool=$1 mode=$2 src=$3 sfmt=$4 fmt=$5 out="$dir/out.img" t0 t1 cache qsfmt
	shift 5
	qsfmt=$sfmt
	[ "$sfmt" == vhd ] && qsfmt=vpc
	rm -f "$out"
	sync
	cache=writeback
	[ "$mode" == unsafe ] && cache=unsafe
	t0=$(now)
	case $tool in
	qemu) qemu-img convert -t "$cache" -f "$qsfmt" -O "$fmt" "$@" "$src" "$out" ;;
	vdisk) "$VDISK" convert -t "$cache" -f "$sfmt" -O "$fmt" "$@" "$src" "$out" ;;
	esac
	t1=$(now)
	stat -c %s "$out" >"$dir/size.$tool"
	rm -f "$out"
	echo "$t1 - $t0" | bc -l
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

has_format() { "$VDISK" create -f "$1" -o help >/dev/null 2>&1; }

row() { printf '%-8s %-18s %-8s %12s %12s %8s\n' "$@"; }
# bench_case IMAGE-LABEL SRC SRCFMT FMT [LABEL-SUFFIX ARGS...]: one row
# per cache mode.
bench_case() {
	local img=$1 src=$2 sfmt=$3 fmt=$4 mode label q v r qs vs
	label="$sfmt->$fmt"
	shift 4
	if (($#)); then
		label+=" $1"
		shift
	fi
	[[ -z $ONLY || "$img $label" =~ $ONLY ]] || return 0
	for mode in unsafe durable; do
		if ! has_format "$fmt" || ! has_format "$sfmt"; then
			row "$img" "$label" "$mode" n/a n/a n/a
			continue
		fi
		qs=() vs=()
		for ((r = 0; r < RUNS; r++)); do
			qs+=("$(time_one qemu "$mode" "$src" "$sfmt" "$fmt" "$@")")
			vs+=("$(time_one vdisk "$mode" "$src" "$sfmt" "$fmt" "$@")")
		done
		q=$(printf '%s\n' "${qs[@]}" | median)
		v=$(printf '%s\n' "${vs[@]}" | median)
		row "$img" "$label" "$mode" "$(printf %.3f "$q")" "$(printf %.3f "$v")" "$(printf %.2f "$(echo "$v / $q" | bc -l)")"
	done
	if [[ $label == *-c* ]]; then
		row "" "  size MiB" "" \
			"$(($(cat "$dir/size.qemu") >> 20))" "$(($(cat "$dir/size.vdisk") >> 20))" \
			"$(printf %.2f "$(echo "$(cat "$dir/size.vdisk") / $(cat "$dir/size.qemu")" | bc -l)")"
	fi
}

row image conversion cache "qemu-img s" "vdisk s" ratio
for img in sparse dense; do
	for fmt in raw qcow2; do
		bench_case "$img" "$dir/$img.img" raw "$fmt"
	done
done
bench_case full "$dir/full.qcow2" qcow2 raw
bench_case full "$dir/full.vhd" vhd raw
for c in zlib zstd; do
	bench_case text "$dir/text.img" raw qcow2 "-c $c" -c -o compression_type=$c
done
echo "($(nproc) CPUs; medians of $RUNS runs; source in the page cache)"
