package profile

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/nudge-dm/nudge/internal/streams"
)

// Errors returned by the store. Callers match them with errors.Is.
var (
	// ErrNotFound means the user has no profile.
	ErrNotFound = errors.New("profile: not found")
	// ErrConflict means a user's transaction kept conflicting with other
	// writers until the attempts ran out. Nothing of that user's events was
	// applied; re-sending them is safe.
	ErrConflict = errors.New("profile: transaction conflicts exhausted the retries")
	// ErrUnavailable means the store could not be reached, or (with
	// Options.WaitReplicas) a write was not confirmed by enough replicas.
	// The events may or may not have been applied; re-sending them is safe
	// (deduplication).
	ErrUnavailable = errors.New("profile: store unavailable")
)

// ReplicationError is a write that Redis committed on the master but that
// fewer replicas than Options.WaitReplicas acknowledged within WaitTimeout:
// it would be lost if the master failed now and a replica without it were
// promoted. The caller gets it, matching ErrUnavailable, instead of an
// acknowledgement, and re-sends: a re-send that finds the events applied
// reports them as duplicates only once the profile holding them is
// replicated (see Options.WaitReplicas).
type ReplicationError struct {
	// Acked is how many replicas acknowledged the write; Want is
	// Options.WaitReplicas.
	Acked, Want int
	// Timeout is Options.WaitTimeout.
	Timeout time.Duration
}

func (e *ReplicationError) Error() string {
	return fmt.Sprintf("%v: written on the master but acknowledged by %d of %d replicas within %v", ErrUnavailable, e.Acked, e.Want, e.Timeout)
}

// Unwrap makes a ReplicationError match ErrUnavailable.
func (e *ReplicationError) Unwrap() error { return ErrUnavailable }

// Options configure a RedisStore. The zero value of a field means its
// default.
type Options struct {
	// Buckets is the number of hash-tag buckets users are spread over (the
	// B of DESIGN.md). It is part of the key layout: changing it on a live
	// deployment orphans every profile. Default 1024.
	Buckets int
	// TTL is how long an idle profile is kept. Default 30 days; negative
	// means no expiry.
	TTL time.Duration
	// MaxAttempts bounds the transactions tried per user and Apply call when
	// other writers conflict. An aborted group transaction (see
	// MaxGroupUsers) is split rather than counted against its users, so a
	// user is also tried in up to log2(MaxGroupUsers) shared transactions
	// before it runs alone. Default 64.
	MaxAttempts int
	// MaxErrorRetries bounds the retries after a Redis error (not a
	// conflict), such as a cut connection. Default 3; negative means none.
	MaxErrorRetries int
	// MaxRedirects bounds, on a Redis Cluster, the retries of a user's
	// transaction whose slot is moving or moved (MOVED, ASK, TRYAGAIN,
	// CLUSTERDOWN during a reshard or a failover), each after a backoff and
	// a reload of the slot map. Redis refuses such a transaction before
	// anything is written, so a retry never counts an event twice. Default
	// 200 (with the default backoff, about 4 s of a slot in migration).
	MaxRedirects int
	// BackoffMin and BackoffMax bound the jittered exponential backoff
	// between attempts. Defaults 100µs and 20ms.
	BackoffMin, BackoffMax time.Duration
	// MaxGroupUsers is the most users Apply commits in one transaction: one
	// WATCH over all their profile keys pipelined with one read, and one
	// MULTI/EXEC with every write (DESIGN.md, principle 2). An aborted EXEC
	// splits the group in halves, retried apart. On a standalone Redis a
	// group may span buckets; on a Redis Cluster a group holds the users of
	// one bucket (one hash slot). 1 commits every user in a transaction of
	// its own. Default 64.
	MaxGroupUsers int
	// Parallelism is how many transactions of one shard cycle (groups), or
	// of one Apply call when MaxGroupUsers is 1 (users), are committed at
	// the same time. Default 16.
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
	// shortfall fails the transaction's users with a *ReplicationError
	// (ErrUnavailable), not retried by the store: the caller re-sends. So
	// an acknowledged event survives the loss of the master when one of
	// those replicas is promoted. With it on, a transaction whose events
	// are all duplicates (a re-send) writes its users' profiles back
	// unchanged (which renews their TTL) and waits too, so that a
	// duplicate is acknowledged only once the profile that holds the event
	// is on the replicas. Redis replicates asynchronously, so without it a
	// write acknowledged just before the master dies can be missing from
	// the promoted replica. Default 0: no WAIT (nudged's own default,
	// redis.wait_replicas auto, is 1 when every master has a replica).
	WaitReplicas int
	// WaitTimeout bounds each WAIT (WaitReplicas > 0). Default 1s.
	WaitTimeout time.Duration
	// UserLocks is the number of in-process lock stripes that serialise
	// transactions on the same user, so one server never races itself on a
	// user (WATCH then only catches other servers' writes). Two users
	// sharing a stripe also wait for each other: a group transaction holds
	// up to MaxGroupUsers stripes, so the stripes must far outnumber the
	// users of the groups in flight. Default 65536 (512 KiB); negative
	// disables the locks.
	UserLocks int
	// Now is the processing clock. Default time.Now.
	Now func() time.Time
	// TracerProvider traces the store, each span a child of the one in the
	// call's context: "nudge.profile.transaction" per group of Apply (all
	// its attempts, splits included; the bucket when the group's users
	// share one; its parent is the context of the first call the shard
	// cycle serves) and per single-user transaction of Update (and of
	// Apply with MaxGroupUsers 1),
	// "nudge.profile.read" per Get and GetMany, "nudge.profile.delete" per
	// Delete. Spans carry counts, the bucket and the outcome, never a user
	// id. Default nil: no tracing, at no cost (a nil check per call).
	TracerProvider trace.TracerProvider
}

