package audit

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// recentPage is how many entries RecentForUser reads per round trip.
const recentPage = 500

// RecentForUser returns up to want of the user's entries among the newest
// scan entries of the audit stream, newest first, reading them newest
// first in pages of 500 (XREVRANGE) and stopping as soon as it has want.
// An entry that does not decode but names the user is returned with its
// Err (see Record); an empty userID, or scan or want not positive,
// returns nothing.
//
// The answer is what the log holds, not the user's history: only the
// sampled share of decisions is logged (decision.audit_sample, Options.
// Sample), entries can be dropped when the writer falls behind (Stats),
// and the stream keeps about the newest Options.MaxLen entries of all
// users. A user with no entry among the newest scan may still have older
// ones; scan bounds the cost, about scan entries read from Redis.
func (l *Log) RecentForUser(ctx context.Context, userID string, scan int64, want int) ([]Record, error) {
	if userID == "" || scan <= 0 || want <= 0 {
		return nil, nil
	}
	var out []Record
	end := "+"
	for scan > 0 {
		n := min(scan, recentPage)
		msgs, err := l.rdb.XRevRangeN(ctx, DefaultStream, end, "-", n).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("audit: recent of a user in %s: %w", DefaultStream, err)
		}
		for _, m := range msgs {
			if u, _ := m.Values["user_id"].(string); u != userID {
				continue
			}
			r := Record{ID: m.ID}
			r.Entry, r.Err = Decode(m.Values)
			if out = append(out, r); len(out) == want {
				return out, nil
			}
		}
		if int64(len(msgs)) < n {
			break // the oldest entry kept was reached
		}
		scan -= n
		end = "(" + msgs[len(msgs)-1].ID
	}
	return out, nil
}
