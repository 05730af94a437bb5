// Package server implements nudge's gRPC services (IngestService,
// DecisionService, ProfileService, AdminService, ActionService) on a Store
// and a RuleSource, plus health, reflection, the interceptor chain (panic
// recovery, wire-level decoding errors, request ids, call logging, bearer
// tokens with roles, per-token rate limits; see NewGRPCServer) and the
// metrics of the calls.
//
// It owns the edges only: validating requests (protovalidate), mapping
// domain errors to status codes (toStatus, the single place that does),
// flow control of ingest streams, the GetDecision budget and fallback, and
// graceful draining. Profile arithmetic and rules live in profile and
// decision.
//
// Concurrency: a Server is safe for concurrent use and keeps no state
// between calls besides its configuration and metrics; any number of
// servers can share one Redis. Each ingest stream has one goroutine that
// reads it, and up to Config.MaxInFlight goroutines applying its batches;
// all of them end before the stream's handler returns.
package server
