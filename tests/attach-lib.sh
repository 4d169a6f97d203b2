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
