#!/usr/bin/env bash
# vdisk create: sizes with suffixes, options, -o help and every error path.
# A failed create leaves no file behind, and a refused one leaves an
# existing file as it was (qemu-img empties or deletes it for some of these).
# The list of known formats depends on the drivers linked in.
run() { "$@" 2>&1 | sed "s/(known formats: [^)]*)/(known formats: ...)/"; echo "exit ${PIPESTATUS[0]}"; }
run $VDISK create a.img 10M
run $VDISK create -f raw b.img 1.5k
stat -c '%n %s' a.img b.img
run $VDISK create -f raw -o preallocation=full c.img 64k
stat -c '%n %s %b' c.img
run $VDISK create -f raw -o preallocation=falloc,size=8k d.img
stat -c '%n %s' d.img
run $VDISK create -f raw e.img 100
stat -c '%n %s' e.img
run $VDISK create -q f.img 1G
stat -c '%n %s' f.img
# File-system hints, as qemu-img takes them (ignored where unsupported).
run $VDISK create -o nocow=on,preallocation=off,extent_size_hint=0 g.img 1M
stat -c '%n %s' g.img
echo "== -o help"
run $VDISK create -o help
run $VDISK create -f raw -o '?' x.img
echo "== errors"
run $VDISK create nosize.img
run $VDISK create bad.img 10X
run $VDISK create bad.img -- -5M
run $VDISK create bad.img 1.3
run $VDISK create -f nosuch bad.img 1M
run $VDISK create -o nosuch=1 bad.img 1M
run $VDISK create -o preallocation=bad bad.img 1M
run $VDISK create -o preallocation bad.img 1M
run $VDISK create -o extent_size_hint=4G bad.img 1M
run $VDISK create -o nocow=maybe bad.img 1M
run $VDISK create -b a.img bad.img 1M
run $VDISK create -F raw bad.img 1M
run $VDISK create no/such/dir/bad.img 1M
run $VDISK create --bogus bad.img 1M
run $VDISK create a b c
ls bad.img 2>&1 || true
echo "== a refused create leaves an existing file unchanged"
printf 'precious data\n' >keep.img
sum=$(cksum <keep.img)
kept() { [ "$(cksum <keep.img)" = "$sum" ] && echo "keep.img unchanged" || echo "keep.img CHANGED"; }
for args in "-o preallocation=bad" "-f qcow2 -o cluster_size=3000" "-f qcow2 -o refcount_bits=3" \
	"-f qcow2 -o compat=0.10,extended_l2=on" "-f qcow2 -o preallocation=bad" "-f qcow2 -o data_file_raw=on" \
	"-f qcow2 -b missing.qcow2 -F qcow2" "-f vhd -o subformat=bogus" "-f vhd -o block_size=3" \
	"-f qcow2 -o cluster_size=512 keep.img 1P" "-f qcow2 keep.img 7E" "-f vhd keep.img 7E"; do
	case $args in *keep.img*) run $VDISK create $args ;; *) run $VDISK create $args keep.img 1M ;; esac
	kept
done
# A size the file system (here the file size limit) cannot hold fails
# before the old content is dropped.
(ulimit -f 1024; run $VDISK create keep.img 2M)
kept
(ulimit -f 1024; run $VDISK create -f vhd -o subformat=fixed keep.img 2M)
kept
(ulimit -f 1024; run $VDISK create new.img 2M)
ls new.img 2>&1 || true
