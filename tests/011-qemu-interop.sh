#!/usr/bin/env bash
# Interop with qemu-img on raw images: map, compare, convert and create
# must agree with qemu-img's output byte for byte.
# needs: qemu-img qemu-io
same() { # label, then two commands separated by ::
	local label=$1; shift
	local a=() b=()
	while [ "$1" != "::" ]; do a+=("$1"); shift; done; shift
	b=("$@")
	ao=$("${a[@]}" 2>&1 | sed 's/^qemu-img: //; s/^vdisk: //'); ac=$?
	bo=$("${b[@]}" 2>&1 | sed 's/^qemu-img: //; s/^vdisk: //'); bc=$?
	ac=${PIPESTATUS[0]}
	if [ "$ao" == "$bo" ]; then echo "$label: same output"; else echo "$label: DIFFERENT"; diff <(echo "$ao") <(echo "$bo"); fi
}
status() { "$@" >/dev/null 2>&1; echo $?; }
agree() { # label, args...: run qemu-img and vdisk with the same arguments
	local label=$1; shift
	q=$(qemu-img "$@" 2>&1); qs=$?
	v=$($VDISK "$@" 2>&1); vs=$?
	if [ "$q" == "$v" ] && [ $qs == $vs ]; then echo "$label: agree (exit $vs)"; else
		echo "$label: DISAGREE"; echo "qemu-img (exit $qs):"; echo "$q"; echo "vdisk (exit $vs):"; echo "$v"; fi
}

# A sparse image with several data and hole runs, some unaligned.
truncate -s 32M sparse.img
for spec in "0x11 0 64k" "0x22 1M 4k" "0x33 1052k 8k" "0x44 5M 3M" "0x55 20M 512" "0x66 31M 1M"; do
	qemu-io -f raw -c "write -P $spec" sparse.img >/dev/null
done
qemu-io -f raw -c "write -z 6M 64k" sparse.img >/dev/null
fallocate -p -o $((7*1024*1024)) -l 65536 sparse.img

echo "== map"
agree "map json" map --output json sparse.img
agree "map human" map sparse.img
agree "map json -f raw" map -f raw --output=json sparse.img
: >empty.img
for args in "-s 32M" "-s 40M -l 4k" "-l 0" "-s 1M -l 0"; do
	agree "map json $args" map -f raw --output json $args sparse.img
	agree "map $args" map -f raw $args sparse.img
done
agree "map json of an empty file" map -f raw --output json empty.img
agree "map of an empty file" map -f raw empty.img

echo "== create"
agree "create" create -f raw new.img 10M
agree "create odd size" create -f raw odd.img 5000
agree "create full" create -f raw -o preallocation=full full.img 1M
agree "create falloc" create -f raw -o preallocation=falloc fa.img 1M
agree "create hints" create -f raw -o nocow=on,preallocation=off,extent_size_hint=0 hints.img 1M
echo "exit statuses for a hint over 4G: qemu-img $(status qemu-img create -o extent_size_hint=5G big.img 1M), vdisk $(status $VDISK create -o extent_size_hint=5G big.img 1M)"
qemu-img create -f raw q-new.img 3M >/dev/null; $VDISK create -f raw v-new.img 3M >/dev/null
same "map of created images" qemu-img map --output json q-new.img :: $VDISK map --output json q-new.img
same "map of vdisk-created image" qemu-img map --output json q-new.img :: qemu-img map --output json v-new.img
cmp q-new.img v-new.img && echo "created images identical"
agree "info" info new.img
agree "info json" info --output json new.img

echo "== convert"
qemu-img convert -f raw -O raw sparse.img q-conv.img
$VDISK convert -f raw -O raw sparse.img v-conv.img
cmp q-conv.img v-conv.img && echo "converted images identical"
same "converted maps" qemu-img map --output json q-conv.img :: qemu-img map --output json v-conv.img
[ $(($(stat -c '%b' v-conv.img) * 512)) -lt $((5 * 1024 * 1024)) ] && echo "converted image stays sparse"
qemu-img convert -S 0 -O raw sparse.img q-full.img
$VDISK convert -S 0 -O raw sparse.img v-full.img
cmp q-full.img v-full.img && echo "-S 0 images identical"
same "-S 0 maps" qemu-img map --output json q-full.img :: qemu-img map --output json v-full.img
qemu-img convert -S 64k -O raw sparse.img q-64k.img
$VDISK convert -S 64k -O raw sparse.img v-64k.img
cmp q-64k.img v-64k.img && echo "-S 64k images identical"
same "-S 64k maps" qemu-img map --output json q-64k.img :: qemu-img map --output json v-64k.img

