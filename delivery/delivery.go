// Package delivery hands the actions of the outbox streams to senders, at
// least once, with Redis consumer groups: XREADGROUP for new actions,
// XAUTOCLAIM for actions a member took and did not acknowledge within the
// visibility timeout (or that Release handed back when the member went
// away), XACK for acknowledgements, and a dead-letter stream for actions
// delivered too many times. Trim keeps the outbox bounded
// without deleting an action a live group has not acknowledged; a group no
// member has used for Options.GroupIdle is abandoned and no longer holds
// trimming back (groups.go).
//
// Concurrency: an Outbox is safe for concurrent use; each subscriber calls
// Read from its own goroutine.
package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// ErrBadAckID means an ack id was not made by this package.
var ErrBadAckID = errors.New("delivery: malformed ack id")

// ErrGroupNotFound means no outbox stream has the consumer group.
var ErrGroupNotFound = errors.New("delivery: no such consumer group")

// Options configure an Outbox. The zero value of a field means its default.
type Options struct {
	// Visibility is how long a delivered action may stay unacknowledged
	// before it is delivered again to a live member of the group. Default
	// 30s.
	Visibility time.Duration
	// MaxDeliveries is how many times an action is delivered to a group
	// before it goes to the dead-letter stream (redisstore.DeadStream).
	// Default 5.
	MaxDeliveries int
	// Block is how long one Read waits for new actions. Default 1s.
	Block time.Duration
	// Count is about the most actions one Read returns: XREADGROUP's COUNT
	// applies per stream, so each stream gives Count/streams (at least 1).
	// Default 100.
	Count int
	// PollMax bounds, on a Redis Cluster, the wait between two polls of an
	// idle outbox: a cluster refuses one blocking XREADGROUP over streams
	// of several slots, so Read polls every stream instead (see
	// readCluster), first after 5ms, doubling while nothing arrives, up to
	// PollMax. Default 100ms.
	PollMax time.Duration
	// GroupIdle is how long a consumer group may go without a member
	// reading or acknowledging before it is abandoned: Trim then cuts past
	// what it has not acknowledged, at the retention cutoff, as if it had
	// (see Trim). Activity is recorded in Redis (redisstore.GroupsKey), so
	// every server sharing the outbox agrees on it. Default 24h; negative:
	// a group is never abandoned, and one that stops reading keeps every
	// action from then on.
	GroupIdle time.Duration
	// Now is the clock of activity records and of ListGroups' idle times.
	// Default time.Now.
	Now func() time.Time
}

// DefaultOptions returns the options an Outbox runs with when told
// nothing.
func DefaultOptions() Options {
	return Options{
		Visibility:    30 * time.Second,
		MaxDeliveries: 5,
		Block:         time.Second,
		Count:         100,
		PollMax:       100 * time.Millisecond,
		GroupIdle:     24 * time.Hour,
	}
}

// Outbox reads the outbox streams of all buckets for consumer groups.
type Outbox struct {
	rdb     redis.UniversalClient
	cluster bool     // rdb is a Redis Cluster client
	keys    []string // the outbox stream of every bucket
	buckets map[string]int
	opt     Options

	mu        sync.Mutex
	groups    map[string]bool      // groups known to exist on every stream
	lastClaim map[string]time.Time // per group+consumer
	touched   map[string]time.Time // per group: its activity last recorded (Options.Now)
}

