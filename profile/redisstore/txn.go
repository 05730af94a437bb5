package redisstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/profile"
)

// This file is the transaction engine: the only code that writes profiles.
// Apply's shard cycles and Update both hand it a group of users, each with
// the steps to run on its profile (one per Apply call the cycle merged, or
// Update's one). A group commits in one transaction (commit): one WATCH
// over all its profile keys pipelined with a GET of each, the pure steps, and
// one MULTI with every changed profile's SET and every action's XADD,
// EXEC, then WAIT when replicas must confirm: four round trips per group
// instead of per user (DESIGN.md, principle 2).
//
// What a failed attempt means is decided by classify, and only there: a
// conflict (another writer changed a watched key) splits the group and
// retries; a cluster redirect retries after the slot map is reloaded; a
// connection or other Redis error retries a bounded number of times; a
// WAIT shortfall and the end of the context are final.

// userWork is one user of a group transaction: its parts (each with a
// step, and once committed its outcome), or the error that failed them
// all. The retry counts are the user's own.
type userWork struct {
	userID      string
	key, outbox string
	parts       []*part
	err         error
	done        bool

	// conflicts counts the aborted EXECs of transactions holding this user
	// alone: while a transaction holds several users the conflict may be
	// any of theirs, so it splits them instead.
	conflicts int
	// errs counts the Redis errors of the user's attempts, redirects the
	// cluster's refusals of a moving slot.
	errs, redirects int
}

// firing reports whether any of the user's parts fires its timers.
func (w *userWork) firing() bool {
	for _, p := range w.parts {
		if p.fire {
			return true
		}
	}
	return false
}

func (w *userWork) fail(err error) {
	w.err, w.done = err, true
}

// abandoned returns the context error of the user's calls when every
// part belongs to a call whose context has ended (nil otherwise: an
// Update or Fire part, or a call still waiting).
func (w *userWork) abandoned() error {
	var err error
	for _, p := range w.parts {
		if p.call == nil {
			return nil
		}
		if err = p.call.ctx.Err(); err == nil {
			return nil
		}
	}
	return err
}

func (w *userWork) succeed(outcomes []profile.Outcome, version uint64) {
	for j, p := range w.parts {
		p.outcome, p.version = outcomes[j], version
	}
	w.done = true
}

// errNoResult is the result of a user the engine left without one, which
// only a bug can do; it is delivered rather than leave a call waiting.
var errNoResult = errors.New("profile: internal error: the transaction gave no result")

// deliver finishes every part of the user.
func (w *userWork) deliver() {
	if !w.done {
		w.err = fmt.Errorf("user %q: %w", w.userID, errNoResult)
	}
	for _, p := range w.parts {
		p.finish(w.err)
	}
}

// failure is what a failed attempt of a transaction means (classify).
type failure int

const (
	// notFailed: the attempt committed, or had nothing to write.
	notFailed failure = iota
	// conflicted: a watched key changed, EXEC aborted; nothing written.
	conflicted
	// redirected: a Redis Cluster refused the transaction because its slot
	// is moving, has moved or has no master; nothing written.
	redirected
	// broken: the connection or Redis failed; the EXEC may or may not have
	// been applied (a retry finds the events duplicates).
	broken
	// unconfirmed: committed on the master, but WAIT saw too few replicas.
	unconfirmed
	// cancelled: the context ended.
	cancelled
)

