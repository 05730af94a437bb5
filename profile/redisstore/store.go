package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/nudge-dm/nudge/profile"
)

// Store keeps profiles and outboxes in Redis: a standalone server (or any
// server speaking the protocol, such as the embedded development store),
// or a Redis Cluster when given a *redis.ClusterClient. It is safe for
// concurrent use.
type Store struct {
	rdb redis.UniversalClient
	// cluster is rdb when it is a Redis Cluster client: transactions then
	// run on the master of their slot, and groups hold one bucket each.
	cluster *redis.ClusterClient
	keys    Layout
	opt     Options
	shards  []shard      // see Options.Shards
	locks   []sync.Mutex // see Options.UserLocks
	stats   storeStats
	tracer  trace.Tracer // nil: tracing off
	near    *nearCache   // nil: no near-cache
	// trackingErr is the last failure of a tracking connection.
	trackingErr atomic.Pointer[error]
}

type storeStats struct {
	transactions, conflicts, errorRetries, redirects, exhausted atomic.Uint64
	replicationFailed                                           atomic.Uint64
	trackingFailures, trackingChanges                           atomic.Uint64
}

// Stats are cumulative counters of a store's transactions.
type Stats struct {
	// Transactions counts committed EXECs. One EXEC commits a whole group
	// of users (Options.MaxGroupUsers), so a batch of n users that all
	// change commits in about n/MaxGroupUsers transactions, not n.
	Transactions uint64
	// Conflicts counts EXECs aborted because a watched key changed.
	Conflicts uint64
	// ErrorRetries counts attempts repeated after a Redis error.
	ErrorRetries uint64
	// Redirects counts attempts repeated because a Redis Cluster slot was
	// moving or had moved (see Options.MaxRedirects).
	Redirects uint64
	// Exhausted counts users whose retries ran out (profile.ErrConflict).
	Exhausted uint64
	// ReplicationWaitsFailed counts transactions committed on the master
	// whose WAIT saw fewer replicas than Options.WaitReplicas (their users
	// got a *profile.ReplicationError).
	ReplicationWaitsFailed uint64
}

// New returns a store on rdb. With a *redis.ClusterClient the store runs
// in cluster mode: every transaction touches one bucket, whose keys share
// one hash slot, and follows the slot when it moves.
func New(rdb redis.UniversalClient, opt Options) *Store {
	s := &Store{rdb: rdb, opt: opt.withDefaults()}
	s.keys = NewLayout(s.opt.Buckets)
	s.cluster, _ = rdb.(*redis.ClusterClient)
	if s.opt.UserLocks > 0 {
		s.locks = make([]sync.Mutex, s.opt.UserLocks)
	}
	s.shards = make([]shard, s.opt.Shards)
	if s.opt.NearCache.MaxBytes > 0 {
		s.near = newNearCache(s.opt.NearCache, time.Now) // the heartbeats' clock, not the processing clock
	}
	if s.opt.TracerProvider != nil {
		s.tracer = s.opt.TracerProvider.Tracer("github.com/nudge-dm/nudge/profile/redisstore")
	}
	return s
}

// Layout returns the store's key layout.
func (s *Store) Layout() Layout { return s.keys }

// Stats returns the store's counters so far.
func (s *Store) Stats() Stats {
	return Stats{
		Transactions: s.stats.transactions.Load(),
		Conflicts:    s.stats.conflicts.Load(),
		ErrorRetries: s.stats.errorRetries.Load(),
		Redirects:    s.stats.redirects.Load(),
		Exhausted:    s.stats.exhausted.Load(),

		ReplicationWaitsFailed: s.stats.replicationFailed.Load(),
	}
}

// Span names and attributes of the store's traces. A user id is never an
// attribute, nor in a recorded error (privacy): counts and the bucket are.
const (
	spanTransaction = "nudge.profile.transaction"
	spanRead        = "nudge.profile.read"
	spanDelete      = "nudge.profile.delete"

	attrUsers     = attribute.Key("nudge.profile.users")
	attrEvents    = attribute.Key("nudge.profile.events")
	attrBucket    = attribute.Key("nudge.profile.bucket")
	attrAttempts  = attribute.Key("nudge.profile.attempts")
	attrConflicts = attribute.Key("nudge.profile.conflicts")
	attrOutcome   = attribute.Key("nudge.profile.outcome")
	attrNotFound  = attribute.Key("nudge.profile.not_found")
	attrExisted   = attribute.Key("nudge.profile.existed")
	attrActions   = attribute.Key("nudge.profile.actions")
)

// startSpan starts a span under ctx's, or returns ctx and a nil span when
// tracing is off. Callers check the span for nil before building
// attributes, so that tracing off allocates nothing.
func (s *Store) startSpan(ctx context.Context, name string) (context.Context, trace.Span) {
	if s.tracer == nil {
		return ctx, nil
	}
	return s.tracer.Start(ctx, name)
}

