#!/usr/bin/env bash
# vdisk serve with a raw image, over TCP and over a Unix socket, checked
# with clients nobody here wrote: qemu-img, qemu-io, nbdinfo, nbdcopy.
# needs: qemu-img qemu-io nbdinfo nbdcopy
. "$SRC_DIR/nbd-common.inc"

qemu-img create -q -f raw a.raw 16M
qio -f raw -c 'write -P 0xaa 1M 1M' -c 'write -P 0xbb 8M 64k' -c 'write -P 0x11 15M 4k' a.raw
qemu-img map --output json -f raw a.raw > file.map

run_clients() {
	local uri=$1
	echo "== info"
	qemu-img info "$uri" | sed -e "s/:$PORT/:PORT/" -e "s#$TEST_DIR#\$TEST_DIR#"
	echo "== map"
	qemu-img map --output json "$uri" > nbd.map
	cmp file.map nbd.map && echo "qemu-img map over NBD equals the map of the file"
	nbdinfo --map "$uri"
	echo "== compare and convert"
	qemu-img compare -f raw a.raw "$uri"
	qemu-img convert -O raw "$uri" conv.raw && qemu-img compare -f raw -F raw a.raw conv.raw
	echo "== nbdcopy from the export, 4 connections"
	rm -f copy.raw
	nbdcopy -C 4 "$uri" copy.raw && cmp a.raw copy.raw && echo "copy equal"
	echo "== qemu-io"
	qio -f raw -c 'write -P 0xcc 2M 64k' -c 'read -P 0xcc 2M 64k' -c 'read -P 0xaa 1M 1M' -c 'write -z 1M 4k' -c 'read -P 0 1M 4k' "$uri"
	qio -f raw -c 'read -P 0xbb 8M 64k' -c 'write -P 0x22 0 512' -c 'flush' "$uri"
	echo "== nbdcopy to the export"
	qemu-img create -q -f raw src.raw 16M
	qio -f raw -c 'write -P 0x5a 3M 2M' src.raw
	nbdcopy -C 4 src.raw "$uri" && cmp src.raw a.raw && echo "export now equals src.raw"
	cp src.raw a.raw.expect
}

PORT=$(pick_port)
start_serve -f raw --persistent --shared 8 -p $PORT --name disk a.raw
echo "### TCP"
run_clients "nbd://127.0.0.1:$PORT/disk"
stop_serve
cmp a.raw a.raw.expect && echo "file holds what was written"

# Reset for the Unix socket round.
qemu-img create -q -f raw a.raw 16M
qio -f raw -c 'write -P 0xaa 1M 1M' -c 'write -P 0xbb 8M 64k' -c 'write -P 0x11 15M 4k' a.raw
start_serve -f raw -t -e 8 -k "$TEST_DIR/sock" --name disk a.raw
echo "### Unix socket"
run_clients "nbd+unix:///disk?socket=$TEST_DIR/sock"
stop_serve
[ -e "$TEST_DIR/sock" ] && echo "socket left behind"
exit 0