// classify says what a transaction attempt's error means, and on a cluster
// reloads the slot map when the slot may have moved or its master died.
func (s *Store) classify(ctx context.Context, err error) failure {
	var repl *profile.ReplicationError
	switch {
	case err == nil:
		return notFailed
	case errors.Is(err, redis.TxFailedErr):
		return conflicted
	case errors.As(err, &repl):
		return unconfirmed
	case ctx.Err() != nil:
		return cancelled
	case s.cluster == nil:
		return broken
	}
	_, moved := redis.IsMovedError(err)
	_, ask := redis.IsAskError(err)
	if moved || ask || redis.IsTryAgainError(err) || redis.IsClusterDownError(err) || redis.IsExecAbortError(err) {
		if !ask {
			// An ASK is for one key in a migrating slot: the slot map is
			// still right, and the migration ends with a MOVED.
			s.cluster.ReloadState(ctx)
		}
		return redirected
	}
	if !errors.As(err, new(redis.Error)) {
		// Not a Redis reply (a refused or cut connection): the slot's
		// master may have died; once a replica is promoted the retries go
		// to it rather than wait for the client's periodic reload.
		s.cluster.ReloadState(ctx)
	}
	return broken
}

// attempt is a set of a group's users committed in one transaction, with
// the failed attempts behind it (for the backoff).
type attempt struct {
	users   []*userWork
	retries int
}

// commitGroup commits one group's users until each is done: under their
// locks, it tries the whole group in one transaction; an aborted EXEC
// splits the users in halves, each retried after a backoff, down to single
// users, which then retry up to MaxAttempts. So a user isolates a contended
// neighbour within log2(MaxGroupUsers) aborts. A Redis error retries the
// same users up to MaxErrorRetries times, a cluster redirect up to
// MaxRedirects. It runs on the caller's goroutine and traces one span.
func (s *Store) commitGroup(ctx context.Context, group []*userWork) {
	// A panic outside the steps (runStep recovers theirs) is a bug; it
	// fails the group's unfinished users instead of the process, since
	// this runs on a shard's goroutine that no caller could recover.
	defer func() {
		if v := recover(); v != nil {
			perr := &profile.PanicError{Value: v, Stack: debug.Stack()}
			for _, w := range group {
				if !w.done {
					w.fail(perr)
				}
			}
		}
	}()
	ctx, span := s.startSpan(ctx, spanTransaction)
	if span != nil {
		defer span.End()
	}
	defer s.lockUsers(group)()

	events, bucket := 0, -1
	for k, w := range group {
		b := s.keys.Bucket(w.userID)
		w.key, w.outbox = s.keys.ProfileKey(w.userID), s.keys.OutboxKey(b)
		for _, p := range w.parts {
			events += len(p.events)
		}
		if k == 0 || b == bucket {
			bucket = b
		} else {
			bucket = -2 // several buckets
		}
	}
	attempts, conflicts, committed, exhausted := 0, 0, 0, 0
	var firstErr error // the first failure, for the span; it never names a user
	fail := func(w *userWork, cause error) {
		if firstErr == nil {
			firstErr = cause
		}
		w.fail(fmt.Errorf("user %q: %w", w.userID, cause))
	}
	// retry puts the users back in the queue, those whose count (bumped by
	// count) is past limit failing with cause instead, and counts the
	// attempt in stat when any is tried again.
	var queue []attempt
	retry := func(users []*userWork, retries int, stat *atomic.Uint64, count func(*userWork) *int, limit int, cause func(n int) error) {
		var again []*userWork
		for _, w := range users {
			n := count(w)
			if *n++; *n > limit {
				fail(w, cause(*n-1))
			} else {
				again = append(again, w)
			}
		}
		if len(again) > 0 {
			queue = append(queue, attempt{users: again, retries: retries + 1})
			if stat != nil {
				stat.Add(1)
			}
		}
	}

	queue = append(queue, attempt{users: slices.Clone(group)}) // attempts shrink their slices
	for len(queue) > 0 {
		a := queue[0]
		queue = queue[1:]
		if a.retries > 0 {
			if err := sleep(ctx, s.backoff(a.retries-1)); err != nil {
				for _, w := range a.users {
					fail(w, err)
				}
				continue
			}
			// The cycle's context ends a moment after the last of its
			// calls' (context.AfterFunc), so a backoff can end in
			// between: users whose callers have all given up are not
			// tried again, or a write could commit after Apply said
			// context.Canceled.
			a.users = slices.DeleteFunc(a.users, func(w *userWork) bool {
				if err := w.abandoned(); err != nil {
					fail(w, err)
					return true
				}
				return false
			})
			if len(a.users) == 0 {
				continue
			}
		}
		attempts++
		wrote, err := s.commit(ctx, a.users)
		// Users whose profile was corrupt or whose step panicked are done
		// whatever the EXEC did; they leave the attempt.
		live := slices.DeleteFunc(a.users, func(w *userWork) bool {
			if w.done && w.err != nil && firstErr == nil {
				firstErr = spanCause(w.err)
			}
			return w.done
		})
		f := s.classify(ctx, err)
		if wrote > 0 && (f == notFailed || f == unconfirmed) {
			committed += wrote
			s.stats.transactions.Add(1)
		}
		switch f {
		case conflicted:
			s.stats.conflicts.Add(1)
			conflicts++
			if len(live) > 1 {
				half := len(live) / 2
				queue = append(queue,
					attempt{users: live[:half:half], retries: a.retries + 1},
					attempt{users: live[half:], retries: a.retries + 1})
				continue
			}
			retry(live, a.retries, nil, func(w *userWork) *int { return &w.conflicts }, s.opt.MaxAttempts-1, func(n int) error {
				s.stats.exhausted.Add(1)
				exhausted++
				return fmt.Errorf("%d attempts: %w", n+1, profile.ErrConflict)
			})
		case unconfirmed, cancelled:
			// Final. Unconfirmed: committed on the master, not by the
			// replicas; the callers re-send (retrying here would wait
			// another WaitTimeout on a replica that is likely down).
			if f == cancelled {
				err = ctx.Err()
			}
			for _, w := range live {
				fail(w, err)
			}
		case redirected:
			retry(live, a.retries, &s.stats.redirects, func(w *userWork) *int { return &w.redirects }, s.opt.MaxRedirects, func(n int) error {
				return fmt.Errorf("%w: %d redirections: %w", profile.ErrUnavailable, n, err)
			})
		case broken:
			retry(live, a.retries, &s.stats.errorRetries, func(w *userWork) *int { return &w.errs }, s.opt.MaxErrorRetries, func(int) error {
				return fmt.Errorf("%w: %w", profile.ErrUnavailable, err)
			})
		}
	}

	if span == nil || !span.IsRecording() {
		return
	}
	outcome := outcomeUnchanged
	switch {
	case committed > 0:
		outcome = outcomeCommitted
	case exhausted > 0:
		outcome = outcomeExhausted
	case firstErr != nil:
		outcome = outcomeError
	}
	span.SetAttributes(
		attrUsers.Int(len(group)), attrEvents.Int(events),
		attrAttempts.Int(attempts), attrConflicts.Int(conflicts),
		attrOutcome.String(outcome),
	)
	if bucket >= 0 {
		span.SetAttributes(attrBucket.Int(bucket))
	}
	if firstErr != nil {
		failSpan(span, firstErr)
	}
}

