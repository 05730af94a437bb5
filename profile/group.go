package profile

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// This file is Apply's group transaction (DESIGN.md, principle 2): the users
// of a batch commit in groups of at most Options.MaxGroupUsers, each group
// one WATCH over all its profile keys pipelined with one MGET, a pure step
// per user, and one MULTI with every SET and XADD, EXEC: four round trips
// per group instead of per user.
//
// On a standalone Redis a group may span buckets. Redis Cluster allows the
// keys of one hash slot per transaction, so there a group holds the users of
// one bucket (see cluster.go).

// groupMember is one user of a group transaction.
type groupMember struct {
	w      *userWork
	key    string // profile key
	outbox string // the bucket's outbox key
	// conflicts counts the aborted EXECs of parts holding this user alone:
	// while a part holds several users the conflict may be any of theirs,
	// so it splits the part instead (see applyGroup).
	conflicts int
	// errs counts the Redis errors of this user's attempts, redirects
	// the cluster's refusals of a moving slot (see cluster.go).
	errs, redirects int
	done            bool // the outcome is final
}

// groupPart is a set of a group's users committed in one transaction, with
// the failed attempts behind it (for the backoff).
type groupPart struct {
	members []*groupMember
	retries int
}

// groupsOf splits work into groups of at most size users, in order; with a
// bucket function (cluster mode), each group holds users of one bucket, the
// buckets in the order they first appear. Each user appears once in work
// (the shard merged its calls' events).
func groupsOf(work []*userWork, size int, bucket func(userID string) int) [][]*userWork {
	order := work
	var rank map[*userWork]int // the rank of each user's bucket, in cluster mode
	if bucket != nil {
		rank = make(map[*userWork]int, len(work))
		first := make(map[int]int)
		for _, w := range work {
			b := bucket(w.userID)
			r, ok := first[b]
			if !ok {
				r = len(first)
				first[b] = r
			}
			rank[w] = r
		}
		order = slices.Clone(work)
		slices.SortStableFunc(order, func(a, b *userWork) int { return rank[a] - rank[b] })
	}
	var groups [][]*userWork
	var cur []*userWork
	for _, w := range order {
		if len(cur) == size || (rank != nil && len(cur) > 0 && rank[cur[0]] != rank[w]) {
			groups = append(groups, cur)
			cur = nil
		}
		cur = append(cur, w)
	}
	if len(cur) > 0 {
		groups = append(groups, cur)
	}
	return groups
}

// applyGroups commits work in groups, up to Parallelism groups at once,
// finishing every part of every user.
func (s *RedisStore) applyGroups(ctx context.Context, work []*userWork) {
	var bucket func(string) int
	if s.cluster != nil {
		bucket = s.Bucket
	}
	groups := groupsOf(work, s.opt.MaxGroupUsers, bucket)
	if len(groups) == 1 {
		s.applyGroup(ctx, groups[0])
		return
	}
	sem := make(chan struct{}, s.opt.Parallelism)
	var wg sync.WaitGroup
	for _, g := range groups {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.applyGroup(ctx, g)
		})
	}
	wg.Wait()
}

