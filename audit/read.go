package audit

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// Record is an entry of the audit stream as Read returns it.
type Record struct {
	// ID is the entry's stream id: Read after it gets the entries that
	// follow.
	ID    string
	Entry Entry
	// Err says why the entry does not decode (ErrBadEntry); Entry then
	// holds what could be read.
	Err error
}

// Newest returns the id of the newest entry of the audit stream, "0-0"
// when it has none: Read after it returns only the entries written
// later. A tail that starts there misses nothing, unlike XREAD from "$",
// which a new read resolves again each time.
func (l *Log) Newest(ctx context.Context) (string, error) {
	msgs, err := l.rdb.XRevRangeN(ctx, DefaultStream, "+", "-", 1).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return "0-0", nil
	case err != nil:
		return "", fmt.Errorf("audit: newest of %s: %w", DefaultStream, err)
	case len(msgs) == 0:
		return "0-0", nil
	}
	return msgs[0].ID, nil
}

// Read returns up to count entries of the audit stream after the one with
// id after ("0-0": from the oldest kept), oldest first, without waiting
// for new ones: a caller that follows the stream polls, and holds no
// connection between reads.
func (l *Log) Read(ctx context.Context, after string, count int64) ([]Record, error) {
	msgs, err := l.rdb.XRangeN(ctx, DefaultStream, "("+after, "+", count).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("audit: read %s: %w", DefaultStream, err)
	}
	out := make([]Record, len(msgs))
	for i, m := range msgs {
		out[i].ID = m.ID
		out[i].Entry, out[i].Err = Decode(m.Values)
	}
	return out, nil
}
