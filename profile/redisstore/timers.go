package redisstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/profile"
)

// This file keeps the index of when users' timers are due, and fires
// them (DESIGN.md, "Timers").
//
// A timer is part of its user's profile (profile.Timer), so the
// transaction that schedules it is the one that applies its event, and
// the one that fires it is a profile transaction like any other. What
// Redis needs besides is a way to find the users that are due without
// reading every profile: per bucket, TimerShards sorted sets
// nudge:{b}:t:<k> hold each user with a timer, scored by its next wake
// time (Unix ms). The engine writes a user's entry in the MULTI that
// changes the user's next wake time (txn.go), under the WATCH of the
// profile, so entry and profile never disagree for long: at worst an
// entry outlives an expired profile, and firing it removes it.
//
// A poll must not read 16 sorted sets per bucket, so each bucket has an
// index, nudge:{b}:t, scoring each shard at or before its earliest
// entry. The invariant is index[k] <= min(shard k), kept by:
//   - the engine, adding to a shard with ZADD LT on the index in the
//     same MULTI, which only lowers the score;
//   - the poll, raising the score to the shard's minimum (or removing
//     it) in a script that reads the shard and writes the index
//     atomically (a script, not a transaction, so that the raises of a
//     poll's shards go in one pipelined round trip).
//
// All of a bucket's keys share its hash tag, so every transaction is in
// one slot of a Redis Cluster, and any instance can fire any timer: two
// instances firing the same user race on its profile's WATCH, and the
// loser finds nothing due.

// writeDue queues the user's entry in the due index on pipe: its next
// wake time, or no entry when it has none.
func (s *Store) writeDue(ctx context.Context, pipe redis.Pipeliner, userID string, wake time.Time) {
	b, k := s.keys.Bucket(userID), s.keys.TimerShard(userID)
	key := s.keys.DueKey(b, k)
	if wake.IsZero() {
		pipe.ZRem(ctx, key, userID)
		return
	}
	ms := float64(wake.UnixMilli())
	pipe.ZAdd(ctx, key, redis.Z{Score: ms, Member: userID})
	pipe.ZAddArgs(ctx, s.keys.DueIndexKey(b), redis.ZAddArgs{LT: true, Members: []redis.Z{{Score: ms, Member: strconv.Itoa(k)}}})
}

// Fire runs step on the stored profiles of the users, with no events, at
// processing time (Options.Now), through the same shards and
// transactions as Apply, so that it never races an Apply of the same
// users in this process. Whatever the step does, each user's due entry
// is rewritten in the transaction. It returns one outcome per user, in
// order (an Err when the user's transaction failed), and the actions
// written.
func (s *Store) Fire(ctx context.Context, userIDs []string, step profile.Step) profile.BatchOutcome {
	return s.call(ctx, len(userIDs), func(c *call) []*part {
		all := make([]part, len(userIDs))
		idx := make([]int, len(userIDs))
		parts := make([]*part, len(userIDs))
		for i, u := range userIDs {
			idx[i] = i
			all[i] = part{userID: u, step: step, call: c, fire: true, idx: idx[i : i+1 : i+1]}
			parts[i] = &all[i]
		}
		return parts
	})
}

// FireDue is one poll of the timers: the users due at now (Due, at most
// limit), fired with step (Fire), then the index of the shards read raised
// (RaiseDue). It returns the firing's outcome (one per user) and the first
// failure; after a user's failure the index is left as it is, so the next
// poll tries again.
func (s *Store) FireDue(ctx context.Context, now time.Time, limit int, step profile.Step) (profile.BatchOutcome, error) {
	users, shards, err := s.Due(ctx, now, limit)
	if err != nil || len(shards) == 0 {
		return profile.BatchOutcome{}, err
	}
	out := s.Fire(ctx, users, step)
	for _, o := range out.Events {
		if o.Err != nil {
			return out, o.Err
		}
	}
	return out, s.RaiseDue(ctx, shards)
}

// DueShard names a timer shard of a bucket.
type DueShard struct{ Bucket, Shard int }

