#!/usr/bin/env bash
# Runs every fuzz target of the module, one after another, each for
# FUZZTIME (default 60s) with FUZZPARALLEL workers (default 2), and fails at
# the end if any target failed. It prints each target's executions per
# second. `scripts/fuzz.sh --list` prints the targets.
#
# Targets are discovered, not listed: every `func FuzzXxx(f *testing.F)` in
# a _test.go file, so a new one is fuzzed without editing this file. Their
# seed corpora are the f.Add calls and testdata/fuzz/FuzzXxx/ next to them.
# A failing input is written there by `go test`: commit it with the fix, as
# a regression test that plain `go test` runs.
#
# Go 1.26's fuzz coordinator can report "context deadline exceeded" at the
# end of -fuzztime when a worker is slow to stop (go.dev/issue/75804, fixed
# in Go 1.27). A real finding always writes a failing input; so a run that
# ends that way without writing one, and whose corpus then replays cleanly,
# is reported and not counted as a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZTIME=${FUZZTIME:-60s}
FUZZPARALLEL=${FUZZPARALLEL:-2}
# Minimizing each new interesting input runs the target many times
# without counting executions: with go's default of 60s a short run spends
# most of its time there (FuzzDecode sat at 0 execs/s for 15 s of 20).
FUZZMINIMIZETIME=${FUZZMINIMIZETIME:-2s}

targets=$(grep -rEo --include='*_test.go' --exclude-dir=node_modules --exclude-dir=.git \
  '^func Fuzz[A-Za-z0-9_]*\([A-Za-z_][A-Za-z0-9_]* \*testing\.F\)' . |
  sed -E 's|^(.*)/[^/]*:func (Fuzz[A-Za-z0-9_]*)\(.*|\1:\2|' | sort -u)
if [ -z "$targets" ]; then
  echo "no fuzz targets found" >&2
  exit 1
fi
if [ "${1:-}" = "--list" ]; then
  echo "$targets"
  exit 0
fi

# rate prints a target's executions per second over its whole run, from
# the last progress line ("elapsed: 10s, execs: 12345 (...").
rate() {
  local last secs execs
  last=$(grep -E 'elapsed: [0-9]+s, execs: [0-9]+' "$log" | tail -n 1)
  secs=$(sed -E 's/.*elapsed: ([0-9]+)s.*/\1/' <<<"$last")
  execs=$(sed -E 's/.*execs: ([0-9]+).*/\1/' <<<"$last")
  if [ -n "$secs" ] && [ "$secs" -gt 0 ]; then
    echo "   $1: $execs executions in ${secs}s, $((execs / secs))/s"
  fi
}

failed=""
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in $targets; do
  dir=${t%%:*}
  name=${t#*:}
  corpus="$dir/testdata/fuzz/$name"
  before=$(ls "$corpus" 2>/dev/null)
  echo "== $name ($dir) for $FUZZTIME"
  if $GO test -run='^$' -fuzz="^$name\$" -fuzztime="$FUZZTIME" -fuzzminimizetime="$FUZZMINIMIZETIME" -parallel="$FUZZPARALLEL" "$dir" 2>&1 | tee "$log"; then
    rate "$name"
    continue
  fi
  if [ "$before" = "$(ls "$corpus" 2>/dev/null)" ] && tail -n 6 "$log" | grep -q 'context deadline exceeded'; then
    echo "   $name ended with the coordinator's shutdown race (go.dev/issue/75804) and wrote no failing input; replaying its corpus"
    if $GO test -count=1 -run="^$name\$" "$dir" >/dev/null; then
      echo "   $name: corpus replays cleanly: not a finding"
      continue
    fi
  fi
  failed="$failed $name"
done
if [ -n "$failed" ]; then
  echo "fuzz targets that failed:$failed" >&2
  exit 1
fi
echo "every fuzz target ran $FUZZTIME without a finding"
