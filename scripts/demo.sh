#!/usr/bin/env bash
# A tour of vdisk: create an image, write and verify data, convert it,
# and look at the result. Usage: scripts/demo.sh [path/to/vdisk]
set -euo pipefail
VDISK=$(realpath "${1:-./bin/vdisk}")
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
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
printf '\nDemo finished: every step succeeded.\n'
