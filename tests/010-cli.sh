#!/usr/bin/env bash
# Command-line basics: help, version, bad flags, missing command.
# The list of known formats depends on the drivers linked in.
run() { "$@" 2>&1 | sed "s/(known formats: [^)]*)/(known formats: ...)/"; echo "exit ${PIPESTATUS[0]}"; }
$VDISK --version | sed 's/version .*/version X/'
run $VDISK
run $VDISK --bogus
run $VDISK info --bogus x
$VDISK help convert | head -3
$VDISK help io | grep -c 'read \[-P PATTERN\]'
$VDISK --help | grep -E '^  (create|info|check|convert|compare|map|resize|io) ' | awk '{print $1}'
run $VDISK help nosuch
