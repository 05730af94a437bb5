#!/usr/bin/env bash
# The console's page times (BENCHMARKS.md, issue 20): nudged with the
# embedded store on free loopback ports, the demo's shopper and a crowd of
# CONSOLEBENCH_CROWD (200) shoppers, then CONSOLEBENCH_N (50) sequential
# GETs of each page with curl; prints the median and p95 of curl's
# time_total per page, in ms. Needs bin/nudged and bin/nudge-demo (make
# build, or go build -o bin/ ./cmd/nudged ./cmd/nudge-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-bin}
n=${CONSOLEBENCH_N:-50}
crowd=${CONSOLEBENCH_CROWD:-200}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc=127.0.0.1:$(free_port) http=127.0.0.1:$(free_port)
log=$(mktemp)
"$bin/nudged" --listen "$grpc" --http-listen "$http" --log-level warn 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
"$bin/nudge-demo" --addr "$grpc" --wait 15s --user bench-shopper --crowd "$crowd" >/dev/null
jar=$(mktemp)
curl -fsS -c "$jar" -b "$jar" -o /dev/null "http://$http/console/"
csrf=$(curl -fsS -c "$jar" -b "$jar" "http://$http/console/playground" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -1)
event='{"event_id":"b1","user_id":"bench-shopper","type":"view","category":"phones","occurred_at":"'$(date -u +%Y-%m-%dT%H:%M:%SZ)'"}'
measure() { # name, then curl arguments
  local name=$1; shift
  for _ in $(seq "$n"); do curl -fsS -c "$jar" -b "$jar" -o /dev/null -w '%{time_total}\n' "$@"; done |
    sort -n | awk -v name="$name" '{v[NR]=$1*1000} END {printf "%-28s median %6.2f ms  p95 %6.2f ms  (%d requests)\n", name, v[int((NR+1)/2)], v[int(NR*0.95+0.5)], NR}'
}
echo "console pages, $crowd crowd shoppers, $n sequential requests each (curl time_total)"
measure "overview" "http://$http/console/"
measure "overview charts (refresh)" "http://$http/console/overview/charts"
measure "campaigns" "http://$http/console/campaigns"
measure "user (demo shopper)" "http://$http/console/user?id=bench-shopper"
measure "playground (rules in force)" --data-urlencode "csrf=$csrf" --data-urlencode "event=$event" -H "Origin: http://$http" "http://$http/console/playground"
rm -f "$jar"
