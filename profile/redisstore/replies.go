package redisstore

import (
	"context"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// This file recognises the Redis error replies nudge acts on, in one
// place, by the reply's prefix (never by matching an error's text
// anywhere else), and holds the stream helper every owner of a stream
// shares.

// Prefixes of the Redis error replies nudge acts on.
const (
	// replyNoGroup: the consumer group does not exist on the stream (it
	// was never created, or the stream was deleted and made again).
	replyNoGroup = "NOGROUP"
	// replyBusyGroup: XGROUP CREATE of a group that exists.
	replyBusyGroup = "BUSYGROUP"
	// replyNoSuchKey: XINFO on a stream that does not exist.
	replyNoSuchKey = "no such key"
	// replyWrongType: the key holds another type than the command needs
	// (a profile key that is not a string).
	replyWrongType = "WRONGTYPE"
)

// isReply reports whether err is a Redis error reply whose message starts
// with prefix (after Redis's generic "ERR ").
func isReply(err error, prefix string) bool {
	return err != nil && redis.HasErrorPrefix(err, prefix)
}

// IsNoGroup reports whether err is Redis's NOGROUP reply: the consumer
// group does not exist on that stream.
func IsNoGroup(err error) bool { return isReply(err, replyNoGroup) }

// IsBusyGroup reports whether err is Redis's BUSYGROUP reply: the group
// being created exists already.
func IsBusyGroup(err error) bool { return isReply(err, replyBusyGroup) }

// IsNoSuchKey reports whether err is Redis's "no such key" reply (XINFO of
// a stream that does not exist).
func IsNoSuchKey(err error) bool { return isReply(err, replyNoSuchKey) }

// IsWrongType reports whether err is Redis's WRONGTYPE reply: the key
// holds a value of another type.
func IsWrongType(err error) bool { return isReply(err, replyWrongType) }

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
