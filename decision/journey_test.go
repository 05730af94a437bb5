package decision

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// cartRules is the cart-abandonment journey of the issue, as written
// there (and in docs/rules.md).
const cartRules = `version: 1
triggers:
  - id: cart-abandoned
    on: [add_to_cart]
    when: event.item_id != ""
    wait: 1h
    unless: [purchase]
    cooldown: 24h
    action: {channel: push, template: cart_reminder, payload_expr: {item: event.item_id}}
    then:
      - id: cart-abandoned-email
        wait: 23h
        unless: [purchase]
        when: profile.count("view", duration("24h")) > 0
        action: {channel: email, template: cart_reminder_2}
`

func cart(id string, at time.Time) profile.Event {
	return profile.Event{ID: id, UserID: "u1", Type: "add_to_cart", ItemID: "sku-" + id, OccurredAt: at}
}

// journey runs batches of events, each at its processing time, then fires
// the profile's timers at each of fireAt, and returns the actions (as
// "trigger@event") and notes ("trigger:kind[:reason]").
func journey(t *testing.T, r *Rules, p *profile.Profile, batches []batch, fireAt ...time.Time) (acts []profile.Action, notes []string) {
	t.Helper()
	step, fire := r.Step(profile.Limits{}), r.FireStep(profile.Limits{})
	collect := func(o profile.Outcome) {
		acts = append(acts, o.Actions...)
		for _, n := range o.Notes {
			s := n.Trigger + ":" + n.Kind
			if n.Reason != "" {
				s += ":" + n.Reason
			}
			notes = append(notes, s)
		}
	}
	for _, b := range batches {
		collect(step(p, b.events, b.now))
	}
	for _, at := range fireAt {
		// What the store does: decode what it encoded.
		q, err := profile.Decode(profile.Encode(p))
		if err != nil {
			t.Fatal(err)
		}
		q.UserID = p.UserID
		*p = *q
		collect(fire(p, nil, at))
	}
	return acts, notes
}

func TestJourneyCartAbandoned(t *testing.T) {
	r := mustParse(t, cartRules)
	view := func(id string, at time.Time) profile.Event { return event(id, "view", at) }
	buy := func(id string, at time.Time) profile.Event { return event(id, "purchase", at) }
	tests := []struct {
		name    string
		batches []batch
		fireAt  []time.Time
		want    []string
	}{
		{
			name:    "no purchase: the push at 1h, the email at 24h after a view",
			batches: []batch{{[]profile.Event{cart("c1", t0), view("v1", t0.Add(2*time.Hour))}, t0.Add(2 * time.Hour)}},
			fireAt:  []time.Time{t0.Add(59 * time.Minute), t0.Add(time.Hour), t0.Add(23 * time.Hour), t0.Add(24 * time.Hour)},
			want:    []string{"cart-abandoned@c1", "cart-abandoned-email@c1"},
		},
		{
			name:    "a purchase within the wait cancels both steps",
			batches: []batch{{[]profile.Event{cart("c1", t0), buy("p1", t0.Add(30*time.Minute))}, t0.Add(31 * time.Minute)}},
			fireAt:  []time.Time{t0.Add(time.Hour), t0.Add(24 * time.Hour)},
		},
		{
			name: "a purchase after the push cancels the email",
			batches: []batch{
				{[]profile.Event{cart("c1", t0)}, t0},
				{[]profile.Event{view("v1", t0.Add(2*time.Hour)), buy("p1", t0.Add(3*time.Hour))}, t0.Add(3 * time.Hour)},
			},
			fireAt: []time.Time{t0.Add(time.Hour), t0.Add(24 * time.Hour)},
			// The push fired at 1h (fireAt runs after the batches: the
			// purchase arrived before the push fired, but happened after
			// its due time, so it cancels only the email).
			want: []string{"cart-abandoned@c1"},
		},
		{
			name:    "the email's when: no view in its last 24h, no email",
			batches: []batch{{[]profile.Event{cart("c1", t0)}, t0}},
			fireAt:  []time.Time{t0.Add(time.Hour), t0.Add(24 * time.Hour)},
			want:    []string{"cart-abandoned@c1"},
		},
		{
			name:    "an item-less add_to_cart starts nothing",
			batches: []batch{{[]profile.Event{event("c1", "add_to_cart", t0)}, t0}},
			fireAt:  []time.Time{t0.Add(time.Hour)},
		},
		{
			name: "replayed after its due time: judged at once",
			batches: []batch{
				// A purchase at 30m and the cart at 0, replayed 2h later in
				// one batch: the purchase cancels whatever the order.
				{[]profile.Event{buy("p1", t0.Add(30*time.Minute)), cart("c1", t0)}, t0.Add(2 * time.Hour)},
				{[]profile.Event{cart("c2", t0.Add(40*time.Minute))}, t0.Add(2 * time.Hour)},
			},
			fireAt: []time.Time{t0.Add(25 * time.Hour)}, // the email: no view, dropped
			want:   []string{"cart-abandoned@c2"},
		},
		{
			name: "the 24h cooldown: three carts, one journey",
			batches: []batch{{[]profile.Event{
				cart("c1", t0), cart("c2", t0.Add(10*time.Minute)), cart("c3", t0.Add(20*time.Minute)),
				view("v1", t0.Add(2*time.Hour)),
			}, t0.Add(2 * time.Hour)}},
			fireAt: []time.Time{t0.Add(90 * time.Minute), t0.Add(25 * time.Hour)},
			want:   []string{"cart-abandoned@c1", "cart-abandoned-email@c1"},
		},
		{
			name: "a duplicate schedules nothing more",
			batches: []batch{
				{[]profile.Event{cart("c1", t0)}, t0},
				{[]profile.Event{cart("c1", t0)}, t0.Add(time.Minute)},
			},
			fireAt: []time.Time{t0.Add(time.Hour), t0.Add(24 * time.Hour)},
			want:   []string{"cart-abandoned@c1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &profile.Profile{UserID: "u1"}
			acts, notes := journey(t, r, p, tt.batches, tt.fireAt...)
			if got := fired(acts); !slices.Equal(got, tt.want) {
				t.Errorf("fired %q, want %q\nnotes %q", got, tt.want, notes)
			}
			if len(p.Timers) != 0 {
				t.Errorf("timers left: %+v", p.Timers)
			}
		})
	}
}

