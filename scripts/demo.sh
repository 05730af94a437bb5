#!/usr/bin/env bash
# make demo: nudged with the embedded store on DEMO_ADDR (gRPC), DEMO_HTTP
# (HTTP/JSON) and DEMO_METRICS, then the scripted shopper (cmd/nudge-demo)
# against it, then a decision and the shopper's features asked with curl
# over HTTP/JSON, and the address of the web console. A simulated crowd of
# DEMO_CROWD shoppers (200) leaves the console something to show. On a
# terminal nudged then keeps serving until Ctrl-C (DEMO_KEEP=0: stop at
# once; DEMO_KEEP=1: keep serving without a terminal too); it is stopped
# whatever happens. Fails at once, naming the port, when one is taken, so
# the demo never talks to another program.
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

"$bin/nudge-demo" --addr "$grpc" --wait 15s --metrics "http://$metrics/metrics" --user "${DEMO_USER:=demo-shopper-$((RANDOM * 32768 + RANDOM))}" --crowd "${DEMO_CROWD:-200}"

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

echo
echo "== The web console (overview, campaigns, a user, rules playground, live actions):"
echo "   http://$http/console/"
echo "   the demo shopper: http://$http/console/user?id=$DEMO_USER"
echo "   (no tokens are configured in the demo, so the console asks for no sign-in)"
keep=${DEMO_KEEP:-}
if [[ -z $keep ]]; then
  if [[ -t 0 && -t 1 ]]; then keep=1; else keep=0; fi
fi
if [[ $keep == 1 ]]; then
  echo
  echo "nudged keeps serving with the embedded store; press Ctrl-C to stop it (the data goes with it)."
  trap 'echo; echo "stopping nudged"; exit 0' INT TERM
  wait $pid || { echo "make demo: nudged stopped:" >&2; cat "$log" >&2; exit 1; }
fi