func (o Options) withDefaults() Options {
	if o.Buckets <= 0 {
		o.Buckets = 1024
	}
	if o.TTL == 0 {
		o.TTL = 30 * 24 * time.Hour
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 64
	}
	if o.MaxErrorRetries == 0 {
		o.MaxErrorRetries = 3
	}
	if o.MaxRedirects <= 0 {
		o.MaxRedirects = 200
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = 100 * time.Microsecond
	}
	if o.BackoffMax <= 0 {
		o.BackoffMax = 20 * time.Millisecond
	}
	if o.BackoffMax < o.BackoffMin {
		o.BackoffMax = o.BackoffMin
	}
	if o.MaxGroupUsers <= 0 {
		o.MaxGroupUsers = 64
	}
	if o.Parallelism <= 0 {
		o.Parallelism = 16
	}
	if o.Shards <= 0 {
		o.Shards = 32
	}
	if o.UserLocks == 0 {
		o.UserLocks = 65536
	}
	if o.WaitReplicas < 0 {
		o.WaitReplicas = 0
	}
	if o.WaitTimeout <= 0 {
		o.WaitTimeout = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// RedisStore keeps profiles and outboxes in Redis: a standalone server (or
// any server speaking the protocol, such as the embedded development store),
// or a Redis Cluster when given a *redis.ClusterClient. It is safe for
// concurrent use.
type RedisStore struct {
	rdb redis.UniversalClient
	// cluster is rdb when it is a Redis Cluster client: transactions then
	// run on the master of their slot, and groups hold one bucket each.
	cluster *redis.ClusterClient
	opt     Options
	shards  []shard      // see Options.Shards
	locks   []sync.Mutex // see Options.UserLocks
	stats   storeStats
	tracer  trace.Tracer // nil: tracing off
}

type storeStats struct {
	transactions, conflicts, errorRetries, redirects, exhausted atomic.Uint64
	replicationFailed                                           atomic.Uint64
}

// Stats are cumulative counters of a store's transactions.
type Stats struct {
	// Transactions counts committed EXECs. One EXEC commits a whole group
	// of users (Options.MaxGroupUsers), so a batch of n users that all
	// change commits in about n/MaxGroupUsers transactions, not n.
	Transactions uint64
	// Conflicts counts EXECs aborted because a watched key changed (of a
	// group or of a single user).
	Conflicts uint64
	// ErrorRetries counts attempts (of a group or of a single user)
	// repeated after a Redis error.
	ErrorRetries uint64
	// Redirects counts attempts repeated because a Redis Cluster slot was
	// moving or had moved (see Options.MaxRedirects).
	Redirects uint64
	// Exhausted counts users whose retries ran out (ErrConflict).
	Exhausted uint64
	// ReplicationWaitsFailed counts transactions committed on the master
	// whose WAIT saw fewer replicas than Options.WaitReplicas (their users
	// got a *ReplicationError).
	ReplicationWaitsFailed uint64
}

// NewRedisStore returns a store on rdb. With a *redis.ClusterClient the
// store runs in cluster mode: every transaction touches one bucket, whose
// keys share one hash slot, and follows the slot when it moves.
func NewRedisStore(rdb redis.UniversalClient, opt Options) *RedisStore {
	s := &RedisStore{rdb: rdb, opt: opt.withDefaults()}
	s.cluster, _ = rdb.(*redis.ClusterClient)
	if s.opt.UserLocks > 0 {
		s.locks = make([]sync.Mutex, s.opt.UserLocks)
	}
	s.shards = make([]shard, s.opt.Shards)
	if s.opt.TracerProvider != nil {
		s.tracer = s.opt.TracerProvider.Tracer("github.com/nudge-dm/nudge/profile")
	}
	return s
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

// Values of nudge.profile.outcome on a transaction span.
const (
	outcomeCommitted = "committed" // the profile (and actions) written
	outcomeUnchanged = "unchanged" // nothing to write: duplicates or rejects only, or no change
	outcomeExhausted = "exhausted" // conflicts ran out the attempts (ErrConflict)
	outcomeError     = "error"     // Redis, a corrupt profile, or the context
)

// startSpan starts a span under ctx's, or returns ctx and a nil span when
// tracing is off. Callers check the span for nil before building
// attributes, so that tracing off allocates nothing.
func (s *RedisStore) startSpan(ctx context.Context, name string) (context.Context, trace.Span) {
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

// lockUser serialises this process's transactions on a user and returns
// the unlock function.
func (s *RedisStore) lockUser(userID string) func() {
	if s.locks == nil {
		return func() {}
	}
	mu := &s.locks[s.stripe(userID)]
	mu.Lock()
	return mu.Unlock
}

// stripe is the index of the user's lock in s.locks (not nil).
func (s *RedisStore) stripe(userID string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(userID))
	return h.Sum32() % uint32(len(s.locks))
}

// Stats returns the store's counters so far.
func (s *RedisStore) Stats() Stats {
	return Stats{
		Transactions: s.stats.transactions.Load(),
		Conflicts:    s.stats.conflicts.Load(),
		ErrorRetries: s.stats.errorRetries.Load(),
		Redirects:    s.stats.redirects.Load(),
		Exhausted:    s.stats.exhausted.Load(),

		ReplicationWaitsFailed: s.stats.replicationFailed.Load(),
	}
}

// Bucket returns the user's bucket, the hash tag of all the user's keys.
func (s *RedisStore) Bucket(userID string) int {
	h := fnv.New32a()
	h.Write([]byte(userID))
	return int(h.Sum32() % uint32(s.opt.Buckets))
}

// ProfileKey is the key of the user's profile: nudge:{bucket}:p:<user_id>.
func (s *RedisStore) ProfileKey(userID string) string {
	return "nudge:{" + strconv.Itoa(s.Bucket(userID)) + "}:p:" + userID
}

// OutboxKey is the key of the outbox stream of a bucket: nudge:{bucket}:out.
func (s *RedisStore) OutboxKey(bucket int) string {
	return "nudge:{" + strconv.Itoa(bucket) + "}:out"
}

// Buckets returns the number of buckets.
func (s *RedisStore) Buckets() int { return s.opt.Buckets }

// UserEvents are one user's events of a batch, in the producer's order.
type UserEvents struct {
	UserID string
	Events []Event
}

// UserOutcome is what Apply did for one user.
type UserOutcome struct {
	Outcome
	// Version is the profile version after the commit (or the stored
	// version when nothing changed).
	Version uint64
	// Err is set when the user's transaction did not commit: ErrConflict,
	// ErrUnavailable, ErrCorrupt or the context's error, wrapped. Outcome is
	// then empty.
	Err error
}

// GroupByUser splits events into per-user groups, keeping each user's
// events in order, and returns for each group the indexes of its events in
// the input.
func GroupByUser(events []Event) ([]UserEvents, [][]int) {
	at := make(map[string]int)
	var groups []UserEvents
	var index [][]int
	for i := range events {
		g, ok := at[events[i].UserID]
		if !ok {
			g = len(groups)
			at[events[i].UserID] = g
			groups = append(groups, UserEvents{UserID: events[i].UserID})
			index = append(index, nil)
		}
		groups[g].Events = append(groups[g].Events, events[i])
		index[g] = append(index[g], i)
	}
	return groups, index
}

// Apply runs step on each user's stored profile and events, and commits the
// new profiles and the outcomes' actions (to each user's bucket outbox) in
// WATCH/MULTI/EXEC transactions of up to MaxGroupUsers users each, up to
// Parallelism at once. A conflicting writer aborts a group's EXEC: the group
// is split in halves, which re-read and re-run step apart, with backoff,
// down to single users, each tried up to MaxAttempts times alone. Users
// succeed or fail independently: the result for users[i] is outcomes[i]. A
// user whose profile is corrupt or whose step panics fails alone, and none
// of its writes are committed. A call with one user commits it in a
// transaction of its own.
//
// Deduplication happens inside step, on the profile read in the same
// transaction, so re-running a transaction whose EXEC was applied but whose
// reply was lost reports the events as duplicates instead of counting them
// twice.
func (s *RedisStore) Apply(ctx context.Context, users []UserEvents, step Step) []UserOutcome {
	if len(users) == 0 {
		return nil
	}
	if s.opt.MaxGroupUsers > 1 {
		return s.applySharded(ctx, users, step)
	}
	out := make([]UserOutcome, len(users))
	sem := make(chan struct{}, s.opt.Parallelism)
	var wg sync.WaitGroup
	for i := range users {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			out[i] = s.applyUserRecovered(ctx, users[i], step)
		}()
	}
	wg.Wait()
	return out
}

// PanicError is a panic of the step function on a user's events, recovered
// by Apply. Nothing of that user was written.
type PanicError struct {
	Value any
	// Stack is the panicking goroutine's stack, for the log; Error leaves
	// it out so that it never reaches a client.
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("profile: step panicked: %v", e.Value) }

// applyUserRecovered is applyUser, with a panic of the step turned into a
// *PanicError (Apply runs users on goroutines no caller could recover).
func (s *RedisStore) applyUserRecovered(ctx context.Context, u UserEvents, step Step) (out UserOutcome) {
	defer func() {
		if p := recover(); p != nil {
			out = UserOutcome{Err: &PanicError{Value: p, Stack: debug.Stack()}}
		}
	}()
	return s.applyUser(ctx, u, step)
}

func (s *RedisStore) applyUser(ctx context.Context, u UserEvents, step Step) UserOutcome {
	var out Outcome
	version, err := s.transact(ctx, u.UserID, len(u.Events), func(p *Profile, now time.Time) (bool, bool, []Action) {
		out = step(p, u.Events, now)
		return out.Changed(), hasDuplicate(out), out.Actions
	})
	if err != nil {
		return UserOutcome{Err: err}
	}
	return UserOutcome{Outcome: out, Version: version}
}

// Update runs fn on the user's stored profile (an empty Profile when the
// user has none) at processing time now, and writes the profile back when
// fn reports a change, in one WATCH/MULTI/EXEC transaction with the same
// retries as Apply. fn must be free of side effects beyond the profile: it
// runs again, on a freshly read profile, when the transaction conflicts. It
// returns the profile version after the call.
func (s *RedisStore) Update(ctx context.Context, userID string, fn func(p *Profile, now time.Time) (changed bool)) (uint64, error) {
	return s.transact(ctx, userID, 0, func(p *Profile, now time.Time) (bool, bool, []Action) { return fn(p, now), false, nil })
}

// transact is the single-user transaction behind Update, and behind Apply
// for one user or with MaxGroupUsers 1: read the profile under WATCH, run
// fn, and if it changed something write the profile and fn's actions (to
// the bucket's outbox) in one MULTI/EXEC, retrying conflicts with backoff,
// then (Options.WaitReplicas) WAIT for the replicas. fn reports whether it
// changed the profile and whether any event was a duplicate (which, with
// WAIT on, writes the stored profile back unchanged and waits: see
// Options.WaitReplicas). Its span (when tracing) includes the wait for the
// user's lock; events is the number of events, for the span.
func (s *RedisStore) transact(ctx context.Context, userID string, events int, fn func(p *Profile, now time.Time) (changed, duplicate bool, _ []Action)) (uint64, error) {
	ctx, span := s.startSpan(ctx, spanTransaction)
	if span != nil {
		defer span.End()
	}
	defer s.lockUser(userID)()
	bucket := s.Bucket(userID)
	key := s.ProfileKey(userID)
	outbox := s.OutboxKey(bucket)
	var version uint64
	var changed bool
	txn := func(tx *redis.Tx) error {
		p := &Profile{}
		raw, err := tx.Get(ctx, key).Bytes()
		switch {
		case errors.Is(err, redis.Nil):
			raw = nil
		case err != nil:
			return err
		default:
			if p, err = Decode(raw); err != nil {
				return err // wrapped with the user below
			}
		}
		now := s.opt.Now()
		var actions []Action
		var duplicate bool
		changed, duplicate, actions = fn(p, now)
		version = p.Version
		encoded := raw // a duplicate's profile, written back as stored
		switch {
		case changed:
			p.Version++
			p.UpdatedAt = now
			version = p.Version
			encoded = Encode(p)
		case !duplicate || raw == nil || s.opt.WaitReplicas == 0:
			return nil
		}
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Set(ctx, key, encoded, s.keyTTL())
			for i := range actions {
				pipe.XAdd(ctx, &redis.XAddArgs{Stream: outbox, Values: actionFields(&actions[i])})
			}
			return nil
		})
		if err != nil {
			return err
		}
		return s.waitReplicas(ctx, tx)
	}

	conflicts, errorsSeen, redirects, attempt := 0, 0, 0, 0
	// traced ends the span, if any, with what happened; cause never names
	// the user.
	traced := func(outcome string, cause error) {
		if span == nil || !span.IsRecording() {
			return
		}
		span.SetAttributes(
			attrUsers.Int(1), attrEvents.Int(events), attrBucket.Int(bucket),
			attrAttempts.Int(attempt+1), attrConflicts.Int(conflicts),
			attrOutcome.String(outcome),
		)
		if cause != nil {
			failSpan(span, cause)
		}
	}
	fail := func(outcome string, cause error) (uint64, error) {
		traced(outcome, cause)
		return 0, fmt.Errorf("user %q: %w", userID, cause)
	}
	for ; ; attempt++ {
		err := s.watchOn(ctx, key, txn, key)
		switch {
		case err == nil:
			outcome := outcomeUnchanged
			if changed {
				s.stats.transactions.Add(1)
				outcome = outcomeCommitted
			}
			traced(outcome, nil)
			return version, nil
		case errors.Is(err, redis.TxFailedErr):
			s.stats.conflicts.Add(1)
			conflicts++
			if conflicts >= s.opt.MaxAttempts {
				s.stats.exhausted.Add(1)
				return fail(outcomeExhausted, fmt.Errorf("%d attempts: %w", conflicts, ErrConflict))
			}
		case errors.Is(err, ErrCorrupt):
			return fail(outcomeError, err)
		case isReplicationError(err):
			// Committed on the master, not confirmed by the replicas: the
			// caller re-sends (waiting again here would hold the user's
			// lock for another WaitTimeout on a replica that is down).
			if changed {
				s.stats.transactions.Add(1)
			}
			return fail(outcomeError, err)
		case ctx.Err() != nil:
			return fail(outcomeError, ctx.Err())
		case s.redirected(ctx, err):
			if redirects++; redirects > s.opt.MaxRedirects {
				return fail(outcomeError, fmt.Errorf("%w: %d redirections: %w", ErrUnavailable, redirects-1, err))
			}
			s.stats.redirects.Add(1)
		default:
			s.errorSeen(ctx, err)
			errorsSeen++
			if errorsSeen > s.opt.MaxErrorRetries {
				return fail(outcomeError, fmt.Errorf("%w: %w", ErrUnavailable, err))
			}
			s.stats.errorRetries.Add(1)
		}
		if err := sleep(ctx, s.backoff(attempt)); err != nil {
			return fail(outcomeError, err)
		}
	}
}

