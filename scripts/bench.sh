#!/usr/bin/env bash
# The standard benchmark set of BENCHMARKS.md (`make bench`), on one machine:
# builds nudged and nudge-bench, starts its own redis-server and nudged on
# free loopback ports, runs every workload BENCH_REPS times (default 3), one
# at a time, and rewrites the generated section of BENCHMARKS.md with
# scripts/benchtable.py. The raw JSON lines stay in a temporary directory,
# whose path is printed at the end.
#
# Knobs (environment):
#   BENCH_REPS=N   repetitions of each workload (default 3)
#   BENCH_QUICK=1  one repetition with short runs, to try the script out;
#                  the section it writes says so
#   BENCH_QUIET=S  wait at most S seconds (default 30) before each run for
#                  the machine to be idle; the table reports the CPU other
#                  processes took anyway (other load)
#   PYTHON=...     a python3 with redis-py, for the seed's Python pattern
#
# Not run in CI: a full run takes about 15 minutes and wants the machine to
# itself (the load generator, nudged and redis-server share its cores).
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD

quick=${BENCH_QUICK:-}
if [ -n "$quick" ]; then
  reps=${BENCH_REPS:-1}
  ingest_events=200000 py_sec=3 peer_dur=3s dec_dur=6s max_dur=5s act_dur=6s gobench_time=200ms timers=30000
else
  reps=${BENCH_REPS:-3}
  ingest_events=1000000 py_sec=10 peer_dur=8s dec_dur=20s max_dur=15s act_dur=20s gobench_time=1s timers=300000
fi
users=100000

work=$(mktemp -d -t nudge-bench.XXXXXX)
results=$work/results.jsonl
echo "bench: raw results in $work" >&2

# --- tools ----------------------------------------------------------------

bash scripts/ensure-tools.sh >/dev/null

# The seed's pattern needs redis-py. Debian's python3-redis serves the
# system interpreter; with pyenv on PATH, PYENV_VERSION=system selects it.
py=()
find_python() {
  local cand
  for cand in "${PYTHON:-}" "python3" "env PYENV_VERSION=system python3"; do
    [ -n "$cand" ] || continue
    # shellcheck disable=SC2086
    if $cand -c 'import redis' >/dev/null 2>&1; then
      read -r -a py <<<"$cand"
      return 0
    fi
  done
  return 1
}
if ! find_python; then
  echo "bench: redis-py not found: installing the Debian package python3-redis" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-redis >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-redis >/dev/null; }
  find_python || { echo "bench: no python3 with redis-py: install python3-redis or set PYTHON" >&2; exit 1; }
fi

echo "bench: building" >&2
go build -o "$work/bin/" ./cmd/nudged ./cmd/nudge-bench
bench_bin=$work/bin/nudge-bench

# --- processes ------------------------------------------------------------

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

redis_port=$(free_port)
redis_addr=127.0.0.1:$redis_port
redis_pid="" nudged_pid=""

