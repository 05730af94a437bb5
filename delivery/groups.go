package delivery

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/profile/redisstore"
)

// This file keeps track of consumer groups: when a member last used each
// one, which ones are abandoned (Options.GroupIdle), and the list and
// deletion of groups for operators.
//
// Activity lives in one hash, redisstore.GroupsKey (group -> unix ms of
// its last read or acknowledgement), written with plain HSET: a Redis
// Cluster refuses transactions over several slots, not single-key
// commands, and every server sharing the outbox writes and reads the same
// hash, so they agree on which groups are abandoned. A server records a
// group's activity at most every activityEvery, so a live group costs one
// HSET per server every few seconds.

// activityEvery is the longest a server waits before recording a group's
// activity again (less when Options.GroupIdle is shorter): a group's
// recorded activity lags by at most that much.
const activityEvery = 5 * time.Second

// touchDue says whether the group's activity is to be recorded now, and
// the time to record.
func (o *Outbox) touchDue(group string) (bool, time.Time) {
	now := o.opt.Now()
	every := activityEvery
	if o.opt.GroupIdle > 0 {
		every = min(every, o.opt.GroupIdle/4)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	last, ok := o.touched[group]
	return !ok || now.Sub(last) >= every || now.Before(last), now
}

// touchedAt notes that the group's activity at now is recorded.
func (o *Outbox) touchedAt(group string, now time.Time) {
	o.mu.Lock()
	o.touched[group] = now
	o.mu.Unlock()
}

// touch records that a member of the group is active, unless it was
// recorded less than activityEvery ago.
func (o *Outbox) touch(ctx context.Context, group string) error {
	due, now := o.touchDue(group)
	if !due {
		return nil
	}
	if err := o.rdb.HSet(ctx, redisstore.GroupsKey, group, now.UnixMilli()).Err(); err != nil {
		return fmt.Errorf("delivery: record activity of group %s: %w", group, err)
	}
	o.touchedAt(group, now)
	return nil
}

// activity reads the recorded last activity of every group.
func (o *Outbox) activity(ctx context.Context) (map[string]time.Time, error) {
	raw, err := o.rdb.HGetAll(ctx, redisstore.GroupsKey).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("delivery: group activity: %w", err)
	}
	out := make(map[string]time.Time, len(raw))
	for g, v := range raw {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			continue // not ours: the group counts as never seen, and is seen anew
		}
		out[g] = time.UnixMilli(ms)
	}
	return out, nil
}

// abandoned says whether a group last active at last is abandoned at now.
func (o *Outbox) abandoned(last, now time.Time) bool {
	return o.opt.GroupIdle > 0 && !last.IsZero() && now.Sub(last) >= o.opt.GroupIdle
}

// activitySnapshot is what Trim knows of the groups' activity: the
// recorded times, and the groups it saw without one, which it records as
// first seen at now (HSETNX, so a record another server made meanwhile
// wins). A group created before activity was recorded (or whose record
// was lost) is thus abandoned GroupIdle after a server first sees it, not
// at once.
type activitySnapshot struct {
	last   map[string]time.Time
	unseen map[string]bool
}

func (a *activitySnapshot) isAbandoned(o *Outbox, group string, now time.Time) bool {
	last, ok := a.last[group]
	if !ok {
		a.unseen[group] = true
		return false
	}
	return o.abandoned(last, now)
}

// record writes the first-seen time of the groups without a record, and
// removes the records of groups no stream has (destroyed by hand, or their
// streams deleted): one round trip. A group created after the scan that
// loses its record this way is seen anew by the next Trim.
func (a *activitySnapshot) record(ctx context.Context, o *Outbox, seen map[string]bool, now time.Time) error {
	var gone []string
	for g := range a.last {
		if !seen[g] {
			gone = append(gone, g)
		}
	}
	if len(a.unseen) == 0 && len(gone) == 0 {
		return nil
	}
	_, err := o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for g := range a.unseen {
			pipe.HSetNX(ctx, redisstore.GroupsKey, g, now.UnixMilli())
		}
		if len(gone) > 0 {
			pipe.HDel(ctx, redisstore.GroupsKey, gone...)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("delivery: record group activity: %w", err)
	}
	return nil
}

