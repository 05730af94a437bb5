package profile

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
)

// This file routes Apply's users to shards (DESIGN.md, principle 2: keyBy).
// Each user belongs to one shard (by bucket), and a shard commits one cycle
// at a time: everything queued for it since its last cycle, each user's
// events of all the calls merged into one read, one run of the steps and
// one write. So a hot user whose events arrive in every batch costs one
// transaction per cycle, not one per batch, and the batches in flight never
// wait on each other's locks.
//
// A shard has no goroutine of its own while idle: the call that queues work
// on an idle shard starts a drain goroutine, which runs cycles until the
// queue is empty, then ends. A caller waits for its own users only; if its
// context ends first it returns the context's error for the users not yet
// committed (their events may still commit: re-sending them is safe).

// applyCall is one Apply call waiting for its users' outcomes.
type applyCall struct {
	ctx       context.Context
	out       []UserOutcome
	finished  []atomic.Bool // out[i] is final
	remaining atomic.Int64
	done      chan struct{} // closed when every user is finished
}

// finish sets the outcome of the call's user i. It is called once per user,
// from a drain goroutine.
func (c *applyCall) finish(i int, o UserOutcome) {
	c.out[i] = o
	c.finished[i].Store(true)
	if c.remaining.Add(-1) == 0 {
		close(c.done)
	}
}

// workPart is one call's events of one user.
type workPart struct {
	userID string
	events []Event
	step   Step
	call   *applyCall
	idx    int // the user's index in the call
}

// userWork is a user's parts merged for one cycle, in arrival order: one
// read of the profile, each part's step in turn, one write. Its result is
// set by fail or succeed, and handed to the calls by deliver once the
// group's transaction (and its span) has ended.
type userWork struct {
	userID   string
	parts    []*workPart
	err      error
	outcomes []Outcome // one per part
	version  uint64
}

func (w *userWork) events() int {
	n := 0
	for _, p := range w.parts {
		n += len(p.events)
	}
	return n
}

// fail sets the user's result to err.
func (w *userWork) fail(err error) { w.err = err }

// succeed sets the user's result: each part's outcome and the committed
// version.
func (w *userWork) succeed(outcomes []Outcome, version uint64) {
	w.outcomes, w.version = outcomes, version
}

// errNoResult is the result of a user the group left without one, which
// only a bug can do; it is delivered rather than leave a call waiting.
var errNoResult = errors.New("profile: internal error: the transaction gave this user no result")

// deliver finishes every part of the user with its result.
func (w *userWork) deliver() {
	if w.err == nil && len(w.outcomes) != len(w.parts) {
		w.err = errNoResult
	}
	for j, p := range w.parts {
		if w.err != nil {
			p.call.finish(p.idx, UserOutcome{Err: w.err})
		} else {
			p.call.finish(p.idx, UserOutcome{Outcome: w.outcomes[j], Version: w.version})
		}
	}
}

// shard is a queue of work for the users of some buckets.
type shard struct {
	mu      sync.Mutex
	pending []*workPart
	busy    bool // a drain goroutine is running
}

// applySharded queues each user's events on its shard and waits for them.
func (s *RedisStore) applySharded(ctx context.Context, users []UserEvents, step Step) []UserOutcome {
	if err := ctx.Err(); err != nil {
		out := make([]UserOutcome, len(users))
		for i := range out {
			out[i].Err = err
		}
		return out
	}
	call := &applyCall{
		ctx:      ctx,
		out:      make([]UserOutcome, len(users)),
		finished: make([]atomic.Bool, len(users)),
		done:     make(chan struct{}),
	}
	call.remaining.Store(int64(len(users)))
	byShard := make(map[int][]*workPart)
	for i := range users {
		sh := s.Bucket(users[i].UserID) % len(s.shards)
		byShard[sh] = append(byShard[sh], &workPart{userID: users[i].UserID, events: users[i].Events, step: step, call: call, idx: i})
	}
	for i, parts := range byShard {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.pending = append(sh.pending, parts...)
		start := !sh.busy
		sh.busy = true
		sh.mu.Unlock()
		if start {
			go s.drain(sh)
		}
	}
	select {
	case <-call.done:
		return call.out
	case <-ctx.Done():
	}
	// Only the finished outcomes are read: the others may still be
	// written by a drain goroutine.
	out := make([]UserOutcome, len(users))
	for i := range out {
		if call.finished[i].Load() {
			out[i] = call.out[i]
		} else {
			out[i] = UserOutcome{Err: ctx.Err()}
		}
	}
	return out
}

// drain runs cycles on sh until its queue is empty.
func (s *RedisStore) drain(sh *shard) {
	for {
		sh.mu.Lock()
		parts := sh.pending
		sh.pending = nil
		if len(parts) == 0 {
			sh.busy = false
			sh.mu.Unlock()
			return
		}
		sh.mu.Unlock()
		s.cycle(parts)
	}
}

// cycle merges parts by user and commits them. Parts of calls whose
// context has ended are dropped unread. The cycle's context ends when the
// contexts of all the calls it serves have ended (the work is shared); its
// values (the trace span) are the first call's.
func (s *RedisStore) cycle(parts []*workPart) {
	live := parts[:0]
	for _, p := range parts {
		if err := p.call.ctx.Err(); err != nil {
			p.call.finish(p.idx, UserOutcome{Err: err})
			continue
		}
		live = append(live, p)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(live[0].call.ctx))
	defer cancel()
	var calls []*applyCall
	byUser := make(map[string]*userWork, len(live))
	work := make([]*userWork, 0, len(live))
	for _, p := range live {
		if len(calls) == 0 || calls[len(calls)-1] != p.call && !slices.Contains(calls, p.call) {
			calls = append(calls, p.call)
		}
		w := byUser[p.userID]
		if w == nil {
			w = &userWork{userID: p.userID}
			byUser[p.userID] = w
			work = append(work, w)
		}
		w.parts = append(w.parts, p)
	}
	var open atomic.Int64
	open.Store(int64(len(calls)))
	for _, c := range calls {
		stop := context.AfterFunc(c.ctx, func() {
			if open.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	s.applyGroups(ctx, work)
}