cleanup() {
  if [ -n "$nudged_pid" ]; then kill "$nudged_pid" 2>/dev/null || true; wait "$nudged_pid" 2>/dev/null || true; fi
  if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --logfile "$work/redis.log" --dir "$work" &
redis_pid=$!
rcli() { redis-cli -p "$redis_port" "$@"; }
for _ in $(seq 100); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
rcli ping >/dev/null

# start_nudged (re)starts nudged on fresh ports, so that its peak RSS
# (VmHWM) and its metrics cover one run, and so that it forgets consumer
# groups a FLUSHALL removed.
start_nudged() {
  stop_nudged
  nudged_addr=127.0.0.1:$(free_port)
  metrics_addr=127.0.0.1:$(free_port)
  "$work/bin/nudged" --redis-addr "$redis_addr" --listen "$nudged_addr" \
    --http-listen off --metrics-listen "$metrics_addr" --log-level warn >>"$work/nudged.log" 2>&1 &
  nudged_pid=$!
  for _ in $(seq 150); do
    curl -fs "http://$metrics_addr/metrics" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench: nudged did not start; see $work/nudged.log" >&2
  exit 1
}
stop_nudged() {
  if [ -n "$nudged_pid" ]; then
    kill "$nudged_pid" 2>/dev/null || true
    wait "$nudged_pid" 2>/dev/null || true
    nudged_pid=""
  fi
}

# --- recording -------------------------------------------------------------

# record ROW REP CMD JSON [KEY=VALUE...]: one line of results.jsonl; the
# values are numbers or JSON.
record() {
  python3 - "$@" >>"$results" <<'EOF'
import json, sys
row, rep, cmd, line = sys.argv[1:5]
try:
    data = json.loads(line)
except ValueError:
    data = None
out = {"row": row, "rep": int(rep), "cmd": cmd, "data": data}
for kv in sys.argv[5:]:
    k, _, v = kv.partition("=")
    try:
        out[k] = json.loads(v)
    except ValueError:
        out[k] = v
print(json.dumps(out))
EOF
}

# nb ROW REP ARGS...: runs nudge-bench with --quiet; @NUDGED@ and @REDIS@ in
# ARGS stand for the addresses (and stay so in the recorded command).
# Records the JSON line (the last stdout line) whatever the exit status.
nb() {
  local row=$1 rep=$2
  shift 2
  local args=() a
  for a in "$@"; do
    a=${a//@NUDGED@/$nudged_addr}
    args+=("${a//@REDIS@/$redis_addr}")
  done
  local cmd="nudge-bench $* --quiet"
  cmd=${cmd//@NUDGED@/\$NUDGED}
  cmd=${cmd//@REDIS@/\$REDIS}
  echo "bench: [$row #$rep] $cmd" >&2
  local out rc=0
  meter_start
  out=$("$bench_bin" "${args[@]}" --quiet 2>>"$work/nudge-bench.stderr") || rc=$?
  meter_end
  printf '%s\n' "$out" >>"$work/nudge-bench.stdout"
  last_json=$(printf '%s\n' "$out" | tail -n 1)
  last_cmd=$cmd
  last_rc=$rc
  if [ "$rc" -ne 0 ]; then echo "bench: [$row #$rep] exit status $rc" >&2; fi
}

used_memory() { rcli info memory | tr -d '\r' | sed -n 's/^used_memory:\([0-9]*\)$/\1/p'; }
profile_keys() { rcli --scan --pattern 'nudge:*:p:*' | wc -l; }
vm_hwm_kb() { sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$nudged_pid/status"; }
scrape() { curl -fs "http://$metrics_addr/metrics" | grep '^rpc_server_call_duration_seconds_bucket{.*GetDecision' || true; }
json_lines() { python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().splitlines()))'; }

# Other load: the CPU the whole machine used during a run minus what
# nudged, redis-server and this script's children (the load generators)
# used, in cores. Other engineers' processes on a shared machine show here.
clk=$(getconf CLK_TCK)
busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
pid_jiffies() {
  local s=0 p
  for p in "$@"; do
    if [ -n "$p" ] && [ -r "/proc/$p/stat" ]; then s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat"))); fi
  done
  echo "$s"
}
# children_ms FILE: user+system CPU of this shell's finished children, in
# ms, from the output of `times` (which must run in this shell, not in a
# command substitution's subshell: that one has no children yet).
children_ms() {
  tail -n 1 "$1" | awk '{t=0; for (i=1;i<=2;i++) {split($i,a,"m"); sub("s","",a[2]); t+=a[1]*60+a[2]} printf "%d\n", t*1000}'
}
# wait_quiet waits, at most $BENCH_QUIET seconds (default 30), for one
# second with the machine at least 90 % idle, as the peers' cpurun.py does,
# so that a run does not start on top of someone else's load.
wait_quiet() {
  local deadline=$((SECONDS + ${BENCH_QUIET:-30})) a b
  while :; do
    a=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6; exit}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu /{print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6; exit}' /proc/stat)
    if awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); exit !((y[2]-x[2]) >= 0.9 * (y[1]-x[1])) }'; then
      return 0
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "bench: the machine is busy (other processes); running anyway, see other_cores" >&2
      return 0
    fi
  done
}
meter_start() {
  wait_quiet
  times >"$work/times0"
  m_t0=$(date +%s%N) m_busy0=$(busy_jiffies) m_pids0=$(pid_jiffies "$nudged_pid" "$redis_pid")
}
# meter_end sets last_meter to (other_cores=... own_cores=...) for record.
meter_end() {
  local t1 busy1 pids1
  times >"$work/times1"
  t1=$(date +%s%N) busy1=$(busy_jiffies) pids1=$(pid_jiffies "$nudged_pid" "$redis_pid")
  read -r -a last_meter <<<"$(awk -v dt="$((t1 - m_t0))" -v busy="$((busy1 - m_busy0))" -v pids="$((pids1 - m_pids0))" \
    -v child="$(($(children_ms "$work/times1") - $(children_ms "$work/times0")))" -v clk="$clk" 'BEGIN {
      s = dt / 1e9; own = pids / clk + child / 1000; all = busy / clk
      other = all - own; if (other < 0) other = 0
      printf "other_cores=%.2f own_cores=%.2f\n", other / s, own / s }')"
}

# --- the runs ---------------------------------------------------------------

start_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)

