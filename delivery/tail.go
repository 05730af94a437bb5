package delivery

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// TailEntry is one outbox entry that Tail saw.
type TailEntry struct {
	// ID is the entry's stream id.
	ID string
	// Stream is the outbox stream (one per bucket) the entry is in.
	Stream string
	// Action is the decoded action; with Err set, what could be read.
	Action profile.Action
	// Err says why the entry does not decode (profile.ErrCorrupt). Such
	// an entry is reported, and the tail goes on.
	Err error
}

// tailPauseMin is the first pause between two polls of an idle outbox on a
// Redis Cluster (see Tail); it doubles while nothing arrives.
const tailPauseMin = 5 * time.Millisecond

// Tail calls each, in one goroutine and one entry at a time, for every
// action written to any outbox stream after Tail was called, until ctx
// ends (Tail then returns nil) or each returns an error (Tail returns it
// as is). A Redis error ends Tail with that error: nothing is retried, and
// a caller that tails again starts again from then.
//
// Tail is an observer, not a consumer: it reads with XREAD, not
// XREADGROUP, so it claims, acknowledges and delays nothing for the
// consumer groups, and does not count as a group's activity.
//
// Start and order: each stream's newest id is looked up once, at the call
// (XREVRANGE + - COUNT 1), and the tail then reads after the last id it
// saw. XREAD from "$" would not do: "$" is resolved again at every call, so
// entries written between two calls would be missed. Entries of a stream
// come in stream order; entries of different streams in no set order.
// Entries trimmed (Trim) before the tail reaches them are missed without
// notice: a tail that cannot keep up loses what retention cuts.
//
// On a standalone Redis one XREAD over every stream waits up to
// Options.Block for new entries, so ctx's end is seen within Block. A
// Redis Cluster refuses one XREAD over streams of several slots (every
// bucket is its own slot), and one blocking XREAD per stream would hold a
// pool connection per bucket (1024 by default): Tail polls every stream
// with non-blocking XREADs instead, pipelined (go-redis sends each node
// its share in parallel), as Read does (readCluster), pausing 5ms
// doubling up to Options.Block while nothing arrives. An idle tail thus
// costs one XREAD per stream per Block. Each XREAD returns at most
// Options.Count entries per stream.
func (o *Outbox) Tail(ctx context.Context, each func(TailEntry) error) error {
	after, err := o.newestIDs(ctx)
	switch {
	case err != nil:
	case o.cluster:
		err = o.tailCluster(ctx, after, each)
	default:
		err = o.tailStandalone(ctx, after, each)
	}
	if ctx.Err() != nil && isCtxErr(err) {
		return nil
	}
	return err
}

// isCtxErr reports whether err is nil or only says the context ended.
func isCtxErr(err error) bool {
	return err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// newestIDs returns the id of the newest entry of every outbox stream, in
// key order, "0-0" for a stream with none (or not made yet): reading after
// it returns only entries written later.
func (o *Outbox) newestIDs(ctx context.Context) ([]string, error) {
	cmds := make([]*redis.XMessageSliceCmd, len(o.keys))
	_, _ = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, k := range o.keys {
			cmds[i] = pipe.XRevRangeN(ctx, k, "+", "-", 1)
		}
		return nil
	}) // each command's own error is looked at below
	ids := make([]string, len(o.keys))
	for i, c := range cmds {
		msgs, err := c.Result()
		switch {
		case err != nil && !errors.Is(err, redis.Nil):
			return nil, fmt.Errorf("delivery: tail: newest of %s: %w", o.keys[i], err)
		case len(msgs) == 0:
			ids[i] = "0-0"
		default:
			ids[i] = msgs[0].ID
		}
	}
	return ids, nil
}

// tailStandalone follows every stream with one blocking XREAD at a time.
func (o *Outbox) tailStandalone(ctx context.Context, after []string, each func(TailEntry) error) error {
	streams := make([]string, 2*len(o.keys))
	copy(streams, o.keys)
	for ctx.Err() == nil {
		copy(streams[len(o.keys):], after)
		res, err := o.rdb.XRead(ctx, &redis.XReadArgs{Streams: streams, Count: int64(o.opt.Count), Block: o.opt.Block}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			continue // nothing within Block
		case err != nil:
			return fmt.Errorf("delivery: tail: %w", err)
		}
		for _, s := range res {
			// o.buckets maps a stream to its bucket, its index in o.keys.
			if err := o.tailEach(s.Stream, s.Messages, &after[o.buckets[s.Stream]], each); err != nil {
				return err
			}
		}
	}
	return nil
}

// tailCluster follows every stream with pipelined non-blocking XREADs,
// one per stream, pausing while nothing arrives.
func (o *Outbox) tailCluster(ctx context.Context, after []string, each func(TailEntry) error) error {
	cmds := make([]*redis.XStreamSliceCmd, len(o.keys))
	pause := tailPauseMin
	for ctx.Err() == nil {
		_, _ = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, k := range o.keys {
				cmds[i] = pipe.XRead(ctx, &redis.XReadArgs{Streams: []string{k, after[i]}, Count: int64(o.opt.Count), Block: -1})
			}
			return nil
		}) // each command's own error is looked at below
		got := false
		for i, c := range cmds {
			res, err := c.Result()
			switch {
			case errors.Is(err, redis.Nil):
				continue
			case err != nil:
				return fmt.Errorf("delivery: tail %s: %w", o.keys[i], err)
			}
			for _, s := range res {
				got = got || len(s.Messages) > 0
				if err := o.tailEach(o.keys[i], s.Messages, &after[i], each); err != nil {
					return err
				}
			}
		}
		if got {
			pause = tailPauseMin
			continue
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		pause = min(2*pause, o.opt.Block)
	}
	return nil
}

// tailEach hands each entry of one stream's read to each, in order, and
// moves the stream's cursor past it.
func (o *Outbox) tailEach(stream string, msgs []redis.XMessage, after *string, each func(TailEntry) error) error {
	for _, m := range msgs {
		*after = m.ID
		a, err := redisstore.DecodeAction(m.Values)
		e := TailEntry{ID: m.ID, Stream: stream, Action: a}
		if err != nil {
			e.Err = fmt.Errorf("delivery: %s %s: %w", stream, m.ID, err)
		}
		if err := each(e); err != nil {
			return err
		}
	}
	return nil
}
