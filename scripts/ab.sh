#!/usr/bin/env bash
# A/B of two nudged builds on decisions, interleaved so that the machine's
# drift hits both alike (BENCHMARKS.md, issue 13). Both serve one
# redis-server (started here on a free loopback port) holding the same
# 100,000 profiles; each round starts each build afresh, warms it up for
# 3 s, measures, and stops it. Prints one line per build and round.
#
#   scripts/ab.sh OLD_NUDGED NEW_NUDGED NUDGE_BENCH
#
# Knobs (environment):
#   AB_MODE=cpu    nudged's CPU time (utime+stime) per decision at AB_RATE/s
#                  (default 3000) for AB_DUR (default 10s)
#   AB_MODE=max    closed-loop decisions/s with 16 callers for AB_DUR
#   AB_MODE=floor  GetDecision vs its floor (health check + one GET) at
#                  5,000/s: p50 and p99 ratios
#   AB_MODE=ingest events/s of AB_EVENTS (default 300000) Zipf events over
#                  100,000 users, 4 streams of 500-event batches, exactly
#                  once checked (--verify), from an empty Redis each time;
#                  and the profiles' size: Redis used_memory growth per
#                  profile key (outbox included) and the mean stored
#                  profile (STRLEN of 2,000 profile keys)
#   AB_ROUNDS=N    rounds (default 4); AB_ORDER="b a" to start with NEW
set -euo pipefail
[ $# -eq 3 ] || { sed -n '2,18p' "$0" >&2; exit 2; }
declare -A bin=([a]=$1 [b]=$2)
nb=$3
mode=${AB_MODE:-cpu} rounds=${AB_ROUNDS:-4} dur=${AB_DUR:-10s} rate=${AB_RATE:-3000}
work=$(mktemp -d -t nudge-ab.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rp=$(free_port)
redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no >"$work/redis.log" 2>&1 &
rpid=$! npid=
trap 'kill $rpid $npid 2>/dev/null || true' EXIT
for _ in $(seq 50); do redis-cli -p "$rp" ping >/dev/null 2>&1 && break; sleep 0.1; done
start() {
  np=$(free_port) mp=$(free_port)
  "${bin[$1]}" --redis-addr "127.0.0.1:$rp" --listen "127.0.0.1:$np" --metrics-listen "127.0.0.1:$mp" --log-level warn >>"$work/nudged.log" 2>&1 &
  npid=$!
  for _ in $(seq 150); do curl -fs "http://127.0.0.1:$mp/metrics" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "ab: nudged did not start; see $work/nudged.log" >&2; exit 1
}
stop() { kill "$npid"; wait "$npid" 2>/dev/null || true; npid=; }
ticks() { awk '{print $14+$15}' "/proc/$npid/stat"; }
start b
"$nb" --workload decide --addr "127.0.0.1:$np" --users 100000 --seed --rate 100 --duration 1s --quiet >/dev/null
stop
for r in $(seq "$rounds"); do
  for v in ${AB_ORDER:-a b}; do
    if [ "$mode" = ingest ]; then
      redis-cli -p "$rp" flushall >/dev/null
      mem0=$(redis-cli -p "$rp" info memory | tr -d '\r' | sed -n 's/^used_memory:\([0-9]*\)$/\1/p')
      start "$v"
      out=$("$nb" --workload ingest --addr "127.0.0.1:$np" --redis-addr "127.0.0.1:$rp" --events "${AB_EVENTS:-300000}" \
        --users 100000 --dist zipf --streams 4 --batch 500 --verify --quiet | tail -n 1)
      stop
      mem1=$(redis-cli -p "$rp" info memory | tr -d '\r' | sed -n 's/^used_memory:\([0-9]*\)$/\1/p')
      redis-cli -p "$rp" --scan --pattern 'nudge:{*}:p:*' >"$work/keys"
      keys=$(wc -l <"$work/keys")
      strlen=$(sed -n '1,2000s/^/STRLEN /p' "$work/keys" | redis-cli -p "$rp" | awk '{s+=$1; n++} END {if (n) printf "%.0f", s/n}')
      python3 - "$v" "$r" "$out" "$mem0" "$mem1" "$keys" "$strlen" <<'PY'
import json, sys
v, r, out, mem0, mem1, keys, strlen = sys.argv[1:]
rep = json.loads(out)
i = {x["name"]: x for x in rep["results"]}["ingest"]
checks = " ".join(f"{c['name']}={'ok' if c['ok'] else 'FAILED'}" for c in rep.get("checks") or [])
name = {"a": "old", "b": "new"}[v]
bpp = (int(mem1) - int(mem0)) / max(int(keys), 1)
print(f"{name} round {r}: {i['events_per_sec']:.0f} events/s, {i['applied']} applied, {checks}; "
      f"{int(keys)} profiles, {bpp:.0f} B of used_memory per profile, stored profile {strlen} B on average")
PY
      continue
    fi
    start "$v"
    "$nb" --workload decide --addr "127.0.0.1:$np" --users 100000 --rate 2000 --duration 3s --quiet >/dev/null
    t0=$(ticks)
    case $mode in
      cpu) args=(--workload decide --rate "$rate") ;;
      max) args=(--workload decide --rate 0 --concurrency 16) ;;
      floor) args=(--workload decide,floor --redis-addr "127.0.0.1:$rp" --rate 5000 --rounds 1) ;;
      *) echo "ab: AB_MODE $mode: want cpu, max, floor or ingest" >&2; exit 2 ;;
    esac
    out=$("$nb" "${args[@]}" --addr "127.0.0.1:$np" --users 100000 --duration "$dur" --quiet | tail -n 1)
    t1=$(ticks)
    stop
    python3 - "$mode" "$v" "$r" "$out" "$t0" "$t1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
mode, v, r, out, t0, t1, hz = sys.argv[1:]
res = {x["name"]: x for x in json.loads(out)["results"]}
d = res["decide"]
name = {"a": "old", "b": "new"}[v]
if mode == "cpu":
    cpu = (int(t1) - int(t0)) / int(hz)
    print(f"{name} round {r}: {d['ops']} decisions, nudged CPU {cpu:.2f} s = {cpu / d['ops'] * 1e6:.0f} us per decision, degraded {d.get('degraded', 0)}")
elif mode == "max":
    print(f"{name} round {r}: {d['ops_per_sec']:.0f} decisions/s, p99 {d['latency_us']['p99'] / 1000:.2f} ms")
else:
    dl, fl = d["latency_us"], res["floor"]["latency_us"]
    print(f"{name} round {r}: p50 {dl['p50']:.0f} us vs floor {fl['p50']:.0f} ({dl['p50'] / fl['p50']:.2f}x), p99 {dl['p99']:.0f} vs {fl['p99']:.0f} ({dl['p99'] / fl['p99']:.2f}x), degraded {d.get('degraded', 0)}")
PY
  done
done