// New returns an Outbox over the outbox streams of every bucket of keys.
func New(rdb redis.UniversalClient, keys redisstore.Layout, opt Options) *Outbox {
	d := DefaultOptions()
	if opt.Visibility <= 0 {
		opt.Visibility = d.Visibility
	}
	if opt.MaxDeliveries <= 0 {
		opt.MaxDeliveries = d.MaxDeliveries
	}
	if opt.Block <= 0 {
		opt.Block = d.Block
	}
	if opt.Count <= 0 {
		opt.Count = d.Count
	}
	if opt.PollMax <= 0 {
		opt.PollMax = d.PollMax
	}
	if opt.GroupIdle == 0 {
		opt.GroupIdle = d.GroupIdle
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	o := &Outbox{
		rdb: rdb, opt: opt, keys: keys.OutboxKeys(), buckets: make(map[string]int, keys.Buckets()),
		groups: map[string]bool{}, lastClaim: map[string]time.Time{}, touched: map[string]time.Time{},
	}
	_, o.cluster = rdb.(*redis.ClusterClient)
	for b, k := range o.keys {
		o.buckets[k] = b
	}
	return o
}

// Delivery is one action handed to a member of a group.
type Delivery struct {
	AckID  string
	Action profile.Action
	// Count is how many times the group has been handed this action.
	Count int64
}

// ensureGroup creates the group on every outbox stream (from the oldest
// entry, so a new group gets every action kept).
func (o *Outbox) ensureGroup(ctx context.Context, group string) error {
	o.mu.Lock()
	known := o.groups[group]
	o.mu.Unlock()
	if known {
		return nil
	}
	cmds, err := o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for _, k := range o.keys {
			pipe.XGroupCreateMkStream(ctx, k, group, "0")
		}
		return nil
	})
	if err != nil {
		for _, c := range cmds {
			if e := c.Err(); e != nil && !redisstore.IsBusyGroup(e) {
				return fmt.Errorf("delivery: create group %s: %w", group, e)
			}
		}
	}
	o.mu.Lock()
	o.groups[group] = true
	o.mu.Unlock()
	return nil
}

// Read returns the next deliveries for a member of a group: first actions
// other members (or this one, before a restart) left unacknowledged past the
// visibility timeout, then new actions, waiting up to Options.Block for
// them. Actions past MaxDeliveries go to the dead-letter stream instead.
func (o *Outbox) Read(ctx context.Context, group, consumer string) ([]Delivery, error) {
	if err := o.ensureGroup(ctx, group); err != nil {
		return nil, err
	}
	// A read that cannot be recorded fails: a group whose reads go
	// unrecorded would be taken for abandoned and trimmed past.
	if err := o.touch(ctx, group); err != nil {
		return nil, err
	}
	out, err := o.claim(ctx, group, consumer)
	if err != nil || len(out) > 0 {
		return out, err
	}
	if o.cluster {
		return o.readCluster(ctx, group, consumer)
	}
	streams := make([]string, 0, 2*len(o.keys))
	streams = append(streams, o.keys...)
	for range o.keys {
		streams = append(streams, ">")
	}
	res, err := o.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: group, Consumer: consumer, Streams: streams, Count: int64(max(1, o.opt.Count/len(o.keys))), Block: o.opt.Block,
	}).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case redisstore.IsNoGroup(err):
		o.forgetGroup(group) // deleted (DeleteGroup) or the stream recreated: make it again next time
		return nil, fmt.Errorf("delivery: read group %s: %w", group, err)
	case err != nil:
		return nil, fmt.Errorf("delivery: read group %s: %w", group, err)
	}
	for _, s := range res {
		for _, m := range s.Messages {
			d, err := o.delivery(s.Stream, m, 1)
			if err != nil {
				return nil, err
			}
			out = append(out, d)
		}
	}
	return out, nil
}

// readCluster is Read's wait for new actions on a Redis Cluster, which
// refuses one XREADGROUP over the streams of several slots: one
// non-blocking XREADGROUP per stream, pipelined (go-redis sends each node
// its share in parallel), repeated with a growing pause (5ms doubling up to
// PollMax) until actions arrive or Block passes. Entries read before a
// later stream's error stay pending for the member and are delivered again
// after the visibility timeout.
func (o *Outbox) readCluster(ctx context.Context, group, consumer string) ([]Delivery, error) {
	deadline := time.Now().Add(o.opt.Block)
	per := int64(max(1, o.opt.Count/len(o.keys)))
	pause := 5 * time.Millisecond
	cmds := make([]*redis.XStreamSliceCmd, len(o.keys))
	for {
		_, _ = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, k := range o.keys {
				cmds[i] = pipe.XReadGroup(ctx, &redis.XReadGroupArgs{
					Group: group, Consumer: consumer, Streams: []string{k, ">"}, Count: per, Block: -1,
				})
			}
			return nil
		}) // each command's own error is looked at below
		var out []Delivery
		for i, c := range cmds {
			res, err := c.Result()
			switch {
			case errors.Is(err, redis.Nil):
				continue
			case redisstore.IsNoGroup(err):
				o.forgetGroup(group) // the stream was recreated
				return nil, fmt.Errorf("delivery: read group %s on %s: %w", group, o.keys[i], err)
			case err != nil:
				return nil, fmt.Errorf("delivery: read group %s on %s: %w", group, o.keys[i], err)
			}
			for _, s := range res {
				for _, m := range s.Messages {
					d, err := o.delivery(s.Stream, m, 1)
					if err != nil {
						return nil, err
					}
					out = append(out, d)
				}
			}
		}
		if len(out) > 0 {
			return out, nil
		}
		wait := min(pause, time.Until(deadline))
		if wait <= 0 {
			return nil, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		pause = min(2*pause, o.opt.PollMax)
	}
}