func TestJourneyActionFields(t *testing.T) {
	r := mustParse(t, cartRules)
	p := &profile.Profile{UserID: "u1"}
	fireAt := t0.Add(time.Hour + 300*time.Millisecond)
	acts, _ := journey(t, r, p, []batch{{[]profile.Event{cart("c1", t0)}, t0}}, fireAt)
	if len(acts) != 1 {
		t.Fatalf("actions %+v", acts)
	}
	a := acts[0]
	want := profile.Action{
		ID: profile.ActionID("u1", "c1", "cart-abandoned"), UserID: "u1", TriggerID: "cart-abandoned", Channel: "push",
		Template: "cart_reminder", Payload: map[string]string{"item": "sku-c1"}, TriggeredAt: fireAt,
		DueAt: t0.Add(time.Hour), EventID: "c1", RulesVersion: r.Version(),
	}
	if fmt.Sprint(a) != fmt.Sprint(want) {
		t.Errorf("action\n%+v\nwant\n%+v", a, want)
	}
}

// TestLateEventsCompletePatterns: the seed's three views of phones within
// 10 minutes fire the coupon exactly once in every arrival order, one by
// one and in one batch.
func TestLateEventsCompletePatterns(t *testing.T) {
	r := mustParse(t, seedRules)
	vs := []profile.Event{
		view("v0", "phones", t0), view("v1", "phones", t0.Add(4*time.Minute)), view("v2", "phones", t0.Add(9*time.Minute)),
	}
	now := t0.Add(10 * time.Minute)
	orders := [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}
	for _, order := range orders {
		var evs []profile.Event
		for _, i := range order {
			evs = append(evs, vs[i])
		}
		t.Run(fmt.Sprint(order), func(t *testing.T) {
			var single []batch
			for _, e := range evs {
				single = append(single, batch{[]profile.Event{e}, now})
			}
			for name, batches := range map[string][]batch{"one by one": single, "one batch": {{evs, now}}} {
				acts, _ := run(t, r, &profile.Profile{}, batches...)
				if len(acts) != 1 {
					t.Errorf("%s: fired %q, want exactly one action", name, fired(acts))
				}
			}
		})
	}
}

const triggerPolicyRules = `version: 1
settings: {default_timezone: Europe/Paris}
policies:
  frequency_caps:
    - {id: sms-daily, channel: sms, max: 1, period: 24h}
  quiet_hours:
    - {id: night, channels: [sms, push], from: "21:00", to: "08:00"}
triggers:
  - id: coupon
    on: [view]
    action: {channel: sms, template: coupon}
  - id: low-priority
    on: [view]
    action: {channel: push, template: other}
  - id: high-priority
    on: [view]
    priority: 10
    action: {channel: push, template: first}
  - id: receipt
    on: [purchase]
    transactional: true
    action: {channel: sms, template: receipt}
`