// Due finds up to limit users whose next timer is due at now: it reads
// every bucket's due index in one pipelined round trip (one per node of
// a cluster), then the shards the indexes point to in another. It
// returns the users and the shards they came from, which RaiseDue must be
// given once the users have been fired.
func (s *Store) Due(ctx context.Context, now time.Time, limit int) ([]string, []DueShard, error) {
	max := strconv.FormatInt(now.UnixMilli(), 10)
	buckets := s.keys.Buckets()
	idx := make([]*redis.ZSliceCmd, buckets)
	if _, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for b := range buckets {
			idx[b] = pipe.ZRangeByScoreWithScores(ctx, s.keys.DueIndexKey(b), &redis.ZRangeBy{Min: "-inf", Max: max})
		}
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("%w: read the due index: %w", profile.ErrUnavailable, err)
	}
	type dueShard struct {
		DueShard
		since float64
	}
	var found []dueShard
	for b, cmd := range idx {
		for _, z := range cmd.Val() {
			m, _ := z.Member.(string)
			k, err := strconv.Atoi(m)
			if err != nil || k < 0 || k >= TimerShards {
				continue // not ours; never written by nudge
			}
			found = append(found, dueShard{DueShard{Bucket: b, Shard: k}, z.Score})
		}
	}
	if len(found) == 0 {
		return nil, nil, nil
	}
	// The longest due first: with more due users than limit, a backlog
	// is worked off in due order, not bucket order (which would starve
	// the last buckets for as long as it lasts).
	slices.SortStableFunc(found, func(a, b dueShard) int { return cmp.Compare(a.since, b.since) })
	found = found[:min(len(found), limit)] // each holds a due user, or did
	shards := make([]DueShard, len(found))
	for i := range found {
		shards[i] = found[i].DueShard
	}
	users := make([]*redis.StringSliceCmd, len(shards))
	if _, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, sh := range shards {
			users[i] = pipe.ZRangeByScore(ctx, s.keys.DueKey(sh.Bucket, sh.Shard), &redis.ZRangeBy{Min: "-inf", Max: max, Count: int64(limit)})
		}
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		return nil, nil, fmt.Errorf("%w: read the due users: %w", profile.ErrUnavailable, err)
	}
	var out []string
	var done []DueShard
	for i, cmd := range users {
		if len(out) >= limit {
			break
		}
		out = append(out, cmd.Val()...)
		done = append(done, shards[i])
	}
	if len(out) > limit {
		out = out[:limit]
	}
	return out, done, nil
}

// RaiseDue sets the index score of each shard to its earliest entry (or
// removes it when the shard is empty). Each shard's read and write are one
// script (raiseScript), atomic against a timer scheduled meanwhile, and
// every shard's is sent in one pipeline: a first version ran a WATCH
// transaction per shard, whose round trips capped firing at about 3,000
// timers/s with a million pending.
func (s *Store) RaiseDue(ctx context.Context, shards []DueShard) error {
	if len(shards) == 0 {
		return nil
	}
	cmds := make([]*redis.Cmd, len(shards))
	_, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, sh := range shards {
			cmds[i] = raiseScript.EvalSha(ctx, pipe, []string{s.keys.DueKey(sh.Bucket, sh.Shard), s.keys.DueIndexKey(sh.Bucket)}, strconv.Itoa(sh.Shard))
		}
		return nil
	})
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// The script is not cached yet (a new or restarted Redis): load
		// it with one EVAL per shard.
		_, err = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, sh := range shards {
				cmds[i] = raiseScript.Eval(ctx, pipe, []string{s.keys.DueKey(sh.Bucket, sh.Shard), s.keys.DueIndexKey(sh.Bucket)}, strconv.Itoa(sh.Shard))
			}
			return nil
		})
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("%w: raise the due index: %w", profile.ErrUnavailable, err)
	}
	return nil
}

// raiseScript sets the index score of a shard (ARGV[1]) of a bucket
// (KEYS[2]) to the shard's (KEYS[1]) earliest entry, or removes it when
// the shard is empty. Both keys are the bucket's: one slot.
var raiseScript = redis.NewScript(`
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then
  return redis.call('ZREM', KEYS[2], ARGV[1])
end
return redis.call('ZADD', KEYS[2], first[2], ARGV[1])
`)

// Pending counts the users with a pending timer (ZCARD of every shard),
// for metrics and tests; it reads every shard, so it is not for hot
// paths.
func (s *Store) Pending(ctx context.Context) (int64, error) {
	buckets := s.keys.Buckets()
	cmds := make([]*redis.IntCmd, 0, buckets*TimerShards)
	if _, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for b := range buckets {
			for k := range TimerShards {
				cmds = append(cmds, pipe.ZCard(ctx, s.keys.DueKey(b, k)))
			}
		}
		return nil
	}); err != nil {
		return 0, fmt.Errorf("%w: count due users: %w", profile.ErrUnavailable, err)
	}
	var n int64
	for _, c := range cmds {
		n += c.Val()
	}
	return n, nil
}
