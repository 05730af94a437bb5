package main

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestFeaturesFlags(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantSizes  []int
		wantRate   float64
		wantAsked  []string
		wantErr    string // "" for valid
		seedEvents int
	}{
		{name: "defaults: closed loop", args: nil, wantSizes: []int{1, 10, 100}, seedEvents: 20},
		{name: "a rate given", args: []string{"--rate", "300"}, wantSizes: []int{1, 10, 100}, wantRate: 300, seedEvents: 20},
		{name: "sizes and features", args: []string{"--batch-sizes", "1000, 5", "--features", "views_7d,monetary_90d", "--seed", "--seed-events", "3"},
			wantSizes: []int{1000, 5}, wantAsked: []string{"views_7d", "monetary_90d"}, seedEvents: 3},
		{name: "size 0", args: []string{"--batch-sizes", "0,10"}, wantErr: "--batch-sizes"},
		{name: "size over the server's limit", args: []string{"--batch-sizes", "1001"}, wantErr: "--batch-sizes"},
		{name: "size twice", args: []string{"--batch-sizes", "10,10"}, wantErr: "twice"},
		{name: "not a number", args: []string{"--batch-sizes", "ten"}, wantErr: "--batch-sizes"},
		{name: "no seed events", args: []string{"--seed", "--seed-events", "0"}, wantErr: "--seed-events"},
		{name: "no seed span", args: []string{"--seed-span", "0s"}, wantErr: "--seed-span"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parse(t, nil, append([]string{"--workload", "features"}, tt.args...)...)
			if tt.wantErr != "" {
				if !errors.As(err, new(usageError)) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want a usage error mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(c.BatchSizes, tt.wantSizes) || c.Rate != tt.wantRate || !slices.Equal(c.Features, tt.wantAsked) ||
				c.SeedEvents != tt.seedEvents || c.SeedSpan != 89*24*time.Hour {
				t.Errorf("sizes %v rate %v features %q seed %d over %v", c.BatchSizes, c.Rate, c.Features, c.SeedEvents, c.SeedSpan)
			}
		})
	}
}

// A seeded history is the same for the same prefix, user by user, within
// the span and of the known types.
func TestHistoryEvents(t *testing.T) {
	c, err := parse(t, nil, "--workload", "features", "--seed", "--seed-events", "4", "--seed-span", "48h", "--users", "10")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	salt := hashString(c.Prefix)
	types := map[string]int{}
	for i := range 40 {
		e := historyEvent(c, salt, i, now)
		if again := historyEvent(c, salt, i, now); again.String() != e.String() {
			t.Fatalf("event %d differs when made again: %v, %v", i, e, again)
		}
		if want := c.userID(i / 4); e.UserId != want {
			t.Errorf("event %d of user %s, want %s", i, e.UserId, want)
		}
		if at := e.OccurredAt.AsTime(); at.After(now) || at.Before(now.Add(-48*time.Hour)) {
			t.Errorf("event %d at %v, outside the 48h before %v", i, at, now)
		}
		if e.Type == "purchase" && (e.Value < 5 || e.Value >= 200) {
			t.Errorf("purchase of %v: want 5..199, under the bundled thank-you's 200", e.Value)
		}
		types[e.Type]++
	}
	if types["view"] == 0 || len(types) < 3 {
		t.Errorf("types %v: want mostly views, and others", types)
	}
}
