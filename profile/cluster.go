package profile

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
)

// This file is what a Redis Cluster changes in the store. A cluster runs a
// MULTI/EXEC only when all its keys hash to one slot, and WATCH is per node:
// so a transaction runs on the connection of the master that owns its slot,
// and a group transaction holds the users of one bucket (whose keys share
// the hash tag {bucket}, so one slot).
//
// While a reshard migrates a slot, Redis answers the slot's commands with
// ASK (the key has left), TRYAGAIN (some of the keys have left) or, once the
// slot has moved, MOVED; CLUSTERDOWN while a failover is under way. It
// refuses them before anything is written, and a command queued after MULTI
// that is refused makes EXEC discard the whole transaction (EXECABORT). So
// such a transaction is retried as a whole after a backoff and a reload of
// the slot map (Options.MaxRedirects), never half applied. A key migrated
// away after our WATCH counts as modified: the EXEC aborts and the
// transaction re-reads the profile where it now lives.

// watchOn runs fn in a go-redis transaction on the connection that owns
// slotKey: the client itself on a standalone Redis, the master of slotKey's
// slot on a cluster. keys are WATCHed before fn, as in redis.Client.Watch.
func (s *RedisStore) watchOn(ctx context.Context, slotKey string, fn func(*redis.Tx) error, keys ...string) error {
	if s.cluster == nil {
		return s.rdb.Watch(ctx, fn, keys...)
	}
	node, err := s.cluster.MasterForKey(ctx, slotKey)
	if err != nil {
		return err
	}
	return node.Watch(ctx, fn, keys...)
}

// redirected reports whether err is a cluster's refusal of a transaction
// whose slot is moving, has moved or has no master yet, and if so schedules
// a reload of the slot map. It is false on a standalone Redis.
func (s *RedisStore) redirected(ctx context.Context, err error) bool {
	if s.cluster == nil || err == nil {
		return false
	}
	_, moved := redis.IsMovedError(err)
	_, ask := redis.IsAskError(err)
	if !moved && !ask && !redis.IsTryAgainError(err) && !redis.IsClusterDownError(err) && !redis.IsExecAbortError(err) {
		return false
	}
	if !ask {
		// An ASK is for one key in a migrating slot: the slot map is
		// still right, and the migration ends with a MOVED.
		s.cluster.ReloadState(ctx)
	}
	return true
}

// errorSeen notes an error that is neither a conflict nor a redirect before
// the transaction is retried. On a cluster, an error that is not a Redis
// reply (a refused or cut connection) may mean the slot's master died: the
// slot map is reloaded so that, once a replica is promoted, the retries
// and the next transactions go to it instead of waiting for the client's
// periodic reload.
func (s *RedisStore) errorSeen(ctx context.Context, err error) {
	if s.cluster == nil || err == nil || ctx.Err() != nil {
		return
	}
	var reply redis.Error
	if errors.As(err, &reply) {
		return
	}
	s.cluster.ReloadState(ctx)
}