// claim takes over the group's actions idle past the visibility timeout,
// at most once per half the timeout per member, unless its last claim
// left some behind.
func (o *Outbox) claim(ctx context.Context, group, consumer string) ([]Delivery, error) {
	key := group + "\x00" + consumer
	o.mu.Lock()
	due := time.Since(o.lastClaim[key]) >= o.opt.Visibility/2
	if due {
		o.lastClaim[key] = time.Now()
	}
	o.mu.Unlock()
	if !due {
		return nil, nil
	}
	// Each stream gives its share of Count, as in Read; a stream with more
	// to claim makes the member claim again at its next Read.
	per := int64(max(1, o.opt.Count/len(o.keys)))
	cmds := make([]*redis.XAutoClaimCmd, len(o.keys))
	_, err := o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, k := range o.keys {
			cmds[i] = pipe.XAutoClaim(ctx, &redis.XAutoClaimArgs{
				Stream: k, Group: group, Consumer: consumer, MinIdle: o.opt.Visibility, Start: "0-0", Count: per,
			})
		}
		return nil
	})
	_ = err // each command's own error is looked at below
	var out []Delivery
	more := false
	defer func() {
		if more {
			o.mu.Lock()
			delete(o.lastClaim, key)
			o.mu.Unlock()
		}
	}()
	for i, c := range cmds {
		msgs, next, err := c.Result()
		more = more || (err == nil && next != "0-0")
		switch {
		case redisstore.IsNoGroup(err):
			o.forgetGroup(group) // the stream was recreated: make the group again next time
			continue
		case err != nil && !errors.Is(err, redis.Nil):
			return nil, fmt.Errorf("delivery: claim for group %s on %s: %w", group, o.keys[i], err)
		case len(msgs) == 0:
			continue
		}
		counts, err := o.deliveryCounts(ctx, o.keys[i], group, msgs)
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if counts[m.ID] > int64(o.opt.MaxDeliveries) {
				// The claim itself counted as a delivery, which is not
				// made: the entry records the deliveries the group had.
				if err := o.deadLetter(ctx, o.keys[i], group, m, counts[m.ID]-1); err != nil {
					return nil, err
				}
				continue
			}
			d, err := o.delivery(o.keys[i], m, counts[m.ID])
			if err != nil {
				return nil, err
			}
			out = append(out, d)
		}
	}
	return out, nil
}

func (o *Outbox) forgetGroup(group string) {
	o.mu.Lock()
	delete(o.groups, group)
	o.mu.Unlock()
}

