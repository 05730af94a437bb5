package delivery

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/profile/redisstore"
)

// Trim removes from every outbox stream the entries that every consumer
// group has acknowledged and that are older than retention (processing
// time), and returns how many it removed.
//
// It never trims by length: on Redis 7, XADD/XTRIM MAXLEN silently deletes
// delivered-but-unacknowledged entries, and XAUTOCLAIM then drops them
// without error. Instead, per stream, the cut (MINID) is the lowest of,
// over every group, its oldest pending entry or, when it has none pending,
// the entry after the last one delivered to it; and of the retention
// cutoff. A stream without groups is not trimmed: nobody has consumed it.
func (o *Outbox) Trim(ctx context.Context, retention time.Duration, now time.Time) (int64, error) {
	var removed int64
	cutoff := streamID(now.Add(-retention))
	for _, k := range o.keys {
		minID, ok, err := o.safeMinID(ctx, k)
		if err != nil {
			return removed, err
		}
		if !ok {
			continue
		}
		if lessID(cutoff, minID) {
			minID = cutoff
		}
		n, err := o.rdb.XTrimMinID(ctx, k, minID).Result()
		if err != nil {
			return removed, fmt.Errorf("delivery: trim %s: %w", k, err)
		}
		removed += n
	}
	return removed, nil
}

// safeMinID returns the lowest id any group of the stream still needs.
func (o *Outbox) safeMinID(ctx context.Context, stream string) (string, bool, error) {
	groups, err := o.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if redisstore.IsNoSuchKey(err) || errors.Is(err, redis.Nil) {
			return "", false, nil
		}
		return "", false, fmt.Errorf("delivery: groups of %s: %w", stream, err)
	}
	if len(groups) == 0 {
		return "", false, nil
	}
	minID := ""
	for _, g := range groups {
		need := nextID(g.LastDeliveredID)
		if g.Pending > 0 {
			p, err := o.rdb.XPending(ctx, stream, g.Name).Result()
			if err != nil {
				return "", false, fmt.Errorf("delivery: pending of %s in %s: %w", g.Name, stream, err)
			}
			if p.Count > 0 && lessID(p.Lower, need) {
				need = p.Lower
			}
		}
		if minID == "" || lessID(need, minID) {
			minID = need
		}
	}
	return minID, true, nil
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
}

// Dead lists up to count entries of the dead-letter stream, oldest first.
func (o *Outbox) Dead(ctx context.Context, count int64) ([]DeadEntry, error) {
	msgs, err := o.rdb.XRangeN(ctx, redisstore.DeadStream, "-", "+", count).Result()
	if err != nil {
		return nil, fmt.Errorf("delivery: dead letters: %w", err)
	}
	out := make([]DeadEntry, 0, len(msgs))
	for _, m := range msgs {
		g, _ := m.Values["dead_group"].(string)
		c, _ := m.Values["delivery_count"].(string)
		n, _ := strconv.ParseInt(c, 10, 64)
		out = append(out, DeadEntry{ID: m.ID, Group: g, DeliveryCount: n, Values: m.Values})
	}
	return out, nil
}
