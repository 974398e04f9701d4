# scanhook's everyday tasks. `make help` lists them.
#
# Nothing here is needed to build or test: `go build ./cmd/scanhook` and the
# README's `go vet ./... && go test -race ./...` work on their own. The
# Makefile only saves typing and pins the tools CI uses.

GO      ?= go
GOBIN   := $(shell $(GO) env GOPATH)/bin
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

# Keep in step with .ci/run.
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT         := $(GOBIN)/golangci-lint

# fuzz-smoke: how long each fuzz target runs.
FUZZTIME ?= 10s
# bench: passed to -bench and -benchtime.
BENCH     ?= .
BENCHTIME ?= 1s

# Discovered from the source, so a new fuzz test or benchmark is picked up
# without editing this file. Directories are relative (./rules), as the go
# command wants them.
FUZZ_FILES  = $(shell grep -rlE --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*[(][a-z_]* [*]testing[.]F[)]' . | sort)
BENCH_PKGS  = $(shell grep -rlE --include='*_test.go' '^func Benchmark[A-Za-z0-9_]*[(][a-z_]* [*]testing[.]B[)]' . | xargs -n1 dirname | sort -u)

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "  variables: FUZZTIME=$(FUZZTIME) BENCH=$(BENCH) BENCHTIME=$(BENCHTIME) VERSION=$(VERSION)"

.PHONY: build
build: ## build scanhook and defender-sim into ./bin (static, CGO_ENABLED=0)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" -o $(BIN)/scanhook ./cmd/scanhook
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o $(BIN)/defender-sim ./cmd/defender-sim

.PHONY: test
test: ## vet and run the tests with the race detector (the README's command)
	$(GO) vet ./... && $(GO) test -race ./...

.PHONY: lint
lint: $(GOLANGCI_LINT) ## golangci-lint, and check go.mod/go.sum are tidy
	$(GOLANGCI_LINT) run ./...
	$(GO) mod tidy -diff

# Installs the pinned version into GOBIN when golangci-lint is missing there
# or is another version.
.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## install the pinned golangci-lint (GOLANGCI_LINT_VERSION) if missing

$(GOLANGCI_LINT): FORCE
	@if ! $(GOLANGCI_LINT) version 2>/dev/null | grep -q 'version $(patsubst v%,%,$(GOLANGCI_LINT_VERSION)) '; then \
		echo "installing golangci-lint $(GOLANGCI_LINT_VERSION)"; \
		$(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION); \
	fi

.PHONY: fuzz-smoke
fuzz-smoke: ## run every fuzz target for FUZZTIME (default 10s) each
	@set -e; for f in $(FUZZ_FILES); do \
		dir=$$(dirname $$f); \
		for name in $$(sed -nE 's/^func (Fuzz[A-Za-z0-9_]*)[(][a-z_]* [*]testing[.]F[)].*/\1/p' $$f); do \
			echo "== $$name ($$dir)"; \
			$(GO) test -run='^$$' -fuzz="^$$name$$" -fuzztime=$(FUZZTIME) $$dir; \
		done; \
	done

.PHONY: bench
bench: ## run the benchmarks of every package that has them
	$(GO) test -run='^$$' -bench='$(BENCH)' -benchtime=$(BENCHTIME) -benchmem $(BENCH_PKGS)

.PHONY: load
load: ## the loopback load test (scripts/load.sh; about 80 s, see its header)
	scripts/load.sh

.PHONY: clean
clean: ## remove ./bin and stray test binaries and profiles
	rm -rf $(BIN) scanhook defender-sim
	find . -type f \( -name '*.test' -o -name '*.prof' \) -not -path '*/testdata/*' -delete

.PHONY: FORCE
FORCE:
