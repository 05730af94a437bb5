#!/usr/bin/env bash
# The figures of BENCHMARKS.md "Decisions at the physical limit" (issue 17,
# `make bench-nearcache`): builds nudged and nudge-bench, starts its own
# redis-server on a free loopback port, seeds 100,000 profiles, and for
# NEARCACHE_REPS rounds (default 3), with the near-cache on (the default,
# 256 MiB) and off (--near-cache-mib 0), in alternating order:
#
#   c1      GetDecision at c=1 against its floor, a health check plus one
#           Redis GET from the same client (decide,floor, 10 s): p50 ratio;
#   cpu     GetDecision at 3,000/s for 10 s: nudged's CPU per call (from
#           /proc), and its p99 as the server measures it
#           (rpc_server_call_duration_seconds, /metrics deltas); then a
#           bare grpc-go health server (nudge-bench --serve-health) at the
#           same rate: its CPU per call, the ratio's denominator;
#   paused  GetDecision at 1,000/s with a 5 ms budget for 6 s, Redis paused
#           (CLIENT PAUSE ... ALL) for 3 s of them: client-side p99;
#   ingest  Zipf ingest of 300,000 events over 100,000 users on a flushed
#           Redis and a fresh nudged: events/s.
#
# then, once, freshness: events through one nudged, decisions asked of a
# second one until they reflect each event (3,000 events).
#
# It prints a table of medians and ratios and leaves the raw JSON lines in
# a temporary directory whose path it prints. Not run in CI: it takes about
# 8 minutes and wants the machine to itself.
set -euo pipefail

cd "$(dirname "$0")/.."
reps=${NEARCACHE_REPS:-3}
users=100000
work=$(mktemp -d -t nudge-nearcache.XXXXXX)
echo "nearcache: raw results in $work" >&2
go build -o "$work/bin/" ./cmd/nudged ./cmd/nudge-bench
bench=$work/bin/nudge-bench
. scripts/lib.sh
start_redis
results=$work/results.jsonl
: >"$results"

scrape() { # METRICS: GetDecision's server-side duration buckets, as JSON lines
  curl -fs "http://$1/metrics" | grep '^rpc_server_call_duration_seconds_bucket{.*GetDecision' |
    python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))'
}
# record KIND CACHE REP JSON [key=value...]: one line of $results.
record() {
  python3 - "$@" >>"$results" <<'PY'
import json, sys
kind, cache, rep, out = sys.argv[1:5]
row = {"kind": kind, "cache": cache, "rep": int(rep), "bench": json.loads(out)}
for kv in sys.argv[5:]:
    k, v = kv.split("=", 1)
    row[k] = json.loads(v)
print(json.dumps(row))
PY
}
nb() { "$bench" --quiet "$@" 2>>"$work/bench.stderr" | tail -n 1; }

cache_args() { # on|off
  if [ "$1" = off ]; then echo "--near-cache-mib 0"; fi
}

rcli flushall >/dev/null
start_nudged a --redis-addr "$redis_addr"
nb --workload decide --addr "$a_addr" --users "$users" --seed --rate 100 --duration 1s >/dev/null
health_addr=127.0.0.1:$(free_port)

for rep in $(seq "$reps"); do
  order="on off"
  if [ $((rep % 2)) -eq 0 ]; then order="off on"; fi
  for cache in $order; do
    # shellcheck disable=SC2046
    start_nudged a --redis-addr "$redis_addr" $(cache_args "$cache")
    echo "nearcache: round $rep, cache $cache: c=1" >&2
    out=$(nb --workload decide,floor --addr "$a_addr" --redis-addr "$redis_addr" --users "$users" --rate 0 --concurrency 1 --duration 10s --rounds 2)
    record c1 "$cache" "$rep" "$out"

    echo "nearcache: round $rep, cache $cache: 3,000/s" >&2
    nb --workload decide --addr "$a_addr" --users "$users" --rate 3000 --duration 3s >/dev/null # warm
    before=$(scrape "$a_metrics"); c0=$(cpu_ms "$a_pid")
    out=$(nb --workload decide --addr "$a_addr" --users "$users" --rate 3000 --duration 10s)
    c1=$(cpu_ms "$a_pid"); after=$(scrape "$a_metrics")
    record cpu "$cache" "$rep" "$out" cpu_ms="$((c1 - c0))" metrics_before="$before" metrics_after="$after"

    echo "nearcache: round $rep, cache $cache: Redis paused, budget 5ms" >&2
    ( sleep 1.5; rcli client pause 3000 all >/dev/null ) &
    pauser=$!
    out=$(nb --workload decide --addr "$a_addr" --users "$users" --rate 1000 --duration 6s --budget 5ms)
    wait "$pauser"
    sleep 2 # the pause ends
    record paused "$cache" "$rep" "$out"

    echo "nearcache: round $rep, cache $cache: Zipf ingest" >&2
    rcli flushall >/dev/null
    # shellcheck disable=SC2046
    start_nudged a --redis-addr "$redis_addr" $(cache_args "$cache")
    out=$(nb --workload ingest --addr "$a_addr" --users "$users" --events 300000 --dist zipf --streams 4 --batch 500)
    record ingest "$cache" "$rep" "$out"
    rcli flushall >/dev/null
    nb --workload decide --addr "$a_addr" --users "$users" --seed --rate 100 --duration 1s >/dev/null
  done
  stop_nudged a
  echo "nearcache: round $rep: bare grpc-go health at 3,000/s" >&2
  "$bench" --serve-health "$health_addr" 2>>"$work/health.log" &
  health_pid=$!
  started_pids+=("$health_pid")
  nb --workload health --addr "$health_addr" --rate 3000 --duration 3s >/dev/null # warm, and waits until it serves
  c0=$(cpu_ms "$health_pid")
  out=$(nb --workload health --addr "$health_addr" --rate 3000 --duration 10s)
  c1=$(cpu_ms "$health_pid")
  kill "$health_pid"; wait "$health_pid" 2>/dev/null || true
  record health - "$rep" "$out" cpu_ms="$((c1 - c0))"