// lockUsers takes the lock stripes of the users at idx in ascending stripe
// order, each once, so that groups sharing stripes never deadlock, and
// returns the function that releases them.
func (s *RedisStore) lockUsers(group []*userWork) func() {
	if s.locks == nil {
		return func() {}
	}
	stripes := make([]uint32, len(group))
	for k, w := range group {
		stripes[k] = s.stripe(w.userID)
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

// applyGroup commits one group's users: under their locks, it tries the
// whole group in one transaction; an aborted EXEC (a watched key changed)
// splits the part in halves, each retried after a backoff, down to single
// users, which then retry up to MaxAttempts as in a per-user transaction.
// So a user isolates a contended neighbour within log2(MaxGroupUsers)
// aborts, and a conflicting user is tried at most MaxAttempts times alone.
// A Redis error retries the same part up to MaxErrorRetries times.
func (s *RedisStore) applyGroup(ctx context.Context, group []*userWork) {
	// The calls get their users' results once the span has ended and the
	// locks are released (deferred calls run last in, first out).
	defer func() {
		for _, w := range group {
			w.deliver()
		}
	}()
	// A panic outside the steps (runStep recovers theirs) is a bug; it
	// fails the group's unfinished users instead of the process, since
	// this runs on a shard's goroutine that no caller could recover.
	defer func() {
		if v := recover(); v != nil {
			perr := &PanicError{Value: v, Stack: debug.Stack()}
			for _, w := range group {
				if w.err == nil && w.outcomes == nil {
					w.err = perr
				}
			}
		}
	}()
	ctx, span := s.startSpan(ctx, spanTransaction)
	if span != nil {
		defer span.End()
	}
	defer s.lockUsers(group)()

	members := make([]*groupMember, len(group))
	events, bucket := 0, -1
	for k, w := range group {
		b := s.Bucket(w.userID)
		members[k] = &groupMember{w: w, key: s.ProfileKey(w.userID), outbox: s.OutboxKey(b)}
		events += w.events()
		if k == 0 || b == bucket {
			bucket = b
		} else {
			bucket = -2 // several buckets
		}
	}
	attempts, conflicts, committed, exhausted := 0, 0, 0, 0
	var firstErr error // the first failure, for the span; it never names a user
	fail := func(m *groupMember, cause error) {
		if firstErr == nil {
			firstErr = cause
		}
		m.done = true
		m.w.fail(fmt.Errorf("user %q: %w", m.w.userID, cause))
	}
	failAll := func(part []*groupMember, cause error) {
		for _, m := range part {
			fail(m, cause)
		}
	}

	queue := []groupPart{{members: members}}
	for len(queue) > 0 {
		part := queue[0]
		queue = queue[1:]
		if part.retries > 0 {
			if err := sleep(ctx, s.backoff(part.retries-1)); err != nil {
				failAll(part.members, err)
				continue
			}
		}
		attempts++
		wrote, err := s.commitPart(ctx, part.members)
		// Users whose profile was corrupt or whose step panicked are final
		// whatever the EXEC did; they leave the part.
		live := slices.DeleteFunc(part.members, func(m *groupMember) bool {
			if err := m.w.err; m.done && err != nil && firstErr == nil {
				if isPanic(err) {
					firstErr = errStepPanicked // the panic's value may name the user
				} else {
					firstErr = errors.Unwrap(err) // the cause, without the user
				}
			}
			return m.done
		})
		switch {
		case err == nil:
			if wrote > 0 {
				committed += wrote
				s.stats.transactions.Add(1)
			}
		case errors.Is(err, redis.TxFailedErr):
			s.stats.conflicts.Add(1)
			conflicts++
			switch {
			case len(live) > 1:
				half := len(live) / 2
				queue = append(queue,
					groupPart{members: live[:half:half], retries: part.retries + 1},
					groupPart{members: live[half:], retries: part.retries + 1})
			case len(live) == 1:
				m := live[0]
				if m.conflicts++; m.conflicts >= s.opt.MaxAttempts {
					s.stats.exhausted.Add(1)
					exhausted++
					fail(m, fmt.Errorf("%d attempts: %w", m.conflicts, ErrConflict))
					continue
				}
				queue = append(queue, groupPart{members: live, retries: part.retries + 1})
			}
		case isReplicationError(err):
			// Committed on the master, not confirmed by the replicas:
			// final, the callers re-send (retrying here would wait another
			// WaitTimeout on a replica that is likely down).
			if wrote > 0 {
				committed += wrote
				s.stats.transactions.Add(1)
			}
			failAll(live, err)
		case ctx.Err() != nil:
			failAll(live, ctx.Err())
		case s.redirected(ctx, err):
			var again []*groupMember
			for _, m := range live {
				if m.redirects++; m.redirects > s.opt.MaxRedirects {
					fail(m, fmt.Errorf("%w: %d redirections: %w", ErrUnavailable, m.redirects-1, err))
				} else {
					again = append(again, m)
				}
			}
			if len(again) > 0 {
				s.stats.redirects.Add(1)
				queue = append(queue, groupPart{members: again, retries: part.retries + 1})
			}
		default:
			s.errorSeen(ctx, err)
			var again []*groupMember
			for _, m := range live {
				if m.errs++; m.errs > s.opt.MaxErrorRetries {
					fail(m, fmt.Errorf("%w: %w", ErrUnavailable, err))
				} else {
					again = append(again, m)
				}
			}
			if len(again) > 0 {
				s.stats.errorRetries.Add(1)
				queue = append(queue, groupPart{members: again, retries: part.retries + 1})
			}
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

// errStepPanicked stands for a *PanicError on a span.
var errStepPanicked = errors.New("profile: step panicked")

func isPanic(err error) bool {
	var p *PanicError
	return errors.As(err, &p)
}

// commitPart is one transaction over part's users: WATCH their keys and
// MGET them in one pipelined round trip, run each user's steps (one per
// Apply call the shard merged, in arrival order) on its profile, and if any
// changed, one MULTI with every changed profile's SET and every action's
// XADD, EXEC, then (Options.WaitReplicas) WAIT for the replicas. It returns
// the number of profiles written (also with a *ReplicationError, when the
// EXEC was applied but not confirmed by the replicas).
//
// When it returns nil, every user's outcomes are set and it is marked done.
// A user whose profile does not decode (ErrCorrupt) or whose step panicked
// (*PanicError) is done whatever it returns, and none of its writes are in
// the MULTI. Other users get their outcomes only when it returns nil.
func (s *RedisStore) commitPart(ctx context.Context, part []*groupMember) (int, error) {
	watch := make([]any, 1, len(part)+1)
	watch[0] = "watch"
	keys := make([]string, len(part))
	for k, m := range part {
		keys[k] = m.key
		watch = append(watch, m.key)
	}
	type result struct {
		m        *groupMember
		p        *Profile
		outcomes []Outcome // one per part of the user's work
		changed  bool
		// rewrite is the stored profile of a user whose events were
		// duplicates, written back unchanged before a WAIT (see
		// Options.WaitReplicas); nil otherwise.
		rewrite []byte
	}
	results := make([]result, 0, len(part))
	wrote, rewrites := 0, 0
	err := s.watchOn(ctx, part[0].key, func(tx *redis.Tx) (err error) {
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
		var mget *redis.SliceCmd
		if _, err := tx.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Do(ctx, watch...)
			mget = pipe.MGet(ctx, keys...)
			return nil
		}); err != nil {
			return err
		}
		vals := mget.Val()
		if len(vals) != len(part) {
			return fmt.Errorf("MGET returned %d values for %d keys", len(vals), len(part))
		}
		now := s.opt.Now()
		for k, m := range part {
			p := &Profile{}
			if v := vals[k]; v != nil {
				raw, _ := v.(string)
				var derr error
				if p, derr = Decode([]byte(raw)); derr != nil {
					m.done = true
					m.w.fail(fmt.Errorf("user %q: %w", m.w.userID, derr))
					continue
				}
			}
			r := result{m: m, p: p, outcomes: make([]Outcome, len(m.w.parts))}
			var perr error
			for j, wp := range m.w.parts {
				if r.outcomes[j], perr = runStep(wp.step, p, wp.events, now); perr != nil {
					break
				}
				r.changed = r.changed || r.outcomes[j].Changed()
			}
			if perr != nil {
				m.done = true
				m.w.fail(perr)
				continue
			}
			switch {
			case r.changed:
				p.Version++
				p.UpdatedAt = now
				wrote++
			case s.opt.WaitReplicas > 0 && vals[k] != nil && hasDuplicate(r.outcomes...):
				raw, _ := vals[k].(string)
				r.rewrite = []byte(raw)
				rewrites++
			}
			results = append(results, r)
		}
		if wrote == 0 && rewrites == 0 {
			return nil
		}
		ttl := s.keyTTL()
		armed = false
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			for i := range results {
				r := &results[i]
				if r.rewrite != nil {
					pipe.Set(ctx, r.m.key, r.rewrite, ttl)
				}
				if !r.changed {
					continue
				}
				pipe.Set(ctx, r.m.key, Encode(r.p), ttl)
				for _, o := range r.outcomes {
					for j := range o.Actions {
						pipe.XAdd(ctx, &redis.XAddArgs{Stream: r.m.outbox, Values: actionFields(&o.Actions[j])})
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
	for _, r := range results {
		r.m.done = true
		r.m.w.succeed(r.outcomes, r.p.Version)
	}
	return wrote, nil
}

// runStep runs step, turning a panic into a *PanicError.
func runStep(step Step, p *Profile, events []Event, now time.Time) (o Outcome, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return step(p, events, now), nil
}
