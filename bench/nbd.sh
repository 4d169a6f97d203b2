#!/usr/bin/env bash
# NBD throughput: vdisk serve against qemu-nbd, side by side, with nbdcopy
# (several connections) reading and writing a 2 GiB image over a Unix
# socket. Prints MiB/s per row (best of $RUNS) and the vdisk/qemu ratio.
# Writes end with a flush (nbdcopy --flush), so that both servers are
# timed until the data is durable, not until it is in the page cache.
#
#   bench/nbd.sh [SIZE_MIB]      (default 2048; VDISK=path to a built vdisk)
set -u
SIZE_MIB=${1:-2048}
RUNS=${RUNS:-3}
CONN=${CONN:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/vdisk-nbd-bench.XXXXXX)
VDISK=${VDISK:-$WORK/vdisk}
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	rm -rf "$WORK"
}
trap cleanup EXIT
[ -x "$VDISK" ] || (cd "$ROOT" && CGO_ENABLED=0 go build -o "$VDISK" ./cmd/vdisk) || exit 1

cd "$WORK"
echo "making a ${SIZE_MIB} MiB image with data everywhere..."
yes 'vdisk nbd benchmark data 0123456789abcdef' | head -c $((SIZE_MIB << 20)) > src.raw
truncate -s ${SIZE_MIB}M sparse.raw
# Skipping holes by block status is too quick to time on SIZE; 32x it is.
truncate -s $((SIZE_MIB * 32))M bigsparse.raw
qemu-img create -q -f qcow2 src.qcow2 ${SIZE_MIB}M
qemu-img convert -n -f raw -O qcow2 src.raw src.qcow2 2>/dev/null ||
	qemu-img convert -f raw -O qcow2 src.raw src.qcow2
have_qcow2=0
"$VDISK" info -f qcow2 src.qcow2 >/dev/null 2>&1 && have_qcow2=1

# serve WHICH FMT FILE: start a server on $WORK/WHICH.sock; sets SP.
serve() {
	local which=$1 fmt=$2 file=$3 sock=$WORK/$1.sock
	rm -f "$sock"
	if [ "$which" = vdisk ]; then
		"$VDISK" serve -f "$fmt" -t -e 16 -k "$sock" "$file" &
	else
		qemu-nbd -f "$fmt" -t -e 16 -k "$sock" "$file" &
	fi
	SP=$!
	PIDS+=($SP)
	for _ in $(seq 400); do [ -S "$sock" ] && return; sleep 0.025; done
	echo "$which did not start" >&2
	exit 1
}
unserve() { kill "$SP"; wait "$SP" 2>/dev/null; }

now() { date +%s.%N; }

# run WHICH NAME FMT FILE DIRECTION: best MiB/s of RUNS runs, each with a
# fresh server (and, for writes, a fresh target made by $PREP).
run() {
	local which=$1 fmt=$2 file=$3 dir=$4 best=0 t0 t1 r
	for _ in $(seq "$RUNS"); do
		[ -n "${PREP:-}" ] && eval "$PREP"
		serve "$which" "$fmt" "$file"
		local uri="nbd+unix:///?socket=$WORK/$which.sock"
		t0=$(now)
		if [ "$dir" = read ]; then
			nbdcopy -C "$CONN" ${COPYOPTS:-} "$uri" null: || echo "nbdcopy failed" >&2
		else
			nbdcopy -C "$CONN" --flush src.raw "$uri" || echo "nbdcopy failed" >&2
		fi
		t1=$(now)
		unserve
		r=$(echo "${ROW_MIB:-$SIZE_MIB} / ($t1 - $t0)" | bc -l)
		best=$(echo "if ($r > $best) $r else $best" | bc -l)
	done
	printf '%.0f' "$best"
}

row() { # NAME FMT FILE DIRECTION
	local name=$1 v q
	shift
	v=$(run vdisk "$@")
	q=$(run qemu "$@")
	printf '%-28s %10s %10s %8s\n' "$name" "$v" "$q" "$(echo "scale=2; $v / $q" | bc -l)"
}

printf '%-28s %10s %10s %8s\n' "row (${SIZE_MIB} MiB, -C $CONN)" "vdisk MB/s" "qemu MB/s" "ratio"
row "raw read" raw src.raw read
ROW_MIB=$((SIZE_MIB * 32)) row "raw read, 32x holes, extents" raw bigsparse.raw read
# Without extents nbdcopy reads every byte: the server answers hole chunks.
COPYOPTS=--no-extents row "raw read, holes, no extents" raw sparse.raw read
PREP='rm -f dst.raw; truncate -s ${SIZE_MIB}M dst.raw' row "raw write" raw dst.raw write
if [ $have_qcow2 = 1 ]; then
	row "qcow2 read" qcow2 src.qcow2 read
	PREP='rm -f dst.qcow2; qemu-img create -q -f qcow2 dst.qcow2 ${SIZE_MIB}M' row "qcow2 write" qcow2 dst.qcow2 write
else
	echo "(qcow2 rows skipped: this vdisk has no qcow2 driver yet)"
fi
