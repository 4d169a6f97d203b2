#!/usr/bin/env bash
# qcow2 images with an external data file (incompatible feature bit 2,
# header extension "DATA", autoclear bit data_file_raw): images qemu-img
# makes read as qemu-img reads them and map as it maps them; writes through
# vdisk keep them valid for qemu-img check and equal to a raw mirror;
# images vdisk creates are accepted by qemu-img and qemu-io; malformed ones
# give clear errors.
# needs: qemu-img qemu-io
pat() { # deterministic writes: offset length pattern
	echo "0 65536 1"; echo "70000 5000 2"; echo "1048576 131072 3"; echo "3000000 200000 4"
	echo "4128768 65536 5"; echo "65536 512 6"; echo "2097152 1 7"
}
qemu-img create -q -f raw base.raw 4M
qemu-io -f raw -c 'write -P 0x11 0 4M' base.raw >/dev/null
qemu-img create -q -f qcow2 -b base.raw -F raw base.qcow2
qemu-io -c 'write -P 0x22 1M 1M' base.qcow2 >/dev/null

for spec in "plain data_file=d1.raw" "raw data_file=d2.raw,data_file_raw=on" \
	"backing data_file=d3.raw -b base.qcow2 -F qcow2" "ext data_file=d4.raw,extended_l2=on"; do
	read -r name o rest <<<"$spec"
	rm -f q.qcow2
	qemu-img create -q -f qcow2 -o $o $rest q.qcow2 4M
	qemu-io -c 'write -P 0x33 64k 64k' -c 'write -P 0x44 0 4k' -c 'write -z 1M 128k' \
		-c 'discard 3M 64k' -c 'write -P 0x55 3100k 8k' q.qcow2 >/dev/null
	qemu-img convert -O raw q.qcow2 q.raw
	$VDISK convert -O raw q.qcow2 v.raw
	cmp -s q.raw v.raw && echo "$name: reads as qemu-img reads it"
	cmp -s <(qemu-img map --output=json q.qcow2) <($VDISK map --output=json q.qcow2) && echo "$name: map JSON agrees"
	cmp -s <(qemu-img map q.qcow2) <($VDISK map q.qcow2) && echo "$name: map agrees"
	diff <(qemu-img info --output=json q.qcow2 | grep -E '"data-file|"actual') \
		<($VDISK info --output=json q.qcow2 | grep -E '"data-file|"actual') >/dev/null && echo "$name: info agrees"
	$VDISK info q.qcow2 | grep 'data file'
	$VDISK check q.qcow2 >/dev/null && echo "$name: vdisk check clean"
	# random writes through vdisk against a raw mirror
	cp q.raw m.raw
	args=()
	while read -r off len p; do args+=(-c "write -P $p $off $len"); done < <(pat)
	args+=(-c 'write -z 2M 192k' -c 'discard 1216k 256k' -c 'write -z -u 64k 64k')
	$VDISK io "${args[@]}" q.qcow2 >/dev/null || echo "$name: vdisk io failed"
	$VDISK io -f raw "${args[@]}" m.raw >/dev/null
	qemu-img check -q q.qcow2 && echo "$name: qemu-img check clean after vdisk writes"
	qemu-img compare -q q.qcow2 m.raw && echo "$name: same content as the raw mirror"
	[ "$name" == raw ] && cmp -s d2.raw m.raw && echo "$name: data file is the raw image"
done

# images vdisk creates
$VDISK create -q -f qcow2 -o data_file=vd.raw v1.qcow2 4M
$VDISK create -q -f qcow2 -o data_file=vr.raw,data_file_raw=on v2.qcow2 4M
$VDISK create -q -f qcow2 -o data_file=vf.raw,preallocation=full v3.qcow2 1M
ls -l vd.raw vr.raw vf.raw | awk '{print $5, $9}'
for i in v1 v2 v3; do
	$VDISK io -c 'write -P 0x66 100k 200k' $i.qcow2 >/dev/null
	qemu-img check -q $i.qcow2 && echo "$i: qemu-img check clean"
	qemu-io -c 'read -P 0x66 100k 200k' -c 'read -P 0 0 100k' $i.qcow2 | grep -v ops
	qemu-img info $i.qcow2 | grep 'data file'
	cmp -s <(qemu-img map --output=json $i.qcow2) <($VDISK map --output=json $i.qcow2) && echo "$i: map JSON agrees"
done
cmp -s <(head -c 300k vr.raw | tail -c 200k) <(head -c 200k /dev/zero | tr '\0' 'f') && echo "v2: raw data file holds the data"
$VDISK create -f qcow2 -o data_file_raw=on x.qcow2 1M
$VDISK create -f qcow2 -o data_file=x.raw,compat=0.10 x.qcow2 1M
$VDISK create -f qcow2 -o data_file=x.raw,data_file_raw=on -b base.qcow2 -F qcow2 x.qcow2
$VDISK snapshot -c s1 v1.qcow2
$VDISK convert -c -O qcow2 -o data_file=c.raw base.raw c.qcow2

# malformed images
cp v1.qcow2 noext.qcow2
off=$(grep -obUa DATA noext.qcow2 | head -1 | cut -d: -f1)
printf 'XXXX' | dd of=noext.qcow2 bs=1 seek=$off conv=notrunc status=none
$VDISK info noext.qcow2
$VDISK io -c 'read 0 4k' noext.qcow2
cp v1.qcow2 nofile.qcow2
mv vd.raw vd.raw.away
$VDISK io -c 'read 0 4k' nofile.qcow2
mv vd.raw.away vd.raw
cp v1.qcow2 badoff.qcow2
l1=$(od -An -tu8 --endian=big -j40 -N8 badoff.qcow2 | tr -d ' ')
l2=$(( $(od -An -tu8 --endian=big -j$l1 -N8 badoff.qcow2 | tr -d ' ') & 0x00fffffffffffe00 ))
# guest cluster 1 (written above) claims host offset 0x30000
printf '\x80\x00\x00\x00\x00\x03\x00\x00' | dd of=badoff.qcow2 bs=1 seek=$((l2 + 8)) conv=notrunc status=none
$VDISK io -c 'read 64k 4k' badoff.qcow2
$VDISK check badoff.qcow2 | head -1
