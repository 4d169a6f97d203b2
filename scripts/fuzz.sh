#!/usr/bin/env bash
# Runs every native fuzz target briefly (FUZZTIME each, default 10s). The
# seed corpora under testdata/fuzz also run as ordinary tests in `go test`.
set -euo pipefail
t=${FUZZTIME:-10s}
# Minimizing each new input costs whole seconds for the larger seed images
# (an 82 KB qcow2), which on a cold cache eats a short run and ends it with
# "context deadline exceeded"; CI's short runs minimize once (1x).
# `make fuzz` sets FUZZMINIMIZE for longer sessions.
m=${FUZZMINIMIZE:-1x}
passed=0
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
		echo "fuzz $pkg $target ($t)"
		go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$t" -fuzzminimizetime "$m" >/tmp/vdisk-fuzz.log 2>&1 || {
			cat /tmp/vdisk-fuzz.log
			echo "fuzz: $passed passed, 1 failed"
			exit 1
		}
		passed=$((passed + 1))
	done
done
echo "fuzz: $passed passed, 0 failed"
