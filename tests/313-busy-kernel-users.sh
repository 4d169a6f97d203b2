#!/usr/bin/env bash
# needs: root fuse qemu-img mkswap swapon swapoff losetup mknod
# Detach refuses devices whose users hold no descriptor, mount or holder
# link the daemon could find by looking: swap, a loop device stacked on
# the unit, and a process holding it through a node outside /dev.
. "$SRC_DIR/attach-lib.sh"
qemu-img create -f qcow2 disk.qcow2 32M >/dev/null
attach disk.qcow2 2>/dev/null
echo "== swap"
mkswap "$dev" >/dev/null
swapon "$dev" && on_exit "swapoff $dev"
$VDISK detach "$unit" 2>&1 | filter; echo "exit ${PIPESTATUS[0]}"
$VDISK list --output json | jq -r '.[].unit'
swapoff "$dev"
echo "== a loop device on the unit"
stacked=$(losetup -f --show "$dev") && on_exit "losetup -d $stacked"
$VDISK detach "$unit" 2>&1 | sed "s|${stacked#/dev/}|loopM|" | filter; echo "exit ${PIPESTATUS[0]}"
losetup -d "$stacked"
echo "== a process holding it through a node outside /dev"
mknod node b $((16#$(stat -c %t "$dev"))) $((16#$(stat -c %T "$dev")))
sleep 60 <node &
holder=$!
on_exit "kill $holder"
$VDISK detach "$unit" 2>&1 | filter; echo "exit ${PIPESTATUS[0]}"
kill $holder
wait $holder 2>/dev/null
echo "== free again"
$VDISK detach "$unit" && echo "detached"
qemu-img check -q disk.qcow2 && echo "check clean"
