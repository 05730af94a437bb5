// Package client is the Go client of nudge: decisions (Decide,
// DecideBatch), reliable event ingestion (Publisher), action delivery
// (Subscribe) and features for models (GetFeatures) over gRPC.
//
// # Connecting
//
// Dial returns a Client for a target. WithTLS and WithInsecure choose the
// transport; without either, loopback targets are plaintext and others use
// TLS with the system roots. WithToken sends a bearer token with every call,
// over TLS only unless WithInsecure opts in to plaintext explicitly.
//
// # Publishing events
//
// A Publisher batches events (MaxBatch, default 500, or what arrived within
// Linger, default 5ms) and sends the batches on one IngestService stream,
// with at most MaxInFlight (default 8) unacknowledged at a time. When the
// window is full and the next batch is complete, Publish blocks, or returns
// ErrFull with NonBlocking: memory is bounded by about
// (MaxInFlight+2) × MaxBatch events.
//
// Every batch is kept until the server acknowledges it. When the stream
// fails (UNAVAILABLE when a server drains or loses Redis, a transport error,
// a restart), the publisher opens a new one after a jittered exponential
// backoff (ReconnectBackoff) and sends every unacknowledged batch again,
// with the same event ids: the server's deduplication answers DUPLICATE for
// the events it had applied, so each event counts exactly once (within the
// dedup horizon documented in the README). Stats counts the re-sent events
// (Resent) and the new streams (Reconnects).
//
// A batch the server refuses as a whole with INVALID_ARGUMENT (today: more
// than 5000 events, see MaxBatch) is never retried: each of its events is
// given to OnError and dropped. Invalid single events are not errors: the
// server answers them REJECTED with a reason, like any result. A refused
// token (UNAUTHENTICATED, PERMISSION_DENIED) stops the publisher for good:
// retrying cannot help until the configuration changes, so every event it
// holds goes to OnError and Publish and Flush return the error. Every other
// failure is retried until Close, after the server's RetryInfo delay when it
// sends one (a rate limit), else with a jittered exponential backoff.
//
// Flush waits until every event published before it is acknowledged. Close
// flushes, then stops the stream; events it had to give up on (its context
// ended) go to OnError with ErrClosed.
//
// # Concurrency contract
//
// Client, and Publisher's Publish, Flush and Stats, are safe for concurrent
// use. Close may be called once from any goroutine; Publish and Flush after
// or during it return ErrClosed (an event accepted while Close is giving up
// goes to OnError). The callbacks OnResult, OnAction and OnError run on the
// publisher's own goroutine, one at a time, in the order the responses
// arrive (across batches that is not publishing order): they must return
// quickly and must not call Publish, Flush or Close of the same publisher,
// which would wait for that very goroutine. A Publisher owns two goroutines
// per stream plus one for itself; Close stops all of them. Close every
// Publisher before Client.Close.
//
// # Receiving actions
//
// Subscribe runs a Handler for every action delivered to one member of a
// consumer group (ActionService), one at a time, and acknowledges the
// actions the handler returns nil for. An action the handler fails on is
// left unacknowledged and comes back after the server's visibility timeout
// with a higher delivery count, until the server moves it to the
// dead-letter stream. Delivery is at least once: deduplicate on ActionId.
// Subscribe reconnects after a broken stream and returns when its context
// ends. Give each member a stable name (Consumer) so that after a restart
// its unacknowledged actions are found. Acks name the member each action
// was delivered to (the server acknowledges only that member's
// deliveries), so an action redelivered to another member after the
// visibility timeout is that member's to acknowledge. Against a server
// with tokens, the token needs the subscribe role and the group among its
// groups.
package client
