#!/usr/bin/env bash
# The HTTP/JSON figures of BENCHMARKS.md (issue 18, `make bench-http`):
# builds nudged and nudge-bench, starts its own redis-server on a free
# loopback port and one nudged with its HTTP listener, seeds 100,000
# profiles, then for HTTPBENCH_REPS rounds (default 3):
#
#   c1     GetDecision at c=1 (closed loop, 10 s), over HTTP/JSON (Connect,
#          keep-alive HTTP/1.1) and over gRPC, alternating (decide-http,decide
#          --rounds 2): p50 and p99 of each and their ratios;
#   r2000  the same at 2,000 calls/s from 16 callers (open loop): p50, p99.
#
# It prints the medians over the rounds and leaves the raw JSON lines in a
# temporary directory whose path it prints. Not run in CI: about 2 minutes
# with the machine to itself.
set -euo pipefail

cd "$(dirname "$0")/.."
reps=${HTTPBENCH_REPS:-3}
users=100000
work=$(mktemp -d -t nudge-httpbench.XXXXXX)
echo "httpbench: raw results in $work" >&2
go build -o "$work/bin/" ./cmd/nudged ./cmd/nudge-bench
bench=$work/bin/nudge-bench
. scripts/lib.sh
start_redis
http_addr=127.0.0.1:$(free_port)
start_nudged a --redis-addr "$redis_addr" --http-listen "$http_addr"
nb() { "$bench" --quiet "$@" 2>>"$work/bench.stderr" | tail -n 1; }
nb --workload decide --addr "$a_addr" --users "$users" --seed --rate 100 --duration 1s >/dev/null
for rep in $(seq "$reps"); do
  echo "httpbench: round $rep of $reps" >&2
  nb --workload decide-http,decide --addr "$a_addr" --http-addr "$http_addr" --users "$users" \
    --rate 0 --concurrency 1 --duration 10s --rounds 2 >>"$work/c1.jsonl"
  nb --workload decide-http,decide --addr "$a_addr" --http-addr "$http_addr" --users "$users" \
    --rate 2000 --concurrency 16 --duration 10s --rounds 2 >>"$work/r2000.jsonl"
done

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
for kind in ("c1", "r2000"):
    rows = [json.loads(l) for l in open(f"{work}/{kind}.jsonl")]
    def q(name, key):
        return [next(r for r in row["results"] if r["name"] == name)["latency_us"][key] for row in rows]
    for key in ("p50", "p99"):
        h, g = q("decide-http", key), q("decide", key)
        ratios = [a / b for a, b in zip(h, g)]
        print(f"{kind:6} {key}: HTTP/JSON {statistics.median(h):.0f} us, gRPC {statistics.median(g):.0f} us, "
              f"ratio {statistics.median(ratios):.2f} [{', '.join(f'{r:.2f}' for r in ratios)}]")
    errors = sum(r["errors_total"] for row in rows for r in row["results"])
    degraded = {n: sum(r["degraded"] for row in rows for r in row["results"] if r["name"] == n) for n in ("decide-http", "decide")}
    print(f"{kind:6} call errors {errors}, degraded {degraded}")
PY