for rep in $(seq "$reps"); do
  # a, b: ingest, Zipf and uniform users, from an empty Redis and a fresh
  # nudged each time.
  for dist in zipf uniform; do
    rcli flushall >/dev/null
    start_nudged
    mem0=$(used_memory)
    nb "ingest-$dist" "$rep" --workload ingest --addr @NUDGED@ --events "$ingest_events" --users "$users" \
      --dist "$dist" --streams 4 --batch 500 --verify --redis-addr @REDIS@
    mem1=$(used_memory)
    record "ingest-$dist" "$rep" "$last_cmd" "$last_json" rc="$last_rc" "${last_meter[@]}" \
      used_memory_before="$mem0" used_memory_after="$mem1" profiles="$(profile_keys)" \
      nudged_vm_hwm_kb="$(vm_hwm_kb)"
  done

  # c: the seed's Python pattern and the per-event WATCH floor in Go.
  rcli flushall >/dev/null
  stop_nudged
  for procs in 1 2; do
    cmd="scripts/seed_txn.py --redis-addr \$REDIS --users $users --events 1000000 --procs $procs --maxsec $py_sec"
    echo "bench: [seed-py-$procs #$rep] $cmd" >&2
    meter_start
    out=$("${py[@]}" scripts/seed_txn.py --redis-addr "$redis_addr" --users "$users" --events 1000000 \
      --procs "$procs" --maxsec "$py_sec" 2>>"$work/seed.stderr" | tail -n 1) || true
    meter_end
    record "seed-py-$procs" "$rep" "$cmd" "$out" "${last_meter[@]}"
  done
  for dist in zipf uniform; do
    nb "peer-watch-$dist" "$rep" --workload peer-watch --redis-addr @REDIS@ --users "$users" --dist "$dist" \
      --concurrency 64 --events 1000000 --duration "$peer_dur"
    record "peer-watch-$dist" "$rep" "$last_cmd" "$last_json" rc="$last_rc" "${last_meter[@]}"
  done

  # f: event-to-action latency, from an empty outbox.
  rcli flushall >/dev/null
  start_nudged
  nb actions "$rep" --workload actions --addr @NUDGED@ --ingest-rate 10000 --duration "$act_dur" --verify
  record actions "$rep" "$last_cmd" "$last_json" rc="$last_rc" "${last_meter[@]}"

  # h: journeys: timers due at 10,000/s while 5,000 views/s are ingested
  # (the bundled cart-abandoned journey, wait 1h).
  rcli flushall >/dev/null
  start_nudged
  nb timers "$rep" --workload timers --addr @NUDGED@ --redis-addr @REDIS@ --timers "$timers" --timer-rate 10000 \
    --timer-lead 20s --verify
  record timers "$rep" "$last_cmd" "$last_json" rc="$last_rc" "${last_meter[@]}"
done

# d, e: decisions over 100,000 seeded profiles (seeded once).
rcli flushall >/dev/null
start_nudged
nb seed 0 --workload decide --addr @NUDGED@ --users "$users" --seed --rate 100 --duration 1s
record seed 0 "$last_cmd" "$last_json" rc="$last_rc" "${last_meter[@]}"
for rep in $(seq "$reps"); do
  before=$(scrape | json_lines)
  nb decide-floor "$rep" --workload decide,floor --addr @NUDGED@ --redis-addr @REDIS@ --users "$users" \
    --rate 5000 --duration "$dec_dur" --rounds 2
  after=$(scrape | json_lines)
  record decide-floor "$rep" "$last_cmd" "$last_json" rc="$last_rc" "${last_meter[@]}" metrics_before="$before" metrics_after="$after"
done
for rep in $(seq "$reps"); do
  nb decide-max "$rep" --workload decide --addr @NUDGED@ --users "$users" --rate 0 --concurrency 16 --duration "$max_dur"
  record decide-max "$rep" "$last_cmd" "$last_json" rc="$last_rc" "${last_meter[@]}"
done
stop_nudged

# g: the pure hot paths (no Redis).
gocmd="go test -run '^\$' -bench 'Encode|Decode|ApplyEvent|Step|Decide' -benchmem -benchtime $gobench_time -count $reps ./profile/ ./decision/"
echo "bench: [go] $gocmd" >&2
go test -run '^$' -bench 'Encode|Decode|ApplyEvent|Step|Decide' -benchmem -benchtime "$gobench_time" -count "$reps" \
  ./profile/ ./decision/ >"$work/gobench.txt" 2>&1 || echo "bench: go test -bench failed; see $work/gobench.txt" >&2
record gobench 0 "$gocmd" "null" output="$(json_lines <"$work/gobench.txt")"

# --- the machine, and the table ----------------------------------------------

cpu_model=$(sed -n 's/^model name[[:space:]]*:[[:space:]]*//p' /proc/cpuinfo | head -n 1)
python3 - "$work/meta.json" <<EOF
import json, sys
json.dump({
    "date": "$start_date",
    "end": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "nproc": "$(nproc)",
    "cpu": """$cpu_model""",
    "kernel": "$(uname -sr)",
    "go": "$(go version)",
    "redis": "$(redis-server --version)",
    "git_describe": "$(git describe --always --dirty 2>/dev/null || echo unknown)",
    "git_commit": "$(git rev-parse HEAD 2>/dev/null || echo unknown)",
    "reps": $reps,
    "quick": bool("$quick"),
}, open(sys.argv[1], "w"), indent=1)
EOF

python3 scripts/benchtable.py --meta "$work/meta.json" --results "$results" --gobench "$work/gobench.txt" \
  --out BENCHMARKS.md
echo "bench: BENCHMARKS.md updated; raw results in $work" >&2
