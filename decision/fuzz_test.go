package decision

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// FuzzParse checks that no rules file makes Parse, or the rules it
// accepts, panic, and that every rejection is an ErrInvalidRules.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("../examples/rules.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte(seedRules))
	f.Add([]byte(offerRules))
	f.Add([]byte("version: 1\ntriggers:\n  - id: x\n    when: evnt.x\n"))
	f.Add([]byte("version: 1\ntriggers: &a [*a]\n"))
	f.Add([]byte("version: 1\noffers:\n  - {id: o, template: t, payload_expr: {a: 'context.a + string(1/0)'}}\n"))
	f.Add([]byte("version: [1]\n---\nversion: 2\n"))
	f.Add([]byte("\t\x00: \xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !errors.Is(err, ErrInvalidRules) {
				t.Fatalf("error %v is not ErrInvalidRules", err)
			}
			return
		}
		// Whatever was accepted must evaluate without panicking.
		p := &profile.Profile{}
		now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
		events := []profile.Event{
			{ID: "1", UserID: "u", Type: "view", Category: "phones", OccurredAt: now, Attributes: map[string]string{"a": "b"}},
			{ID: "2", UserID: "u", Type: "purchase", Value: 10, OccurredAt: now},
			{ID: "3", UserID: "u", Type: "click", OccurredAt: now},
		}
		r.Step(profile.Limits{})(p, events, now)
		for _, ch := range []string{"sms", "push", "web", ""} {
			r.Decide(p, Request{Channel: ch, Placement: "home", Context: map[string]string{"a": "b"}}, now)
		}
	})
}
