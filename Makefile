# Nullspace: the project's verbs. `make run` sets up this host and runs the
# server; `make test` runs every test, real gVisor machines included.

# Slow artefacts (runsc, template rootfs) are cached here, outside the clone,
# and reused by later clones and CI runs.
CACHE_DIR ?= /var/cache/nullspace
DATA_DIR  ?= /var/lib/nullspace
export NULLSPACE_CACHE_DIR := $(CACHE_DIR)

GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build deps runsc versitygw run cluster test bench vet typecheck-python typescript-sdk e2b-sdk e2b-proto clean

all: build

deps:
	@scripts/install-deps.sh

# runsc is built from the pinned gVisor module (tools/runsc/go.mod) and
# linked next to the nullspace binary, where the server looks for it.
runsc: deps
	@mkdir -p bin
	@ln -sf "$$(scripts/build-runsc.sh $(CACHE_DIR))" bin/runsc

# versitygw (Apache-2.0) is the S3-compatible server the object-store tests
# run against; built from tools/versitygw/go.mod, cached like runsc, never
# linked into nullspace. Only test and bench need it, so `make run` does not
# wait for it.
versitygw: deps
	@mkdir -p bin
	@ln -sf "$$(scripts/build-versitygw.sh $(CACHE_DIR))" bin/versitygw

build: runsc
	@echo "==> building bin/nullspace and bin/nullspace-agent"
	@CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/nullspace-agent ./cmd/nullspace-agent
	@CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/nullspace ./cmd/nullspace

run: build
	@test "$$(id -u)" = 0 || { echo "nullspace: make run needs root (it creates sandboxes, network namespaces and cgroups)"; exit 1; }
	bin/nullspace serve --data-dir $(DATA_DIR)

# Three nodes on this host as one cluster (needs root): a bridge and a
# network namespace per node, one PostgreSQL and one versitygw they share.
# Prints the nodes' addresses and the API key as shell exports; Ctrl-C
# removes it all. Pass flags with CLUSTER_FLAGS, e.g.
# `make cluster CLUSTER_FLAGS='-nodes 2'`; `go run ./tools/cluster down`
# cleans up after a run that died.
cluster: build versitygw
	@test "$$(id -u)" = 0 || { echo "nullspace: make cluster needs root (it creates a bridge, network namespaces and sandboxes)"; exit 1; }
	$(GO) run ./tools/cluster up -bin-dir $(CURDIR)/bin $(CLUSTER_FLAGS)

vet:
	$(GO) vet ./...

# The Python SDK's type hints, checked by pyright (from npm, pinned).
typecheck-python:
	@scripts/typecheck-python.sh

# The TypeScript SDK built (ESM, CJS), unit-tested and type-checked; its live
# tests are e2e TestTypeScriptSDK.
typescript-sdk:
	@scripts/typescript-sdk.sh

# E2B's JavaScript SDK at its pinned releases, for e2e TestE2BSDK.
e2b-sdk:
	@scripts/e2b-sdk.sh

# Regenerates the Go code of E2B's envd protos (committed; only needed when
# internal/e2bcompat/envd/spec changes).
e2b-proto:
	@scripts/e2b-proto.sh

# The e2e tests that `make test` runs a second time with PostgreSQL and an
# object store (NULLSPACE_E2E_STORE=postgres+s3): those of hibernation and
# persistence.
STORE_E2E := TestPauseResume|TestWriteThenPause|TestAliasChain|TestSnapshotChildren|TestCheckpointHistory|TestSnapshotCorrupt|TestHooksAndVolumes|TestConcurrentLifecycle|TestPersistence|TestCrashDuringLifecycle|TestCrashDuringPrune|TestServerRestart|TestStopStart|TestTimeoutPause|TestLeaseAcrossRestart|TestResumeIntoSpare|TestCheckpointPages|TestCheckpointRetention|TestCLIHibernate

# The gVisor tests need root and runsc; they fail (not skip) with the reason
# when either is missing.
test: build versitygw vet typecheck-python typescript-sdk e2b-sdk
	@echo "==> running tests (real gVisor machines included; the first run builds the base template, about 2 minutes)"
	NULLSPACE_RUNSC=$(CURDIR)/bin/runsc NULLSPACE_AGENT_BIN=$(CURDIR)/bin/nullspace-agent \
		NULLSPACE_VERSITYGW=$(CURDIR)/bin/versitygw \
		$(GO) test -race -count=1 -timeout 40m ./...
	@echo "==> the lifecycle tests again, every server on PostgreSQL and an object store"
	NULLSPACE_E2E_STORE=postgres+s3 NULLSPACE_RUNSC=$(CURDIR)/bin/runsc NULLSPACE_AGENT_BIN=$(CURDIR)/bin/nullspace-agent \
		NULLSPACE_VERSITYGW=$(CURDIR)/bin/versitygw \
		$(GO) test -count=1 -timeout 30m -run '$(STORE_E2E)' ./e2e
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 10s ./internal/httpapi

# Nullspace against raw runsc on this host, in one run (needs root): prints
# a table and writes every sample to bench/results.json. Pass more flags
# with BENCH_FLAGS, e.g. `make bench BENCH_FLAGS='-n 50 -log-level debug'`.
bench: build versitygw
	NULLSPACE_RUNSC=$(CURDIR)/bin/runsc NULLSPACE_AGENT_BIN=$(CURDIR)/bin/nullspace-agent \
		NULLSPACE_VERSITYGW=$(CURDIR)/bin/versitygw \
		$(GO) run ./bench -out bench/results.json $(BENCH_FLAGS)

clean:
	rm -rf bin
