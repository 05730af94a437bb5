// Package server implements nudge's gRPC services (IngestService,
// DecisionService, ProfileService, AdminService, ActionService) on a Store
// and a RuleSource, plus health, reflection, admission before any request
// is read (bearer tokens with roles, the receive bound; admission.go) and
// the interceptor chain (panic recovery, wire-level decoding errors,
// request ids, call logging, per-token rate limits; see NewGRPCServer).
//
// It owns the edges only, one file per concern:
//
//   - errors.go: every gRPC status, and the one map from domain errors
//     (profile, delivery, context) to codes (toStatus);
//   - budget.go: the decision budget: the read's share, the bound on reads
//     waiting on the store, and the breaker that stops reads to a store
//     that keeps failing (a problem of one user's key never opens it);
//   - ingest.go: validation of batches and the flow control of streams;
//     per-event results come from the store, in order;
//   - decide.go: reading profiles within the budget; every answer (fresh,
//     degraded, stale, reserved) is built by decision (Rules.Answer,
//     Rules.Reserve);
//   - actions.go, profiles.go, admin.go: the other services;
//   - features.go: features for models (GetFeatures: read as decisions
//     read, near-cache first; ExportFeatures: a scan of every profile,
//     ProfileScanner), evaluated by decision (Rules.EvalFeatures);
//   - logs.go: the admin RPCs that read logs back (the decision log,
//     the dead letters);
//   - groups.go: which consumer groups a token may use (Token.Groups),
//     checked by Subscribe and Ack;
//   - timers.go: RunTimers, the loop that polls the due index and fires
//     journey steps and deferred actions (Rules.FireStep) through the
//     store, and the journey metrics;
//   - server.go: Config (DefaultConfig), the Store interfaces narrowed per
//     service, the interceptor chain, draining.
//
// Profile arithmetic, transactions and rules live in profile,
// profile/redisstore and decision.
//
// Concurrency: a Server is safe for concurrent use and keeps no state
// between calls besides its configuration, metrics and read breaker; any
// number of servers can share one Redis. Each ingest stream has one
// goroutine that reads it, and up to Config.MaxInFlight goroutines applying
// its batches; all of them end before the stream's handler returns.
package server
