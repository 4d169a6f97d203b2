#!/usr/bin/env bash
# vdisk create: sizes with suffixes, options, -o help and every error path.
# A failed create leaves no file behind.
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
run $VDISK create -b a.img bad.img 1M
run $VDISK create -F raw bad.img 1M
run $VDISK create no/such/dir/bad.img 1M
run $VDISK create --bogus bad.img 1M
run $VDISK create a b c
ls bad.img 2>&1 || true