// keyTTL is the expiry a profile is written with (0: none).
func (s *RedisStore) keyTTL() time.Duration {
	if s.opt.TTL < 0 {
		return 0
	}
	return s.opt.TTL
}

// waitReplicas runs WAIT on tx's connection right after its EXEC, when
// Options.WaitReplicas asks for it: Redis then blocks until that many
// replicas acknowledged every write of the connection so far, or the
// timeout. WAIT must follow EXEC, not sit inside MULTI, where Redis would
// answer it at once without blocking.
func (s *RedisStore) waitReplicas(ctx context.Context, tx *redis.Tx) error {
	if s.opt.WaitReplicas == 0 {
		return nil
	}
	n, err := tx.Wait(ctx, s.opt.WaitReplicas, s.opt.WaitTimeout).Result()
	if err != nil {
		// The EXEC was applied; a retry finds the events duplicates,
		// writes the profile back and waits again.
		return fmt.Errorf("WAIT after EXEC: %w", err)
	}
	if int(n) < s.opt.WaitReplicas {
		s.stats.replicationFailed.Add(1)
		return &ReplicationError{Acked: int(n), Want: s.opt.WaitReplicas, Timeout: s.opt.WaitTimeout}
	}
	return nil
}

// hasDuplicate reports whether any event of the outcomes was a duplicate.
func hasDuplicate(outcomes ...Outcome) bool {
	for _, o := range outcomes {
		for _, r := range o.Results {
			if r.Status == Duplicate {
				return true
			}
		}
	}
	return false
}

