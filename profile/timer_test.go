package profile_test

import (
	"slices"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

func TestMinutes(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	p := &profile.Profile{}
	l := profile.DefaultLimits()
	add := func(id, typ, cat string, at time.Duration) {
		if r := p.ApplyEvent(&profile.Event{ID: id, Type: typ, Category: cat, OccurredAt: t0.Add(at)}, t0.Add(time.Hour), l); r.Status != profile.Applied {
			t.Fatalf("%s: %v", id, r)
		}
	}
	add("a", "view", "tv", 0)
	add("b", "view", "tv", 3*time.Minute)
	add("c", "view", "phones", 2*time.Minute)
	add("d", "view", "phones", 3*time.Minute+30*time.Second)
	add("e", "click", "tv", 4*time.Minute)
	add("f", "view", "tv", 40*time.Minute)
	m0 := t0.Unix() / 60
	for _, tt := range []struct {
		name  string
		types []string
		cat   string
		one   bool
		to    time.Duration
		max   int
		want  []int64
	}{
		{"views of any category, deduplicated", []string{"view"}, "", false, 30 * time.Minute, 10, []int64{m0 + 2, m0 + 3}},
		{"views of tv", []string{"view"}, "tv", true, 30 * time.Minute, 10, []int64{m0 + 3}},
		{"any type", nil, "", false, 30 * time.Minute, 10, []int64{m0 + 2, m0 + 3, m0 + 4}},
		{"the earliest max", nil, "", false, time.Hour, 2, []int64{m0 + 2, m0 + 3}},
		{"up to to's minute", []string{"view"}, "", false, 40 * time.Minute, 10, []int64{m0 + 2, m0 + 3, m0 + 40}},
		{"nothing after from's minute", []string{"view"}, "", false, 0, 10, nil},
	} {
		got := p.Minutes(tt.types, tt.cat, tt.one, t0, t0.Add(tt.to), tt.max)
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestOccurredBetween(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	p := &profile.Profile{}
	l := profile.DefaultLimits()
	for i, at := range []time.Duration{10 * time.Minute, 50 * time.Minute} {
		p.ApplyEvent(&profile.Event{ID: string(rune('a' + i)), Type: "purchase", OccurredAt: t0.Add(at)}, t0.Add(time.Hour), l)
	}
	for _, tt := range []struct {
		from, to time.Duration
		want     bool
	}{
		{0, 5 * time.Minute, false},
		{0, 10 * time.Minute, true},                 // the earlier one, from the minute counts
		{10 * time.Minute, 20 * time.Minute, false}, // after from, strictly
		{40 * time.Minute, 55 * time.Minute, true},  // the latest, exactly
		{50 * time.Minute, 2 * time.Hour, false},
	} {
		if got := p.OccurredBetween("purchase", t0.Add(tt.from), t0.Add(tt.to)); got != tt.want {
			t.Errorf("OccurredBetween(%v, %v) = %v, want %v", tt.from, tt.to, got, tt.want)
		}
	}
}

func TestTimersRoundTrip(t *testing.T) {
	due := time.Date(2025, 3, 1, 13, 0, 0, 0, time.UTC)
	in := &profile.Profile{Version: 3}
	for i, tm := range []profile.Timer{
		{Trigger: "cart", Due: due, Wake: due, From: due.Add(-time.Hour),
			Event: profile.Event{ID: "e1", Type: "add_to_cart", OccurredAt: due.Add(-time.Hour), ItemID: "sku", Value: 9.5, Attributes: map[string]string{"k": "v"}}},
		{Trigger: "cart", Step: 1, CancelFrom: 2, Due: due.Add(time.Hour), Wake: due.Add(9 * time.Hour), Deferred: true, From: due.Add(-50 * time.Minute),
			Event: profile.Event{ID: "e2", OccurredAt: due.Add(-time.Hour), Category: "c", Channel: "sms"}},
	} {
		if !in.Schedule(tm, 2) {
			t.Fatalf("timer %d refused", i)
		}
	}
	if in.Schedule(profile.Timer{Trigger: "x", Due: due, Wake: due}, 2) {
		t.Error("a third timer over the limit of 2 was accepted")
	}
	out, err := profile.Decode(profile.Encode(in))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(in.Timers, out.Timers, func(a, b profile.Timer) bool {
		return a.Trigger == b.Trigger && a.Step == b.Step && a.CancelFrom == b.CancelFrom && a.Due.Equal(b.Due) && a.Wake.Equal(b.Wake) &&
			a.Deferred == b.Deferred && a.From.Equal(b.From) && a.Event.ID == b.Event.ID && a.Event.Type == b.Event.Type &&
			a.Event.OccurredAt.Equal(b.Event.OccurredAt) && a.Event.ItemID == b.Event.ItemID && a.Event.Value == b.Event.Value &&
			a.Event.Category == b.Event.Category && a.Event.Channel == b.Event.Channel && len(a.Event.Attributes) == len(b.Event.Attributes)
	}) {
		t.Errorf("timers\n%+v\ndecoded as\n%+v", in.Timers, out.Timers)
	}
	if !out.NextWake().Equal(due) {
		t.Errorf("NextWake %v, want %v", out.NextWake(), due)
	}
	if got := out.TakeDue(due); len(got) != 1 || got[0].Event.ID != "e1" || len(out.Timers) != 1 {
		t.Errorf("TakeDue: %+v, left %+v", got, out.Timers)
	}
}
