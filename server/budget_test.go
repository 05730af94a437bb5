package server

import (
	"testing"
	"time"
)

func TestBreaker(t *testing.T) {
	t0 := time.Unix(1_800_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	type step struct {
		ms        int
		allow     bool // want allow's answer
		probe     bool // want a probe
		failed    bool // the read's outcome, when allowed
		wantOpen  time.Duration
		abandoned bool // the read never reached the store
	}
	tests := []struct {
		name      string
		failures  int
		minStreak time.Duration
		cooldown  time.Duration
		steps     []step
	}{{
		name:     "a success resets the failures in a row",
		failures: 3, cooldown: 100 * time.Millisecond,
		steps: []step{
			{ms: 0, allow: true, failed: true},
			{ms: 1, allow: true, failed: true},
			{ms: 2, allow: true},
			{ms: 3, allow: true, failed: true},
			{ms: 4, allow: true, failed: true},
			{ms: 5, allow: true},
		},
	}, {
		name:     "opens after 3 failures, one probe at a time, a success closes",
		failures: 3, cooldown: 100 * time.Millisecond,
		steps: []step{
			{ms: 0, allow: true, failed: true},
			{ms: 1, allow: true, failed: true},
			{ms: 2, allow: true, failed: true, wantOpen: 100 * time.Millisecond},
			{ms: 50, allow: false, wantOpen: 52 * time.Millisecond},
			{ms: 101, allow: false},
			{ms: 102, allow: true, probe: true, failed: true, wantOpen: 100 * time.Millisecond}, // a failed probe opens again
			{ms: 150, allow: false},
			{ms: 202, allow: true, probe: true},
			{ms: 203, allow: true},
		},
	}, {
		name:     "failures bunched in less than minStreak do not open it",
		failures: 3, minStreak: 8 * time.Millisecond, cooldown: 50 * time.Millisecond,
		steps: []step{
			{ms: 0, allow: true, failed: true},
			{ms: 1, allow: true, failed: true},
			{ms: 2, allow: true, failed: true},
			{ms: 3, allow: true, failed: true},
			{ms: 8, allow: true, failed: true, wantOpen: 50 * time.Millisecond},
			{ms: 9, allow: false},
		},
	}, {
		name:     "a probe that never reached the store lets the next read probe",
		failures: 1, cooldown: 10 * time.Millisecond,
		steps: []step{
			{ms: 0, allow: true, failed: true},
			{ms: 10, allow: true, probe: true, abandoned: true},
			{ms: 11, allow: true, probe: true},
			{ms: 12, allow: true},
		},
	}, {
		name:     "negative failures never open",
		failures: -1, cooldown: 10 * time.Millisecond,
		steps: []step{
			{ms: 0, allow: true, failed: true},
			{ms: 1, allow: true, failed: true},
			{ms: 2, allow: true, failed: true},
			{ms: 3, allow: true, failed: true},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &breaker{failures: tt.failures, minStreak: tt.minStreak, cooldown: tt.cooldown}
			for i, s := range tt.steps {
				ok, probe := b.allow(at(s.ms))
				if ok != s.allow || probe != s.probe {
					t.Fatalf("step %d at %dms: allow = %v, probe %v; want %v, %v", i, s.ms, ok, probe, s.allow, s.probe)
				}
				if ok {
					if s.abandoned {
						b.abandon(probe)
					} else {
						b.record(at(s.ms), probe, s.failed)
					}
				}
				if s.wantOpen != 0 {
					if got := b.openFor(at(s.ms)); got != s.wantOpen {
						t.Fatalf("step %d at %dms: open for %v, want %v", i, s.ms, got, s.wantOpen)
					}
				}
			}
		})
	}
}

// The second probe of a breaker due a probe is refused while the first is
// in flight, whatever the time.
func TestBreakerOneProbeAtATime(t *testing.T) {
	b := &breaker{failures: 1, cooldown: time.Millisecond}
	now := time.Unix(1_800_000_000, 0)
	b.record(now, false, true)
	later := now.Add(time.Second)
	if ok, probe := b.allow(later); !ok || !probe {
		t.Fatalf("allow = %v, %v; want the probe", ok, probe)
	}
	if ok, _ := b.allow(later); ok {
		t.Fatal("a second read went through while the probe was in flight")
	}
}