// deliveryCounts returns the delivery count of claimed entries.
func (o *Outbox) deliveryCounts(ctx context.Context, stream, group string, msgs []redis.XMessage) (map[string]int64, error) {
	pending, err := o.rdb.XPendingExt(ctx, &redis.XPendingExtArgs{
		Stream: stream, Group: group, Start: msgs[0].ID, End: msgs[len(msgs)-1].ID, Count: int64(len(msgs)) * 2,
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("delivery: pending of %s: %w", stream, err)
	}
	counts := make(map[string]int64, len(pending))
	for _, p := range pending {
		counts[p.ID] = p.RetryCount
	}
	return counts, nil
}

// deadLetter moves an action the group could not handle to the dead-letter
// stream, with delivered, the deliveries made to the group, and
// acknowledges it for the group, in one transaction.
func (o *Outbox) deadLetter(ctx context.Context, stream, group string, m redis.XMessage, delivered int64) error {
	values := make(map[string]any, len(m.Values)+4)
	for k, v := range m.Values {
		values[k] = v
	}
	values["dead_group"] = group
	values["dead_stream"] = stream
	values["dead_id"] = m.ID
	values["delivery_count"] = strconv.FormatInt(delivered, 10)
	var err error
	if o.cluster {
		// The dead-letter stream and the outbox are in different slots,
		// which a cluster transaction refuses: add, then acknowledge. A
		// failure between the two leaves the action pending, so it is
		// dead-lettered again later: at least once, as every delivery.
		if err = o.rdb.XAdd(ctx, &redis.XAddArgs{Stream: redisstore.DeadStream, Values: values}).Err(); err == nil {
			err = o.rdb.XAck(ctx, stream, group, m.ID).Err()
		}
	} else {
		_, err = o.rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.XAdd(ctx, &redis.XAddArgs{Stream: redisstore.DeadStream, Values: values})
			pipe.XAck(ctx, stream, group, m.ID)
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("delivery: dead-letter %s %s: %w", stream, m.ID, err)
	}
	return nil
}

func (o *Outbox) delivery(stream string, m redis.XMessage, count int64) (Delivery, error) {
	a, err := redisstore.DecodeAction(m.Values)
	if err != nil {
		return Delivery{}, fmt.Errorf("delivery: %s %s: %w", stream, m.ID, err)
	}
	return Delivery{AckID: strconv.Itoa(o.buckets[stream]) + "/" + m.ID, Action: a, Count: count}, nil
}

// Ack acknowledges deliveries of a group and returns how many it
// acknowledged. Only entries pending for the group are acknowledged, and,
// when consumer is not empty, only those pending for that member: ack ids
// are guessable (bucket and stream id), and an XACK alone would let a
// caller drop actions it was never handed, or that the group handed to
// another member after the visibility timeout. The others are left alone
// and not counted.
//
// Two round trips: one XPENDING per id (XPENDING key group id id 1
// [consumer]), pipelined, then the XACKs of those found, pipelined. An
// entry another member claims between the two is still acknowledged: the
// caller did hold it, and at least once holds. A Lua script would make it
// one round trip and one step, but nudged's least-privilege Redis user
// has no scripting.
func (o *Outbox) Ack(ctx context.Context, group, consumer string, ackIDs []string) (int, error) {
	byStream, err := o.byStream(ackIDs)
	if err != nil {
		return 0, err
	}
	owned, err := o.pendingAmong(ctx, group, consumer, byStream)
	if err != nil {
		return 0, fmt.Errorf("delivery: ack: %w", err)
	}
	return o.ack(ctx, group, owned)
}

// AckRead acknowledges deliveries that Read has just returned to the
// caller, without Ack's lookup: a subscriber's server dropping what the
// member's channel filter does not take. Use Ack for ids a client sent.
func (o *Outbox) AckRead(ctx context.Context, group string, ackIDs []string) (int, error) {
	byStream, err := o.byStream(ackIDs)
	if err != nil {
		return 0, err
	}
	return o.ack(ctx, group, byStream)
}

// byStream sorts ack ids by stream, each id once.
func (o *Outbox) byStream(ackIDs []string) (map[string][]string, error) {
	byStream := map[string][]string{}
	seen := make(map[string]bool, len(ackIDs))
	for _, id := range ackIDs {
		b, entry, ok := strings.Cut(id, "/")
		n, err := strconv.Atoi(b)
		if !ok || err != nil || n < 0 || n >= len(o.keys) || !validEntryID(entry) {
			return nil, fmt.Errorf("%w: %q", ErrBadAckID, id)
		}
		if !seen[id] { // an id given twice is acknowledged once
			seen[id] = true
			byStream[o.keys[n]] = append(byStream[o.keys[n]], entry)
		}
	}
	return byStream, nil
}

// ack XACKs the entries of each stream, in one pipeline, and records the
// group's activity.
func (o *Outbox) ack(ctx context.Context, group string, byStream map[string][]string) (int, error) {
	if len(byStream) == 0 {
		return 0, nil
	}
	cmds := make([]*redis.IntCmd, 0, len(byStream))
	_, _ = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for k, ids := range byStream {
			cmds = append(cmds, pipe.XAck(ctx, k, group, ids...))
		}
		return nil
	}) // each command's own error is looked at below
	acked := 0
	for _, c := range cmds {
		if err := c.Err(); err != nil {
			return acked, fmt.Errorf("delivery: ack: %w", err)
		}
		acked += int(c.Val())
	}
	if acked > 0 {
		// The group is in use. A failed record is not the ack's failure:
		// the next Read records it, or fails.
		_ = o.touch(ctx, group)
	}
	return acked, nil
}