// failSpan records err on span as its error status. err must not name a
// user.
func failSpan(span trace.Span, err error) {
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
}

// Apply runs step on the stored profile of each user of events with that
// user's events, in order, and commits the new profiles and the steps'
// actions (to each user's bucket outbox) in WATCH/MULTI/EXEC transactions
// (txn.go). It returns one outcome per event, in the order given, and the
// actions committed.
//
// The events are grouped by user here, once: each user's events go to the
// shard of the user's bucket (shard.go), whose next cycle commits them with
// every other call's events for the same users. Users succeed or fail
// independently: a user whose profile is corrupt or whose step panics fails
// alone, and none of its writes are committed; the others are.
//
// Deduplication happens inside step, on the profile read in the same
// transaction, so re-running a transaction whose EXEC was applied but whose
// reply was lost reports the events as duplicates instead of counting them
// twice. If ctx ends first, the events not yet committed get its error
// (they may still commit: re-sending them is safe).
func (s *Store) Apply(ctx context.Context, events []profile.Event, step profile.Step) profile.BatchOutcome {
	return s.call(ctx, len(events), func(c *call) []*part { return groupByUser(c, events, step) })
}

// call is Apply's and Fire's one way through the shards: n outcomes, the
// parts cut by parts, queued on their shards, waited for until done or
// ctx ends, and collected.
func (s *Store) call(ctx context.Context, n int, parts func(*call) []*part) profile.BatchOutcome {
	out := profile.BatchOutcome{Events: make([]profile.EventOutcome, n)}
	if n == 0 {
		return out
	}
	if err := ctx.Err(); err != nil {
		for i := range out.Events {
			out.Events[i].Err = err
		}
		return out
	}
	c := &call{ctx: ctx, done: make(chan struct{})}
	c.parts = parts(c)
	c.remaining.Store(int64(len(c.parts)))
	s.enqueue(c.parts)
	select {
	case <-c.done:
	case <-ctx.Done():
	}
	for _, p := range c.parts {
		p.collect(&out, ctx.Err())
	}
	return out
}

// groupByUser cuts events into one part per user, in the order of each
// user's first event, each part's events in their order. Two passes over
// one backing array for all events and one for their indexes: a batch of
// n users costs a few allocations, not a growing slice per user.
func groupByUser(c *call, events []profile.Event, step profile.Step) []*part {
	at := make(map[string]int) // user -> its part
	counts := []int(nil)
	for i := range events {
		u, ok := at[events[i].UserID]
		if !ok {
			u = len(counts)
			at[events[i].UserID] = u
			counts = append(counts, 0)
		}
		counts[u]++
	}
	all := make([]part, len(counts))
	parts := make([]*part, len(counts))
	evs := make([]profile.Event, len(events))
	idx := make([]int, len(events))
	start := 0
	for u, n := range counts {
		p := &all[u]
		p.step, p.call = step, c
		p.events, p.idx = evs[start:start:start+n], idx[start:start:start+n]
		parts[u] = p
		start += n
	}
	for i := range events {
		p := parts[at[events[i].UserID]]
		p.userID = events[i].UserID
		p.events = append(p.events, events[i])
		p.idx = append(p.idx, i)
	}
	return parts
}

// Update runs fn on the user's stored profile (an empty Profile when the
// user has none) at processing time now, and writes the profile back when
// fn reports a change: a transaction of one user, on the caller's
// goroutine, with the retries of Apply's. fn must be free of side effects
// beyond the profile: it runs again, on a freshly read profile, when the
// transaction conflicts. It returns the profile version after the call.
func (s *Store) Update(ctx context.Context, userID string, fn func(p *profile.Profile, now time.Time) (changed bool)) (uint64, error) {
	w := &userWork{userID: userID, parts: []*part{{userID: userID, step: func(p *profile.Profile, _ []profile.Event, now time.Time) profile.Outcome {
		return profile.Outcome{Changed: fn(p, now)}
	}}}}
	s.commitGroup(ctx, []*userWork{w})
	w.deliver()
	p := w.parts[0]
	if p.err != nil {
		return 0, p.err
	}
	return p.version, nil
}

// Get reads a user's profile without a transaction: from the near-cache
// when it has the profile and tracking is up (Track), else from Redis. It
// returns profile.ErrNotFound when the user has none, a wrapped
// profile.ErrCorrupt when the key holds something else than a profile,
// and a wrapped profile.ErrUnavailable when Redis fails. The profile
// returned may be shared with other callers: it must not be modified.
func (s *Store) Get(ctx context.Context, userID string) (*profile.Profile, error) {
	if p, ok, err := s.Peek(userID, 0); ok {
		return p, err
	}
	return s.Load(ctx, userID, 0)
}