// Values of nudge.profile.outcome on a transaction span.
const (
	outcomeCommitted = "committed" // profiles (and actions) written
	outcomeUnchanged = "unchanged" // nothing to write: duplicates or rejects only, or no change
	outcomeExhausted = "exhausted" // conflicts ran out the attempts (ErrConflict)
	outcomeError     = "error"     // Redis, a corrupt profile, or the context
)

// errStepPanicked stands for a *profile.PanicError on a span.
var errStepPanicked = errors.New("profile: step panicked")

// spanCause is a user's error as a span may show it: without the user.
func spanCause(err error) error {
	if _, ok := errors.AsType[*profile.PanicError](err); ok {
		return errStepPanicked // the panic's value may name the user
	}
	return errors.Unwrap(err)
}

// commit is one transaction over users: WATCH their keys and GET them in
// one pipelined round trip, run each user's steps (in the order of its
// parts) on its profile, and if any changed, one MULTI with every changed
// profile's SET and its steps' actions' XADDs, EXEC, then (WaitReplicas)
// WAIT for the replicas. It is the only place a profile is written. It
// returns the number of profiles written (also with a
// *profile.ReplicationError, when the EXEC was applied but not confirmed).
//
// When it returns nil, every user is done. A user whose profile does not
// decode (profile.ErrCorrupt) or whose step panicked is done whatever it
// returns, and none of its writes are in the MULTI.
func (s *Store) commit(ctx context.Context, users []*userWork) (int, error) {
	watch := make([]any, 1, len(users)+1)
	watch[0] = "watch"
	keys := make([]string, len(users))
	for k, w := range users {
		keys[k] = w.key
		watch = append(watch, w.key)
	}
	type write struct {
		w        *userWork
		p        *profile.Profile
		outcomes []profile.Outcome
		changed  bool
		// rewrite is the stored profile of a user whose events were
		// duplicates, written back unchanged before a WAIT (see
		// Options.WaitReplicas); nil otherwise.
		rewrite []byte
		// due says the user's entry in the due index (timers.go) must be
		// written: its next wake time changed, or it was being fired
		// (the entry may be stale: a profile that expired).
		due bool
	}
	writes := make([]write, 0, len(users))
	wrote, rewrites, dues := 0, 0, 0
	err := s.watchOn(ctx, users[0].key, func(tx *redis.Tx) (err error) {
		// The WATCH goes in the read's pipeline rather than through
		// tx.Watch, which would cost a round trip of its own; so go-redis
		// does not know it is armed, and the connection must be released
		// with UNWATCH whenever no EXEC follows (EXEC, committed or
		// aborted, releases it).
		armed := true
		defer func() {
			if armed {
				if uerr := tx.Unwatch(ctx).Err(); err == nil {
					err = uerr
				}
			}
		}()
		// One GET per key rather than one MGET: MGET answers nil for a key
		// of another type, which the SET below would then overwrite;
		// GET answers WRONGTYPE, and that user fails alone, its key left
		// for an operator (as a profile that does not decode).
		gets := make([]*redis.StringCmd, len(users))
		if _, err := tx.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Do(ctx, watch...)
			for k := range users {
				gets[k] = pipe.Get(ctx, keys[k])
			}
			return nil
		}); err != nil && !errors.Is(err, redis.Nil) && !IsWrongType(err) {
			return err
		}
		now := s.opt.Now()
		for k, w := range users {
			p := &profile.Profile{}
			raw, gerr := gets[k].Bytes()
			stored := gerr == nil
			if gerr != nil {
				switch rerr := readError(ctx, gerr); {
				case errors.Is(rerr, profile.ErrNotFound):
				case errors.Is(rerr, profile.ErrCorrupt):
					w.fail(fmt.Errorf("user %q: %w", w.userID, rerr))
					continue
				default:
					return gerr // the attempt's failure, classified by the engine
				}
			} else if p, gerr = profile.Decode(raw); gerr != nil {
				w.fail(fmt.Errorf("user %q: %w", w.userID, gerr))
				continue
			}
			p.UserID = w.userID
			wake := p.NextWake()
			wr := write{w: w, p: p, outcomes: make([]profile.Outcome, len(w.parts))}
			var perr error
			for j, pt := range w.parts {
				if wr.outcomes[j], perr = runStep(pt.step, p, pt.events, now); perr != nil {
					break
				}
				wr.changed = wr.changed || wr.outcomes[j].Changed
			}
			if perr != nil {
				w.fail(perr)
				continue
			}
			switch {
			case wr.changed:
				p.Version++
				p.UpdatedAt = now
				wrote++
			case s.opt.WaitReplicas > 0 && stored && hasDuplicate(wr.outcomes):
				wr.rewrite = raw
				rewrites++
			}
			if wr.due = w.firing() || (wr.changed && !p.NextWake().Equal(wake)); wr.due {
				dues++
			}
			writes = append(writes, wr)
		}
		if wrote == 0 && rewrites == 0 && dues == 0 {
			return nil
		}
		ttl := s.keyTTL()
		armed = false
		// This process reads its own writes at once: the EXEC's keys
		// leave the near-cache when it returns, whatever it returned
		// (Redis may have applied an EXEC whose reply was lost).
		defer func() {
			for i := range writes {
				if writes[i].changed || writes[i].rewrite != nil {
					s.near.invalidate(writes[i].w.key)
				}
			}
		}()
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			for i := range writes {
				wr := &writes[i]
				if wr.rewrite != nil {
					pipe.Set(ctx, wr.w.key, wr.rewrite, ttl)
				}
				if wr.due {
					s.writeDue(ctx, pipe, wr.w.userID, wr.p.NextWake())
				}
				if !wr.changed {
					continue
				}
				pipe.Set(ctx, wr.w.key, profile.Encode(wr.p), keepFor(ttl, wr.p, now))
				for _, o := range wr.outcomes {
					for j := range o.Actions {
						pipe.XAdd(ctx, &redis.XAddArgs{Stream: wr.w.outbox, Values: ActionFields(&o.Actions[j])})
					}
					if len(o.Measures) > 0 {
						s.writeMeasures(ctx, pipe, wr.w.userID, o.Measures)
					}
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		return s.waitReplicas(ctx, tx)
	})
	if err != nil {
		return wrote, err
	}
	for _, wr := range writes {
		wr.w.succeed(wr.outcomes, wr.p.Version)
	}
	return wrote, nil
}

