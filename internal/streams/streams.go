// Package streams holds Redis stream helpers shared by the packages that
// own streams (profile's outboxes, audit).
package streams

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// DeleteWhere deletes the entries of a stream whose field equals value,
// paging through it with XRANGE, and returns how many it deleted. Pages
// restart at the last id seen (inclusive, skipped) rather than with the
// exclusive "(id" form, which older servers and the embedded store lack.
func DeleteWhere(ctx context.Context, rdb redis.UniversalClient, stream, field, value string) (int, error) {
	const page = 1000
	deleted := 0
	start, last := "-", ""
	for {
		msgs, err := rdb.XRangeN(ctx, stream, start, "+", page).Result()
		if err != nil {
			return deleted, fmt.Errorf("scan %s: %w", stream, err)
		}
		var ids []string
		for _, m := range msgs {
			if m.ID != last && m.Values[field] == value {
				ids = append(ids, m.ID)
			}
		}
		if len(ids) > 0 {
			n, err := rdb.XDel(ctx, stream, ids...).Result()
			if err != nil {
				return deleted, fmt.Errorf("delete from %s: %w", stream, err)
			}
			deleted += int(n)
		}
		if len(msgs) < page {
			return deleted, nil
		}
		last = msgs[len(msgs)-1].ID
		start = last
	}
}
