package server

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/profile"
)

// This file is the decision budget (DESIGN.md, principle 6: the budget is a
// promise): the share of the budget the profile read gets, the bound on
// reads waiting on the store, and the breaker that stops reads going to a
// store that keeps failing them. A read that fails or misses its deadline
// makes the answer degraded (decision.Rules.Answer), never an error.

// answerHeadroom is the part of a decision budget kept for what follows
// the moment the handler stops waiting for the profile read. The
// handler's timer, not the read's context, decides that moment (go-redis
// returns from a read past its context's deadline about 1 ms late at the
// median and 2-3 ms at the p99). But a timer is late too when the process
// sleeps in the network poller, whose epoll wait counts whole milliseconds
// (a remainder below 1 ms sleeps 1 ms): up to 1 ms. The other 0.5 ms are
// for evaluating the rules on the fallback and sending the answer (tens
// of microseconds at the median). Measured: BENCHMARKS.md, issue 17.
const answerHeadroom = 1500 * time.Microsecond

// readShare is the part of budget b the profile read gets.
func readShare(b time.Duration) time.Duration { return max(b-answerHeadroom, b/2) }

// readBudget returns the read's share of the request's budget (or of the
// default, capped to the maximum).
func (s *Server) readBudget(budget *durationpb.Duration) time.Duration {
	b := s.cfg.DefaultBudget
	if budget != nil && budget.AsDuration() > 0 {
		b = min(budget.AsDuration(), s.cfg.MaxBudget)
	}
	return readShare(b)
}

// errReadsSaturated is the read error when too many profile reads are
// already waiting on the store.
var errReadsSaturated = errors.New("too many profile reads already waiting on the store")

// boundedRead runs read, a read of the store for a decision, on a
// goroutine of its own, and waits for it until share has passed since
// start (the handler's timer) or ctx, the call's, ends. It returns read's
// value, or the error that kept it from finishing in time: the breaker is
// open, more than Config.MaxPendingReads reads are already waiting on the
// store (so a slow store degrades decisions instead of piling them up),
// or the share passed (context.DeadlineExceeded). The read's context ends
// at the same time, so an abandoned read releases its connection and its
// place among the pending reads soon after; it still tells the breaker
// how it went.
//
// read returns its value and the store's error (joined, for several
// users): only the store's own failures count for the breaker. A read that
// came back after its deadline (a large profile's decoding, a stall of this
// process) misses the budget, but the store did not fail.
//
// A goroutine per read costs about a tenth of the CPU of a decision read
// from Redis (creation, stack growth, a wake-up); decisions served from
// the near-cache (DecisionStore.Peek) take none. A panic in read is
// raised again on the caller's goroutine, where the recovery interceptor
// sees it.
func boundedRead[T any](s *Server, ctx context.Context, start time.Time, share time.Duration, read func(context.Context) (T, error)) (T, error) {
	var zero T
	now := time.Now() // the breaker's clock is the wall clock, not Config.Now
	ok, probe := s.reads.allow(now)
	if !ok {
		return zero, fmt.Errorf("the last %d reads failed, so reads are paused for %v, then one probes the store",
			s.cfg.BreakerFailures, s.reads.openFor(now).Round(time.Millisecond))
	}
	select {
	case s.pendingReads <- struct{}{}:
	default:
		s.reads.abandon(probe)
		return zero, errReadsSaturated
	}
	deadline := start.Add(share)
	readCtx, cancel := context.WithDeadline(ctx, deadline)
	type result struct {
		v        T
		err      error
		late     bool // the read's deadline passed before it returned
		panicked any
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			if p := recover(); p != nil {
				r = result{panicked: p}
				s.reads.abandon(probe)
			}
			cancel()
			<-s.pendingReads
			done <- r
		}()
		r.v, r.err = read(readCtx)
		r.late = readCtx.Err() != nil
		s.reads.record(time.Now(), probe, s.storeFailed(ctx, r.err, share))
	}()
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case r := <-done:
		switch {
		case r.panicked != nil:
			// On the call's goroutine, for the recovery interceptor.
			panic(fmt.Sprintf("profile read: %v\n%s", r.panicked, debug.Stack()))
		case r.late && ctx.Err() != nil:
			return zero, ctx.Err()
		case r.late:
			return zero, context.DeadlineExceeded
		}
		return r.v, nil
	case <-timer.C:
		return zero, context.DeadlineExceeded
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// storeFailed reports whether a read's err tells of a failing store: the
// store unreachable, or a read past its deadline when it had at least the
// default budget's share (a caller's smaller budget says nothing about the
// store); not a problem of one key (profile.ErrCorrupt), nor the caller's
// own deadline or cancellation.
func (s *Server) storeFailed(ctx context.Context, err error, readBudget time.Duration) bool {
	switch {
	case err == nil || ctx.Err() != nil:
		return false
	case errors.Is(err, profile.ErrUnavailable):
		return true
	default:
		return errors.Is(err, context.DeadlineExceeded) && readBudget >= s.defaultRead
	}
}

// breaker stops decision reads from going to a store that keeps failing
// them, so that decisions degrade at once instead of each spending its
// budget on a read that fails too. Without it, a paused or slow Redis made
// every decision wait out its read deadline, which go-redis and the
// runtime overshoot by about a millisecond (more at the tail), and made
// each one replace the connection the timed-out read had left unusable: a
// connection storm against a Redis already in trouble.
//
// After failures reads in a row failed, over at least minStreak, the
// breaker opens for cooldown: reads fail fast. Then one read at a time goes
// through as a probe; its success closes the breaker, its failure opens it
// for another cooldown. minStreak keeps a burst of reads that timed out
// together (a stall of the machine shorter than a read's deadline) from
// opening it: an outage fails reads for longer than that. The zero breaker
// is closed; a breaker with failures <= 0 never opens.
//
// It is pure logic; its clock is passed in.
type breaker struct {
	failures  int           // reads in a row that open the breaker
	minStreak time.Duration // the least time those failures must span
	cooldown  time.Duration // how long it stays open before a probe

	mu        sync.Mutex
	failed    int       // reads failed in a row
	since     time.Time // when the first of them failed
	openUntil time.Time // zero when closed
	probing   bool      // a probe is in flight
}

// allow reports whether a read may go to the store now, and whether it is
// the probe of an open breaker (whose outcome must then be recorded with
// probe true).
func (b *breaker) allow(now time.Time) (ok, probe bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.openUntil.IsZero():
		return true, false
	case now.Before(b.openUntil) || b.probing:
		return false, false
	default:
		b.probing = true
		return true, true
	}
}

// record counts a read's outcome: failed is a store failure (unreachable,
// or past a deadline long enough to tell), not a missing profile.
func (b *breaker) record(now time.Time, probe, failed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if probe {
		b.probing = false
	}
	if !failed {
		b.failed, b.openUntil = 0, time.Time{}
		return
	}
	if b.failed++; b.failed == 1 {
		b.since = now
	}
	if b.failures > 0 && (probe || b.failed >= b.failures && now.Sub(b.since) >= b.minStreak) {
		b.openUntil = now.Add(b.cooldown)
	}
}

// abandon ends a probe that did not reach the store (the reads were
// saturated): the next read probes instead.
func (b *breaker) abandon(probe bool) {
	if !probe {
		return
	}
	b.mu.Lock()
	b.probing = false
	b.mu.Unlock()
}

// openFor returns how long the breaker stays open from now, 0 when it is
// closed or due a probe.
func (b *breaker) openFor(now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.openUntil.IsZero() {
		return 0
	}
	return max(0, b.openUntil.Sub(now))
}