// pendingAmong returns, per stream, those of ids that are pending for the
// group (for the consumer, when it is not empty): one XPENDING per id,
// whose range is the id alone, all in one pipeline. A range over a
// stream's ids would be fewer commands, but it returns every pending entry
// between them too, and a member holds up to max_unacked read ahead.
func (o *Outbox) pendingAmong(ctx context.Context, group, consumer string, byStream map[string][]string) (map[string][]string, error) {
	type lookup struct {
		stream, id string
		cmd        *redis.XPendingExtCmd
	}
	var ls []lookup
	for k, ids := range byStream {
		for _, id := range ids {
			ls = append(ls, lookup{stream: k, id: id})
		}
	}
	_, _ = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, l := range ls {
			ls[i].cmd = pipe.XPendingExt(ctx, &redis.XPendingExtArgs{
				Stream: l.stream, Group: group, Start: l.id, End: l.id, Count: 1, Consumer: consumer,
			})
		}
		return nil
	}) // each command's own error is looked at below
	owned := map[string][]string{}
	for _, l := range ls {
		pending, err := l.cmd.Result()
		switch {
		case redisstore.IsNoGroup(err) || errors.Is(err, redis.Nil):
			continue // the stream has no such group: nothing pending for it
		case err != nil:
			return nil, fmt.Errorf("pending of %s on %s: %w", group, l.stream, err)
		case len(pending) == 1:
			owned[l.stream] = append(owned[l.stream], l.id)
		}
	}
	return owned, nil
}

func validEntryID(s string) bool {
	ms, seq, ok := strings.Cut(s, "-")
	if !ok {
		return false
	}
	_, err1 := strconv.ParseUint(ms, 10, 64)
	_, err2 := strconv.ParseUint(seq, 10, 64)
	return err1 == nil && err2 == nil
}

// releaseBatch is the most pending entries Release reads per stream and
// round trip.
const releaseBatch = 1000

// Release hands the actions delivered to a member and not acknowledged back
// to its group at once, and returns how many. The server calls it when a
// member's stream ends: a member that went away (killed, cut off, or
// drained) never acknowledges what it held, and without Release those
// actions would wait out the visibility timeout (30 s by default) before
// another member got them. Each entry is re-claimed by the same member
// with its idle time set to the visibility timeout (XCLAIM ... IDLE
// JUSTID, which leaves the delivery count alone), so the group's next
// claim takes it: at the next Read of any member on this Outbox, whose
// members are told to claim then, and within half the timeout on other
// servers.
//
// The delivery count of what the member cannot have been handling goes
// back down by one, so that a member dying with a long read ahead does not
// push actions it never saw towards the dead-letter stream: sent are the
// ack ids sent to it, in order (the most recent ones suffice), and of its
// pending actions only the first of them keeps its count. A member
// handling actions one at a time, in order, as the Go client does, was at
// most handling that one when it died (it may be what kills it); the rest
// sat in buffers, were read for it and never sent (the stream broke
// first), or were claimed for it by a call the broken stream cut short.
//
// Delivery stays at least once: a member that handled an action and lost
// its ack with the connection gets it (or another member does) again.
// Release a member's name only once it has no other live stream: the
// actions that stream holds would be delivered twice.
func (o *Outbox) Release(ctx context.Context, group, consumer string, sent []string) (int, error) {
	pending, err := o.pendingOf(ctx, group, consumer)
	if err != nil {
		return 0, fmt.Errorf("delivery: release %s of %s: %w", consumer, group, err)
	}
	if len(pending) == 0 {
		return 0, nil
	}
	order := make(map[string]int, len(sent))
	for i, id := range sent {
		order[id] = i
	}
	first, firstAt := "", len(sent) // the pending ack id sent first
	for _, p := range pending {
		if i, ok := order[p.ackID]; ok && i < firstAt {
			first, firstAt = p.ackID, i
		}
	}
	// One XCLAIM per stream and delivery count to set (RETRYCOUNT applies
	// to all its ids); count -1 keeps the count.
	type claimKey struct {
		stream string
		count  int64
	}
	claims := map[claimKey][]any{}
	for _, p := range pending {
		k := claimKey{p.stream, -1}
		if p.ackID != first {
			k.count = max(0, p.count-1)
		}
		claims[k] = append(claims[k], p.id)
	}
	cmds := make([]*redis.Cmd, 0, len(claims))
	_, err = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for k, ids := range claims {
			args := make([]any, 0, len(ids)+10)
			args = append(args, "xclaim", k.stream, group, consumer, 0)
			args = append(args, ids...)
			args = append(args, "idle", o.opt.Visibility.Milliseconds())
			if k.count >= 0 {
				args = append(args, "retrycount", k.count)
			}
			cmds = append(cmds, pipe.Do(ctx, append(args, "justid")...))
		}
		return nil
	})
	released := 0
	for _, c := range cmds {
		ids, cerr := c.StringSlice()
		if cerr != nil {
			return released, fmt.Errorf("delivery: release %s of %s: %w", consumer, group, cerr)
		}
		released += len(ids)
	}
	if err != nil {
		return released, fmt.Errorf("delivery: release %s of %s: %w", consumer, group, err)
	}
	o.mu.Lock()
	for k := range o.lastClaim {
		if g, _, _ := strings.Cut(k, "\x00"); g == group {
			delete(o.lastClaim, k)
		}
	}
	o.mu.Unlock()
	return released, nil
}

