#!/usr/bin/env bash
# The binary runs and reports its version; an unknown command fails cleanly.
$VDISK --version | sed 's/version .*/version X/'
$VDISK no-such-command; echo "exit $?"
