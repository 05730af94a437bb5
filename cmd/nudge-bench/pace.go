package main

import (
	"context"
	"sync/atomic"
	"time"
)

// schedule is an open-loop plan: call i is due at start + i/rate, whatever
// happened to the calls before it. Latency is measured from the due time,
// so a stall that delays the calls behind it counts against all of them
// (no coordinated omission).
type schedule struct {
	start time.Time
	rate  float64 // calls per second; > 0
	n     int64   // calls planned
}

// newSchedule plans rate calls per second for d from start.
func newSchedule(start time.Time, rate float64, d time.Duration) schedule {
	return schedule{start: start, rate: rate, n: int64(rate * d.Seconds())}
}

// due is when call i is due.
func (s schedule) due(i int64) time.Time {
	return s.start.Add(time.Duration(float64(i) * float64(time.Second) / s.rate))
}

// dueBy is how many calls are due at t (calls 0..dueBy-1), at most n.
func (s schedule) dueBy(t time.Time) int64 {
	if t.Before(s.start) {
		return 0
	}
	k := int64(t.Sub(s.start).Seconds()*s.rate) + 1
	return min(k, s.n)
}

// drainLimit is how long after the last due time a run may go on issuing
// late calls before the rest are given up (counted as not sent): a fifth
// of the run, at least 2 s.
func drainLimit(d time.Duration) time.Duration { return max(d/5, 2*time.Second) }

// earlySlack is how early a paced call may start. Go's timers wake up to a
// millisecond late (the runtime's poller sleeps in whole milliseconds), so
// a caller sleeping until the due time would measure its own oversleep as
// latency. Callers sleep until due-earlySlack instead and measure from
// min(due, actual start): a call on time measures its service time alone,
// a late one everything since it was due. The rate is unchanged; a call
// goes out at most this much early.
const earlySlack = time.Millisecond

// pacer hands out the calls of a schedule to concurrent callers.
type pacer struct {
	s        schedule
	next     atomic.Int64
	deadline time.Time // no call starts after it
}

func newPacer(s schedule, d time.Duration) *pacer {
	return &pacer{s: s, deadline: s.start.Add(d + drainLimit(d))}
}

// take waits until the next call is (nearly, see earlySlack) due and
// returns its due time; false
// when the schedule is done, the deadline passed or ctx ended.
func (p *pacer) take(ctx context.Context) (time.Time, bool) {
	i := p.next.Add(1) - 1
	if i >= p.s.n {
		return time.Time{}, false
	}
	due := p.s.due(i)
	if wait := time.Until(due.Add(-earlySlack)); wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return time.Time{}, false
		}
	}
	if ctx.Err() != nil || time.Now().After(p.deadline) {
		return time.Time{}, false
	}
	return due, true
}

// notSent is how many planned calls were never started.
func (p *pacer) notSent(started int64) int64 { return p.s.n - started }
