package decision_test

import (
	"fmt"
	"time"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
)

func ExampleParse() {
	rules, err := decision.Parse("rules.yaml", []byte(`version: 1
offers:
  - id: phones-coupon
    priority: 100
    channels: [sms, push]
    when: profile.count("view", "phones", duration("24h")) >= 3
    template: category_coupon
    payload: {category: phones}
  - id: web-welcome
    channels: [web]
    template: welcome
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

	// A user who viewed phones three times in the last hour.
	p := &profile.Profile{}
	var events []profile.Event
	for i := range 3 {
		events = append(events, profile.Event{ID: fmt.Sprint("e", i), UserID: "u1", Type: "view",
			Category: "phones", OccurredAt: now.Add(-time.Duration(i+1) * 10 * time.Minute)})
	}
	rules.Step(profile.Limits{})(p, events, now)

	for _, ch := range []string{"sms", "email"} {
		d := rules.Decide(p, decision.Request{Channel: ch}, now)
		fmt.Print(ch, ": ", d.Verdict)
		if d.Offer != nil {
			fmt.Print(" ", d.Offer.ID, " ", d.Offer.Template, " ", d.Offer.Payload)
		}
		fmt.Println()
		for _, r := range d.Reasons {
			fmt.Printf("  %q: %s\n", r.RuleID, r.Message)
		}
	}
	// Output:
	// sms: send phones-coupon category_coupon map[category:phones]
	//   "phones-coupon": offer phones-coupon is eligible
	// email: none
	//   "": no eligible offer
}

func ExampleParse_errors() {
	_, err := decision.Parse("rules.yaml", []byte(`version: 1
triggers:
  - id: category-interest-coupon
    on: [view]
    when: profile.count("view", evnt.category, duration("30m")) >= 3
    cooldown: 1 day
    action:
      channel: sms
`))
	fmt.Println(err)
	// Output:
	// rules.yaml:5: trigger "category-interest-coupon": when: ERROR: <input>:1:23: undeclared reference to 'evnt' (did you mean 'event'?)
	//  | profile.count("view", evnt.category, duration("30m")) >= 3
	//  | ......................^
	// rules.yaml:6: trigger "category-interest-coupon": cooldown: invalid duration "1 day" (use Go durations such as 30m or 24h, or days: 7d, 1d12h)
	// rules.yaml:7: trigger "category-interest-coupon": action.template: required
}

func ExampleRules_Step() {
	rules, err := decision.Load("../examples/rules.yaml")
	if err != nil {
		fmt.Println(err)
		return
	}
	step := rules.Step(profile.Limits{})
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

	// Five views of phones in 20 minutes: the coupon goes out once.
	p := &profile.Profile{}
	var events []profile.Event
	for i := range 5 {
		events = append(events, profile.Event{ID: fmt.Sprint("e", i), UserID: "u1", Type: "view",
			Category: "phones", OccurredAt: now.Add(time.Duration(i) * 5 * time.Minute)})
	}
	out := step(p, events, now.Add(30*time.Minute))
	for _, a := range out.Actions {
		fmt.Println(a.TriggerID, a.EventID, a.Channel, a.Template, a.Payload)
	}
	// Output:
	// category-interest-coupon e2 sms category_coupon map[category:phones discount:10%]
}

func ExampleRules_Decide_policies() {
	rules, err := decision.Parse("rules.yaml", []byte(`version: 1
settings: {default_timezone: Europe/Paris}
policies:
  frequency_caps:
    - {id: sms-daily, channel: sms, max: 2, period: 24h}
  quiet_hours:
    - {id: night, channels: [sms, push], from: "21:00", to: "08:00"}
offers:
  - {id: newsletter, channels: [sms, push], template: news}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	// 02:30 UTC: 21:30 the day before in New York, 03:30 in Paris.
	now := time.Date(2025, 6, 11, 2, 30, 0, 0, time.UTC)
	newYorker := &profile.Profile{}
	step := rules.Step(profile.Limits{})
	step(newYorker, []profile.Event{{ID: "login", UserID: "u1", Type: "login", OccurredAt: now.Add(-time.Hour),
		Attributes: map[string]string{"tz": "America/New_York"}}}, now)

	show := func(d decision.Decision) {
		fmt.Print(d.Verdict)
		if !d.NotBefore.IsZero() {
			fmt.Print(" until ", d.NotBefore.UTC().Format(time.RFC3339))
		}
		fmt.Println()
		for _, r := range d.Reasons {
			fmt.Printf("  %q: %s\n", r.RuleID, r.Message)
		}
	}
	show(rules.Decide(newYorker, decision.Request{UserID: "u1", Channel: "push"}, now))

	// Two SMS in the last 24 hours: the cap says NONE before quiet hours say HOLD.
	step(newYorker, []profile.Event{
		{ID: "s1", UserID: "u1", Type: profile.TypeMessageSent, Channel: "sms", OccurredAt: now.Add(-20 * time.Hour)},
		{ID: "s2", UserID: "u1", Type: profile.TypeMessageSent, Channel: "sms", OccurredAt: now.Add(-2 * time.Hour)},
	}, now)
	show(rules.Decide(newYorker, decision.Request{UserID: "u1", Channel: "sms"}, now.Add(time.Hour)))
	// Output:
	// hold until 2025-06-11T12:00:00Z
	//   "newsletter": offer newsletter is eligible
	//   "night": night: quiet hours 21:00-08:00 for push (local time 22:30 in America/New_York); hold until 2025-06-11 08:00 EDT
	// none
	//   "sms-daily": sms-daily: 2 of 2 sms sends in the last 24h
}
