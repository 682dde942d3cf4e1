# pgcourier — build, test, lint.
#
#   make demo    two laptops and a server on throw-away clusters, end to end
#   make test    every test, integration included, with the race detector
#   make lint    go vet and staticcheck
#   make bench   the benchmark harness (several minutes; writes docs/benchmarks.*)

GO              ?= go
STATICCHECK     ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
TEST_TIMEOUT    ?= 15m
# The tests copy a Postgres cluster per test; a memory-backed TMPDIR makes
# that several times faster where /tmp is a slow disk.
TEST_TMPDIR     ?= $(shell test -d /dev/shm -a -w /dev/shm && echo /dev/shm || echo $${TMPDIR:-/tmp})

.PHONY: all build test lint vet staticcheck bench fuzz demo clean

all: lint test

build:
	$(GO) build -o bin/pgcourier ./cmd/pgcourier

test:
	TMPDIR=$(TEST_TMPDIR) $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) ./...

vet:
	$(GO) vet ./...

staticcheck:
	$(GO) run $(STATICCHECK) ./...

lint: vet staticcheck

bench:
	$(GO) run ./bench

# The demo starts three throw-away clusters; TMPDIR as for the tests.
demo:
	TMPDIR=$(TEST_TMPDIR) $(GO) run ./cmd/pgcourier demo

# Runs each fuzz target for a short while; FUZZTIME=5m for longer.
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) ./config/

clean:
	rm -rf bin