// keepFor is the expiry of a profile written at now with the store's ttl
// (0: none): long enough for its last timer to fire, whatever the ttl.
func keepFor(ttl time.Duration, p *profile.Profile, now time.Time) time.Duration {
	if ttl <= 0 || len(p.Timers) == 0 {
		return ttl
	}
	last := p.Timers[len(p.Timers)-1].Wake
	return max(ttl, last.Sub(now)+ttl)
}

// keyTTL is the expiry a profile is written with (0: none).
func (s *Store) keyTTL() time.Duration {
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
func (s *Store) waitReplicas(ctx context.Context, tx *redis.Tx) error {
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
		return &profile.ReplicationError{Acked: int(n), Want: s.opt.WaitReplicas, Timeout: s.opt.WaitTimeout}
	}
	return nil
}

// hasDuplicate reports whether any event of the outcomes was a duplicate.
func hasDuplicate(outcomes []profile.Outcome) bool {
	for _, o := range outcomes {
		for _, r := range o.Results {
			if r.Status == profile.Duplicate {
				return true
			}
		}
	}
	return false
}

// runStep runs step, turning a panic into a *profile.PanicError.
func runStep(step profile.Step, p *profile.Profile, events []profile.Event, now time.Time) (o profile.Outcome, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &profile.PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return step(p, events, now), nil
}

// lockUsers takes the lock stripes of the users in ascending stripe order,
// each once, so that groups sharing stripes never deadlock, and returns
// the function that releases them.
func (s *Store) lockUsers(group []*userWork) func() {
	if s.locks == nil {
		return func() {}
	}
	stripes := make([]uint32, len(group))
	for k, w := range group {
		h := fnv.New32a()
		h.Write([]byte(w.userID))
		stripes[k] = h.Sum32() % uint32(len(s.locks))
	}
	slices.Sort(stripes)
	stripes = slices.Compact(stripes)
	for _, st := range stripes {
		s.locks[st].Lock()
	}
	return func() {
		for _, st := range stripes {
			s.locks[st].Unlock()
		}
	}
}

// backoff returns a random wait in [BackoffMin, min(BackoffMax,
// BackoffMin*2^attempt)] ("full jitter"), so writers that collided spread
// out.
func (s *Store) backoff(attempt int) time.Duration {
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