func TestTriggerActionsUnderPolicies(t *testing.T) {
	r := mustParse(t, triggerPolicyRules)
	noon := time.Date(2025, 3, 1, 11, 0, 0, 0, time.UTC)   // 12:00 in Paris
	night := time.Date(2025, 3, 1, 22, 0, 0, 0, time.UTC)  // 23:00 in Paris
	morning := time.Date(2025, 3, 2, 7, 0, 0, 0, time.UTC) // 08:00 in Paris

	t.Run("channel limit: the higher priority goes", func(t *testing.T) {
		acts, notes := journey(t, r, &profile.Profile{UserID: "u1"}, []batch{{[]profile.Event{event("v1", "view", noon)}, noon}})
		// By priority, then file order.
		if got := fired(acts); !slices.Equal(got, []string{"high-priority@v1", "coupon@v1"}) {
			t.Errorf("fired %q", got)
		}
		if !slices.Contains(notes, "low-priority:dropped:channel_limit") {
			t.Errorf("notes %q", notes)
		}
	})
	t.Run("frequency cap: dropped with its reason", func(t *testing.T) {
		p := &profile.Profile{UserID: "u1"}
		sent := profile.Event{ID: "s1", UserID: "u1", Type: profile.TypeMessageSent, Channel: "sms", OccurredAt: noon.Add(-time.Hour)}
		acts, notes := journey(t, r, p, []batch{{[]profile.Event{sent, event("v1", "view", noon)}, noon}})
		if slices.Contains(fired(acts), "coupon@v1") || !slices.Contains(notes, "coupon:dropped:frequency_cap") {
			t.Errorf("fired %q, notes %q", fired(acts), notes)
		}
	})
	t.Run("transactional: exempt from caps and quiet hours", func(t *testing.T) {
		sent := profile.Event{ID: "s1", UserID: "u1", Type: profile.TypeMessageSent, Channel: "sms", OccurredAt: night.Add(-time.Hour)}
		acts, _ := journey(t, r, &profile.Profile{UserID: "u1"}, []batch{{[]profile.Event{sent, event("b1", "purchase", night)}, night}})
		if got := fired(acts); !slices.Equal(got, []string{"receipt@b1"}) {
			t.Errorf("fired %q", got)
		}
	})
	t.Run("quiet hours: deferred to the local morning", func(t *testing.T) {
		p := &profile.Profile{UserID: "u1"}
		acts, notes := journey(t, r, p, []batch{{[]profile.Event{event("v1", "view", night)}, night}},
			morning.Add(-time.Minute), morning)
		if got := fired(acts); !slices.Equal(got, []string{"high-priority@v1", "coupon@v1"}) {
			t.Fatalf("fired %q, notes %q", got, notes)
		}
		for _, a := range acts {
			if !a.TriggeredAt.Equal(morning) || !a.DueAt.Equal(night) {
				t.Errorf("%s: triggered_at %v due_at %v, want %v and %v", a.TriggerID, a.TriggeredAt, a.DueAt, morning, night)
			}
		}
		if !slices.Contains(notes, "coupon:deferred") {
			t.Errorf("notes %q", notes)
		}
	})
}

func TestJourneyRuleErrors(t *testing.T) {
	for _, tt := range []struct{ rules, want string }{
		{`{id: t, on: [a], wait: 500ms, action: {channel: sms, template: x}}`, "wait: must be at least 1s"},
		{`{id: t, on: [a], wait: soon, action: {channel: sms, template: x}}`, `invalid duration "soon"`},
		{`{id: t, on: [a], unless: [b], action: {channel: sms, template: x}}`, "unless: needs a wait"},
		{`{id: t, on: [a], wait: 1h, unless: [B!], action: {channel: sms, template: x}}`, `event type "B!"`},
		{`{id: t, on: [a], then: [{id: s, action: {channel: sms, template: x}}], action: {channel: sms, template: x}}`, "wait: required"},
		{`{id: t, on: [a], then: [{id: t, wait: 1h, action: {channel: sms, template: x}}], action: {channel: sms, template: x}}`, "duplicate trigger id"},
		{`{id: t, on: [a], then: [{id: s, wait: 1h, on: [b], action: {channel: sms, template: x}}], action: {channel: sms, template: x}}`, `unknown field "on"`},
		{`{id: t, on: [a], transactional: yes, action: {channel: sms, template: x}}`, "expected true or false"},
	} {
		_, err := Parse("rules.yaml", []byte("version: 1\ntriggers:\n  - "+tt.rules+"\n"))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %v, want %q", tt.rules, err, tt.want)
		}
	}
}
