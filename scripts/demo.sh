#!/usr/bin/env bash
# A tour of vdisk: create an image, write and verify data, convert it,
# and look at the result. Usage: scripts/demo.sh [path/to/vdisk]
set -euo pipefail
VDISK=$(realpath "${1:-./bin/vdisk}")
scripts=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
export VDISK_STATE_DIR=$dir/state
cleanup() {
	mountpoint -q "$dir/mnt" 2>/dev/null && umount "$dir/mnt"
	if [ -s "$VDISK_STATE_DIR/daemon.pid" ]; then
		pid=$(cat "$VDISK_STATE_DIR/daemon.pid")
		kill "$pid" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	fi
	[ -n "${serve_pid:-}" ] && kill "$serve_pid" 2>/dev/null
	rm -rf "$dir"
}
trap cleanup EXIT
cd "$dir"

step() {
	printf '\n$ vdisk'
	for a in "$@"; do case $a in *' '*) printf " '%s'" "$a" ;; *) printf ' %s' "$a" ;; esac; done
	printf '\n'
	"$VDISK" "$@"
}

step create -f raw disk.img 64M
step io -c 'write -P 0xaa 0 1M' -c 'write -P 0x55 32M 64k' -c 'write -z 1M 1M' disk.img
step io -r -c 'read -P 0xaa 0 1M' -c 'read -P 0x55 32M 64k' -c 'read -P 0 1M 1M' disk.img
# Convert to qcow2 when that driver is built in, else to raw.
target=raw
"$VDISK" create -f qcow2 -o help >/dev/null 2>&1 && target=qcow2
step convert -p -O "$target" disk.img copy.img
step compare disk.img copy.img
step info copy.img
step map copy.img
step check copy.img || [ $? -eq 63 ] # raw has no metadata to check

# Serve the copy over NBD and read it back through vdisk's own NBD client.
"$VDISK" serve -r --socket "$dir/nbd.sock" --pid-file "$dir/serve.pid" copy.img &
serve_pid=$!
for _ in $(seq 50); do [ -S "$dir/nbd.sock" ] && break; sleep 0.1; done
step compare disk.img "nbd+unix:///?socket=$dir/nbd.sock"
wait "$serve_pid" || true
serve_pid=

# The block-device path: needs root, FUSE and loop devices.
if [ "$(id -u)" -eq 0 ] && [ -c /dev/fuse ] && command -v mkfs.ext4 >/dev/null; then
	step create -f qcow2 fs.qcow2 256M
	printf '\n$ vdisk attach -f qcow2 fs.qcow2\n'
	out=$("$VDISK" attach -f qcow2 fs.qcow2)
	echo "$out"
	unit=${out%% *} dev=${out#* }
	printf '\n$ mkfs.ext4 -q %s && mount %s mnt && cp -r scripts mnt/\n' "$dev" "$dev"
	mkfs.ext4 -q "$dev"
	mkdir mnt && mount "$dev" mnt
	cp -r "$scripts" mnt/
	ls mnt
	diff -r "$scripts" mnt/scripts && echo "(the copy reads back identical)"
	step list
	printf '\n$ vdisk detach %s   # refused while mounted\n' "$unit"
	"$VDISK" detach "$unit" || true
	umount mnt
	step detach "$unit"
	step check fs.qcow2
else
	printf '\n(attach skipped: it needs root, /dev/fuse and e2fsprogs)\n'
fi
printf '\nDemo finished: every step succeeded.\n'
