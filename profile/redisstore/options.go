package redisstore

import (
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Options configure a Store. The zero value of a field means its default,
// as DefaultOptions spells them out.
type Options struct {
	// Buckets is the number of hash-tag buckets users are spread over (the
	// B of DESIGN.md, see Layout). It is part of the key layout: changing
	// it on a live deployment orphans every profile. Default 1024.
	Buckets int
	// TTL is how long an idle profile is kept. Default 91 days; negative
	// means no expiry.
	TTL time.Duration
	// MaxAttempts bounds the transactions tried per user when other
	// writers conflict. An aborted transaction of several users is split
	// rather than counted against its users, so a user is also tried in up
	// to log2(MaxGroupUsers) shared transactions before it runs alone.
	// Default 64.
	MaxAttempts int
	// MaxErrorRetries bounds the retries after a Redis error (not a
	// conflict), such as a cut connection. Default 3; negative means none.
	MaxErrorRetries int
	// MaxRedirects bounds, on a Redis Cluster, the retries of a
	// transaction whose slot is moving or moved (MOVED, ASK, TRYAGAIN,
	// CLUSTERDOWN during a reshard or a failover), each after a backoff and
	// a reload of the slot map. Redis refuses such a transaction before
	// anything is written, so a retry never counts an event twice. Default
	// 200 (with the default backoff, about 4 s of a slot in migration).
	MaxRedirects int
	// BackoffMin and BackoffMax bound the jittered exponential backoff
	// between attempts. Defaults 100µs and 20ms.
	BackoffMin, BackoffMax time.Duration
	// MaxGroupUsers is the most users committed in one transaction: one
	// WATCH over all their profile keys pipelined with one read, and one
	// MULTI/EXEC with every write (DESIGN.md, principle 2). An aborted EXEC
	// splits the group in halves, retried apart. On a standalone Redis a
	// group may span buckets; on a Redis Cluster a group holds the users of
	// one bucket (one hash slot). 1 commits every user in a transaction of
	// its own. Default 64.
	MaxGroupUsers int
	// Parallelism is how many transactions of one shard cycle are
	// committed at the same time. Default 16.
	Parallelism int
	// Shards is the number of queues Apply routes users to, by bucket (the
	// keyBy of DESIGN.md): each shard commits one cycle at a time, all the
	// events queued for it since its last cycle, one read and one write per
	// user however many calls brought its events. At most Shards ×
	// Parallelism transactions run at once. Default 32.
	Shards int
	// WaitReplicas is how many replicas must acknowledge a transaction's
	// writes before the users' outcomes are reported: after each EXEC the
	// store sends WAIT WaitReplicas WaitTimeout on the same connection. A
	// shortfall fails the transaction's users with a
	// *profile.ReplicationError (profile.ErrUnavailable), not retried by
	// the store: the caller re-sends. So an acknowledged event survives the
	// loss of the master when one of those replicas is promoted. With it
	// on, a transaction whose events are all duplicates (a re-send) writes
	// its users' profiles back unchanged (which renews their TTL) and waits
	// too, so that a duplicate is acknowledged only once the profile that
	// holds the event is on the replicas. Redis replicates asynchronously,
	// so without it a write acknowledged just before the master dies can
	// be missing from the promoted replica. Default 0: no WAIT.
	WaitReplicas int
	// WaitTimeout bounds each WAIT (WaitReplicas > 0). Default 1s.
	WaitTimeout time.Duration
	// UserLocks is the number of in-process lock stripes that serialise
	// transactions on the same user (a shard's cycles and Update), so one
	// server never races itself on a user (WATCH then only catches other
	// servers' writes). Two users sharing a stripe also wait for each
	// other: a transaction holds up to MaxGroupUsers stripes, so the
	// stripes must far outnumber the users of the transactions in flight.
	// Default 65536 (512 KiB); negative disables the locks.
	UserLocks int
	// NearCache keeps decoded profiles in this process for Get and
	// GetMany, coherent with Redis through client tracking (Track).
	// Default: off.
	NearCache NearCacheOptions
	// Now is the processing clock. Default time.Now.
	Now func() time.Time
	// TracerProvider traces the store, each span a child of the one in the
	// call's context: "nudge.profile.transaction" per transaction group
	// (all its attempts, splits included; the bucket when the group's
	// users share one; its parent is the context of the first call the
	// shard cycle serves, or of the Update), "nudge.profile.read" per Get
	// and GetMany, "nudge.profile.delete" per Delete. Spans carry counts,
	// the bucket and the outcome, never a user id. Default nil: no
	// tracing, at no cost (a nil check per call).
	TracerProvider trace.TracerProvider
}

// NearCacheOptions configure the near-cache (nearcache.go, tracking.go).
// It serves reads only while Track runs and has every master tracked.
type NearCacheOptions struct {
	// MaxBytes bounds the estimated memory of the cached profiles; the
	// least recently used are evicted past it. 0 (the default) turns the
	// near-cache off: every read goes to Redis.
	MaxBytes int64
	// Heartbeat is how often each tracking connection is sent a PING.
	// Default 50ms.
	Heartbeat time.Duration
	// MaxSilence is the freshness bound: entries are served only while
	// every master has acknowledged a heartbeat sent less than MaxSilence
	// ago, so a hit reflects every write Redis executed before then (and,
	// as long as the connections are healthy, every write whose
	// invalidation has crossed the network: well under a millisecond on a
	// LAN). A connection silent for longer is replaced. Default 250ms, at
	// least twice Heartbeat.
	MaxSilence time.Duration
	// Topology is how often Track lists a Redis Cluster's masters, to
	// track new ones (the cache is bypassed until they are). Default 1s.
	Topology time.Duration
	// OnTrackingError, if set, is told of every tracking connection that
	// failed (the cache was emptied and is bypassed until a new one is
	// up), for the log.
	OnTrackingError func(error)
}

// DefaultOptions returns the options a Store runs with when told nothing.
func DefaultOptions() Options {
	return Options{
		Buckets:         DefaultBuckets,
		TTL:             91 * 24 * time.Hour,
		MaxAttempts:     64,
		MaxErrorRetries: 3,
		MaxRedirects:    200,
		BackoffMin:      100 * time.Microsecond,
		BackoffMax:      20 * time.Millisecond,
		MaxGroupUsers:   64,
		Parallelism:     16,
		Shards:          32,
		WaitTimeout:     time.Second,
		UserLocks:       65536,
	}
}

func (o Options) withDefaults() Options {
	d := DefaultOptions()
	positive(&o.Buckets, d.Buckets)
	if o.TTL == 0 {
		o.TTL = d.TTL
	}
	positive(&o.MaxAttempts, d.MaxAttempts)
	if o.MaxErrorRetries == 0 {
		o.MaxErrorRetries = d.MaxErrorRetries
	}
	positive(&o.MaxRedirects, d.MaxRedirects)
	positive(&o.BackoffMin, d.BackoffMin)
	positive(&o.BackoffMax, d.BackoffMax)
	o.BackoffMax = max(o.BackoffMax, o.BackoffMin)
	positive(&o.MaxGroupUsers, d.MaxGroupUsers)
	positive(&o.Parallelism, d.Parallelism)
	positive(&o.Shards, d.Shards)
	if o.UserLocks == 0 {
		o.UserLocks = d.UserLocks
	}
	o.WaitReplicas = max(o.WaitReplicas, 0)
	o.NearCache.MaxBytes = max(o.NearCache.MaxBytes, 0)
	positive(&o.NearCache.Heartbeat, 50*time.Millisecond)
	positive(&o.NearCache.MaxSilence, 250*time.Millisecond)
	o.NearCache.MaxSilence = max(o.NearCache.MaxSilence, 2*o.NearCache.Heartbeat)
	positive(&o.NearCache.Topology, time.Second)
	positive(&o.WaitTimeout, d.WaitTimeout)
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// positive sets *p to d when it is not positive.
func positive[T int | time.Duration](p *T, d T) {
	if *p <= 0 {
		*p = d
	}
}
