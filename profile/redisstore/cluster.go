package redisstore

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// This file is what a Redis Cluster changes in the store. A cluster runs a
// MULTI/EXEC only when all its keys hash to one slot, and WATCH is per node:
// so a transaction runs on the connection of the master that owns its slot,
// and a group transaction holds the users of one bucket (whose keys share
// the hash tag {bucket}, so one slot; see groupsOf).
//
// While a reshard migrates a slot, Redis answers the slot's commands with
// ASK (the key has left), TRYAGAIN (some of the keys have left) or, once the
// slot has moved, MOVED; CLUSTERDOWN while a failover is under way. It
// refuses them before anything is written, and a command queued after MULTI
// that is refused makes EXEC discard the whole transaction (EXECABORT). So
// such a transaction is retried as a whole after a backoff and a reload of
// the slot map (classify, Options.MaxRedirects), never half applied. A key
// migrated away after our WATCH counts as modified: the EXEC aborts and the
// transaction re-reads the profile where it now lives.

// watchOn runs fn in a go-redis transaction on the connection that owns
// slotKey: the client itself on a standalone Redis, the master of slotKey's
// slot on a cluster. keys are WATCHed before fn, as in redis.Client.Watch.
func (s *Store) watchOn(ctx context.Context, slotKey string, fn func(*redis.Tx) error, keys ...string) error {
	if s.cluster == nil {
		return s.rdb.Watch(ctx, fn, keys...)
	}
	node, err := s.cluster.MasterForKey(ctx, slotKey)
	if err != nil {
		return err
	}
	return node.Watch(ctx, fn, keys...)
}
