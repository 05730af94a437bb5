package decision

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// t0 is the base event time of the tests.
var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// seedRules is the seed scenario as a rule author writes it.
const seedRules = `version: 1
triggers:
  - id: category-interest-coupon
    on: [view]
    when: event.category != "" && profile.count("view", event.category, duration("30m")) >= 3
    cooldown: 24h
    cooldown_by: event.category
    action:
      channel: sms
      template: category_coupon
      payload: {discount: "10%"}
      payload_expr: {category: event.category}
`

func mustParse(t testing.TB, src string) *Rules {
	t.Helper()
	r, err := Parse("rules.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return r
}

func view(id, category string, at time.Time) profile.Event {
	return profile.Event{ID: id, UserID: "u1", Type: "view", Category: category, OccurredAt: at}
}

func event(id, typ string, at time.Time) profile.Event {
	return profile.Event{ID: id, UserID: "u1", Type: typ, OccurredAt: at}
}

// views returns n views of category, one every gap from start, with ids
// prefix-0, prefix-1, ...
func views(prefix, category string, start time.Time, gap time.Duration, n int) []profile.Event {
	out := make([]profile.Event, n)
	for i := range out {
		out[i] = view(prefix+"-"+strconv.Itoa(i), category, start.Add(time.Duration(i)*gap))
	}
	return out
}

// ruleErrors lists the *RuleError values inside a (joined) error.
func ruleErrors(err error) []*RuleError {
	var out []*RuleError
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var re *RuleError
		if errors.As(err, &re) {
			out = append(out, re)
		}
	}
	walk(err)
	return out
}
