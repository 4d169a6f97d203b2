#!/usr/bin/env bash
# needs: root fuse mkfs.ext4
# The README's first command, `make demo`: scripts/demo.sh runs every
# step with this vdisk and must succeed with this output. What varies
# from run to run (scratch directory, loop device, allocation by the file
# system, the I/O counters of `list`) is masked.
TMPDIR=$TEST_DIR bash "$SRC_DIR/../scripts/demo.sh" "$VDISK" 2>&1 | sed -E '
	s#'"$TEST_DIR"'/tmp\.[A-Za-z0-9]+#$DEMO_DIR#g
	s#/dev/loop[0-9]+#/dev/loopN#g
	s#\<loop[0-9]+ is mounted#loopN is mounted#
	s#^disk size: .*#disk size: (masked)#
	/^(UNIT|vd0) / s/ +/ /g
	s#^(UNIT DEVICE FORMAT RO SECTOR SIZE FILE) .*#\1 (counters masked)#
	s#^(vd0 /dev/loopN qcow2 no 512 256 MiB fs\.qcow2) .*#\1 (counters masked)#
	/^\$ vdisk check fs\.qcow2/,/^Image end offset/ {
		s#^[0-9]+/4096 = .*#N/4096 = (allocation masked)#
		s#^Image end offset: [0-9]+#Image end offset: (masked)#
	}
	s/ +$//'
echo "demo exit status ${PIPESTATUS[0]}"
