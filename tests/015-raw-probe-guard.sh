#!/usr/bin/env bash
# A raw image whose format was probed refuses changes that would make it
# probe as another format next time (a guest planting a qcow2 header that
# names a host file, or a fixed VHD footer in its last sector): writes,
# zero writes and resizes. With -f raw they are allowed.
run() { "$@" 2>&1; echo "exit ${PIPESTATUS[0]}"; }
# fmt FILE: the probed format, or why it cannot be opened.
fmt() { $VDISK info "$1" 2>&1 | sed -n 's/^file format: //p; s/^vdisk: //p'; }
M=$((1024 * 1024))
$VDISK create -q a.img 1M
echo "== a qcow2 magic written byte by byte: the byte completing it is refused"
run $VDISK io -c 'write -P 0x51 0 1' -c 'write -P 0x46 1 1' -c 'write -P 0x49 2 1' -c 'write -P 0xfb 3 1' a.img
od -A d -t x1 -N 4 a.img
echo "format: $(fmt a.img)"
run $VDISK io -f raw -c 'write -P 0xfb 3 1' a.img
echo "format: $(fmt a.img)"

# A fixed VHD footer to plant: the last sector of a fixed VHD.
$VDISK create -q -f vhd -o subformat=fixed,force_size=on f.vhd 1M
tail -c 512 f.vhd >footer
plant() { dd if="$1" of="$2" bs=1 seek="$3" conv=notrunc status=none; }

echo "== a VHD footer written byte by byte into the last sector"
$VDISK create -q b.img 1M
cmds=()
i=0
for b in 63 6f 6e 65 63 74 69 78; do cmds+=(-c "write -P 0x$b $((M - 512 + i)) 1"); i=$((i + 1)); done
cmds+=(-c "write -P 2 $((M - 512 + 63)) 1")
run $VDISK io "${cmds[@]}" b.img
echo "format: $(fmt b.img)"

echo "== a zero write completing a footer (disk type 0x0102 -> 2)"
head -c 62 footer >almost; printf '\001' >>almost; tail -c +64 footer >>almost
$VDISK create -q c.img 1M
plant almost c.img $((M - 512))
echo "format: $(fmt c.img)"
run $VDISK io -c "write -z $((M - 512 + 62)) 1" c.img
run $VDISK io -c "write -z -u $((M - 512 + 62)) 1" c.img
# Discarding is advisory: the bytes simply stay.
run $VDISK io -c "discard $((M - 512 + 62)) 1" c.img
od -A d -t x1 -j $((M - 512 + 60)) -N 4 c.img
echo "format: $(fmt c.img)"
run $VDISK io -f raw -c "write -z $((M - 512 + 62)) 1" c.img
echo "format: $(fmt c.img)"

echo "== a zero write extending a file whose last sector is partial"
# The first 412 bytes of the footer (the rest of a footer is zeros) end
# where the file ends, 100 bytes short of the disk's last sector; zeroing
# those 100 bytes would extend the file and make the footer its end.
truncate -s $((M - 100)) d.img
head -c 412 footer >part
plant part d.img $((M - 512))
echo "format: $(fmt d.img), $(stat -c %s d.img) bytes"
run $VDISK io -c "write -z $((M - 100)) 100" d.img
run $VDISK io -c "write -P 0 $((M - 100)) 100" d.img
echo "format: $(fmt d.img), $(stat -c %s d.img) bytes"

echo "== shrinking so that a footer inside the disk becomes the last sector"
$VDISK create -q e.img 2M
plant footer e.img $((M - 512))
echo "format: $(fmt e.img)"
run $VDISK resize --shrink e.img 1M
echo "format: $(fmt e.img), $(stat -c %s e.img) bytes"
run $VDISK resize --shrink e.img 1536k
run $VDISK resize -f raw --shrink e.img 1M
echo "format: $(fmt e.img), $(stat -c %s e.img) bytes"
