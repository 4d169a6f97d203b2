#!/usr/bin/env bash
# vdisk serve flags the other tests leave out: --bind to an address other
# than the default, -x/-D (name and description of FILE), SIGINT; qcow2
# and vhd exports over TCP (the data extents qemu-img map finds over the
# export are the file's); vdisk check on an nbd:// export of a qcow2 file;
# info says the disk size of an export is unavailable, as qemu-img does;
# qemu-io on a qcow2 export over TCP through a --cache-size read cache;
# --socket replaces a stale socket file (as qemu-nbd does) but neither a
# live socket nor a file of another kind; of two servers started at once
# on one socket, exactly one serves.
# needs: qemu-img qemu-io nbdinfo jq
. "$SRC_DIR/nbd-common.inc"

qemu-img create -q -f qcow2 a.qcow2 8M
qio -c 'write -P 0xaa 1M 1M' -c 'write -z 4M 64k' -c 'write -P 0xbb 6M 4k' a.qcow2 >/dev/null
qemu-img create -q -f vpc -o subformat=dynamic d.vhd 8M
qio -f vpc -c 'write -P 0xcc 2M 1M' d.vhd >/dev/null
qemu-img map --output json -f qcow2 a.qcow2 | jq -c '.[] | select(.data) | [.start, .length]' >qcow2.map
qemu-img map --output json -f vpc d.vhd | jq -c '.[] | select(.data) | [.start, .length]' >vhd.map
PORT=$(pick_port)

echo "== --bind 127.0.0.2, -x, -D"
start_serve -f qcow2 -t -e 2 -b 127.0.0.2 -p $PORT -x disk -D "a qcow2 disk" a.qcow2
nbdinfo --list --json "nbd://127.0.0.2:$PORT" | jq -c '.exports[] | {"export-name", description, "export-size"}'
nbdinfo "nbd://127.0.0.1:$PORT/disk" >/dev/null 2>&1 || echo "not listening on 127.0.0.1"
qemu-img map --output json "nbd://127.0.0.2:$PORT/disk" | jq -c '.[] | select(.data) | [.start, .length]' >nbd.map
cmp qcow2.map nbd.map && echo "qcow2 over TCP: the data extents qemu-img map finds equal the file's"
qemu-img compare -U -f qcow2 a.qcow2 "nbd://127.0.0.2:$PORT/disk"
echo "== SIGINT"
kill -INT $SPID
wait $SPID
echo "serve exit $?"

echo "== vhd over TCP"
start_serve -f vpc -t -p $PORT d.vhd
qemu-img map --output json "nbd://127.0.0.1:$PORT" | jq -c '.[] | select(.data) | [.start, .length]' >nbd.map
cmp vhd.map nbd.map && echo "vhd over TCP: the data extents qemu-img map finds equal the file's"
qemu-img compare -U -f vpc d.vhd "nbd://127.0.0.1:$PORT"
qio -f raw -c 'write -P 0x11 0 64k' -c 'read -P 0x11 0 64k' "nbd://127.0.0.1:$PORT"
stop_serve
qio -f vpc -r -c 'read -P 0x11 0 64k' -c 'read -P 0xcc 2M 1M' d.vhd

echo "== vdisk check over nbd://, the export carrying the qcow2 file's bytes"
start_serve -f raw -t -p $PORT a.qcow2
$VDISK check -f qcow2 "nbd://127.0.0.1:$PORT"; echo "exit $?"
$VDISK check --output json -f qcow2 "nbd://127.0.0.1:$PORT" | jq -c '{format, "check-errors", "allocated-clusters"}'
echo "== an export cannot tell its disk size: unavailable, as qemu-img says"
$VDISK info -f qcow2 "nbd://127.0.0.1:$PORT" | grep 'disk size'
qemu-img info -f raw "nbd://127.0.0.1:$PORT" | grep 'disk size'
$VDISK info --output json -f qcow2 "nbd://127.0.0.1:$PORT" | jq -c 'has("actual-size")'
stop_serve

echo "== qemu-io on a qcow2 export over TCP, with --cache-size"
start_serve -f qcow2 -t -p $PORT --cache-size 2M a.qcow2
# The first read fills the cache; the write must not leave it stale.
qio -f raw -c 'read -P 0xaa 1M 1M' -c 'write -P 0x5a 1536k 64k' -c 'read -P 0x5a 1536k 64k' \
	-c 'read -P 0xaa 1M 512k' -c 'read -P 0xbb 6M 4k' -c 'read -P 0 4M 64k' "nbd://127.0.0.1:$PORT"
stop_serve
qemu-img check -q a.qcow2 && echo "a.qcow2: check clean"
qio -f qcow2 -r -c 'read -P 0x5a 1536k 64k' -c 'read -P 0xaa 1600k 448k' a.qcow2
$VDISK serve --cache-size 1x a.qcow2 2>&1; echo "exit $?"

echo "== a stale socket file is replaced; a live socket or another file is left alone"
qemu-img create -q -f raw r.raw 1M
qemu-img create -q -f raw r2.raw 2M
start_serve -f raw -t -k "$TEST_DIR/s.sock" r.raw
kill -KILL $SPID; wait $SPID 2>/dev/null
[ -S s.sock ] && echo "a killed server left its socket behind"
start_serve -f raw -t -k "$TEST_DIR/s.sock" r.raw
nbdinfo --size "nbd+unix:///?socket=$TEST_DIR/s.sock"
$VDISK serve -f raw -k "$TEST_DIR/s.sock" r2.raw 2>&1 | sed "s#$TEST_DIR#\$TEST_DIR#"; echo "exit ${PIPESTATUS[0]}"
nbdinfo --size "nbd+unix:///?socket=$TEST_DIR/s.sock"
stop_serve
echo "not a socket" > plain
$VDISK serve -f raw -k "$TEST_DIR/plain" r2.raw 2>&1 | sed "s#$TEST_DIR#\$TEST_DIR#"; echo "exit ${PIPESTATUS[0]}"
cat plain

echo "== two servers started at once on a stale socket: one serves, the other refuses"
start_serve -f raw -t -k "$TEST_DIR/s.sock" r.raw
kill -KILL $SPID; wait $SPID 2>/dev/null
$VDISK serve -r -f raw -t -k "$TEST_DIR/s.sock" r.raw 2>e1 &
P1=$!
$VDISK serve -r -f raw -t -k "$TEST_DIR/s.sock" r.raw 2>e2 &
P2=$!
for _ in $(seq 200); do
	kill -0 $P1 2>/dev/null && kill -0 $P2 2>/dev/null || break
	sleep 0.05
done
running=0
for p in $P1 $P2; do kill -0 $p 2>/dev/null && running=$((running + 1)); done
echo "servers running: $running"
sed "s#$TEST_DIR#\$TEST_DIR#" e1 e2
nbdinfo --size "nbd+unix:///?socket=$TEST_DIR/s.sock"
kill $P1 $P2 2>/dev/null; wait $P1 $P2 2>/dev/null
if [ -e s.sock ] || [ -e s.sock.lock ]; then echo "socket or lock file left behind"; fi
