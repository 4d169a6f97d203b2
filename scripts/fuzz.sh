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
		# Go 1.26's fuzz coordinator can fail a run with a bare "context
		# deadline exceeded" when -fuzztime expires while a worker is busy
		# (golang/go#75804, fixed in Go 1.27). Such a run wrote no failing
		# input and found nothing, so it is run again, at most twice; any
		# other failure, or a failing input, fails at once.
		for try in 1 2 3; do
			if go test "$pkg" -run '^$' -fuzz "^${target}\$" -fuzztime "$t" -fuzzminimizetime "$m" >/tmp/vdisk-fuzz.log 2>&1; then
				break
			fi
			if [ "$try" -lt 3 ] && grep -q '^    context deadline exceeded$' /tmp/vdisk-fuzz.log &&
				! grep -q -e 'Failing input written' -e 'panic:' -e '_test.go:[0-9]' /tmp/vdisk-fuzz.log; then
				echo "fuzz: $target hit the Go fuzzing deadline race (golang/go#75804); running it again"
				continue
			fi
			cat /tmp/vdisk-fuzz.log
			echo "fuzz: $passed passed, 1 failed"
			exit 1
		done
		passed=$((passed + 1))
	done
done
echo "fuzz: $passed passed, 0 failed"
