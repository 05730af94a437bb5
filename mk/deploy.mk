# The deploy kit (docs/deploy.md). Include from the main Makefile, or run
# `make -f mk/deploy.mk static`.
#
#   static          bin/static/nudged and bin/static/nudgectl, built with
#                   exactly the Dockerfile's command (CGO off, -trimpath,
#                   stripped); fails unless both are static binaries
#   docker          docker build -t $(DOCKER_IMAGE) . (needs a running
#                   container daemon; says so when none answers)
#   lint-deploy     kubeconform, strict, over deploy/kubernetes against the
#                   committed schemas (scripts/kubeconform.sh; go run fetches
#                   kubeconform from the Go module proxy); the Dockerfile's
#                   build flags against static's; `docker compose config -q`
#                   of deploy/compose.yaml when docker compose is installed
#   deploy-schemas  regenerate deploy/kubernetes/schemas from
#                   k8s.io/kubernetes@$(K8S_VERSION) (tools/k8sschema; downloads
#                   about 145 MB into a temporary module cache)
#
# The test in deploy/ (part of go test ./...) runs the same kubeconform
# check, and checks that it fails on broken copies of the manifests.

DEPLOY_ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST)))..)
GO ?= go
BIN ?= bin
DOCKER ?= docker
DOCKER_IMAGE ?= nudge:dev

# The Dockerfile's `go build` must keep exactly these flags (lint-deploy and
# the test in deploy/ check it).
STATIC_FLAGS := -trimpath -ldflags "-s -w"
STATIC_DIR := $(BIN)/static

# The Kubernetes schemas committed in deploy/kubernetes/schemas: one per
# apiVersion/Kind the manifests use, from this Kubernetes release.
K8S_VERSION ?= v1.37.2
K8S_SCHEMA_KINDS := v1/ConfigMap v1/Secret v1/Service apps/v1/Deployment \
	policy/v1/PodDisruptionBudget autoscaling/v2/HorizontalPodAutoscaler

.PHONY: static docker lint-deploy deploy-schemas

static:
	cd $(DEPLOY_ROOT) && CGO_ENABLED=0 $(GO) build $(STATIC_FLAGS) -o $(STATIC_DIR)/ ./cmd/nudged ./cmd/nudgectl
	@cd $(DEPLOY_ROOT) && for b in nudged nudgectl; do \
	  f=$(STATIC_DIR)/$$b; \
	  $(GO) version -m $$f | grep -q 'CGO_ENABLED=0' || { echo "$$f: not built with CGO_ENABLED=0" >&2; exit 1; }; \
	  if [ "$$($(GO) env GOOS)" = linux ] && command -v file >/dev/null 2>&1; then \
	    file -L $$f | grep -Eq 'statically linked|static-pie linked' || { echo "$$f is not a static binary: $$(file -L $$f)" >&2; exit 1; }; \
	  fi; \
	  echo "$$f: static ($$(du -h $$f | cut -f1))"; \
	done

docker:
	@command -v $(DOCKER) >/dev/null 2>&1 || { \
	  echo "docker: '$(DOCKER)' not found: install Docker (or DOCKER=podman); make static builds the same binaries without it" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { \
	  echo "docker: no container daemon answers ('$(DOCKER) info' failed): start one, or point DOCKER_HOST at one, and re-run; make static builds the same binaries without it" >&2; exit 1; }
	$(DOCKER) build -t $(DOCKER_IMAGE) $(DEPLOY_ROOT)

lint-deploy:
	bash $(DEPLOY_ROOT)/scripts/kubeconform.sh $(DEPLOY_ROOT)/deploy/kubernetes
	@grep -qF 'CGO_ENABLED=0 go build $(STATIC_FLAGS) ' $(DEPLOY_ROOT)/Dockerfile || { \
	  echo 'Dockerfile: its go build no longer has the flags of make static: CGO_ENABLED=0 go build $(STATIC_FLAGS)' >&2; exit 1; }
	@if $(DOCKER) compose version >/dev/null 2>&1; then \
	  echo "$(DOCKER) compose config -q (deploy/compose.yaml)"; \
	  $(DOCKER) compose -f $(DEPLOY_ROOT)/deploy/compose.yaml config -q; \
	else \
	  echo "docker compose is not installed: deploy/compose.yaml not checked (the manifests were)"; \
	fi

deploy-schemas:
	cd $(DEPLOY_ROOT)/tools && $(GO) run ./k8sschema -kubernetes $(K8S_VERSION) \
	  -out $(DEPLOY_ROOT)/deploy/kubernetes/schemas $(K8S_SCHEMA_KINDS)
