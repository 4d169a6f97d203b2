#!/usr/bin/env bash
# What vdisk serve advertises (nbdinfo --json: read-only, flush, FUA,
# trim, zero, fast zero, DF, multi-conn, cache, block sizes, contexts)
# equals what qemu-nbd advertises for the same flags, for raw and qcow2:
# CAN_MULTI_CONN only with more than one connection allowed, the write
# features off with -r.
# needs: qemu-img qemu-nbd nbdinfo jq
. "$SRC_DIR/nbd-common.inc"

qemu-img create -q -f raw v.raw 4M
qemu-img create -q -f raw q.raw 4M
qemu-img create -q -f qcow2 v.qcow2 4M
qemu-img create -q -f qcow2 q.qcow2 4M

# flags FMT ARGS...: nbdinfo's view of both servers, which must agree.
flags() {
	local fmt=$1; shift
	rm -f v.sock q.sock
	start_serve -t -f $fmt "$@" -k "$TEST_DIR/v.sock" v.$fmt
	qemu-nbd -t -f $fmt "$@" -k "$TEST_DIR/q.sock" q.$fmt &
	QPID=$!
	for _ in $(seq 200); do [ -S q.sock ] && break; sleep 0.05; done
	for s in v q; do
		nbdinfo --json "nbd+unix:///?socket=$TEST_DIR/$s.sock" |
			jq -c '.exports[0] | del(.uri)' >$s.json
	done
	kill $QPID; wait $QPID 2>/dev/null
	stop_serve >/dev/null
	if cmp -s v.json q.json; then
		echo "$fmt${*:+ $*}: same as qemu-nbd"
	else
		echo "$fmt${*:+ $*}: differs from qemu-nbd"; diff v.json q.json
	fi
	jq -c '{is_read_only, can_multi_conn, can_trim, can_zero, can_fast_zero, can_df, can_flush, can_fua, can_cache}' v.json
}
flags raw
flags raw -e 4
flags raw -e 0
flags raw -r
flags raw -r -e 4
flags qcow2
flags qcow2 -e 4
flags qcow2 -r
echo "== block sizes and contexts"
jq -c '{block_size_minimum, block_size_preferred, block_size_maximum, contexts}' v.json
