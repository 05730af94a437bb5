#!/usr/bin/env bash
# Validates Kubernetes manifests with kubeconform, strictly (an unknown or
# misspelt field, a wrong type or a duplicated key is an error), against the
# JSON schemas committed in deploy/kubernetes/schemas (written by
# tools/k8sschema from Kubernetes' OpenAPI definitions): nothing is
# downloaded but kubeconform itself, which `go run` fetches through the Go
# module proxy at the pinned version.
#
#   scripts/kubeconform.sh [DIR]
#
# checks every *.yaml in DIR (default deploy/kubernetes) but
# kustomization.yaml, and fails on any invalid manifest and on any kind
# without a schema (add it to K8S_SCHEMA_KINDS in mk/deploy.mk and run
# `make deploy-schemas`). Used by `make lint-deploy` and by the test in
# deploy/ (go test ./deploy).
set -euo pipefail

KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-v0.7.0}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/deploy/kubernetes}

files=()
for f in "$dir"/*.yaml; do
  [ -e "$f" ] || continue
  case ${f##*/} in kustomization.yaml) continue ;; esac
  files+=("$f")
done
if [ ${#files[@]} -eq 0 ]; then
  echo "kubeconform.sh: no manifests (*.yaml) in $dir" >&2
  exit 1
fi

exec "${GO:-go}" run "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" \
  -strict -summary \
  -schema-location "$root/deploy/kubernetes/schemas/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
  "${files[@]}"
