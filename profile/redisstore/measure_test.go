package redisstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

const measureWindow = 7 * 24 * time.Hour

// measureStep applies events; a view exposes the user to campaign "c"
// (control when the user id ends in 0), a purchase converts with its
// value.
func measureStep(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
	l := profile.Limits{}.WithDefaults()
	var o profile.Outcome
	for i := range events {
		e := &events[i]
		r := p.ApplyEvent(e, now, l)
		o.Results = append(o.Results, r)
		if r.Status != profile.Applied {
			continue
		}
		o.Changed = true
		switch e.Type {
		case "view":
			v := profile.Treated
			if e.UserID[len(e.UserID)-1] == '0' {
				v = profile.Control
			}
			if m, ok := p.Expose("c", v, e.OccurredAt, measureWindow); ok {
				o.Measures = append(o.Measures, m)
			}
		case "purchase":
			o.Measures = append(o.Measures, p.Convert(e.OccurredAt, e.Value, measureWindow, l.MaxConversions)...)
		}
	}
	return o
}

// measureEvents are n users' view and, for every third user, a purchase
// after it worth 2.5.
func measureEvents(n int) (events []profile.Event, want profile.CampaignCounts) {
	at := storeNow.Add(-time.Hour)
	for i := range n {
		u := fmt.Sprintf("m-%d", i)
		arm := &want.Treated
		if i%10 == 0 {
			arm = &want.Control
		}
		arm.Exposed++
		events = append(events, profile.Event{ID: u + "-v", UserID: u, Type: "view", OccurredAt: at})
		if i%3 == 0 {
			events = append(events, profile.Event{ID: u + "-p", UserID: u, Type: "purchase", OccurredAt: at.Add(time.Minute), Value: 2.5})
			arm.Converted++
			arm.Value += 2.5
		}
	}
	return events, want
}

// campaign reads a campaign's counts, beside a campaign without any.
func campaign(t *testing.T, s *redisstore.Store, id string) profile.CampaignCounts {
	t.Helper()
	some, err := s.Counts(t.Context(), []string{"nothing-here", id})
	if err != nil {
		t.Fatal(err)
	}
	if some["nothing-here"] != (profile.CampaignCounts{}) {
		t.Fatalf("Counts of a campaign without counters: %+v", some["nothing-here"])
	}
	return some[id]
}

// Counters are written with the profile, per bucket, and summed; a
// re-sent event counts nothing.
func TestMeasuresCountedOnce(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	events, want := measureEvents(300)
	for _, batch := range [][]profile.Event{events, events} { // the second time: duplicates
		out := env.store.Apply(t.Context(), batch, measureStep)
		for _, o := range out.Events {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
		}
		if got := campaign(t, env.store, "c"); got != want {
			t.Fatalf("counts %+v, want %+v", got, want)
		}
	}
	// One hash per bucket that has users.
	keys, err := env.rdb.Keys(t.Context(), "nudge:{*}:m").Result()
	if err != nil || len(keys) != 16 {
		t.Errorf("measure keys %v, %v; want one per bucket", keys, err)
	}
}

// Run records exposures made outside events (a decision's control
// group) through the same transactions, once per window.
func TestRunRecordsExposures(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	at := storeNow.Add(-time.Minute)
	expose := func(p *profile.Profile, _ []profile.Event, now time.Time) profile.Outcome {
		m, ok := p.Expose("offer", profile.Control, at, measureWindow)
		if !ok {
			return profile.Outcome{}
		}
		return profile.Outcome{Changed: true, Measures: []profile.Measure{m}}
	}
	var users []string
	var steps []profile.Step
	for i := range 40 {
		u := fmt.Sprintf("r-%d", i%20) // each user twice
		users, steps = append(users, u), append(steps, expose)
	}
	for range 2 {
		out := env.store.Run(t.Context(), users, steps)
		for _, o := range out.Events {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
		}
	}
	if got := campaign(t, env.store, "offer"); got != (profile.CampaignCounts{Control: profile.Arm{Exposed: 20}}) {
		t.Errorf("counts %+v, want 20 control exposures", got)
	}
	p, err := env.store.Get(t.Context(), "r-3")
	if err != nil || len(p.Exposures) != 1 {
		t.Fatalf("profile %+v, %v", p, err)
	}
	// DeleteCounts resets one campaign's counters, in every bucket.
	if err := env.store.DeleteCounts(t.Context(), []string{"offer"}); err != nil {
		t.Fatal(err)
	}
	if got := campaign(t, env.store, "offer"); got != (profile.CampaignCounts{}) {
		t.Errorf("counts after DeleteCounts %+v, want none", got)
	}
}

// Two stores (two nudged instances) applying the same events at once:
// WATCH makes one of them re-read and find duplicates, so every count is
// exact.
func TestMeasuresExactUnderRacingWriters(t *testing.T) {
	env := newStore(t, redisstore.Options{MaxAttempts: 1000})
	other := redisstore.New(env.srv.Client(t), redisstore.Options{Buckets: 16, MaxAttempts: 1000, Now: func() time.Time { return storeNow }})
	events, want := measureEvents(200)
	var wg sync.WaitGroup
	for _, s := range []*redisstore.Store{env.store, other, env.store, other} {
		wg.Go(func() {
			for i := 0; i < len(events); i += 50 {
				for _, o := range s.Apply(context.Background(), events[i:min(i+50, len(events))], measureStep).Events {
					if o.Err != nil {
						t.Error(o.Err)
					}
				}
			}
		})
	}
	wg.Wait()
	if got := campaign(t, env.store, "c"); got != want {
		t.Fatalf("counts %+v, want %+v", got, want)
	}
}

// On a Redis Cluster every bucket's counters live in its slot, beside
// its profiles, and a report sums them over the masters.
func TestClusterMeasures(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	store, _ := clusterStore(t, c, redisstore.Options{Buckets: 32})
	events, want := measureEvents(500)
	for range 2 {
		for _, o := range store.Apply(t.Context(), events, measureStep).Events {
			if o.Err != nil {
				t.Fatal(o.Err)
			}
		}
		if got := campaign(t, store, "c"); got != want {
			t.Fatalf("counts %+v, want %+v", got, want)
		}
	}
}
