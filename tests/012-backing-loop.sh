#!/usr/bin/env bash
# needs: qemu-img
# A backing chain that loops back on itself is refused with one clear
# error, whether the loop is two images or an image backed by itself; a
# deep but finite chain opens.
qemu-img create -q -f qcow2 a.qcow2 1M
qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 b.qcow2
qemu-img rebase -u -b b.qcow2 -F qcow2 a.qcow2
$VDISK map b.qcow2; echo "exit $?"
$VDISK io -r -c 'read 0 4k' a.qcow2; echo "exit $?"
qemu-img create -q -f qcow2 self.qcow2 1M
qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2
$VDISK info self.qcow2 >/dev/null; echo "exit $?"
$VDISK info --backing-chain self.qcow2 >/dev/null; echo "exit $?"
# A hard link is the same image under another name.
qemu-img create -q -f qcow2 c.qcow2 1M
qemu-img create -q -f qcow2 -b c.qcow2 -F qcow2 d.qcow2
ln d.qcow2 d-link.qcow2
qemu-img rebase -u -b d-link.qcow2 -F qcow2 c.qcow2
$VDISK map d.qcow2; echo "exit $?"
# 40 layers: deep, but no loop.
qemu-img create -q -f raw l0.img 1M
qemu-io -f raw -c 'write -P 0x5a 0 64k' l0.img >/dev/null
prev=l0.img fmt=raw
for i in $(seq 1 40); do
	qemu-img create -q -f qcow2 -b $prev -F $fmt l$i.qcow2
	prev=l$i.qcow2 fmt=qcow2
done
$VDISK io -r -c 'read -P 0x5a 0 64k' l40.qcow2; echo "exit $?"
$VDISK map --output json l40.qcow2
