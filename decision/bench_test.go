package decision

import (
	"strconv"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// BenchmarkStep measures one view event through the example rules on a
// profile with some history, the ingest hot path.
func BenchmarkStep(b *testing.B) {
	r, err := Load("../examples/rules.yaml")
	if err != nil {
		b.Fatal(err)
	}
	step := r.Step(profile.Limits{})
	p := &profile.Profile{}
	step(p, views("h", "laptops", t0, time.Minute, 20), t0.Add(20*time.Minute))
	events := make([]profile.Event, 1)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		at := t0.Add(20*time.Minute + time.Duration(i)*time.Millisecond)
		events[0] = view("e"+strconv.Itoa(i), "phones", at)
		step(p, events, at)
		i++
	}
}

// BenchmarkDecide measures a decision through the example offers.
func BenchmarkDecide(b *testing.B) {
	r, err := Load("../examples/rules.yaml")
	if err != nil {
		b.Fatal(err)
	}
	p := &profile.Profile{}
	r.Step(profile.Limits{})(p, append(views("v", "phones", t0, time.Minute, 5), event("c", "add_to_cart", t0)), t0.Add(10*time.Minute))
	for _, req := range []Request{
		{Channel: "push"},
		{Channel: "web", Placement: "home", Context: map[string]string{"category": "phones"}},
		{Channel: "email"},
	} {
		b.Run(req.Channel, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r.Decide(p, req, t0.Add(time.Hour))
			}
		})
	}
}
