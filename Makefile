# nudge: real-time decisioning for direct marketing.
#
#   make run       nudged with the embedded (not durable) store on 127.0.0.1:7070
#   make demo      nudged + a scripted shopper: prints the triggered coupon and a decision
#   make test      vet + every test (unit, real redis-server, integration), with -race
#   make chaos-short / make chaos   fault scenarios with exact counts (RELIABILITY.md)
#   make bench     the standard benchmark set; rewrites BENCHMARKS.md (about 10 min, not in CI)
#   make generate  regenerate protobuf code (needs buf and the pinned plugins)
#   make lint      gofmt, go vet, buf lint
#   make static / docker / lint-deploy   deploy kit: static binaries, image, manifest checks (mk/deploy.mk)

GO ?= go
BIN := bin
ARGS ?=
DEMO_ADDR ?= 127.0.0.1:7071
DEMO_HTTP ?= 127.0.0.1:7081
DEMO_METRICS ?= 127.0.0.1:9091

.PHONY: all build run demo test ensure-tools bench bench-shoppers bench-nearcache bench-http bench-features bench-console lint fmt-check vet clean fuzz

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

run: build
	$(BIN)/nudged $(ARGS)

# Builds only what it runs; starts nudged with the embedded store on
# DEMO_ADDR (gRPC) and DEMO_HTTP (HTTP/JSON) in the background, runs the
# scripted shopper against it, asks a decision with curl, and stops nudged
# whatever happens (scripts/demo.sh). A taken port fails at once.
demo:
	$(GO) build -o $(BIN)/ ./cmd/nudged ./cmd/nudge-demo
	@BIN=$(BIN) DEMO_ADDR=$(DEMO_ADDR) DEMO_HTTP=$(DEMO_HTTP) DEMO_METRICS=$(DEMO_METRICS) bash scripts/demo.sh

ensure-tools:
	@bash scripts/ensure-tools.sh >/dev/null

test: ensure-tools vet
	$(GO) test -race -count=1 -timeout 15m ./...

# The standard set of BENCHMARKS.md (about 15 minutes, not in CI): builds
# nudged and nudge-bench, runs them against their own redis-server and
# rewrites BENCHMARKS.md's generated section. BENCH_QUICK=1: one short
# repetition to try it out; BENCH_REPS=N: repetitions (default 3).
bench: ensure-tools
	bash scripts/bench.sh

# The shoppers simulator: exact campaign counts, interval coverage,
# Thompson sampling, and ingest with measurement on and off.
bench-shoppers:
	bash scripts/shoppers.sh

# The near-cache and the decision deadline (issue 17): c=1 against the
# floor, CPU per decision against a bare grpc-go server, p99 at 3,000/s,
# Redis paused, freshness across two instances, ingest with the cache on
# and off (about 12 min, not in CI).
bench-nearcache:
	bash scripts/nearcache.sh

# Decisions over HTTP/JSON against gRPC on the same nudged (issue 18):
# p50 and p99 at c=1 and at 2,000/s (about 2 min, not in CI).
bench-http:
	bash scripts/httpbench.sh

# Features for models (issue 19): GetFeatures latency and users/s for
# batches of 1, 10 and 100 users over 100,000 seeded 90-day profiles
# (about 4 min, not in CI).
bench-features:
	bash scripts/featuresbench.sh

# The console's page times on the demo's data (BENCHMARKS.md, issue 20).
bench-console:
	$(GO) build -o $(BIN)/ ./cmd/nudged ./cmd/nudge-demo
	@BIN=$(BIN) bash scripts/consolebench.sh

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

lint: fmt-check vet lint-proto

clean:
	rm -rf $(BIN)

include mk/generate.mk
include mk/node.mk
include mk/fuzz.mk
include mk/chaos.mk
include mk/deploy.mk
