package daemon

import "github.com/redis/go-redis/v9"

// newReader returns a client with rdb's settings and a connection pool of
// its own, for the decision reads (profile.Options.Reader). Sharing rdb's
// pool, a decision queued for a connection behind the ingest transactions:
// with Redis slow or paused those hold every connection for seconds, and
// the reads, which give up at their deadline, missed their budget waiting
// for a pool turn (chaos scenario 5 in RELIABILITY.md). The pool is
// redis.pool_size connections, per node on a cluster.
func newReader(rdb redis.UniversalClient) redis.UniversalClient {
	switch c := rdb.(type) {
	case *redis.ClusterClient:
		opt := *c.Options()
		return redis.NewClusterClient(&opt)
	case *redis.Client:
		opt := *c.Options()
		return redis.NewClient(&opt)
	default:
		return rdb
	}
}
