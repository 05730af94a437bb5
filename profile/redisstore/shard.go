package redisstore

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/nudge-dm/nudge/profile"
)

// This file routes Apply's users to shards (DESIGN.md, principle 2: keyBy).
// Each user belongs to one shard (by bucket), and a shard commits one cycle
// at a time: everything queued for it since its last cycle, each user's
// parts of all the calls under one read, one run of each part's step and
// one write. So a hot user whose events arrive in every batch costs one
// transaction per cycle, not one per batch, and the batches in flight never
// wait on each other's locks.
//
// A shard has no goroutine of its own while idle: the call that queues work
// on an idle shard starts a drain goroutine, which runs cycles until the
// queue is empty, then ends. A caller waits for its own parts only; if its
// context ends first it returns the context's error for the events not yet
// committed.

// call is one Apply call waiting for its parts.
type call struct {
	ctx       context.Context
	parts     []*part // in the order of each user's first event
	remaining atomic.Int64
	done      chan struct{} // closed when every part is finished
}

// part is one call's events of one user (or the step of one Update), and
// once finished, what became of them.
type part struct {
	userID string
	step   profile.Step
	events []profile.Event
	idx    []int // the events' indexes in the call
	call   *call // nil for Update
	// fire says the part is the firing of the user's due timers (Fire).
	fire bool
	// single says the part has one outcome (Fire, Run), whatever its
	// events.
	single bool

	// Set before finished, read after it.
	outcome  profile.Outcome
	version  uint64
	err      error
	finished atomic.Bool
}

// finish sets the part's error, if any (its outcome is set when its
// transaction commits), and tells its call.
func (p *part) finish(err error) {
	p.err = err
	if p.call == nil {
		return
	}
	p.finished.Store(true)
	if p.call.remaining.Add(-1) == 0 {
		close(p.call.done)
	}
}

// collect writes the part's result into out: its events' outcomes at their
// indexes, its actions at the end. A part not finished yet gets ctxErr.
func (p *part) collect(out *profile.BatchOutcome, ctxErr error) {
	err := ctxErr
	if p.finished.Load() {
		err = p.err
		if err == nil && len(p.outcome.Results) != len(p.events) {
			err = fmt.Errorf("user %q: %w: the step gave %d results for %d events", p.userID, errNoResult, len(p.outcome.Results), len(p.events))
		}
	}
	if p.fire || p.single { // one outcome for the user
		out.Events[p.idx[0]] = profile.EventOutcome{Version: p.version, Err: err}
		if err == nil {
			out.Actions = append(out.Actions, p.outcome.Actions...)
			out.Notes = append(out.Notes, p.outcome.Notes...)
			out.Measures = append(out.Measures, p.outcome.Measures...)
		}
		return
	}
	for k, i := range p.idx {
		if err != nil {
			out.Events[i].Err = err
		} else {
			out.Events[i] = profile.EventOutcome{Result: p.outcome.Results[k], Version: p.version}
		}
	}
	if err == nil {
		out.Actions = append(out.Actions, p.outcome.Actions...)
		out.Notes = append(out.Notes, p.outcome.Notes...)
		out.Measures = append(out.Measures, p.outcome.Measures...)
	}
}

// shard is a queue of work for the users of some buckets.
type shard struct {
	mu    sync.Mutex
	users map[string]*userWork // queued, by user
	order []*userWork          // the same, in arrival order
	busy  bool                 // a drain goroutine is running
}

// enqueue queues parts on their users' shards, starting a drain goroutine
// on each idle one.
func (s *Store) enqueue(parts []*part) {
	byShard := make(map[int][]*part)
	for _, p := range parts {
		i := s.keys.Bucket(p.userID) % len(s.shards)
		byShard[i] = append(byShard[i], p)
	}
	for i, ps := range byShard {
		sh := &s.shards[i]
		sh.mu.Lock()
		if sh.users == nil {
			sh.users = make(map[string]*userWork)
		}
		for _, p := range ps {
			w := sh.users[p.userID]
			if w == nil {
				w = &userWork{userID: p.userID}
				sh.users[p.userID] = w
				sh.order = append(sh.order, w)
			}
			w.parts = append(w.parts, p)
		}
		start := !sh.busy
		sh.busy = true
		sh.mu.Unlock()
		if start {
			go s.drain(sh)
		}
	}
}

// drain runs cycles on sh until its queue is empty.
func (s *Store) drain(sh *shard) {
	for {
		sh.mu.Lock()
		work := sh.order
		sh.order, sh.users = nil, nil
		if len(work) == 0 {
			sh.busy = false
			sh.mu.Unlock()
			return
		}
		sh.mu.Unlock()
		s.cycle(work)
	}
}

// cycle commits the queued users. Parts of calls whose context has ended
// are dropped unread. The cycle's context ends when the contexts of all
// the calls it serves have ended (the work is shared); its values (the
// trace span) are the first call's.
func (s *Store) cycle(work []*userWork) {
	var calls []*call
	seen := make(map[*call]bool)
	live := work[:0]
	for _, w := range work {
		parts := w.parts[:0]
		for _, p := range w.parts {
			if err := p.call.ctx.Err(); err != nil {
				p.finish(err)
				continue
			}
			parts = append(parts, p)
			if !seen[p.call] {
				seen[p.call] = true
				calls = append(calls, p.call)
			}
		}
		if w.parts = parts; len(parts) > 0 {
			live = append(live, w)
		}
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(calls[0].ctx))
	defer cancel()
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
	s.commitGroups(ctx, live)
}

// commitGroups commits work in transaction groups (groupsOf), up to
// Parallelism at once, and hands every part its result.
func (s *Store) commitGroups(ctx context.Context, work []*userWork) {
	groups := s.groupsOf(work)
	commit := func(g []*userWork) {
		s.commitGroup(ctx, g)
		for _, w := range g {
			w.deliver()
		}
	}
	if len(groups) == 1 {
		commit(groups[0])
		return
	}
	sem := make(chan struct{}, s.opt.Parallelism)
	var wg sync.WaitGroup
	for _, g := range groups {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			commit(g)
		})
	}
	wg.Wait()
}

// groupsOf cuts work (each user once) into groups of at most MaxGroupUsers
// users, in order; on a cluster each group holds users of one bucket, the
// buckets in the order they first appear.
func (s *Store) groupsOf(work []*userWork) [][]*userWork {
	runs := [][]*userWork{work}
	if s.cluster != nil {
		runs = nil
		at := make(map[int]int) // bucket -> its run
		for _, w := range work {
			b := s.keys.Bucket(w.userID)
			r, ok := at[b]
			if !ok {
				r, at[b] = len(runs), len(runs)
				runs = append(runs, nil)
			}
			runs[r] = append(runs[r], w)
		}
	}
	var groups [][]*userWork
	for _, run := range runs {
		for len(run) > 0 {
			n := min(len(run), s.opt.MaxGroupUsers)
			groups = append(groups, run[:n:n])
			run = run[n:]
		}
	}
	return groups
}
