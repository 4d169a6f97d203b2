#!/usr/bin/env bash
# vdisk check agrees with qemu-img check on damaged images: the same exit
# status and the same counts (corruptions, leaks, check errors, image end
# offset, allocated and fragmented clusters) from --output json; and after
# -r leaks and -r all (each on its own copy for each tool), the same exit
# status, the same counts left and the same qemu-img check verdict on the
# result. The end offset after a repair is not compared: where the
# refcounts are rebuilt, each tool puts the new structures elsewhere.
# Every line must end in "same as qemu-img".
# needs: qemu-img qemu-io

# Layout of base images (64 KiB clusters): header, refcount table
# 0x10000, refcount block 0x20000, L1 0x30000, L2 0x40000, data 0x50000
# (guest 0) and 0x60000 (guest 1M).
base() {
	qemu-img create -q -f qcow2 "$@" 8M
	qemu-io -c 'write -P 1 0 64k' -c 'write -P 2 1M 64k' "${@: -1}" >/dev/null
}
poke() { printf "$2" | dd of="$1" bs=1 seek=$(($3)) conv=notrunc status=none; }
# damaged FILE BYTES OFFSET: a base image with BYTES written at OFFSET.
damaged() { base "$1" && poke "$@"; }

damaged beyond-eof-refcount.qcow2 '\x00\x01' 0x20000+18 # cluster 9, past the end of the file
damaged refcount-zero.qcow2 '\x00\x00' 0x20000+10 # data cluster 5
damaged refcount-two.qcow2 '\x00\x02' 0x20000+10
damaged l1-reserved.qcow2 '\x80\x00\x00\x00\x00\x04\x00\x01' 0x30000
damaged l2-misaligned.qcow2 '\x80\x00\x00\x00\x00\x04\x02\x00' 0x30000
damaged l2-past-eof.qcow2 '\x80\x00\x00\x00\x00\x10\x00\x00' 0x30000
damaged l2-far-past-eof.qcow2 '\x80\x00\x00\x00\x10\x00\x00\x00' 0x30000
damaged l2e-reserved.qcow2 '\x80\x00\x00\x00\x00\x05\x00\x02' 0x40000
damaged data-misaligned.qcow2 '\x80\x00\x00\x00\x00\x05\x02\x00' 0x40000
damaged prealloc-misaligned.qcow2 '\x80\x00\x00\x00\x00\x05\x02\x01' 0x40000
damaged data-past-eof.qcow2 '\x80\x00\x00\x00\x00\x90\x00\x00' 0x40000
damaged data-shared.qcow2 '\x80\x00\x00\x00\x00\x05\x00\x00' 0x40000+16*8
damaged refblock-past-eof.qcow2 '\x00\x00\x00\x00\x00\x90\x00\x00' 0x10000+8
damaged refblock-misaligned.qcow2 '\x00\x00\x00\x00\x00\x05\x02\x00' 0x10000+8
damaged refblock-on-l2.qcow2 '\x00\x00\x00\x00\x00\x04\x00\x00' 0x10000
base compressed-past-eof.qcow2
qemu-io -c 'write -c -P 3 2M 64k' compressed-past-eof.qcow2 >/dev/null
poke compressed-past-eof.qcow2 '\x40\x00\x00\x00\x09\x00\x00\x00' 0x40000+32*8
base -o compat=0.10 v2-data-misaligned.qcow2
poke v2-data-misaligned.qcow2 '\x80\x00\x00\x00\x00\x05\x02\x00' 0x40000
base snapshot-refcount-zero.qcow2
qemu-img snapshot -c s snapshot-refcount-zero.qcow2
poke snapshot-refcount-zero.qcow2 '\x00\x00' 0x20000+10

# counts FILE: the compared fields of a --output json check, one line.
counts() {
	grep -E '"(corruptions|leaks|check-errors|corruptions-fixed|leaks-fixed|image-end-offset|allocated-clusters|fragmented-clusters|compressed-clusters)"' "$1" |
		grep -v "${2:-^$}" | tr -d ' ,\n'
}

for img in *.qcow2; do
	for r in none leaks all; do
		cp "$img" q.img
		cp "$img" v.img
		opt=()
		[ $r != none ] && opt=(-r $r)
		qemu-img check -f qcow2 "${opt[@]}" --output json q.img >q.json 2>/dev/null
		qs=$?
		$VDISK check -f qcow2 "${opt[@]}" --output json v.img >v.json 2>/dev/null
		vs=$?
		skip='^$'
		[ $r != none ] && skip=image-end-offset
		# qemu-img grows the file to hold the refcount block the table
		# names past its end, then rebuilds anyway, counting both as
		# fixes; vdisk only rebuilds.
		[ $img = refblock-past-eof.qcow2 ] && [ $r = all ] && skip='image-end-offset\|corruptions-fixed'
		qc=$(counts q.json $skip) vc=$(counts v.json $skip)
		# qemu-img -r leaks stops without JSON where only a rebuild helps.
		[ $r = leaks ] && [ $qs = 1 ] && [ -z "$qc" ] && vc=
		qa=$(qemu-img check q.img >/dev/null 2>&1; echo $?)
		va=$(qemu-img check v.img >/dev/null 2>&1; echo $?)
		if [ "$qs $qc $qa" = "$vs $vc $va" ]; then
			echo "$img -r $r: exit $vs, $vc, then $va: same as qemu-img"
		else
			echo "$img -r $r: DIFFERENT: qemu-img exit $qs $qc then $qa; vdisk exit $vs $vc then $va"
		fi
	done
done
