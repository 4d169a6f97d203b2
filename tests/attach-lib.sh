# Helpers for the attach tests (3NN-*.sh), sourced by them. Every test uses
# its own daemon under $TEST_DIR/state and cleans up only what it made:
# its mounts, the loop devices its units got, and its daemon, by PID.
export VDISK_STATE_DIR=$TEST_DIR/state
_mounts=()
_loops=()
_on_exit=()

# on_exit CMD: runs CMD (eval'd) at exit, before the mounts and units are
# taken down, latest first: for swap areas, loop devices stacked on a unit.
on_exit() { _on_exit+=("$1"); }

# attach ARGS...: runs vdisk attach, prints "vdN /dev/loopN" filtered to a
# stable form, and records the device for cleanup. The raw output is left
# in $unit and $dev.
attach() {
	local out
	out=$($VDISK attach "$@") || return $?
	unit=${out%% *}
	dev=${out#* }
	_loops+=("$dev")
	echo "$unit /dev/loopN"
}

# mnt DEV DIR [OPTS]: mounts and records the mount point for cleanup.
mnt() {
	mkdir -p "$2"
	mount ${3:+-o $3} "$1" "$2" && _mounts+=("$2")
}

umnt() {
	umount "$1"
}

daemon_pid() { cat "$VDISK_STATE_DIR/daemon.pid" 2>/dev/null; }

# stop_daemon: SIGTERM by PID and wait for the process to go.
stop_daemon() {
	local pid
	pid=$(daemon_pid)
	[ -n "$pid" ] || return 0
	kill "$pid" 2>/dev/null
	for _ in $(seq 200); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.05
	done
	kill -9 "$pid" 2>/dev/null
}

# wait_gone PID: waits for a process to exit.
wait_gone() {
	for _ in $(seq 200); do
		kill -0 "$1" 2>/dev/null || return 0
		sleep 0.05
	done
	return 1
}

# loop_bound DEV: whether the kernel still binds DEV to one of our files.
loop_bound() {
	local n=${1#/dev/loop}
	grep -qs "^$VDISK_STATE_DIR/" /sys/block/loop$n/loop/backing_file 2>/dev/null
}

_cleanup() {
	local m d i
	for ((i = ${#_on_exit[@]} - 1; i >= 0; i--)); do
		eval "${_on_exit[$i]}" >/dev/null 2>&1
	done
	for ((i = ${#_mounts[@]} - 1; i >= 0; i--)); do
		m=${_mounts[$i]}
		mountpoint -q "$m" && { umount "$m" 2>/dev/null || umount -l "$m"; }
	done
	stop_daemon
	# Loop devices our units got and that are still bound to our FUSE files.
	for d in "${_loops[@]}"; do
		loop_bound "$d" && losetup -d "$d" 2>/dev/null
	done
	grep -o " $VDISK_STATE_DIR/fuse/[^ ]*" /proc/mounts 2>/dev/null | while read -r m; do umount -l "$m"; done
	return 0
}
trap _cleanup EXIT

# filter: stable output (device numbers vary).
filter() { sed -e 's|/dev/loop[0-9]*|/dev/loopN|g' -e 's|loop[0-9][0-9]*|loopN|g' -e 's|process [0-9]* |process PID |g'; }

# tree SRC: a small real directory tree from Go's sources.
copy_tree() {
	local dst=$1
	mkdir -p "$dst"
	for p in bufio sort strings container unicode/utf8 encoding/binary; do
		mkdir -p "$dst/$(dirname $p)"
		cp -r "$GOROOT_SRC/$p" "$dst/$(dirname $p)/"
	done
}

# stat_matches UNIT FILE: vdisk stat of the unit agrees with stat(1) of
# the file on every field, times to the nanosecond; prints "stat matches"
# or both views.
stat_matches() {
	$VDISK stat --output json "$1" | jq -r 'def ns: "\(.sec).\(.nsec | tostring | ("000000000" + .)[-9:])";
		"\(.dev) \(.ino) \(.mode) \(.nlink) \(.uid) \(.gid) \(.size) \(.blocks) \(.atime | ns) \(.mtime | ns) \(.ctime | ns)"' >stat.vdisk
	local d i f rest
	read -r d i f rest < <(stat -c '%d %i %f %h %u %g %s %b %.9X %.9Y %.9Z' "$2")
	echo "$d $i $((16#$f)) $rest" >stat.1
	cmp -s stat.vdisk stat.1 && echo "stat matches" || { echo "stat differs:"; cat stat.vdisk stat.1; }
}

# our_loops: how many loop devices are bound to files under our state
# directory.
our_loops() { cat /sys/block/loop*/loop/backing_file 2>/dev/null | grep -c "^$VDISK_STATE_DIR/"; }

# run_fio DEV: several jobs write and verify (crc32c) at once; prints
# fio's exit status, the jobs' error numbers and how many verified all
# they wrote.
run_fio() {
	fio --name=verify --filename="$1" --ioengine=libaio --direct=1 --iodepth=16 \
		--rw=randwrite --bsrange=4k-256k --numjobs=4 --size=8M --offset_increment=8M \
		--verify=crc32c --verify_fatal=1 --do_verify=1 --randseed=1 \
		--output-format=terse --terse-version=3 >fio.out 2>fio.err
	local rc=$?
	# terse field 5 is the job's error number.
	grep -v '^fio:' fio.out >fio.terse
	echo "fio exit $rc, job errors: $(cut -d';' -f5 fio.terse | sort -u | tr '\n' ' ')"
	# Field 6 is the KiB read back, the verify pass: every job read all it wrote.
	awk -F';' '$6 == 8192 {n++} END {print n " jobs verified 8 MiB each"}' fio.terse
	[ $rc -eq 0 ] || cat fio.err
}

# detach_while_writing ATTACH-ARGS...: attaches, makes and mounts a file
# system, and detaches by force while a writer rewrites a few copies of a
# tree and syncs; prints what happened. The image is then the caller's to
# check.
detach_while_writing() {
	attach "$@"
	mkfs.ext4 -q "$dev"
	mnt "$dev" mnt
	(
		i=0
		while [ $i -lt 5000 ] && cp -rT "$GOROOT_SRC/strings" mnt/w$((i % 8)) 2>/dev/null && sync -f mnt/w0 2>/dev/null; do
			i=$((i + 1))
		done
		echo $i >progress
	) &
	local writer=$!
	sleep 0.5
	$VDISK detach -f "$unit" && echo "forced detach ok"
	wait_gone "$writer" || kill "$writer"
	wait "$writer" 2>/dev/null
	[ "$(cat progress)" -lt 5000 ] && echo "the writer was stopped by the detach"
	umount mnt 2>/dev/null || umount -l mnt
	for _ in $(seq 200); do loop_bound "$dev" || break; sleep 0.05; done
	loop_bound "$dev" && echo "loop device still bound" || echo "loop device released"
}
