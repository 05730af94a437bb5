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

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// Trimmed is what one Trim did.
type Trimmed struct {
	// Removed counts the entries removed.
	Removed int64
	// PastAbandoned counts the removed entries that an abandoned group had
	// not acknowledged (or not even read): without GroupIdle they would
	// have been kept.
	PastAbandoned int64
	// Abandoned lists the abandoned groups, by name.
	Abandoned []string
}

// Trim removes from every outbox stream the entries that every live
// consumer group has acknowledged and that are older than retention
// (processing time), and says how many it removed.
//
// It never trims by length: on Redis 7, XADD/XTRIM MAXLEN silently deletes
// delivered-but-unacknowledged entries, and XAUTOCLAIM then drops them
// without error. Instead, per stream, the cut (MINID) is the lowest of,
// over every live group, its oldest pending entry or, when it has none
// pending, the entry after the last one delivered to it; and of the
// retention cutoff. A stream without groups is not trimmed: nobody has
// consumed it.
//
// A group no member has read from or acknowledged for Options.GroupIdle
// (at now) is abandoned and does not hold the cut back: for it, Trim cuts
// at the retention cutoff as if it had acknowledged everything, so that
// one group nobody reads any more cannot keep the outbox growing for
// ever. What it had not acknowledged is gone for it: if it comes back, it
// reads on from the oldest entry left. The entries trimmed that way are
// counted in PastAbandoned (the stream is then trimmed in two steps, to
// the cut its groups would have allowed, then on to the real cut).
func (o *Outbox) Trim(ctx context.Context, retention time.Duration, now time.Time) (Trimmed, error) {
	var res Trimmed
	cutoff := streamID(now.Add(-retention))
	last, err := o.activity(ctx)
	if err != nil {
		return res, err
	}
	act := &activitySnapshot{last: last, unseen: map[string]bool{}}
	seen := map[string]bool{}
	abandoned := map[string]bool{}
	for _, k := range o.keys {
		need, err := o.needs(ctx, k)
		if err != nil {
			return res, err
		}
		if len(need) == 0 {
			continue
		}
		cut, held := cutoff, ""
		for g, id := range need {
			seen[g] = true
			if act.isAbandoned(o, g, now) {
				abandoned[g] = true
				if held == "" || lessID(id, held) {
					held = id
				}
				continue
			}
			if lessID(id, cut) {
				cut = id
			}
		}
		// Without the abandoned groups' release the cut would be at held:
		// trim to there first, so that what goes past it counts.
		past := held != "" && lessID(held, cut)
		if past {
			n, err := o.trimTo(ctx, k, held)
			if err != nil {
				return res, err
			}
			res.Removed += n
		}
		n, err := o.trimTo(ctx, k, cut)
		if err != nil {
			return res, err
		}
		res.Removed += n
		if past {
			res.PastAbandoned += n
		}
	}
	for g := range abandoned {
		res.Abandoned = append(res.Abandoned, g)
	}
	slices.Sort(res.Abandoned)
	return res, act.record(ctx, o, seen, now)
}

// trimTo removes the stream's entries before id.
func (o *Outbox) trimTo(ctx context.Context, stream, id string) (int64, error) {
	n, err := o.rdb.XTrimMinID(ctx, stream, id).Result()
	if err != nil {
		return 0, fmt.Errorf("delivery: trim %s: %w", stream, err)
	}
	return n, nil
}

// needs returns, for every group of the stream, the lowest id it still
// needs: its oldest pending entry, or the entry after the last one
// delivered to it.
func (o *Outbox) needs(ctx context.Context, stream string) (map[string]string, error) {
	groups, err := o.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if redisstore.IsNoSuchKey(err) || errors.Is(err, redis.Nil) {
			return nil, nil
		}
		return nil, fmt.Errorf("delivery: groups of %s: %w", stream, err)
	}
	out := make(map[string]string, len(groups))
	for _, g := range groups {
		need := nextID(g.LastDeliveredID)
		if g.Pending > 0 {
			p, err := o.rdb.XPending(ctx, stream, g.Name).Result()
			if err != nil {
				return nil, fmt.Errorf("delivery: pending of %s in %s: %w", g.Name, stream, err)
			}
			if p.Count > 0 && lessID(p.Lower, need) {
				need = p.Lower
			}
		}
		out[g.Name] = need
	}
	return out, nil
}

// streamID is the stream id of a time (its first possible entry).
func streamID(t time.Time) string { return strconv.FormatInt(max(t.UnixMilli(), 0), 10) + "-0" }

// nextID is the id just after id.
func nextID(id string) string {
	ms, seq, _ := strings.Cut(id, "-")
	m, _ := strconv.ParseUint(ms, 10, 64)
	s, _ := strconv.ParseUint(seq, 10, 64)
	return strconv.FormatUint(m, 10) + "-" + strconv.FormatUint(s+1, 10)
}

// lessID compares stream ids.
func lessID(a, b string) bool {
	am, as, _ := strings.Cut(a, "-")
	bm, bs, _ := strings.Cut(b, "-")
	ami, _ := strconv.ParseUint(am, 10, 64)
	bmi, _ := strconv.ParseUint(bm, 10, 64)
	if ami != bmi {
		return ami < bmi
	}
	asi, _ := strconv.ParseUint(as, 10, 64)
	bsi, _ := strconv.ParseUint(bs, 10, 64)
	return asi < bsi
}

// DeadEntry is an action in the dead-letter stream.
type DeadEntry struct {
	ID            string
	Group         string
	DeliveryCount int64
	Values        map[string]any
	// Action is the action, decoded from Values; ActionErr says why it
	// does not decode (profile.ErrCorrupt), Action then holding what
	// could be read.
	Action    profile.Action
	ActionErr error
	// Stream is the outbox stream the action was in, StreamID its id
	// there.
	Stream, StreamID string
	// At is when the action was dead-lettered (from ID, to the
	// millisecond).
	At time.Time
}

// DeadAfter lists up to count entries of the dead-letter stream after the
// one with id after (DeadEntry.ID; "": from the oldest), oldest first.
func (o *Outbox) DeadAfter(ctx context.Context, after string, count int64) ([]DeadEntry, error) {
	start := "-"
	if after != "" {
		start = "(" + after
	}
	msgs, err := o.rdb.XRangeN(ctx, redisstore.DeadStream, start, "+", count).Result()
	if err != nil {
		return nil, fmt.Errorf("delivery: dead letters: %w", err)
	}
	out := make([]DeadEntry, 0, len(msgs))
	for _, m := range msgs {
		g, _ := m.Values["dead_group"].(string)
		c, _ := m.Values["delivery_count"].(string)
		n, _ := strconv.ParseInt(c, 10, 64)
		d := DeadEntry{ID: m.ID, Group: g, DeliveryCount: n, Values: m.Values}
		d.Action, d.ActionErr = redisstore.DecodeAction(m.Values)
		d.Stream, _ = m.Values["dead_stream"].(string)
		d.StreamID, _ = m.Values["dead_id"].(string)
		if ms, _, ok := strings.Cut(m.ID, "-"); ok {
			if n, err := strconv.ParseInt(ms, 10, 64); err == nil {
				d.At = time.UnixMilli(n).UTC()
			}
		}
		out = append(out, d)
	}
	return out, nil
}
