# Protobuf code generation (offline). Include from the main Makefile, or run
# `make -f mk/generate.mk generate`.
#
#   generate    print third_party/protovalidate/buf/validate/validate.proto from
#               the pinned Go module (tools/protovalidate-proto), run
#               `buf generate` (proto/nudge/v1/*.pb.go), check gofmt
#   lint-proto  buf lint
#   descriptors bin/nudge.binpb: the whole API as one buf image (`buf build
#               -o`), with its imports (buf/validate/validate.proto and the
#               google/protobuf well-known types) and source info (comments),
#               so a tool that takes a descriptor set needs nothing else:
#                 grpcurl -protoset bin/nudge.binpb -plaintext 127.0.0.1:7070 list
#                 buf curl --schema bin/nudge.binpb --protocol grpc \
#                   --http2-prior-knowledge -d '{"user_id":"u1","channel":"web"}' \
#                   http://127.0.0.1:7070/nudge.v1.DecisionService/GetDecision
#               Kreya (file descriptor set importer) and gRPC-JSON gateways
#               such as Envoy's transcoder (proto_descriptor) take it too. An
#               image is wire-compatible with a google.protobuf.FileDescriptorSet.
#               Built, not committed: it cannot go stale, and the .proto
#               files stay the one source (CI checks they build).
#   breaking    buf breaking: the working tree's proto/ against the commit
#               BREAKING_REF (default HEAD~1, the previous commit), with
#               the FILE rules of buf.yaml. In a clone without HEAD~1
#               (shallow, or at the first commit) it says so and compares
#               against HEAD, which still checks uncommitted changes; a
#               BREAKING_REF that is not there fails.
#               Against another base: make breaking BREAKING_REF=origin/main
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

# DESCRIPTORS: where `make descriptors` writes the image.
DESCRIPTORS ?= $(GEN_ROOT)/bin/nudge.binpb
# BREAKING_REF: the git commit `make breaking` compares proto/ against.
BREAKING_REF ?= HEAD~1

.PHONY: generate lint-proto descriptors breaking gen-check-buf gen-check-plugins

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

# buf build includes imports and source info unless told otherwise
# (--exclude-imports, --exclude-source-info); the image covers both modules
# of buf.yaml.
descriptors: gen-check-buf
	@mkdir -p $(dir $(DESCRIPTORS))
	cd $(GEN_ROOT) && "$(BUF)" build -o $(DESCRIPTORS)
	@echo "wrote $(DESCRIPTORS)"

# Only the proto module is checked: third_party/protovalidate is printed from
# a pinned Go module, and a change in it is upstream's, not our API's. The
# git input reads the repository's objects (a worktree's .git file works
# too); subdir=proto names the same module in that commit.
breaking: gen-check-buf
	@cd $(GEN_ROOT) && \
	if ! git rev-parse --verify -q HEAD >/dev/null; then \
	  echo "make breaking needs a git checkout with at least one commit" >&2; exit 1; \
	fi; \
	ref='$(BREAKING_REF)'; \
	if ! git rev-parse --verify -q "$$ref^{commit}" >/dev/null; then \
	  if [ "$$ref" != HEAD~1 ]; then echo "breaking: BREAKING_REF=$$ref is not a commit in this clone" >&2; exit 1; fi; \
	  if [ "$$(git rev-parse --is-shallow-repository)" = true ]; then why="a shallow clone"; else why="HEAD is the first commit"; fi; \
	  echo "breaking: $$ref is not available ($$why): comparing proto/ against HEAD instead, which checks only uncommitted changes" >&2; \
	  ref=HEAD; \
	fi; \
	echo "buf breaking proto --against '.git#ref=$$ref,subdir=proto'"; \
	"$(BUF)" breaking proto --against ".git#ref=$$ref,subdir=proto" && \
	echo "breaking: proto/ has no breaking change against $$ref ($$(git rev-parse --short "$$ref"))"
