#!/usr/bin/env bash
# Makes sure buf is where mk/generate.mk looks for it (PATH, then
# $(go env GOPATH)/bin): `make breaking`, `make descriptors` and the
# descriptor-set test (integration/node_dynamic_test.go) need it. Installs
# the version pinned in mk/generate.mk (BUF_VERSION) when missing: the
# prebuilt release from npm when npm is there, else go install from the Go
# module proxy (about 2-5 minutes of compiling, once); fails if neither
# works. Never lets a check skip for want of buf.
set -euo pipefail
cd "$(dirname "$0")/.."

want=$(sed -n 's/^BUF_VERSION ?= *//p' mk/generate.mk)
if [ -z "$want" ]; then
  echo "ensure-buf: no BUF_VERSION in mk/generate.mk" >&2
  exit 1
fi
gobin="$(go env GOPATH | cut -d: -f1)/bin"

buf=$(command -v buf 2>/dev/null || true)
if [ -z "$buf" ] && [ -x "$gobin/buf" ]; then buf="$gobin/buf"; fi
if [ -z "$buf" ] && command -v npm >/dev/null 2>&1; then
  # The same release, prebuilt, from the npm package @bufbuild/buf: seconds
  # instead of minutes of compiling.
  echo "buf not found: installing @bufbuild/buf@${want#v} with npm" >&2
  mkdir -p "$gobin/.buf-npm"
  if npm install --silent --no-audit --no-fund --prefix "$gobin/.buf-npm" "@bufbuild/buf@${want#v}" >&2 &&
    "$gobin/.buf-npm/node_modules/.bin/buf" --version >/dev/null 2>&1; then
    ln -sf "$gobin/.buf-npm/node_modules/.bin/buf" "$gobin/buf"
    buf="$gobin/buf"
  else
    echo "ensure-buf: the npm package did not give a working buf; building it instead" >&2
  fi
fi
if [ -z "$buf" ]; then
  echo "buf not found: go install github.com/bufbuild/buf/cmd/buf@$want (takes a few minutes)" >&2
  go install "github.com/bufbuild/buf/cmd/buf@$want"
  buf="$gobin/buf"
fi
have="v$("$buf" --version)"
if [ "$have" != "$want" ]; then
  # Not fatal: another buf builds and checks the same protos; the pin is
  # what a machine without buf gets.
  echo "ensure-buf: $buf is $have, mk/generate.mk pins $want" >&2
fi
echo "buf $have ($buf)"
