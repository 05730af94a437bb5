// Package profile owns what nudge knows about a user, and where it is kept.
//
// The model is pure: Profile holds event-time counts per (type, category)
// in one-minute buckets, all-time totals, last-seen times, purchases,
// consent per channel, remembered attributes, trigger cooldown marks, and
// the hashes of the event ids applied (for deduplication). ApplyEvent,
// Count and Compact take the processing time as an argument and never read
// a clock. Limits bound what a profile remembers; its defaults are the
// documented dedup horizon (24 h, 2048 ids) and retention (24 h + 1 min).
//
// Encode and Decode are the stored form: a version byte, then protobuf wire
// format, so fields can be added and old readers skip them.
//
// RedisStore keeps profiles and the outbox streams in Redis under the key
// layout of DESIGN.md (nudge:{bucket}:p:<user>, nudge:{bucket}:out). Apply
// takes a batch of users' events and a pure Step, and hides
// WATCH/MULTI/EXEC, retries and backoff: callers never see Redis commands.
//
// Apply commits a batch's users in groups (Options.MaxGroupUsers, default
// 64): one WATCH over the group's keys pipelined with one MGET, a pure step
// per user, and one MULTI/EXEC with every write; an aborted EXEC splits the
// group and retries its halves.
//
// Concurrency: a Profile is not safe for concurrent use; a RedisStore is.
// Apply runs up to Options.Parallelism groups at once, and serialises the
// transactions of one process on one user (Options.UserLocks), so WATCH
// only ever fails because of another process.
package profile