func isReplicationError(err error) bool {
	var r *ReplicationError
	return errors.As(err, &r)
}

// backoff returns a random wait in [BackoffMin, min(BackoffMax,
// BackoffMin*2^attempt)] ("full jitter"), so writers that collided spread
// out.
func (s *RedisStore) backoff(attempt int) time.Duration {
	ceil := s.opt.BackoffMin << min(attempt, 20)
	if ceil > s.opt.BackoffMax || ceil <= 0 {
		ceil = s.opt.BackoffMax
	}
	return s.opt.BackoffMin + rand.N(ceil-s.opt.BackoffMin+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Get reads a user's profile without a transaction. It returns ErrNotFound
// when the user has none, and wraps ErrUnavailable when Redis fails.
func (s *RedisStore) Get(ctx context.Context, userID string) (*Profile, error) {
	ctx, span := s.startSpan(ctx, spanRead)
	if span == nil {
		return s.get(ctx, userID)
	}
	defer span.End()
	p, err := s.get(ctx, userID)
	endRead(span, err)
	return p, err
}

// endRead sets a read span's attributes from the per-user errors of the
// read, and its status from the first error other than ErrNotFound.
func endRead(span trace.Span, errs ...error) {
	if !span.IsRecording() {
		return
	}
	notFound := 0
	var failed error
	for _, err := range errs {
		switch {
		case err == nil:
		case errors.Is(err, ErrNotFound):
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

func (s *RedisStore) get(ctx context.Context, userID string) (*Profile, error) {
	raw, err := s.rdb.Get(ctx, s.ProfileKey(userID)).Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, ErrNotFound
	case err != nil:
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return Decode(raw)
}

// GetMany reads several users' profiles in one pipelined round trip (one
// per node on a cluster). For each user it returns the profile, or an error:
// ErrNotFound, ErrCorrupt, or a wrapped ErrUnavailable or context error
// when the read failed.
func (s *RedisStore) GetMany(ctx context.Context, userIDs []string) ([]*Profile, []error) {
	ctx, span := s.startSpan(ctx, spanRead)
	if span == nil {
		return s.getMany(ctx, userIDs)
	}
	defer span.End()
	profiles, errs := s.getMany(ctx, userIDs)
	endRead(span, errs...)
	return profiles, errs
}

func (s *RedisStore) getMany(ctx context.Context, userIDs []string) ([]*Profile, []error) {
	profiles := make([]*Profile, len(userIDs))
	errs := make([]error, len(userIDs))
	cmds := make([]*redis.StringCmd, len(userIDs))
	_, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, id := range userIDs {
			cmds[i] = pipe.Get(ctx, s.ProfileKey(id))
		}
		return nil
	})
	for i, cmd := range cmds {
		raw, cerr := cmd.Bytes()
		if cerr == nil && err != nil && !errors.Is(err, redis.Nil) {
			cerr = err
		}
		switch {
		case errors.Is(cerr, redis.Nil):
			errs[i] = ErrNotFound
		case cerr != nil:
			if ctx.Err() != nil {
				errs[i] = ctx.Err()
			} else {
				errs[i] = fmt.Errorf("%w: %w", ErrUnavailable, cerr)
			}
		default:
			profiles[i], errs[i] = Decode(raw)
		}
	}
	return profiles, errs
}

// DeleteResult says what Delete erased.
type DeleteResult struct {
	// Existed reports whether the user had a profile.
	Existed bool
	// Actions is the number of the user's outbox entries removed.
	Actions int
}

// Delete erases a user: the profile, and every entry of the user in the
// bucket's outbox. Events of the user that arrive during or after the
// erasure start a new profile.
func (s *RedisStore) Delete(ctx context.Context, userID string) (DeleteResult, error) {
	ctx, span := s.startSpan(ctx, spanDelete)
	if span == nil {
		return s.delete(ctx, userID)
	}
	defer span.End()
	res, err := s.delete(ctx, userID)
	if span.IsRecording() {
		span.SetAttributes(attrUsers.Int(1), attrBucket.Int(s.Bucket(userID)),
			attrExisted.Bool(res.Existed), attrActions.Int(res.Actions))
		if err != nil {
			failSpan(span, err)
		}
	}
	return res, err
}

func (s *RedisStore) delete(ctx context.Context, userID string) (DeleteResult, error) {
	var res DeleteResult
	n, err := s.rdb.Del(ctx, s.ProfileKey(userID)).Result()
	if err != nil {
		return res, fmt.Errorf("%w: delete profile: %w", ErrUnavailable, err)
	}
	res.Existed = n > 0
	res.Actions, err = streams.DeleteWhere(ctx, s.rdb, s.OutboxKey(s.Bucket(userID)), "user_id", userID)
	if err != nil {
		return res, fmt.Errorf("%w: outbox: %w", ErrUnavailable, err)
	}
	return res, nil
}

// actionFields is the outbox entry of an action: flat string fields, so the
// stream is readable with redis-cli XRANGE. The payload is JSON.
func actionFields(a *Action) []any {
	payload, _ := json.Marshal(a.Payload) // map[string]string cannot fail
	return []any{
		"action_id", a.ID,
		"user_id", a.UserID,
		"trigger_id", a.TriggerID,
		"channel", a.Channel,
		"template", a.Template,
		"payload", string(payload),
		"triggered_at", a.TriggeredAt.UTC().Format(time.RFC3339Nano),
		"event_id", a.EventID,
		"rules_version", a.RulesVersion,
	}
}

// DecodeAction parses an outbox entry's fields.
func DecodeAction(values map[string]any) (Action, error) {
	str := func(k string) string { s, _ := values[k].(string); return s }
	a := Action{
		ID:        str("action_id"),
		UserID:    str("user_id"),
		TriggerID: str("trigger_id"),
		Channel:   str("channel"),
		Template:  str("template"),
		EventID:   str("event_id"),

		RulesVersion: str("rules_version"),
	}
	if a.ID == "" || a.UserID == "" {
		return a, fmt.Errorf("%w: outbox entry without action_id or user_id", ErrCorrupt)
	}
	if p := str("payload"); p != "" {
		if err := json.Unmarshal([]byte(p), &a.Payload); err != nil {
			return a, fmt.Errorf("%w: action %s payload: %w", ErrCorrupt, a.ID, err)
		}
	}
	t, err := time.Parse(time.RFC3339Nano, str("triggered_at"))
	if err != nil {
		return a, fmt.Errorf("%w: action %s triggered_at: %w", ErrCorrupt, a.ID, err)
	}
	a.TriggeredAt = t
	return a, nil
}
