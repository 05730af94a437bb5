// Package redisstore keeps profiles and the outbox streams in Redis, and
// owns nudge's key layout. Callers never see a Redis command.
//
// One file per concern:
//
//   - keys.go: the key layout (Layout: buckets, profile keys, outbox,
//     dead-letter and audit streams) and the outbox entry codec
//     (ActionFields, DecodeAction), shared with delivery, audit and
//     nudgectl.
//   - options.go: Options, every default spelled out by DefaultOptions.
//   - store.go: Store, Apply (events of any users, with a pure
//     profile.Step), Update (one user, e.g. a reservation), Get, GetMany,
//     Delete (erasure of every stream the store writes).
//   - shard.go: Apply groups events by user, once, onto the shard of the
//     user's bucket (the keyBy of DESIGN.md); a shard commits one cycle at
//     a time, merging every queued call's parts for a user under one read
//     and one write, in groups of up to Options.MaxGroupUsers users.
//   - txn.go: the transaction engine, the only code that writes a profile:
//     WATCH + a GET per key in one round trip, the pure steps, MULTI + SET + XADD +
//     EXEC, WAIT for replicas; classify decides what a failed attempt
//     means (conflict: split and retry; cluster redirect; broken
//     connection; WAIT shortfall; cancelled). Update is a group of one.
//   - timers.go: the due index of timers (which users are due, per bucket
//     and shard, written by txn.go in the profile's MULTI), Fire (the
//     firing of due users through the shards, as Apply), Due and RaiseDue
//     for the poll.
//   - cluster.go: transactions on the master of their slot.
//   - scan.go: ScanProfiles, every profile key by SCAN (on every master of
//     a cluster) with a pipeline of GETs per page, never blocking Redis:
//     what nudgectl features export reads.
//   - replies.go: the Redis error replies nudge acts on (NOGROUP,
//     BUSYGROUP, no such key, WRONGTYPE), recognised by prefix in one
//     place, and DeleteWhere for erasure in streams.
//
// Errors are profile's: ErrNotFound, ErrConflict, ErrUnavailable (the
// store failed), ErrCorrupt (one key holds something that is not a
// profile: that user alone), *profile.ReplicationError, *profile.PanicError.
//
// Concurrency: a Store is safe for concurrent use. A shard runs its cycles
// on a goroutine that exists only while it has work, up to
// Options.Parallelism groups at once; the transactions of one process on
// one user are serialised (shards, and Options.UserLocks for Update), so
// WATCH only ever fails because of another process.
package redisstore