// Peek returns the user's profile from the near-cache, without I/O, with
// found false when the cache cannot serve it: it does not hold the user,
// tracking is down, or the profile it holds is older than minVersion
// (read-your-writes across instances). A user known to have no profile
// is found with profile.ErrNotFound (only when minVersion is 0). The
// profile returned may be shared: it must not be modified.
func (s *Store) Peek(userID string, minVersion uint64) (p *profile.Profile, found bool, err error) {
	p, found = s.near.lookup(s.keys.ProfileKey(userID), minVersion)
	if found && p == nil {
		return nil, true, profile.ErrNotFound
	}
	return p, found, nil
}

// Load reads a user's profile from Redis, with Get's errors, and keeps it
// in the near-cache. Concurrent Loads of the same user share one read
// while tracking is up (nearCache.join), unless its profile is older than
// the caller's minVersion: then the caller reads on its own.
func (s *Store) Load(ctx context.Context, userID string, minVersion uint64) (*profile.Profile, error) {
	ctx, span := s.startSpan(ctx, spanRead)
	p, err := s.load(ctx, s.keys.ProfileKey(userID), minVersion)
	if span != nil {
		endRead(span, err)
	}
	return p, err
}

// load is Load of the profile at key.
func (s *Store) load(ctx context.Context, key string, minVersion uint64) (*profile.Profile, error) {
	f, leader := s.near.join(key)
	if leader {
		p, err := s.get(ctx, key, f.t)
		s.near.land(key, f, p, err)
		return p, err
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	switch {
	case f.err == nil && f.p.Version >= minVersion,
		errors.Is(f.err, profile.ErrNotFound) && minVersion == 0,
		errors.Is(f.err, profile.ErrCorrupt):
		return f.p, f.err
	}
	// The leader's read failed (its deadline may have been shorter), or
	// found an older profile than this caller needs: read on our own.
	return s.get(ctx, key, s.near.begin(key))
}

// endRead sets a read span's attributes from the per-user errors of the
// read, and its status from the first error other than ErrNotFound, and
// ends it.
func endRead(span trace.Span, errs ...error) {
	defer span.End()
	if !span.IsRecording() {
		return
	}
	notFound := 0
	var failed error
	for _, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, profile.ErrNotFound):
			notFound++
		case failed == nil:
			failed = err
		}
	}
	span.SetAttributes(attrUsers.Int(len(errs)), attrNotFound.Int(notFound))
	if failed != nil {
		failSpan(span, failed)
	}
}

// get reads the profile at key from Redis, and caches it with ticket t
// (see nearCache.store).
func (s *Store) get(ctx context.Context, key string, t ticket) (*profile.Profile, error) {
	raw, err := s.rdb.Get(ctx, key).Bytes()
	return s.decoded(ctx, t, key, raw, err)
}

// decoded is the profile read at key with ticket t, as raw or err, and
// caches it (or its absence).
func (s *Store) decoded(ctx context.Context, t ticket, key string, raw []byte, err error) (*profile.Profile, error) {
	if err != nil {
		err = readError(ctx, err)
		if errors.Is(err, profile.ErrNotFound) {
			s.near.store(t, key, nil, 0)
		}
		return nil, err
	}
	p, err := profile.Decode(raw)
	if err == nil {
		s.near.store(t, key, p, len(raw))
	}
	return p, err
}

// readError is the error of a profile read that failed with err.
func readError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, redis.Nil):
		return profile.ErrNotFound
	case IsWrongType(err): // one key's value, not the server
		return fmt.Errorf("%w: the profile key holds another Redis type: %w", profile.ErrCorrupt, err)
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return fmt.Errorf("%w: %w", profile.ErrUnavailable, err)
}

// GetMany reads several users' profiles: those the near-cache has from
// it (Peek, with minVersions nil or one per user), the others in one
// pipelined round trip (LoadMany). For each user it returns the profile,
// or the error Get would.
func (s *Store) GetMany(ctx context.Context, userIDs []string, minVersions []uint64) ([]*profile.Profile, []error) {
	profiles := make([]*profile.Profile, len(userIDs))
	errs := make([]error, len(userIDs))
	var missed []int // indexes of the users not served by the cache
	var ids []string
	for i, id := range userIDs {
		var min uint64
		if minVersions != nil {
			min = minVersions[i]
		}
		var found bool
		if profiles[i], found, errs[i] = s.Peek(id, min); !found {
			missed = append(missed, i)
			ids = append(ids, id)
		}
	}
	if len(missed) == 0 {
		return profiles, errs
	}
	ps, es := s.LoadMany(ctx, ids)
	for k, i := range missed {
		profiles[i], errs[i] = ps[k], es[k]
	}
	return profiles, errs
}

