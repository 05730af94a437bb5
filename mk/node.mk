# TypeScript stubs and the Node storefront example (examples/node-storefront).
# Include from the main Makefile, or run `make -f mk/node.mk node-example`.
#
#   node-generate   npm ci (installs the pinned protoc-gen-es), then
#                   `buf generate --template buf.gen.ts.yaml` into
#                   examples/node-storefront/src/gen/ (committed, like the Go
#                   code), then type-check the example with tsc
#   node-gen-check  regenerate into a temporary directory and fail if
#                   src/gen/ differs (stale stubs after a .proto change)
#   node-example    npm ci, compile, run the storefront against a running
#                   nudged at $(NUDGE_ADDR) (e.g. `make run` in another shell)
#   node-dynamic    examples/node-dynamic: npm ci, then run client.js (plain
#                   JavaScript that loads proto/ and third_party/protovalidate
#                   at run time with @grpc/proto-loader, no generated code)
#                   against a running nudged at $(NUDGE_ADDR)
#
# Needs node >= 20 and npm (Debian: apt-get install nodejs npm); npm ci
# fetches the locked packages from the npm registry (a few seconds).
# The integration tests (integration/node_test.go, node_dynamic_test.go)
# run the examples against a nudged they build and start themselves.

NODE_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
NODE_EXAMPLE := $(NODE_ROOT)/examples/node-storefront
NODE_DYNAMIC := $(NODE_ROOT)/examples/node-dynamic
NODE_GOBIN := $(firstword $(subst :, ,$(shell go env GOPATH)))/bin
NODE_BUF ?= $(or $(shell command -v buf 2>/dev/null),$(wildcard $(NODE_GOBIN)/buf))
NUDGE_ADDR ?= 127.0.0.1:7070
NPM ?= npm

.PHONY: node-check node-ci node-generate node-gen-check node-build node-example node-dynamic

node-check:
	@command -v node >/dev/null 2>&1 || { echo "node not found: apt-get install nodejs (node >= 20)" >&2; exit 1; }
	@command -v $(NPM) >/dev/null 2>&1 || { echo "npm not found: apt-get install npm" >&2; exit 1; }

node-ci: node-check
	cd $(NODE_EXAMPLE) && $(NPM) ci --no-audit --no-fund

node-generate: node-ci
	@if [ -z "$(NODE_BUF)" ]; then \
	  echo "buf not found on PATH or in $(NODE_GOBIN): go install github.com/bufbuild/buf/cmd/buf@$${BUF_VERSION:-v1.75.0}" >&2; exit 1; \
	fi
	cd $(NODE_ROOT) && "$(NODE_BUF)" generate --template buf.gen.ts.yaml
	cd $(NODE_EXAMPLE) && $(NPM) run --silent build

node-gen-check: node-ci
	@if [ -z "$(NODE_BUF)" ]; then echo "buf not found on PATH or in $(NODE_GOBIN)" >&2; exit 1; fi
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	cd $(NODE_ROOT) && "$(NODE_BUF)" generate --template buf.gen.ts.yaml -o "$$tmp" && \
	if ! diff -r "$$tmp/examples/node-storefront/src/gen" examples/node-storefront/src/gen >/dev/null; then \
	  echo "TypeScript stubs in examples/node-storefront/src/gen are stale: run make node-generate and commit them" >&2; exit 1; \
	fi; echo "TypeScript stubs are up to date"

node-build: node-ci
	cd $(NODE_EXAMPLE) && $(NPM) run --silent build

node-example: node-build
	cd $(NODE_EXAMPLE) && NUDGE_ADDR=$(NUDGE_ADDR) node dist/storefront.js

node-dynamic: node-check
	cd $(NODE_DYNAMIC) && $(NPM) ci --no-audit --no-fund
	cd $(NODE_DYNAMIC) && NUDGE_ADDR=$(NUDGE_ADDR) node client.js
