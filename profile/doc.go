// Package profile owns what nudge knows about a user: the model, its
// stored form, and the contract of whatever keeps it. It is pure: no
// Redis, no tracing, no clock reads.
//
//   - model.go: Profile holds event-time counts per (type, category) in
//     one-minute buckets, all-time totals, last-seen times, purchases,
//     consent per channel, remembered attributes, trigger cooldown marks,
//     sends, and the hashes of the event ids applied (for deduplication).
//     ApplyEvent, Count and Compact take the processing time as an argument.
//     Limits bound what a profile remembers; DefaultLimits are the
//     documented dedup horizon (24 h, 2048 ids) and retention (24 h +
//     1 min).
//   - reservation.go: decisions taken with reserve, holding cap slots.
//   - codec.go: Encode and Decode, the stored form: a version byte, then
//     protobuf wire format, so fields can be added and old readers skip
//     them.
//   - action.go: Action, and Step, the pure function a store runs inside a
//     transaction (profile + events -> new profile, results, actions, and
//     whether it changed anything); EventOutcome and BatchOutcome are what
//     a store answers.
//   - errors.go: the errors a store returns (ErrNotFound, ErrConflict,
//     ErrUnavailable, ErrCorrupt, *ReplicationError, *PanicError), which
//     server maps to gRPC codes.
//
// The Redis store is profile/redisstore: key layout, the one transaction
// engine, shards and cluster support.
//
// Concurrency: a Profile is not safe for concurrent use.
package profile
