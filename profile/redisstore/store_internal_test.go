package redisstore

import (
	"fmt"
	"testing"
	"time"
)

// TestBackoffBounds checks the documented full jitter: a wait in
// [BackoffMin, min(BackoffMax, BackoffMin*2^attempt)], for every attempt and
// for any Options a caller may pass.
func TestBackoffBounds(t *testing.T) {
	tests := []struct {
		name string
		opt  Options
	}{
		{"defaults", Options{}},
		{"custom", Options{BackoffMin: time.Millisecond, BackoffMax: 5 * time.Millisecond}},
		{"equal bounds", Options{BackoffMin: time.Millisecond, BackoffMax: time.Millisecond}},
		{"huge max", Options{BackoffMin: time.Nanosecond, BackoffMax: 1 << 62}},
		// Only BackoffMin set, above the 20ms default of BackoffMax: a
		// plausible configuration ("wait at least 50ms") that Options does
		// not forbid.
		{"min above default max", Options{BackoffMin: 50 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := New(nil, tt.opt)
			lo, hi := s.opt.BackoffMin, max(s.opt.BackoffMin, s.opt.BackoffMax)
			for attempt := range 70 {
				ceil := hi
				if c := lo << min(attempt, 20); c > 0 && c < ceil {
					ceil = c
				}
				for range 20 {
					d, err := backoffNoPanic(s, attempt)
					if err != nil {
						t.Fatalf("backoff(%d): %v", attempt, err)
					}
					if d < min(lo, s.opt.BackoffMax) || d > ceil {
						t.Fatalf("backoff(%d) = %v, want in [%v, %v]", attempt, d, lo, ceil)
					}
				}
			}
		})
	}
}

func backoffNoPanic(s *Store, attempt int) (d time.Duration, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return s.backoff(attempt), nil
}
