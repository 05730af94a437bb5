// Command nudge-bench is nudge's load generator. It runs one workload
// against a nudged and prints progress once a second on stderr, then a
// summary (throughput, latency quantiles, errors by gRPC code, degraded
// answers) and one JSON line for scripts on stdout:
//
//   - ingest: --events view events over --users users (Zipf or uniform)
//     on --streams IngestService/Stream calls, --batch events per batch,
//     --inflight batches in flight per stream. Latency: a batch's send to
//     its response. --verify checks exactly once: every event applied (or
//     duplicate) and none rejected, and with --redis-addr that the users'
//     view totals in Redis grew by the events sent.
//   - decide: GetDecision at --rate calls/s for --duration, open loop: each
//     call is due at a fixed time and its latency runs from then, so a
//     stall counts against every call it delays (no coordinated omission).
//     --rate 0: as fast as --concurrency callers go.
//   - floor: the same pacing, each call the server's gRPC health check plus
//     one Redis GET of the user's profile key: what GetDecision cannot beat.
//     decide,floor runs both, alternating --rounds times, each for
//     --duration/--rounds, and prints decide's p50 and p99 over floor's.
//   - mixed: ingest at --ingest-rate events/s and decide at --rate, at once.
//   - actions: event-to-action latency. Events at --ingest-rate (default
//     10,000/s, open loop, batches of 100) for --duration, built so that
//     the bundled trigger fires once per --action-every events (a fresh
//     user views one category 3 times), while --subscribers members of
//     --group receive and acknowledge the actions through the client's
//     Subscribe. An action's latency runs from the send of the event that
//     fired it (its event_id) to its arrival at a subscriber; the run
//     waits up to --grace for stragglers and reports actions fired
//     (per the ingest responses) against received.
//   - features: ProfileService/GetFeatures for --batch-sizes users per
//     call (1,10,100), each size a result of its own with its latency
//     quantiles, in turn for --rounds rounds, each size for --duration in
//     all; closed loop from --concurrency callers unless --rate is given
//     (calls/s per size). --features names the features (default: all of
//     the rules). --verify checks that no row has a feature error and,
//     with --seed, that every user has a profile; --seed writes
//     --seed-events events per user (views, clicks, carts, purchases)
//     spread over the --seed-span before now.
//   - peer-watch: no nudged; the seed's per-event optimistic transaction in
//     Go against --redis-addr (Client.Watch, GET, TxPipelined SET of a
//     small JSON blob, retried on redis.TxFailedErr up to 100 times) from
//     --concurrency workers until --events or --duration, then a check that
//     the blobs' counts grew by exactly the committed events: the floor the
//     ingest figures are compared with.
//
// --seed writes one profile per user through Publish before decide. The
// connection flags (--token or $NUDGE_TOKEN, --tls, --ca-file, --insecure)
// are those of nudgectl and nudge-demo.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.Getenv)) }
