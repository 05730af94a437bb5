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
// Apply routes each user to a shard by bucket (Options.Shards, the keyBy of
// DESIGN.md). A shard commits one cycle at a time: every call's events
// queued for a user since its last cycle merge into one read, each call's
// step in turn, and one write. A cycle commits its users in groups
// (Options.MaxGroupUsers, default 64): one WATCH over the group's keys
// pipelined with one MGET, and one MULTI/EXEC with every write; an aborted
// EXEC splits the group and retries its halves. On a Redis Cluster
// (a *redis.ClusterClient) a group holds one bucket, so one hash slot, and
// a transaction refused because its slot moves is retried (cluster.go).
//
// Concurrency: a Profile is not safe for concurrent use; a RedisStore is.
// A shard runs its cycles on a goroutine that exists only while it has
// work, up to Options.Parallelism groups at once; the transactions of one
// process on one user are serialised (shards, and Options.UserLocks for
// Update), so WATCH only ever fails because of another process.
package profile
