#!/usr/bin/env bash
# The shoppers simulator of BENCHMARKS.md ("Measurement: the shoppers
# simulator", `make bench-shoppers`): builds nudged and nudge-bench,
# starts its own redis-server and nudged (examples/shoppers.yaml,
# measurement.refresh 1s) on free loopback ports, and runs
#
#   1. the simulator (nudge-bench --workload shoppers): exact counts of 20
#      campaigns, the coverage of their intervals, and Thompson sampling's
#      learning, once;
#   2. the ingest rate of the same events with measurement on and off
#      (the rules with settings.measure: false), SHOPPERS_REPS rounds
#      (default 3) alternating the order, on a flushed Redis and a fresh
#      nudged each time.
#
# It prints the figures and the ratio (medians), and leaves the raw JSON
# lines in a temporary directory whose path it prints. Not run in CI: it
# takes about 3 minutes and wants the machine to itself.
set -euo pipefail

cd "$(dirname "$0")/.."
reps=${SHOPPERS_REPS:-3}
work=$(mktemp -d -t nudge-shoppers.XXXXXX)
echo "shoppers: raw results in $work" >&2
go build -o "$work/bin/" ./cmd/nudged ./cmd/nudge-bench
bench=$work/bin/nudge-bench

. scripts/lib.sh
start_redis

# The same rules with measurement off.
sed 's/^version: 1$/version: 1\nsettings:\n  measure: false/' examples/shoppers.yaml >"$work/shoppers-off.yaml"
grep -q 'measure: false' "$work/shoppers-off.yaml"

start_nudged_rules() { # RULES
  start_nudged nudged --redis-addr "$redis_addr" --rules "$1" --measurement-refresh 1s
}

# 1. The simulator.
rcli flushall >/dev/null
start_nudged_rules examples/shoppers.yaml
echo "shoppers: the simulator" >&2
rc=0
"$bench" --workload shoppers --addr "$nudged_addr" --redis-addr "$redis_addr" --quiet >"$work/simulator.txt" 2>>"$work/bench.stderr" || rc=$?
grep -v '^{' "$work/simulator.txt"
tail -n 1 "$work/simulator.txt" >"$work/simulator.json"

# 2. Ingest with measurement on and off.
: >"$work/ingest.jsonl"
for rep in $(seq "$reps"); do
  order="on off"
  if [ $((rep % 2)) -eq 0 ]; then order="off on"; fi
  for m in $order; do
    rules=examples/shoppers.yaml
    if [ "$m" = off ]; then rules=$work/shoppers-off.yaml; fi
    rcli flushall >/dev/null
    start_nudged_rules "$rules"
    echo "shoppers: ingest, measurement $m, round $rep" >&2
    line=$("$bench" --workload shoppers --parts ingest --addr "$nudged_addr" --quiet 2>>"$work/bench.stderr" | tail -n 1)
    python3 -c 'import json,sys; d=json.loads(sys.argv[2]); print(json.dumps({"measure": sys.argv[1], "rep": int(sys.argv[3]), "events_per_sec": d["results"][0]["events_per_sec"], "events": d["results"][0]["events"], "ok": d["ok"]}))' \
      "$m" "$line" "$rep" >>"$work/ingest.jsonl"
  done
done
stop_nudged nudged

python3 - "$work/ingest.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
on = [r["events_per_sec"] for r in rows if r["measure"] == "on"]
off = [r["events_per_sec"] for r in rows if r["measure"] == "off"]
print("ingest of the simulator's events (%d events a run):" % rows[0]["events"])
for r in rows:
    print("  round %d, measurement %-3s %8.0f events/s%s" % (r["rep"], r["measure"], r["events_per_sec"], "" if r["ok"] else "  (CHECK FAILED)"))
print("  median on %.0f, off %.0f events/s: ratio %.2f" % (statistics.median(on), statistics.median(off), statistics.median(on) / statistics.median(off)))
PY
if [ "$rc" -ne 0 ]; then echo "shoppers: the simulator's checks failed (exit status $rc)" >&2; exit 1; fi