// pendingEntry is one action delivered to a member and not acknowledged.
type pendingEntry struct {
	stream, id, ackID string
	count             int64
}

// pendingOf returns the actions pending for a member on every stream,
// releaseBatch per stream and round trip.
func (o *Outbox) pendingOf(ctx context.Context, group, consumer string) ([]pendingEntry, error) {
	var out []pendingEntry
	from := make(map[string]string, len(o.keys)) // stream -> XPENDING start
	for _, k := range o.keys {
		from[k] = "-"
	}
	for len(from) > 0 {
		keys := make([]string, 0, len(from))
		cmds := make([]*redis.XPendingExtCmd, 0, len(from))
		_, _ = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for k, start := range from {
				keys = append(keys, k)
				cmds = append(cmds, pipe.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: k, Group: group, Start: start, End: "+", Count: releaseBatch, Consumer: consumer}))
			}
			return nil
		}) // each command's own error is looked at below
		clear(from)
		for i, c := range cmds {
			pending, err := c.Result()
			switch {
			case redisstore.IsNoGroup(err) || errors.Is(err, redis.Nil):
				continue
			case err != nil:
				return nil, fmt.Errorf("pending on %s: %w", keys[i], err)
			}
			for _, p := range pending {
				out = append(out, pendingEntry{stream: keys[i], id: p.ID, ackID: strconv.Itoa(o.buckets[keys[i]]) + "/" + p.ID, count: p.RetryCount})
			}
			if len(pending) == releaseBatch {
				from[keys[i]] = "(" + pending[len(pending)-1].ID // read on after it
			}
		}
	}
	return out, nil
}

// Pending returns how many actions of the group are delivered to the
// member and not yet acknowledged, over every stream (one pipelined
// XPENDING summary per stream).
func (o *Outbox) Pending(ctx context.Context, group, consumer string) (int64, error) {
	cmds := make([]*redis.XPendingCmd, len(o.keys))
	_, _ = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, k := range o.keys {
			cmds[i] = pipe.XPending(ctx, k, group)
		}
		return nil
	})
	var n int64
	for i, c := range cmds {
		p, err := c.Result()
		switch {
		case redisstore.IsNoGroup(err):
			continue
		case err != nil:
			return 0, fmt.Errorf("delivery: pending of %s on %s: %w", group, o.keys[i], err)
		}
		n += p.Consumers[consumer]
	}
	return n, nil
}

// Backlog is what a consumer group still has to do, over every stream.
type Backlog struct {
	// Pending counts actions delivered to a member and not yet
	// acknowledged.
	Pending int64
	// Undelivered counts actions not yet delivered to any member. Streams
	// where Redis cannot tell (after deletions in the stream) are left out
	// and counted in Unknown.
	Undelivered int64
	// Unknown counts the streams whose undelivered count is unknown.
	Unknown int
}

// Backlogs returns the backlog of every consumer group, by group name (one
// pipelined XINFO GROUPS per stream). It is meant for metrics: with many
// buckets it costs one round trip carrying one command per bucket.
func (o *Outbox) Backlogs(ctx context.Context) (map[string]Backlog, error) {
	sums, _, err := o.groupSums(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]Backlog, len(sums))
	for name, g := range sums {
		out[name] = g.Backlog
	}
	return out, nil
}
