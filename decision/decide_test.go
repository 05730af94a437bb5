package decision

import (
	"maps"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

const offerRules = `version: 1
offers:
  - id: welcome
    priority: 0
    channels: [web]
    template: welcome
  - id: phones-coupon
    priority: 100
    channels: [sms, push]
    when: profile.count("view", "phones", duration("24h")) >= 3
    template: category_coupon
    payload: {category: phones}
  - id: cart-reminder
    priority: 200
    channels: [push]
    when: profile.seen_within("add_to_cart", duration("24h")) && profile.last_seen("purchase") < profile.last_seen("add_to_cart")
    template: cart_reminder
  - id: web-phones
    priority: 100
    channels: [web]
    when: profile.count("view", "phones", duration("24h")) >= 3
    template: category_coupon
    payload_expr: {where: placement, ref: context.ref, channel: channel}
  - id: anywhere
    priority: -10
    when: channel == "email"
    template: generic
`

// history builds a profile from events through the rules' step.
func history(t *testing.T, r *Rules, events ...profile.Event) *profile.Profile {
	t.Helper()
	p := &profile.Profile{}
	for i := range events {
		events[i].UserID = "u1"
	}
	r.Step(profile.Limits{})(p, events, t0.Add(time.Hour))
	return p
}

func TestDecide(t *testing.T) {
	r := mustParse(t, offerRules)
	now := t0.Add(2 * time.Hour)
	phoneViews := views("v", "phones", t0, time.Minute, 3)
	cart := event("c", "add_to_cart", t0.Add(10*time.Minute))
	purchase := event("p", "purchase", t0.Add(20*time.Minute))
	withChannel := func(e profile.Event, ch string) profile.Event { e.Channel = ch; return e }

	tests := []struct {
		name    string
		events  []profile.Event
		req     Request
		want    string // offer id, "" for none
		reasons []Reason
	}{
		{
			name:    "unknown user on sms: nothing",
			req:     Request{Channel: "sms"},
			reasons: []Reason{{"", "no eligible offer"}},
		},
		{
			name:    "unknown user on web: the low-priority welcome",
			req:     Request{Channel: "web"},
			want:    "welcome",
			reasons: []Reason{{"welcome", "offer welcome is eligible"}},
		},
		{
			name:    "offers without channels match any channel",
			req:     Request{Channel: "email"},
			want:    "anywhere",
			reasons: []Reason{{"anywhere", "offer anywhere is eligible"}},
		},
		{
			name:   "phone views: the coupon on sms",
			events: phoneViews,
			req:    Request{Channel: "sms"},
			want:   "phones-coupon",
		},
		{
			name:   "priority: the cart reminder beats the coupon on push",
			events: append(copyEvents(phoneViews), cart),
			req:    Request{Channel: "push"},
			want:   "cart-reminder",
		},
		{
			name:   "channel filter: the cart reminder is push only",
			events: append(copyEvents(phoneViews), cart),
			req:    Request{Channel: "sms"},
			want:   "phones-coupon",
		},
		{
			name:   "purchase after the cart: no reminder",
			events: append(copyEvents(phoneViews), cart, purchase),
			req:    Request{Channel: "push"},
			want:   "phones-coupon",
		},
		{
			name:    "unsubscribed from sms",
			events:  append(copyEvents(phoneViews), withChannel(event("un", "unsubscribe", t0.Add(30*time.Minute)), "sms")),
			req:     Request{Channel: "sms"},
			reasons: []Reason{{"consent", "user unsubscribed from sms"}},
		},
		{
			name:   "unsubscribed from sms, still on push",
			events: append(copyEvents(phoneViews), withChannel(event("un", "unsubscribe", t0.Add(30*time.Minute)), "sms")),
			req:    Request{Channel: "push"},
			want:   "phones-coupon",
		},
		{
			name:    "unsubscribed from all channels",
			events:  append(copyEvents(phoneViews), event("un", "unsubscribe", t0.Add(30*time.Minute))),
			req:     Request{Channel: "push"},
			reasons: []Reason{{"consent", "user unsubscribed from push"}},
		},
		{
			name: "unsubscribed then subscribed again",
			events: append(copyEvents(phoneViews),
				withChannel(event("un", "unsubscribe", t0.Add(30*time.Minute)), "sms"),
				withChannel(event("sub", "subscribe", t0.Add(40*time.Minute)), "sms")),
			req:  Request{Channel: "sms"},
			want: "phones-coupon",
		},
		{
			name: "a late unsubscribe older than the subscribe does not win",
			events: append(copyEvents(phoneViews),
				withChannel(event("sub", "subscribe", t0.Add(40*time.Minute)), "sms"),
				withChannel(event("un", "unsubscribe", t0.Add(30*time.Minute)), "sms")),
			req:  Request{Channel: "sms"},
			want: "phones-coupon",
		},
		{
			name:   "an offer whose payload fails is skipped with a reason",
			events: phoneViews,
			req:    Request{Channel: "web", Placement: "home"},
			want:   "welcome",
			reasons: []Reason{
				{"web-phones", "offer web-phones skipped: payload_expr.ref: no such key: ref"},
				{"welcome", "offer welcome is eligible"},
			},
		},
		{
			name:   "placement, context and channel reach the payload",
			events: phoneViews,
			req:    Request{Channel: "web", Placement: "home", Context: map[string]string{"ref": "mail"}},
			want:   "web-phones",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p *profile.Profile // nil: an unknown user
			if tt.events != nil {
				p = history(t, r, tt.events...)
			}
			d := r.Decide(p, tt.req, now)
			switch {
			case tt.want == "" && (d.Verdict != VerdictNone || d.Offer != nil):
				t.Errorf("got %v %+v, want none", d.Verdict, d.Offer)
			case tt.want != "" && (d.Verdict != VerdictSend || d.Offer == nil || d.Offer.ID != tt.want):
				t.Errorf("got %v %+v (reasons %v), want %s", d.Verdict, d.Offer, d.Reasons, tt.want)
			}
			if d.Offer != nil && d.Offer.Channel != tt.req.Channel {
				t.Errorf("offer channel %q, want %q", d.Offer.Channel, tt.req.Channel)
			}
			if tt.reasons != nil && !reflect.DeepEqual(d.Reasons, tt.reasons) {
				t.Errorf("reasons = %q, want %q", d.Reasons, tt.reasons)
			}
		})
	}
}