done

echo "nearcache: freshness, two instances" >&2
start_nudged a --redis-addr "$redis_addr"
start_nudged b --redis-addr "$redis_addr"
out=$(nb --workload freshness --addr "$a_addr" --read-addr "$b_addr" --users "$users" --events 3000 --duration 60s)
record freshness on 1 "$out"
stop_nudged a
stop_nudged b

python3 - "$results" <<'PY'
import json, statistics, sys
sys.path.insert(0, "scripts")
from benchtable import hist_quantile
rows = [json.loads(l) for l in open(sys.argv[1])]
def res(r, i=0): return r["bench"]["results"][i]
def med(xs): return statistics.median(xs) if xs else float("nan")
def by(kind, cache=None): return [r for r in rows if r["kind"] == kind and (cache is None or r["cache"] == cache)]
out = []
def line(what, vals, fmt="%.2f"):
    out.append("%-62s %s  [%s]" % (what, fmt % med(vals), ", ".join(fmt % v for v in vals)))
health = [r["cpu_ms"] * 1000 / res(r)["ops"] for r in by("health")]
line("bare grpc-go health: CPU per call at 3,000/s (us)", health, "%.1f")
for cache in ("on", "off"):
    c1 = by("c1", cache)
    line(f"cache {cache}: c=1 GetDecision p50 (us)", [res(r, 0)["latency_us"]["p50"] for r in c1], "%.0f")
    line(f"cache {cache}: c=1 floor p50 (us)", [res(r, 1)["latency_us"]["p50"] for r in c1], "%.0f")
    line(f"cache {cache}: c=1 GetDecision p50 / floor p50", [r["bench"]["floor_ratio"]["p50"] for r in c1])
    cpu = by("cpu", cache)
    per = [r["cpu_ms"] * 1000 / res(r)["ops"] for r in cpu]
    line(f"cache {cache}: nudged CPU per GetDecision at 3,000/s (us)", per, "%.1f")
    line(f"cache {cache}: ... / bare grpc-go health CPU per call", [p / med(health) for p in per])
    line(f"cache {cache}: server-side p99 at 3,000/s (ms)",
         [1000 * (hist_quantile(0.99, r["metrics_before"], r["metrics_after"]) or float("nan")) for r in cpu])
    line(f"cache {cache}: client p99 at 3,000/s (ms)", [res(r)["latency_us"]["p99"] / 1000 for r in cpu])
    paused = by("paused", cache)
    line(f"cache {cache}: p99 with Redis paused, budget 5ms (ms)", [res(r)["latency_us"]["p99"] / 1000 for r in paused])
    line(f"cache {cache}: max with Redis paused, budget 5ms (ms)", [res(r)["latency_us"]["max"] / 1000 for r in paused])
    line(f"cache {cache}: degraded share with Redis paused", [res(r)["degraded"] / max(1, res(r)["ops"]) for r in paused])
    line(f"cache {cache}: Zipf ingest (events/s)", [res(r)["events_per_sec"] for r in by("ingest", cache)], "%.0f")
on = [res(r)["events_per_sec"] for r in by("ingest", "on")]
off = [res(r)["events_per_sec"] for r in by("ingest", "off")]
out.append("Zipf ingest cache on / off (medians): %.2f" % (med(on) / med(off)))
for r in by("freshness"):
    l = res(r)["latency_us"]
    out.append("freshness, ack by A to a decision of B on it: p50 %.2f ms, p99 %.2f ms, max %.2f ms over %d events" % (
        l["p50"] / 1000, l["p99"] / 1000, l["max"] / 1000, res(r)["ops"]))
print("\n".join(out))
PY
