#!/usr/bin/env bash
# Several exports in one server, read-only exports, export listing, and
# the default lifetime: without --persistent the server exits once its
# first client is gone.
# needs: qemu-img qemu-io nbdinfo
. "$SRC_DIR/nbd-common.inc"

qemu-img create -q -f raw a.raw 4M
qemu-img create -q -f raw b.raw 8M
qio -f raw -c 'write -P 0xbb 0 64k' b.raw
PORT=$(pick_port)
start_serve -t -e 4 -p $PORT --export a=a.raw,format=raw --export "b=b.raw,format=raw,readonly,description=the b disk"
echo "== list"
nbdinfo --list --json "nbd://127.0.0.1:$PORT" | jq -c '.exports[] | {"export-name", description, "export-size", is_read_only, can_trim, can_zero, can_multi_conn}'
echo "== write to the read-only export"
qemu-io -f raw -c 'write -P 1 0 4k' "nbd://127.0.0.1:$PORT/b" 2>&1 | sed "s/:$PORT/:PORT/"
qio -f raw -r -c 'read -P 0xbb 0 64k' "nbd://127.0.0.1:$PORT/b"
echo "== unknown export"
qemu-img info "nbd://127.0.0.1:$PORT/zz" 2>&1 | sed "s/:$PORT/:PORT/"
echo "== past the end"
qemu-io -f raw -c 'read 4M 4k' "nbd://127.0.0.1:$PORT/a" 2>&1 | grep -v ' ops; '
stop_serve

echo "== no --persistent: exits after the first client"
start_serve -f raw -p $PORT a.raw
qemu-img info --output json "nbd://127.0.0.1:$PORT" | jq '.["virtual-size"]'
for _ in $(seq 100); do kill -0 $SPID 2>/dev/null || break; sleep 0.05; done
wait $SPID
echo "serve exit $?"
[ -e serve.pid ] && echo "pid file left behind"

echo "== bad invocations"
$VDISK serve; echo "exit $?"
$VDISK serve --export nofile; echo "exit $?"
$VDISK serve -p $PORT --export a=a.raw --export a=b.raw; echo "exit $?"
$VDISK serve -p $PORT --tls-cert x.pem a.raw; echo "exit $?"
exit 0
