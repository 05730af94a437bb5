#!/usr/bin/env bash
# make demo: nudged with the embedded store on DEMO_ADDR (gRPC), DEMO_HTTP
# (HTTP/JSON) and DEMO_METRICS, then the scripted shopper (cmd/nudge-demo)
# against it, then a decision and the shopper's features asked with curl
# over HTTP/JSON. Stops nudged whatever happens. Fails at once, naming the
# port, when one is taken, so the demo never talks to another program.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-bin}
grpc=${DEMO_ADDR:-127.0.0.1:7071}
http=${DEMO_HTTP:-127.0.0.1:7081}
metrics=${DEMO_METRICS:-127.0.0.1:9091}

# taken HOST:PORT: something accepts connections there.
taken() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for a in "$grpc" "$http" "$metrics"; do
  if taken "$a"; then
    echo "make demo: $a is taken by another program (a nudged from make run?)." >&2
    echo "Stop it, or choose free ports: make demo DEMO_ADDR=127.0.0.1:7171 DEMO_HTTP=127.0.0.1:7181 DEMO_METRICS=127.0.0.1:9191" >&2
    exit 1
  fi
done

log=$(mktemp)
"$bin/nudged" --listen "$grpc" --http-listen "$http" --metrics-listen "$metrics" --log-level warn 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 150); do
  taken "$http" && break
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "make demo: nudged stopped at start-up:" >&2
    cat "$log" >&2
    exit 1
  fi
  sleep 0.1
done

"$bin/nudge-demo" --addr "$grpc" --wait 15s --metrics "http://$metrics/metrics" --user "${DEMO_USER:=demo-shopper-$((RANDOM * 32768 + RANDOM))}"

echo
echo "== The same decision over HTTP/JSON (curl; any language can):"
echo "curl -s -H 'Content-Type: application/json' -d '{\"user_id\":\"$DEMO_USER\",\"channel\":\"sms\",\"budget\":\"1s\"}' http://$http/nudge.v1.DecisionService/GetDecision"
curl -sS --max-time 10 -H 'Content-Type: application/json' \
  -d "{\"user_id\":\"$DEMO_USER\",\"channel\":\"sms\",\"budget\":\"1s\"}" \
  "http://$http/nudge.v1.DecisionService/GetDecision"
echo
echo
echo "== The shopper's features for a model (the rules' features: section, issue 19):"
echo "curl -s -H 'Content-Type: application/json' -d '{\"user_ids\":[\"$DEMO_USER\"]}' http://$http/nudge.v1.ProfileService/GetFeatures"
curl -sS --max-time 10 -H 'Content-Type: application/json' \
  -d "{\"user_ids\":[\"$DEMO_USER\"]}" \
  "http://$http/nudge.v1.ProfileService/GetFeatures"
echo