// LoadMany reads several users' profiles from Redis in one pipelined
// round trip (one per node on a cluster), and keeps them in the
// near-cache. For each user it returns the profile, or the error Get
// would.
func (s *Store) LoadMany(ctx context.Context, userIDs []string) ([]*profile.Profile, []error) {
	return s.readMany(ctx, userIDs, true)
}

// ReadMany is LoadMany without keeping what it reads in the near-cache:
// for batch readers (GetFeatures) whose users are not the decisions' hot
// set, so that they neither evict it nor make the garbage collector work
// for profiles nobody asks for again.
func (s *Store) ReadMany(ctx context.Context, userIDs []string) ([]*profile.Profile, []error) {
	return s.readMany(ctx, userIDs, false)
}

// readMany is getMany in a read span.
func (s *Store) readMany(ctx context.Context, userIDs []string, keep bool) ([]*profile.Profile, []error) {
	ctx, span := s.startSpan(ctx, spanRead)
	profiles, errs := s.getMany(ctx, userIDs, keep)
	if span != nil {
		endRead(span, errs...)
	}
	return profiles, errs
}

func (s *Store) getMany(ctx context.Context, userIDs []string, keep bool) ([]*profile.Profile, []error) {
	profiles := make([]*profile.Profile, len(userIDs))
	errs := make([]error, len(userIDs))
	cmds := make([]*redis.StringCmd, len(userIDs))
	keys := make([]string, len(userIDs))
	tickets := make([]ticket, len(userIDs))
	for i, id := range userIDs {
		keys[i] = s.keys.ProfileKey(id)
		if keep {
			tickets[i] = s.near.begin(keys[i])
		}
	}
	_, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i := range keys {
			cmds[i] = pipe.Get(ctx, keys[i])
		}
		return nil
	})
	// A reply about one key (WRONGTYPE) is that command's alone; only a
	// failure of the connection is every command's.
	var conn error
	if err != nil && !errors.As(err, new(redis.Error)) {
		conn = err
	}
	for i, cmd := range cmds {
		raw, cerr := cmd.Bytes()
		if cerr == nil {
			cerr = conn
		}
		profiles[i], errs[i] = s.decoded(ctx, tickets[i], keys[i], raw, cerr)
	}
	return profiles, errs
}

// Delete erases a user from every key nudge writes (keys.go): the
// profile, and the user's entries in the bucket's outbox, the dead-letter
// stream and the audit stream. Events of the user that arrive during or
// after the erasure start a new profile.
func (s *Store) Delete(ctx context.Context, userID string) (profile.DeleteResult, error) {
	ctx, span := s.startSpan(ctx, spanDelete)
	res, err := s.delete(ctx, userID)
	if span != nil && span.IsRecording() {
		span.SetAttributes(attrUsers.Int(1), attrBucket.Int(s.keys.Bucket(userID)),
			attrExisted.Bool(res.Existed), attrActions.Int(res.Actions))
		if err != nil {
			failSpan(span, err)
		}
	}
	if span != nil {
		span.End()
	}
	return res, err
}

func (s *Store) delete(ctx context.Context, userID string) (profile.DeleteResult, error) {
	var res profile.DeleteResult
	key := s.keys.ProfileKey(userID)
	n, err := s.rdb.Del(ctx, key).Result()
	s.near.invalidate(key) // whatever Del returned: it may have deleted
	if err != nil {
		return res, fmt.Errorf("%w: delete profile: %w", profile.ErrUnavailable, err)
	}
	// Its timers went with the profile; its due entry goes now (a poll
	// that found it first fires an empty profile, which removes it too).
	if err := s.rdb.ZRem(ctx, s.keys.DueKey(s.keys.Bucket(userID), s.keys.TimerShard(userID)), userID).Err(); err != nil {
		return res, fmt.Errorf("%w: delete the due entry: %w", profile.ErrUnavailable, err)
	}
	res.Existed = n > 0
	res.Actions, err = DeleteWhere(ctx, s.rdb, s.keys.OutboxKey(s.keys.Bucket(userID)), fieldUserID, userID)
	if err != nil {
		return res, fmt.Errorf("%w: outbox: %w", profile.ErrUnavailable, err)
	}
	res.DeadLetters, err = DeleteWhere(ctx, s.rdb, DeadStream, fieldUserID, userID)
	if err != nil {
		return res, fmt.Errorf("%w: dead letters: %w", profile.ErrUnavailable, err)
	}
	res.AuditEntries, err = DeleteWhere(ctx, s.rdb, AuditStream, fieldUserID, userID)
	if err != nil {
		return res, fmt.Errorf("%w: audit entries: %w", profile.ErrUnavailable, err)
	}
	return res, nil
}