// copyEvents copies events so that appending to a shared slice in the table
// cannot alias.
func copyEvents(events []profile.Event) []profile.Event {
	return append([]profile.Event(nil), events...)
}

func TestDecideWindowEnds(t *testing.T) {
	r := mustParse(t, offerRules)
	p := history(t, r, views("v", "phones", t0, time.Minute, 3)...)
	for _, tt := range []struct {
		name string
		now  time.Time
		want Verdict
	}{
		{"within 24h", t0.Add(23 * time.Hour), VerdictSend},
		{"after 24h", t0.Add(25 * time.Hour), VerdictNone},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if d := r.Decide(p, Request{Channel: "sms"}, tt.now); d.Verdict != tt.want {
				t.Errorf("got %v %+v, want %v", d.Verdict, d.Offer, tt.want)
			}
		})
	}
}

func TestDecidePayload(t *testing.T) {
	r := mustParse(t, offerRules)
	p := history(t, r, views("v", "phones", t0, time.Minute, 3)...)
	d := r.Decide(p, Request{Channel: "web", Placement: "home", Context: map[string]string{"ref": "mail"}}, t0.Add(time.Hour))
	want := Offer{ID: "web-phones", Channel: "web", Template: "category_coupon",
		Payload: map[string]string{"where": "home", "ref": "mail", "channel": "web"}}
	if d.Offer == nil || d.Offer.ID != want.ID || d.Offer.Template != want.Template || !maps.Equal(d.Offer.Payload, want.Payload) {
		t.Errorf("offer = %+v, want %+v", d.Offer, want)
	}
	// Literal payloads are copied per decision: a caller changing one must
	// not change the rules.
	d = r.Decide(p, Request{Channel: "sms"}, t0.Add(time.Hour))
	d.Offer.Payload["category"] = "changed"
	if d2 := r.Decide(p, Request{Channel: "sms"}, t0.Add(time.Hour)); d2.Offer.Payload["category"] != "phones" {
		t.Errorf("payload shared between decisions: %v", d2.Offer.Payload)
	}
}

func TestDecideEvaluationErrors(t *testing.T) {
	r := mustParse(t, `version: 1
offers:
  - id: bad-when
    priority: 3
    when: context.tier == "gold"
    template: t
  - id: bad-window
    priority: 2
    when: profile.count("view", duration("-1m")) > 0
    template: t
  - id: ok
    priority: 1
    template: t
`)
	d := r.Decide(nil, Request{Channel: "sms"}, t0)
	if d.Verdict != VerdictSend || d.Offer.ID != "ok" {
		t.Fatalf("got %v %+v, want ok", d.Verdict, d.Offer)
	}
	if len(d.Reasons) != 3 || d.Reasons[0].RuleID != "bad-when" || d.Reasons[1].RuleID != "bad-window" ||
		!strings.Contains(d.Reasons[0].Message, "skipped: when: no such key: tier") {
		t.Errorf("reasons = %q", d.Reasons)
	}
}

func TestDecidePriorityTiesKeepFileOrder(t *testing.T) {
	r := mustParse(t, "version: 1\noffers:\n  - {id: b, priority: 5, template: t}\n  - {id: a, priority: 5, template: t}\n  - {id: c, priority: 9, template: t}\n")
	var got []string
	for _, o := range r.offers {
		got = append(got, o.id)
	}
	if strings.Join(got, ",") != "c,b,a" {
		t.Errorf("order %v, want c,b,a", got)
	}
}

func TestDecideNilRules(t *testing.T) {
	var r *Rules
	d := r.Decide(nil, Request{Channel: "sms"}, t0)
	if d.Verdict != VerdictNone || d.Offer != nil || len(d.Reasons) != 1 {
		t.Errorf("nil rules: %+v", d)
	}
}

func TestDecideConcurrent(t *testing.T) {
	r := mustParse(t, offerRules)
	p := history(t, r, append(views("v", "phones", t0, time.Minute, 3), event("c", "add_to_cart", t0))...)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			ch := []string{"sms", "push", "web"}[i%3]
			for range 200 {
				if d := r.Decide(p, Request{Channel: ch, Context: map[string]string{"ref": "x"}}, t0.Add(time.Hour)); d.Verdict != VerdictSend {
					t.Errorf("%s: %v", ch, d.Verdict)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestVerdictString(t *testing.T) {
	for v, want := range map[Verdict]string{VerdictNone: "none", VerdictSend: "send", VerdictHold: "hold", 0: "unknown"} {
		if got := v.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(v), got, want)
		}
	}
}
