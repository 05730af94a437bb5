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
	f.Add([]byte(policyRules))
	f.Add([]byte("version: 1\npolicies:\n  quiet_hours: [{id: q, channels: [sms], from: \"23:59\", to: \"00:00\"}]\noffers: [{id: o, ab: {control: 0.5}, template: t}]\n"))
	f.Add([]byte("version: 1\nsettings: {default_timezone: Pacific/Chatham}\nfallbacks: {web: {offer_id: w, template: t}}\n"))
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
			{ID: "4", UserID: "u", Type: "message_sent", Channel: "sms", OccurredAt: now, Attributes: map[string]string{"offer_id": "o"}},
			{ID: "5", UserID: "u", Type: "login", OccurredAt: now, Attributes: map[string]string{"tz": "Australia/Lord_Howe"}},
		}
		r.Step(profile.Limits{})(p, events, now)
		for _, ch := range []string{"sms", "push", "web", ""} {
			for _, at := range []time.Time{now, now.Add(11 * time.Hour)} {
				d := r.Decide(p, Request{UserID: "u", Channel: ch, Placement: "home", Context: map[string]string{"a": "b"}, Explain: true}, at)
				if d.Verdict == VerdictHold && !d.NotBefore.After(at) {
					t.Fatalf("HOLD until %v, not after %v", d.NotBefore, at)
				}
			}
			r.Fallback(ch)
		}
	})
}
