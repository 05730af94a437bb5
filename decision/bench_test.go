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

// BenchmarkDecidePolicies measures decisions through the example policies
// on a user with a week of sends, a purchase and a time zone: a SEND by
// day, a HOLD at night (quiet hours), and the same with the trace.
func BenchmarkDecidePolicies(b *testing.B) {
	r, err := Load("../examples/rules.yaml")
	if err != nil {
		b.Fatal(err)
	}
	now := t0.Add(time.Hour) // 13:00 UTC
	var events []profile.Event
	for i := range 6 {
		events = append(events, profile.Event{ID: "s" + strconv.Itoa(i), UserID: "u1", Type: profile.TypeMessageSent,
			Channel: []string{"push", "email"}[i%2], OccurredAt: now.Add(-time.Duration(i) * 25 * time.Hour),
			Attributes: map[string]string{profile.AttrOfferID: "cart-reminder"}})
	}
	events = append(events, profile.Event{ID: "p", UserID: "u1", Type: "purchase", Category: "hats", OccurredAt: now.Add(-2 * time.Hour)},
		profile.Event{ID: "tz", UserID: "u1", Type: "login", OccurredAt: now.Add(-3 * time.Hour), Attributes: map[string]string{"tz": "America/New_York"}})
	events = append(events, views("v", "phones", now.Add(-time.Hour), time.Minute, 3)...)
	p := &profile.Profile{}
	l := profile.Limits{}.WithDefaults()
	for i := range events {
		p.ApplyEvent(&events[i], events[i].OccurredAt, l)
	}
	for _, c := range []struct {
		name string
		req  Request
		at   time.Time

		want Verdict
	}{
		{"sms-send", Request{UserID: "u1", Channel: "sms"}, now, VerdictSend},
		{"sms-hold", Request{UserID: "u1", Channel: "sms"}, now.Add(14 * time.Hour), VerdictHold}, // 22:00 in New York
		{"sms-hold-explain", Request{UserID: "u1", Channel: "sms", Explain: true}, now.Add(14 * time.Hour), VerdictHold},
	} {
		b.Run(c.name, func(b *testing.B) {
			if d := r.Decide(p, c.req, c.at); d.Verdict != c.want {
				b.Fatalf("%v (reasons %q), want %v", d.Verdict, d.Reasons, c.want)
			}
			b.ReportAllocs()
			for b.Loop() {
				r.Decide(p, c.req, c.at)
			}
		})
	}
}
