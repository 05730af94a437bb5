# Protobuf code generation (offline). Include from the main Makefile, or run
# `make -f mk/generate.mk generate`.
#
#   generate    print third_party/protovalidate/buf/validate/validate.proto from
#               the pinned Go module (tools/protovalidate-proto), run
#               `buf generate` (proto/nudge/v1/*.pb.go), check gofmt
#   lint-proto  buf lint
#
# Tools are looked up on PATH, then in $(go env GOPATH)/bin. The plugin
# versions are pinned because they are written into the generated files.

GEN_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
GEN_GOBIN := $(firstword $(subst :, ,$(shell go env GOPATH)))/bin

BUF_VERSION ?= v1.75.0
PROTOC_GEN_GO_VERSION ?= v1.36.12
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.2

# gen_tool: path of tool $(1) on PATH or in GOPATH/bin, empty if missing.
gen_tool = $(or $(shell command -v $(1) 2>/dev/null),$(wildcard $(GEN_GOBIN)/$(1)))

BUF ?= $(call gen_tool,buf)
GEN_PROTOC_GEN_GO := $(call gen_tool,protoc-gen-go)
GEN_PROTOC_GEN_GO_GRPC := $(call gen_tool,protoc-gen-go-grpc)

# buf runs the local plugins from PATH.
GEN_PATH := $(GEN_GOBIN):$(PATH)

.PHONY: generate lint-proto gen-check-buf gen-check-plugins

gen-check-buf:
	@if [ -z "$(BUF)" ]; then \
	  echo "buf not found on PATH or in $(GEN_GOBIN)." >&2; \
	  echo "Install it (takes ~2 min): go install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)" >&2; \
	  exit 1; \
	fi

gen-check-plugins:
	@if [ -z "$(GEN_PROTOC_GEN_GO)" ]; then \
	  echo "protoc-gen-go not found. Install it: go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)" >&2; exit 1; \
	fi
	@if [ -z "$(GEN_PROTOC_GEN_GO_GRPC)" ]; then \
	  echo "protoc-gen-go-grpc not found. Install it: go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)" >&2; exit 1; \
	fi
	@v=$$("$(GEN_PROTOC_GEN_GO)" --version | awk '{print $$2}'); \
	if [ "$$v" != "$(PROTOC_GEN_GO_VERSION)" ]; then \
	  echo "$(GEN_PROTOC_GEN_GO) is $$v, want $(PROTOC_GEN_GO_VERSION): go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)" >&2; exit 1; \
	fi
	@v=$$("$(GEN_PROTOC_GEN_GO_GRPC)" --version | awk '{print "v"$$2}'); \
	if [ "$$v" != "$(PROTOC_GEN_GO_GRPC_VERSION)" ]; then \
	  echo "$(GEN_PROTOC_GEN_GO_GRPC) is $$v, want $(PROTOC_GEN_GO_GRPC_VERSION): go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)" >&2; exit 1; \
	fi

# Old .pb.go files are removed first so a deleted .proto leaves none behind.
generate: gen-check-buf gen-check-plugins
	cd $(GEN_ROOT)/tools && go run ./protovalidate-proto -out ../third_party/protovalidate
	cd $(GEN_ROOT) && find proto -name '*.pb.go' -delete
	cd $(GEN_ROOT) && PATH="$(GEN_PATH)" "$(BUF)" generate
	@cd $(GEN_ROOT) && out=$$(gofmt -l proto tools); \
	if [ -n "$$out" ]; then echo "gofmt needed on:" >&2; echo "$$out" >&2; exit 1; fi

lint-proto: gen-check-buf
	cd $(GEN_ROOT) && "$(BUF)" lint
