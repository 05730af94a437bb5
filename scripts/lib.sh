# Helpers of the benchmark scripts that start their own redis-server and
# nudged on free loopback ports (shoppers.sh, nearcache.sh). Source it
# after setting work (a temporary directory holding bin/nudged); it sets
# an EXIT trap that stops what it started.

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

started_pids=()
stop_started() {
  local p
  for p in "${started_pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}
trap stop_started EXIT
trap 'exit 130' INT TERM

# start_redis: a redis-server without persistence; sets redis_port,
# redis_addr and redis_pid. rcli runs redis-cli against it.
start_redis() {
  redis_port=$(free_port)
  redis_addr=127.0.0.1:$redis_port
  redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --logfile "$work/redis.log" --dir "$work" &
  redis_pid=$!
  started_pids+=("$redis_pid")
  for _ in $(seq 100); do rcli ping >/dev/null 2>&1 && break; sleep 0.1; done
  rcli ping >/dev/null
}
rcli() { redis-cli -p "$redis_port" "$@"; }

# start_nudged NAME ARGS...: nudged with ARGS on free ports, logging to
# $work/NAME.log; sets NAME_pid, NAME_addr and NAME_metrics (host:port of
# /metrics) once /metrics answers. A running NAME is stopped first.
start_nudged() {
  local name=$1 addr metrics pid
  shift
  stop_nudged "$name"
  addr=127.0.0.1:$(free_port)
  metrics=127.0.0.1:$(free_port)
  "$work/bin/nudged" --listen "$addr" --http-listen off --metrics-listen "$metrics" --log-level warn "$@" >>"$work/$name.log" 2>&1 &
  pid=$!
  started_pids+=("$pid")
  printf -v "${name}_pid" %s "$pid"
  printf -v "${name}_addr" %s "$addr"
  printf -v "${name}_metrics" %s "$metrics"
  for _ in $(seq 150); do
    curl -fs "http://$metrics/metrics" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "nudged $name did not start; see $work/$name.log" >&2
  exit 1
}

# stop_nudged NAME: stops the nudged NAME started, if it runs.
stop_nudged() {
  local var="${1}_pid"
  local pid=${!var:-}
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  printf -v "$var" %s ""
}

# cpu_ms PID: the user+system CPU the process used so far, in ms.
cpu_ms() { awk -v hz="$(getconf CLK_TCK)" '{print int(($14+$15)*1000/hz)}' "/proc/$1/stat"; }