echo "== compare"
cp sparse.img same.img
truncate -s 32M other.img; cp sparse.img other.img; qemu-io -f raw -c 'write -P 1 1100k 1' other.img >/dev/null
cp sparse.img bigger.img; truncate -s 40M bigger.img
cp bigger.img bigdiff.img; qemu-io -f raw -c 'write -P 1 39M 100' bigdiff.img >/dev/null
cp sparse.img holes.img; qemu-io -f raw -c 'write -P 9 10M 1' holes.img >/dev/null
agree "same" compare sparse.img same.img
agree "different" compare sparse.img other.img
agree "different reversed" compare other.img sparse.img
agree "data over a hole" compare sparse.img holes.img
agree "data over a hole reversed" compare holes.img sparse.img
agree "larger, zero tail" compare sparse.img bigger.img
agree "larger, zero tail reversed" compare bigger.img sparse.img
agree "larger, data in tail" compare sparse.img bigdiff.img
agree "strict, sizes differ" compare -s sparse.img bigger.img
agree "strict, same" compare -s sparse.img same.img
agree "formats given" compare -f raw -F raw sparse.img other.img
echo "exit statuses for a missing file: qemu-img $(status qemu-img compare sparse.img nope.img), vdisk $(status $VDISK compare sparse.img nope.img)"

echo "== resize"
cp sparse.img r1.img; cp sparse.img r2.img
same "grow" qemu-img resize -f raw r1.img +1M :: $VDISK resize -f raw r2.img +1M
cmp r1.img r2.img && echo "grown images identical"
same "shrink without --shrink" qemu-img resize -f raw r1.img 1M :: $VDISK resize -f raw r2.img 1M
same "shrink" qemu-img resize -f raw --shrink r1.img -- -1M :: $VDISK resize -f raw --shrink r2.img -1M
cmp r1.img r2.img && echo "shrunk images identical"

echo "== io vs qemu-io (timing lines dropped)"
qemu-img create -f raw io1.img 1M >/dev/null; cp io1.img io2.img
cmds=(-c 'write -P 0xab 0 4k' -c 'read -P 0xab 0 4k' -c 'read -P 0xac 0 4k' -c 'read -v 4090 40'
	-c 'write -z 64k 64k' -c 'write 100k 1000' -c 'discard 512k 64k' -c 'flush' -c 'map' -c 'info')
qemu-io -f raw "${cmds[@]}" io1.img > qio.out; qs=$?
q=$(grep -v ' ops; ' qio.out)
v=$($VDISK io -f raw "${cmds[@]}" io2.img); vs=$?
[ "$q" == "$v" ] && [ $qs == $vs ] && echo "io output agrees (exit $vs)" || { echo "io DISAGREES: $qs $vs"; diff <(echo "$q") <(echo "$v"); }
cmp io1.img io2.img && echo "io results identical"

echo "== raw files whose size is not a multiple of 512"
printf 'hello' >u5.img
head -c 10000 sparse.img | tr '\0' 'x' >u10k.img
truncate -s 10000 h10k.img
for f in u5.img u10k.img h10k.img; do
	agree "info $f" info --output json $f
	agree "map json $f" map --output json $f
	agree "map $f" map $f
	qemu-img convert -O raw $f q-$f; $VDISK convert -O raw $f v-$f
	cmp q-$f v-$f && echo "$f: converted images identical ($(stat -c %s v-$f) bytes)"
	agree "compare $f" compare $f v-$f
done
for c in "read -P 0 5 507" "write -P 0x41 500 12" "write -P 0x41 100 3" "write -z 200 100" "discard 0 512"; do
	cp u5.img q.img; cp u5.img v.img
	q=$(qemu-io -f raw -c "$c" q.img | grep -v ' ops; '); v=$($VDISK io -f raw -c "$c" v.img)
	[ "$q" == "$v" ] && cmp q.img v.img && echo "$c: same output, same file ($(stat -c %s v.img) bytes)"
done
