# The two commands of the README: `make demo` and `make test`.
GO ?= go
BIN := bin/vdisk

.PHONY: build demo test deps lint bench fuzz

build:
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN) ./cmd/vdisk

demo: build
	./scripts/demo.sh ./$(BIN)

# Installs the Debian packages the tests drive (qemu-img, libnbd, fio, ...)
# when they are missing, then runs every test, the concurrent packages
# under the race detector, and a short run of each fuzz target.
test: deps
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -timeout 20m -race $(RACE_PKGS)
	./scripts/fuzz.sh

# Every package with concurrent code; the end-to-end scripts run the binary.
RACE_PKGS = $(shell $(GO) list ./... | grep -v -e /tests$$ -e /cmd/)

deps:
	./scripts/deps.sh

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK) ./...

STATICCHECK = v0.8.2

fuzz:
	FUZZTIME=$${FUZZTIME:-60s} FUZZMINIMIZE=$${FUZZMINIMIZE:-10s} ./scripts/fuzz.sh

# Benchmarks against the QEMU tools (see the README's table), then the
# drivers' own Go benchmarks. bench/attach.sh needs root.
bench: build
	bench/convert.sh ./$(BIN)
	VDISK=./$(BIN) bench/nbd.sh
	bench/cache.sh ./$(BIN)
	bench/attach.sh ./$(BIN)
	$(GO) test -run '^$$' -bench . -benchtime 2s ./format/... ./block/cache ./imgtool
