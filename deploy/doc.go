// Package deploy holds no code: it is the deploy kit's home (docs/deploy.md)
// and its tests. The kit is the Dockerfile at the repository root,
// compose.yaml (nudged and Redis), kubernetes/ (the manifests, with the
// schemas kubeconform checks them against in kubernetes/schemas, written
// by tools/k8sschema), nudged.yaml (every setting) and redis-users.acl.
//
// The tests, part of go test ./..., check that the manifests pass
// scripts/kubeconform.sh (the check of make lint-deploy) and that the same
// check fails on copies with a mistake; that the configuration the pod and
// the compose service give nudged loads as nudged loads it; and that the
// Dockerfile builds with make static's flags and go.mod's Go. They run
// kubeconform through go run (the Go module proxy) and never skip.
package deploy
