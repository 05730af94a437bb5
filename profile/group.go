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
	idx    int    // the user's index in Apply's input and output
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

// groupsOf splits the indexes of users into groups of at most size users,
// in input order; with a bucket function (cluster mode), each group holds
// users of one bucket, the buckets in the order they first appear. A user id
// given twice goes into another group than its first occurrence: within one
// transaction both would read the same stored profile and the second SET
// would drop the first's events. Groups of one Apply call lock the same
// user's stripe, so such repeats commit one after the other.
func groupsOf(users []UserEvents, size int, bucket func(userID string) int) [][]int {
	order := make([]int, len(users))
	for i := range order {
		order[i] = i
	}
	var rank []int // the rank of each user's bucket, in cluster mode
	if bucket != nil {
		rank = make([]int, len(users))
		first := make(map[int]int)
		for i := range users {
			b := bucket(users[i].UserID)
			r, ok := first[b]
			if !ok {
				r = len(first)
				first[b] = r
			}
			rank[i] = r
		}
		slices.SortStableFunc(order, func(a, b int) int { return rank[a] - rank[b] })
	}
	var groups [][]int
	var cur []int
	in := make(map[string]struct{}, min(size, len(users)))
	for _, i := range order {
		_, twice := in[users[i].UserID]
		if len(cur) == size || twice || (rank != nil && len(cur) > 0 && rank[cur[0]] != rank[i]) {
			groups = append(groups, cur)
			cur = nil
			clear(in)
		}
		cur = append(cur, i)
		in[users[i].UserID] = struct{}{}
	}
	if len(cur) > 0 {
		groups = append(groups, cur)
	}
	return groups
}

// applyGroups commits users in groups, up to Parallelism groups at once,
// writing each user's outcome to out.
func (s *RedisStore) applyGroups(ctx context.Context, users []UserEvents, step Step, out []UserOutcome) {
	var bucket func(string) int
	if s.cluster != nil {
		bucket = s.Bucket
	}
	groups := groupsOf(users, s.opt.MaxGroupUsers, bucket)
	if len(groups) == 1 {
		s.applyGroup(ctx, users, groups[0], step, out)
		return
	}
	sem := make(chan struct{}, s.opt.Parallelism)
	var wg sync.WaitGroup
	for _, g := range groups {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			s.applyGroup(ctx, users, g, step, out)
		})
	}
	wg.Wait()
}

// lockUsers takes the lock stripes of the users at idx in ascending stripe
// order, each once, so that groups sharing stripes never deadlock, and
// returns the function that releases them.
func (s *RedisStore) lockUsers(users []UserEvents, idx []int) func() {
	if s.locks == nil {
		return func() {}
	}
	stripes := make([]uint32, len(idx))
	for k, i := range idx {
		stripes[k] = s.stripe(users[i].UserID)
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
func (s *RedisStore) applyGroup(ctx context.Context, users []UserEvents, idx []int, step Step, out []UserOutcome) {
	ctx, span := s.startSpan(ctx, spanTransaction)
	if span != nil {
		defer span.End()
	}
	defer s.lockUsers(users, idx)()

	members := make([]*groupMember, len(idx))
	events := 0
	for k, i := range idx {
		id := users[i].UserID
		members[k] = &groupMember{idx: i, key: s.ProfileKey(id), outbox: s.OutboxKey(s.Bucket(id))}
		events += len(users[i].Events)
	}
	attempts, conflicts, committed, exhausted := 0, 0, 0, 0
	var firstErr error // the first failure, for the span; it never names a user
	fail := func(m *groupMember, cause error) {
		if firstErr == nil {
			firstErr = cause
		}
		m.done = true
		out[m.idx] = UserOutcome{Err: fmt.Errorf("user %q: %w", users[m.idx].UserID, cause)}
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
		wrote, err := s.commitPart(ctx, users, part.members, step, out)
		// Users whose profile was corrupt or whose step panicked are final
		// whatever the EXEC did; they leave the part.
		live := slices.DeleteFunc(part.members, func(m *groupMember) bool {
			if err := out[m.idx].Err; m.done && err != nil && firstErr == nil {
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
		attrUsers.Int(len(idx)), attrEvents.Int(events),
		attrAttempts.Int(attempts), attrConflicts.Int(conflicts),
		attrOutcome.String(outcome),
	)
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
// MGET them in one pipelined round trip, run step on each user's profile,
// and if any changed, one MULTI with every changed profile's SET and every
// action's XADD, EXEC. It returns the number of profiles written.
//
// When it returns nil, every user's outcome is in out and marked done. A
// user whose profile does not decode (ErrCorrupt) or whose step panicked
// (*PanicError) is done whatever it returns, and none of its writes are in
// the MULTI. Other users get their outcome only when it returns nil.
func (s *RedisStore) commitPart(ctx context.Context, users []UserEvents, part []*groupMember, step Step, out []UserOutcome) (int, error) {
	watch := make([]any, 1, len(part)+1)
	watch[0] = "watch"
	keys := make([]string, len(part))
	for k, m := range part {
		keys[k] = m.key
		watch = append(watch, m.key)
	}
	type result struct {
		m       *groupMember
		p       *Profile
		outcome Outcome
		changed bool
	}
	results := make([]result, 0, len(part))
	wrote := 0
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
					out[m.idx] = UserOutcome{Err: fmt.Errorf("user %q: %w", users[m.idx].UserID, derr)}
					continue
				}
			}
			o, perr := runStep(step, p, users[m.idx].Events, now)
			if perr != nil {
				m.done = true
				out[m.idx] = UserOutcome{Err: perr}
				continue
			}
			r := result{m: m, p: p, outcome: o, changed: o.Changed()}
			if r.changed {
				p.Version++
				p.UpdatedAt = now
				wrote++
			}
			results = append(results, r)
		}
		if wrote == 0 {
			return nil
		}
		ttl := s.opt.TTL
		if ttl < 0 {
			ttl = 0 // no expiry
		}
		armed = false
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			for i := range results {
				r := &results[i]
				if !r.changed {
					continue
				}
				pipe.Set(ctx, r.m.key, Encode(r.p), ttl)
				for j := range r.outcome.Actions {
					pipe.XAdd(ctx, &redis.XAddArgs{Stream: r.m.outbox, Values: actionFields(&r.outcome.Actions[j])})
				}
			}
			return nil
		})
		return err
	})
	if err != nil {
		return 0, err
	}
	for _, r := range results {
		r.m.done = true
		out[r.m.idx] = UserOutcome{Outcome: r.outcome, Version: r.p.Version}
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
