#!/usr/bin/env bash
# The features figures of BENCHMARKS.md (issue 19, `make bench-features`):
# builds nudged and nudge-bench, starts its own redis-server on a free
# loopback port and one nudged with the bundled rules (their features
# section), seeds FEATURESBENCH_USERS profiles (default 100,000) with 20
# events each (views, clicks, carts, purchases) spread over the last 89
# days, then for FEATURESBENCH_REPS rounds (default 3) asks
# ProfileService/GetFeatures for every feature of the rules for batches of
# 1, 10 and 100 users drawn uniformly, each batch size for
# FEATURESBENCH_DURATION (default 10s), closed loop:
#
#   c1   one caller: the latency of a call alone;
#   c8   8 callers: the latency under load, and the users served per second.
#
# Every run is verified (--verify): no call error, no row with a feature
# error. It prints the medians over the rounds, the ranges of p99 and
# users/s in brackets, and leaves the raw JSON lines in a temporary
# directory whose path it prints. Not run in CI: about 4 minutes with the
# machine to itself.
set -euo pipefail

cd "$(dirname "$0")/.."
reps=${FEATURESBENCH_REPS:-3}
users=${FEATURESBENCH_USERS:-100000}
duration=${FEATURESBENCH_DURATION:-10s}
work=$(mktemp -d -t nudge-featuresbench.XXXXXX)
echo "featuresbench: raw results in $work" >&2
go build -o "$work/bin/" ./cmd/nudged ./cmd/nudge-bench
# FEATURESBENCH_NUDGED: a nudged binary to measure instead (an A/B).
if [ -n "${FEATURESBENCH_NUDGED:-}" ]; then cp "$FEATURESBENCH_NUDGED" "$work/bin/nudged"; fi
bench=$work/bin/nudge-bench
. scripts/lib.sh
start_redis
# FEATURESBENCH_NUDGED_ARGS: more nudged flags (e.g. --near-cache-mib 0).
start_nudged a --redis-addr "$redis_addr" ${FEATURESBENCH_NUDGED_ARGS:-}
nb() {
  "$bench" --quiet --workload features --addr "$a_addr" --users "$users" --dist uniform --verify "$@" \
    2>>"$work/bench.stderr" | tail -n 1
}
echo "featuresbench: seeding $users profiles" >&2
nb --seed --seed-events 20 --batch-sizes 1 --duration 1s >"$work/seed.jsonl"
grep seeded "$work/bench.stderr" >&2
for rep in $(seq "$reps"); do
  echo "featuresbench: round $rep of $reps" >&2
  for c in 1 8; do
    nb --batch-sizes 1,10,100 --concurrency "$c" --duration "$duration" --rounds 1 >>"$work/c$c.jsonl"
  done
done

python3 - "$work" <<'PY'
import json, statistics, sys
work = sys.argv[1]
med = statistics.median
print(f"{'mode':4} {'batch':>5} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>20} {'max ms':>7} {'calls/s':>8} {'users/s':>26}")
for kind in ("c1", "c8"):
    rows = [json.loads(l) for l in open(f"{work}/{kind}.jsonl")]
    for size in rows[0]["features"]["batch_sizes"]:
        res = [next(r for r in row["results"] if r["name"] == f"features-{size}") for row in rows]
        lat = lambda k: [r["latency_us"][k] / 1000 for r in res]
        p99 = lat("p99")
        users = [r["ops_per_sec"] * size for r in res]
        print(f"{kind:4} {size:>5} {med(lat('p50')):>7.2f} {med(lat('p90')):>7.2f} "
              f"{med(p99):>7.2f} [{min(p99):.2f}..{max(p99):.2f}] {med(lat('max')):>7.2f} "
              f"{med(r['ops_per_sec'] for r in res):>8.0f} {med(users):>8.0f} [{min(users):.0f}..{max(users):.0f}]")
    f = rows[-1]["features"]
    print(f"{kind:4} features {','.join(f['served'])}; rows {sum(r['features']['rows'] for r in rows)}, "
          f"row errors {sum(r['features']['row_errors'] for r in rows)}, "
          f"not found {sum(r['features']['not_found'] for r in rows)}, "
          f"client cores {med(r['client_cores'] for r in rows):.2f}")
PY
