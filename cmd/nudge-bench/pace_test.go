package main

import (
	"testing"
	"time"
)

func TestScheduleMath(t *testing.T) {
	start := time.Unix(1000, 0)
	tests := []struct {
		name    string
		rate    float64
		d       time.Duration
		wantN   int64
		i       int64
		wantDue time.Duration // after start
	}{
		{"5000/s call 0", 5000, 20 * time.Second, 100000, 0, 0},
		{"5000/s call 1", 5000, 20 * time.Second, 100000, 1, 200 * time.Microsecond},
		{"5000/s last call", 5000, 20 * time.Second, 100000, 99999, 20*time.Second - 200*time.Microsecond},
		{"3/s uneven", 3, time.Second, 3, 2, 666666666},
		{"500/s for 2s", 500, 2 * time.Second, 1000, 500, time.Second},
		{"fractional rate", 0.5, 10 * time.Second, 5, 4, 8 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSchedule(start, tt.rate, tt.d)
			if s.n != tt.wantN {
				t.Errorf("n = %d, want %d", s.n, tt.wantN)
			}
			if got := s.due(tt.i).Sub(start); got != tt.wantDue {
				t.Errorf("due(%d) = +%v, want +%v", tt.i, got, tt.wantDue)
			}
		})
	}
}

func TestScheduleDueBy(t *testing.T) {
	start := time.Unix(1000, 0)
	s := newSchedule(start, 1000, 10*time.Second)
	tests := []struct {
		name  string
		after time.Duration
		want  int64
	}{
		{"before start", -time.Millisecond, 0},
		{"at start", 0, 1},
		{"just before the second", 999 * time.Microsecond, 1},
		{"at the second", time.Millisecond, 2},
		{"one second in", time.Second, 1001},
		{"past the end", time.Minute, 10000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := s.dueBy(start.Add(tt.after)); got != tt.want {
				t.Errorf("dueBy(+%v) = %d, want %d", tt.after, got, tt.want)
			}
			// Consistent with due: call dueBy-1 is due, call dueBy is not.
			got := s.dueBy(start.Add(tt.after))
			if got > 0 && s.due(got-1).After(start.Add(tt.after)) {
				t.Errorf("call %d is counted due but is due at +%v", got-1, s.due(got-1).Sub(start))
			}
			if got < s.n && !s.due(got).After(start.Add(tt.after)) && tt.after >= 0 {
				t.Errorf("call %d is due at +%v but not counted", got, s.due(got).Sub(start))
			}
		})
	}
}

func TestDrainLimit(t *testing.T) {
	for _, tt := range []struct{ d, want time.Duration }{
		{time.Second, 2 * time.Second},
		{20 * time.Second, 4 * time.Second},
		{time.Minute, 12 * time.Second},
	} {
		if got := drainLimit(tt.d); got != tt.want {
			t.Errorf("drainLimit(%v) = %v, want %v", tt.d, got, tt.want)
		}
	}
}

// A pacer whose calls are all in the past hands them out at once, in order,
// then reports the end: late calls keep their due time (no sleep needed).
func TestPacerLateCallsKeepTheirDueTime(t *testing.T) {
	start := time.Now().Add(-time.Hour)
	s := newSchedule(start, 100, time.Second)
	p := newPacer(s, time.Hour+time.Minute) // deadline in the future
	for i := range s.n {
		due, ok := p.take(t.Context())
		if !ok || !due.Equal(s.due(i)) {
			t.Fatalf("take %d = %v %v, want %v", i, due, ok, s.due(i))
		}
	}
	if _, ok := p.take(t.Context()); ok {
		t.Fatal("take after the last call succeeded")
	}
	if ns := p.notSent(s.n); ns != 0 {
		t.Errorf("notSent = %d", ns)
	}
	// Past the deadline nothing starts, and the rest counts as not sent.
	late := newPacer(newSchedule(start, 100, time.Second), time.Second)
	if _, ok := late.take(t.Context()); ok {
		t.Error("take past the deadline succeeded")
	}
	if ns := late.notSent(0); ns != 100 {
		t.Errorf("notSent = %d, want 100", ns)
	}
}
