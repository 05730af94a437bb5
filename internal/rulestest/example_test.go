package rulestest_test

import (
	"fmt"
	"time"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/internal/rulestest"
	"github.com/nudge-dm/nudge/profile"
)

// A second view within 30 minutes fires the trigger, and the sms offer
// wins the decision, with its trace.
func ExampleRun() {
	rules, err := decision.Parse("rules.yaml", []byte(`version: 1
triggers:
  - id: viewed-twice
    on: [view]
    when: profile.count("view", duration("30m")) >= 2
    action: {channel: sms, template: view_nudge}
offers:
  - id: phones-coupon
    channels: [sms]
    when: profile.count("view", "phones", duration("24h")) >= 2
    template: phones_coupon
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	at := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	first := profile.Event{ID: "e1", UserID: "u1", Type: "view", Category: "phones", OccurredAt: at.Add(-10 * time.Minute)}
	second := profile.Event{ID: "e2", UserID: "u1", Type: "view", Category: "phones", OccurredAt: at}
	rep, err := rulestest.Run(rules, rulestest.Input{History: []profile.Event{first}, Event: &second})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("event:", rep.Event.Status)
	for _, a := range rep.Actions {
		fmt.Println("fires:", a.TriggerID, "via", a.Channel)
	}
	for _, cd := range rep.Decisions {
		fmt.Println("decision on", cd.Channel+":", cd.Decision.Verdict, cd.Decision.Offer.ID)
		for _, s := range cd.Decision.Trace {
			fmt.Printf("  %s: %s = %s\n", s.RuleID, s.Subject, s.Value)
		}
	}
	// Output:
	// event: applied
	// fires: viewed-twice via sms
	// decision on sms: send phones-coupon
	//   consent: consent to sms = granted
	//   phones-coupon: when: profile.count("view", "phones", duration("24h")) >= 2 = true
}
