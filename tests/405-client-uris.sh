#!/usr/bin/env bash
# vdisk's own commands on nbd:// and nbd+unix:// URIs, against servers
# nobody here wrote (qemu-nbd, nbdkit memory and file plugins, nbdkit
# enforcing a 4 KiB minimum block size, nbdkit enforcing 512 bytes on an
# export of 1000) and against vdisk serve.
# needs: qemu-img qemu-io qemu-nbd nbdkit
. "$SRC_DIR/nbd-common.inc"

qemu-img create -q -f raw a.raw 16M
qio -f raw -c 'write -P 0xaa 1M 1M' -c 'write -P 0xbb 9M 64k' a.raw
cp --sparse=always a.raw ref.raw

# start_bg NAME CMD...: run a server in the background until stop_bg.
start_bg() {
	local sock=$1; shift
	"$@" 2>server.log &
	BPID=$!
	for _ in $(seq 200); do [ -S "$sock" ] && return; sleep 0.05; done
	echo "server did not start"; cat server.log
}
stop_bg() { kill $BPID; wait $BPID 2>/dev/null; }

exercise() {
	local uri=$1
	$VDISK info "$uri" | grep -v '^disk size' | sed "s#$TEST_DIR#\$TEST_DIR#"
	$VDISK map --output json "$uri" | sed 's/"offset": [0-9]*/"offset": X/'
	$VDISK compare ref.raw "$uri"
	$VDISK convert -O raw "$uri" out.raw && $VDISK compare ref.raw out.raw
	qemu-img map --output json -f raw out.raw | jq -c '.[] | select(.data) | [.start, .length]'
	$VDISK io -c 'write -P 0x5c 4M 64k' -c 'read -P 0x5c 4M 64k' -c 'read -P 0xaa 1M 1M' "$uri" | grep -v ' ops; '
	$VDISK io -c 'write -z 1M 512k' -c 'read -P 0 1M 512k' -c 'read -P 0xaa 1536k 512k' "$uri" | grep -v ' ops; '
	# Put the reference back the way it was, through the export.
	$VDISK convert -n -O raw ref.raw "$uri" 2>&1
	$VDISK compare ref.raw "$uri"
}

echo "### qemu-nbd"
cp --sparse=always ref.raw q.raw
start_bg "$TEST_DIR/q.sock" qemu-nbd -f raw -t -k "$TEST_DIR/q.sock" -x disk q.raw
exercise "nbd+unix:///disk?socket=$TEST_DIR/q.sock"
stop_bg

echo "### nbdkit file"
cp --sparse=always ref.raw k.raw
start_bg "$TEST_DIR/k.sock" nbdkit -f -U "$TEST_DIR/k.sock" file k.raw
exercise "nbd+unix:///?socket=$TEST_DIR/k.sock"
stop_bg

echo "### nbdkit memory"
start_bg "$TEST_DIR/m.sock" nbdkit -f -U "$TEST_DIR/m.sock" memory 16M
$VDISK convert -n -O raw ref.raw "nbd+unix:///?socket=$TEST_DIR/m.sock"
exercise "nbd+unix:///?socket=$TEST_DIR/m.sock"
stop_bg

echo "### nbdkit failing requests that break its block sizes (minimum 4096)"
start_bg "$TEST_DIR/b.sock" nbdkit -f -U "$TEST_DIR/b.sock" --filter=blocksize-policy memory 16M \
	blocksize-minimum=4096 blocksize-error-policy=error
B="nbd+unix:///?socket=$TEST_DIR/b.sock"
$VDISK io -f raw -c 'write 100 300' -c 'write -P 0x5a 5000 10000' -c 'write -z 6000 100' "$B" | grep -v ' ops; '
qio -f raw -c 'read -P 0 0 100' -c 'read -P 0xcd 100 300' -c 'read -P 0 400 4600' -c 'read -P 0x5a 5000 1000' \
	-c 'read -P 0 6000 100' -c 'read -P 0x5a 6100 8900' -c 'read -P 0 15000 1000' "$B"
$VDISK convert -n -O raw ref.raw "$B" && $VDISK compare ref.raw "$B"
exercise "$B"
stop_bg

echo "### nbdkit with a minimum block size of 512 and a size of 1000: the export ends at 512"
start_bg "$TEST_DIR/u.sock" nbdkit -f -U "$TEST_DIR/u.sock" --filter=blocksize-policy data '1 2 3 @900 4' size=1000 \
	blocksize-minimum=512 blocksize-error-policy=error
U="nbd+unix:///?socket=$TEST_DIR/u.sock"
$VDISK info "$U" | grep -v '^disk size' | sed "s#$TEST_DIR#\$TEST_DIR#"
$VDISK map --output json "$U"
$VDISK io -f raw -c 'read -v 0 16' -c 'write -P 0x5a 500 12' -c 'read -P 0x5a 500 12' -c 'read -P 0 16 484' "$U" | grep -v ' ops; '
stop_bg

echo "### vdisk serve over TCP"
cp --sparse=always ref.raw v.raw
PORT=$(pick_port)
start_serve -f raw -t -e 4 -p $PORT --name disk v.raw
exercise "nbd://127.0.0.1:$PORT/disk" | sed "s/:$PORT/:PORT/"
stop_serve

echo "### errors"
$VDISK info "nbd+unix:///?socket=$TEST_DIR/nothing.sock" 2>&1 | sed "s#$TEST_DIR#\$TEST_DIR#"
$VDISK info "nbd+unix:///" 2>&1
$VDISK create -f raw "nbd://127.0.0.1:$PORT/x" 1M 2>&1 | sed "s/:$PORT/:PORT/"
exit 0
