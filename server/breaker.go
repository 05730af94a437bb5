package server

import (
	"sync"
	"time"
)

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
