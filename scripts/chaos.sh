#!/usr/bin/env bash
# Runs the chaos suite (integration/chaos_test.go) and prints each
# scenario's figures. Usage: scripts/chaos.sh [short|full]
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
args=()
timeout=10m
if [ "${1:-short}" = full ]; then
  args=(-args -chaos.full)
  timeout=60m
fi
"$GO" test -count=1 -timeout "$timeout" -run '^TestChaos' -v ./integration/ "${args[@]}" |
  grep --line-buffered -E '^(=== RUN|--- |ok|FAIL|panic)|(chaos[a-z_]*|execcut)_test.go'
