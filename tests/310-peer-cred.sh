#!/usr/bin/env bash
# needs: root fuse setpriv
# Only root or the daemon's owner may control units: the state directory
# and socket keep other users out, and the daemon checks SO_PEERCRED even
# when the file modes have been opened up.
. "$SRC_DIR/attach-lib.sh"
$VDISK daemon
bin=$(mktemp -d /tmp/vdisk-peer.XXXXXX)
cp "$VDISK" "$bin/vdisk"
chmod 755 "$bin" "$bin/vdisk"
trap 'rm -rf "$bin"; _cleanup' EXIT
as_nobody() {
	setpriv --reuid=65534 --regid=65534 --clear-groups "$bin/vdisk" "$@" 2>&1 | sed "s|$bin/vdisk|vdisk|g"
	echo "exit ${PIPESTATUS[0]}"
}
echo "== modes"
stat -c '%a %n' "$VDISK_STATE_DIR" "$VDISK_STATE_DIR/daemon.sock" | sed "s|$TEST_DIR|\$TEST_DIR|"
echo "== another user cannot reach the socket"
chmod o+x "$TEST_DIR" "$(dirname "$TEST_DIR")"
as_nobody list
echo "== with the modes opened up, the daemon still refuses the peer"
chmod 755 "$VDISK_STATE_DIR"
chmod 666 "$VDISK_STATE_DIR/daemon.sock"
as_nobody list
as_nobody attach --mem 1M
as_nobody detach -f vd0
echo "== root still controls it"
$VDISK attach --mem 1M | filter
$VDISK list --counters=false | filter
$VDISK detach vd0; echo "exit $?"
chmod 700 "$VDISK_STATE_DIR"
chmod 600 "$VDISK_STATE_DIR/daemon.sock"