// Group describes one consumer group over every outbox stream.
type Group struct {
	Name string
	Backlog
	// Consumers is the most members any one stream knows in the group.
	Consumers int
	// LastActive is when a member last read or acknowledged (to within
	// activityEvery), or when a server first saw the group without a
	// record of its activity; zero when no Trim has seen it yet.
	LastActive time.Time
	// Idle is now minus LastActive (0 when LastActive is zero).
	Idle time.Duration
	// Abandoned: idle for Options.GroupIdle or longer; Trim no longer
	// keeps actions for it past the retention.
	Abandoned bool
}

// groupSums adds up XINFO GROUPS over every stream (one pipelined round
// trip) and returns every group's figures, and the streams that have it.
func (o *Outbox) groupSums(ctx context.Context) (map[string]*Group, map[string][]string, error) {
	cmds := make([]*redis.XInfoGroupsCmd, len(o.keys))
	_, _ = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, k := range o.keys {
			cmds[i] = pipe.XInfoGroups(ctx, k)
		}
		return nil
	}) // each command's own error is looked at below
	out := make(map[string]*Group)
	on := make(map[string][]string)
	for i, c := range cmds {
		groups, err := c.Result()
		switch {
		case redisstore.IsNoSuchKey(err) || errors.Is(err, redis.Nil):
			continue
		case err != nil:
			return nil, nil, fmt.Errorf("delivery: groups of %s: %w", o.keys[i], err)
		}
		for _, g := range groups {
			s := out[g.Name]
			if s == nil {
				s = &Group{Name: g.Name}
				out[g.Name] = s
			}
			s.Pending += g.Pending
			if g.Lag >= 0 {
				s.Undelivered += g.Lag
			} else {
				s.Unknown++
			}
			s.Consumers = max(s.Consumers, int(g.Consumers))
			on[g.Name] = append(on[g.Name], o.keys[i])
		}
	}
	return out, on, nil
}

// Groups describes every consumer group of the outbox at now, by name:
// one pipelined XINFO GROUPS per stream and one HGETALL of the activity
// records (two round trips).
func (o *Outbox) Groups(ctx context.Context, now time.Time) ([]Group, error) {
	sums, _, err := o.groupSums(ctx)
	if err != nil {
		return nil, err
	}
	last, err := o.activity(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Group, 0, len(sums))
	for _, g := range sums {
		if t, ok := last[g.Name]; ok {
			g.LastActive, g.Idle, g.Abandoned = t, max(0, now.Sub(t)), o.abandoned(t, now)
		}
		out = append(out, *g)
	}
	slices.SortFunc(out, func(a, b Group) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// DeleteGroup destroys the consumer group on every outbox stream that has
// it, with its pending entries, and forgets its activity; it returns how
// many streams had it, or ErrGroupNotFound when none did. A member still
// reading makes the group again at its next read, from the oldest entry
// kept: stop the group's subscribers first.
func (o *Outbox) DeleteGroup(ctx context.Context, group string) (int, error) {
	_, on, err := o.groupSums(ctx)
	if err != nil {
		return 0, err
	}
	streams := on[group]
	if len(streams) == 0 {
		return 0, fmt.Errorf("%w: %q", ErrGroupNotFound, group)
	}
	cmds := make([]*redis.IntCmd, len(streams))
	_, err = o.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, k := range streams {
			cmds[i] = pipe.XGroupDestroy(ctx, k, group)
		}
		pipe.HDel(ctx, redisstore.GroupsKey, group)
		return nil
	})
	destroyed := 0
	for _, c := range cmds {
		destroyed += int(c.Val())
	}
	o.mu.Lock()
	delete(o.groups, group)
	delete(o.touched, group)
	o.mu.Unlock()
	if err != nil {
		return destroyed, fmt.Errorf("delivery: delete group %s: %w", group, err)
	}
	return destroyed, nil
}
