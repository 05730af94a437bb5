package redisstore

import (
	"context"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/profile"
)

// This file keeps the campaign counters (DESIGN.md, "Measurement
// counters"). A step's exposures and conversions (profile.Measure) are
// counted in a hash per bucket, nudge:{b}:m, by HINCRBY in the MULTI that
// writes the profile they come from: a cluster MULTI cannot touch a
// global key, and one hash per bucket has no hot key. The profile holds
// the attribution windows, so a re-sent event or a retried transaction
// finds its exposure already open and counts nothing; a report sums the
// buckets.
//
// A hash field is <variant>:<counter>:<campaign>, with variant t
// (treated) or c (control) and counter e (users exposed), c (users
// converted) or v (conversion value). Campaign ids cannot hold a colon.

func variantCode(v profile.Variant) string {
	if v == profile.Control {
		return "c"
	}
	return "t"
}

// writeMeasures queues the counters of the user's measures on pipe.
func (s *Store) writeMeasures(ctx context.Context, pipe redis.Pipeliner, userID string, ms []profile.Measure) {
	key := s.keys.MeasureKey(s.keys.Bucket(userID))
	for _, m := range ms {
		v := variantCode(m.Variant) + ":"
		if m.Exposed != 0 {
			pipe.HIncrBy(ctx, key, v+"e:"+m.Campaign, m.Exposed)
		}
		if m.Converted != 0 {
			pipe.HIncrBy(ctx, key, v+"c:"+m.Campaign, m.Converted)
		}
		if m.Value != 0 {
			pipe.HIncrByFloat(ctx, key, v+"v:"+m.Campaign, m.Value)
		}
	}
}

// counterNames are the counters of a variant, in field order.
var counterNames = [...]string{"e", "c", "v"}

// counterFields are the hash fields of the campaigns' counters: for each
// campaign, the treated then the control variant's counterNames.
func counterFields(campaignIDs []string) []string {
	fields := make([]string, 0, 6*len(campaignIDs))
	for _, id := range campaignIDs {
		for _, v := range [...]string{"t", "c"} {
			for _, n := range counterNames {
				fields = append(fields, v+":"+n+":"+id)
			}
		}
	}
	return fields
}

// DeleteCounts deletes the campaigns' counters from every bucket, in one
// pipelined round trip (one per node of a cluster): their counts start
// again from zero.
func (s *Store) DeleteCounts(ctx context.Context, campaignIDs []string) error {
	if len(campaignIDs) == 0 {
		return nil
	}
	fields := counterFields(campaignIDs)
	if _, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for b := range s.keys.Buckets() {
			pipe.HDel(ctx, s.keys.MeasureKey(b), fields...)
		}
		return nil
	}); err != nil {
		return fmt.Errorf("%w: delete the campaign counters: %w", profile.ErrUnavailable, err)
	}
	return nil
}

// Counts sums the counters of the given campaigns over the buckets: one
// HMGET of their fields per bucket, in one pipelined round trip (one per
// node of a cluster). A campaign without counts has zero counts.
func (s *Store) Counts(ctx context.Context, campaignIDs []string) (map[string]profile.CampaignCounts, error) {
	out := make(map[string]profile.CampaignCounts, len(campaignIDs))
	if len(campaignIDs) == 0 {
		return out, nil
	}
	fields := counterFields(campaignIDs)
	buckets := s.keys.Buckets()
	cmds := make([]*redis.SliceCmd, buckets)
	if _, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for b := range buckets {
			cmds[b] = pipe.HMGet(ctx, s.keys.MeasureKey(b), fields...)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("%w: read the campaign counters: %w", profile.ErrUnavailable, err)
	}
	for _, cmd := range cmds {
		vals := cmd.Val()
		for i, id := range campaignIDs {
			cc := out[id]
			for k, arm := range [...]*profile.Arm{&cc.Treated, &cc.Control} {
				base := 6*i + 3*k
				arm.Exposed += counterInt(vals[base])
				arm.Converted += counterInt(vals[base+1])
				if v, ok := vals[base+2].(string); ok {
					x, _ := strconv.ParseFloat(v, 64)
					arm.Value += x
				}
			}
			out[id] = cc
		}
	}
	return out, nil
}

// counterInt is an HMGET reply as a count (nil: 0).
func counterInt(v any) int64 {
	s, ok := v.(string)
	if !ok {
		return 0
	}
	n, _ := strconv.ParseInt(s, 10, 64)
	return n
}

// Run runs each user's step on the user's stored profile, with no
// events, through the same shards and transactions as Apply: steps[i] for
// userIDs[i] (a user may appear more than once). It returns one outcome
// per entry, in order, with the actions and measures written.
func (s *Store) Run(ctx context.Context, userIDs []string, steps []profile.Step) profile.BatchOutcome {
	return s.call(ctx, len(userIDs), func(c *call) []*part {
		all := make([]part, len(userIDs))
		idx := make([]int, len(userIDs))
		parts := make([]*part, len(userIDs))
		for i, u := range userIDs {
			idx[i] = i
			all[i] = part{userID: u, step: steps[i], call: c, single: true, idx: idx[i : i+1 : i+1]}
			parts[i] = &all[i]
		}
		return parts
	})
}
