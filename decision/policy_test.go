package decision

import (
	"fmt"
	"hash/fnv"
	"maps"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// policyRules exercise every policy. t0 (12:00 UTC) is 13:00 in Paris:
// outside the quiet hours.
const policyRules = `version: 1
settings:
  default_timezone: Europe/Paris
policies:
  frequency_caps:
    - {id: sms-daily, channel: sms, max: 2, period: 24h}
    - {id: all-weekly, channel: "*", max: 3, period: 7d}
  quiet_hours:
    - {id: night, channels: [sms, push], from: "21:00", to: "08:00"}
  purchase_cooldown: {id: recent-purchase, period: 7d}
fallbacks:
  web: {offer_id: web-fallback, template: welcome, payload: {returning: unknown}}
offers:
  - id: phones-coupon
    priority: 100
    channels: [sms, push, email]
    category: phones
    cooldown: 3d
    template: coupon
  - id: generic
    priority: 0
    template: generic
`

// build applies events at their own time (so that old sends are not
// rejected by the count retention), then compacts at now.
func build(t testing.TB, now time.Time, events ...profile.Event) *profile.Profile {
	t.Helper()
	l := profile.Limits{}.WithDefaults()
	p := &profile.Profile{}
	for i := range events {
		e := &events[i]
		if e.ID == "" {
			e.ID = fmt.Sprint("e", i)
		}
		e.UserID = "u1"
		if r := p.ApplyEvent(e, e.OccurredAt, l); r.Status != profile.Applied {
			t.Fatalf("event %d: %v %s", i, r.Status, r.Reason)
		}
	}
	p.Compact(now, l)
	return p
}

func sentMsg(channel, offer string, at time.Time) profile.Event {
	e := profile.Event{Type: profile.TypeMessageSent, Channel: channel, OccurredAt: at}
	if offer != "" {
		e.Attributes = map[string]string{profile.AttrOfferID: offer}
	}
	return e
}

func bought(category string, at time.Time) profile.Event {
	return profile.Event{Type: profile.TypePurchase, Category: category, Value: 10, OccurredAt: at}
}

func withTZ(tz string, at time.Time) profile.Event {
	return profile.Event{Type: "login", OccurredAt: at, Attributes: map[string]string{"tz": tz}}
}

func reasonIDs(d Decision) []string {
	var ids []string
	for _, r := range d.Reasons {
		ids = append(ids, r.RuleID)
	}
	return ids
}

func TestDecidePolicies(t *testing.T) {
	r := mustParse(t, policyRules)
	now := t0
	h := time.Hour
	tests := []struct {
		name    string
		events  []profile.Event
		channel string
		now     time.Time // zero: now
		verdict Verdict
		offer   string
		reasons []Reason // nil: not checked
	}{
		{
			name:    "nothing sent: the coupon",
			channel: "sms", verdict: VerdictSend, offer: "phones-coupon",
			reasons: []Reason{{"phones-coupon", "offer phones-coupon is eligible"}},
		},
		{
			name:    "sms cap: 2 sms in 24h",
			events:  []profile.Event{sentMsg("sms", "", now.Add(-2*h)), sentMsg("sms", "", now.Add(-20*h))},
			channel: "sms", verdict: VerdictNone,
			reasons: []Reason{{"sms-daily", "sms-daily: 2 of 2 sms sends in the last 24h"}},
		},
		{
			name:    "sms cap, boundary: a send exactly 24h ago still counts",
			events:  []profile.Event{sentMsg("sms", "", now.Add(-2*h)), sentMsg("sms", "", now.Add(-24*h))},
			channel: "sms", verdict: VerdictNone,
		},
		{
			name:    "sms cap, boundary: a send just over 24h ago no longer counts",
			events:  []profile.Event{sentMsg("sms", "", now.Add(-2*h)), sentMsg("sms", "", now.Add(-24*h-time.Millisecond))},
			channel: "sms", verdict: VerdictSend, offer: "phones-coupon",
		},
		{
			name:    "sms cap does not apply to push",
			events:  []profile.Event{sentMsg("sms", "", now.Add(-2*h)), sentMsg("sms", "", now.Add(-3*h))},
			channel: "push", verdict: VerdictSend, offer: "phones-coupon",
		},
		{
			name: "global cap: 3 sends on any channel in 7 days, and the sms cap too",
			events: []profile.Event{
				sentMsg("email", "", now.Add(-6*24*h)), sentMsg("sms", "", now.Add(-2*h)), sentMsg("sms", "", now.Add(-3*h)),
			},
			channel: "sms", verdict: VerdictNone,
			reasons: []Reason{
				{"sms-daily", "sms-daily: 2 of 2 sms sends in the last 24h"},
				{"all-weekly", "all-weekly: 3 of 3 sends on all channels in the last 7d"},
			},
		},
		{
			name: "global cap applies to every channel",
			events: []profile.Event{
				sentMsg("email", "", now.Add(-6*24*h)), sentMsg("sms", "", now.Add(-30*h)), sentMsg("push", "", now.Add(-3*h)),
			},
			channel: "web", verdict: VerdictNone,
			reasons: []Reason{{"all-weekly", "all-weekly: 3 of 3 sends on all channels in the last 7d"}},
		},
		{
			name: "global cap: sends older than the period are not counted",
			events: []profile.Event{
				sentMsg("email", "", now.Add(-8*24*h)), sentMsg("sms", "", now.Add(-30*h)), sentMsg("push", "", now.Add(-3*h)),
			},
			channel: "web", verdict: VerdictSend, offer: "generic",
		},
		{
			name:    "purchase cooldown: phones bought 2 days ago, the coupon is skipped",
			events:  []profile.Event{bought("phones", now.Add(-48*h))},
			channel: "sms", verdict: VerdictSend, offer: "generic",
			reasons: []Reason{
				{"recent-purchase", "offer phones-coupon skipped: phones bought 2d ago, within the purchase cooldown of 7d"},
				{"generic", "offer generic is eligible"},
			},
		},
		{
			name:    "purchase cooldown: another category does not count",
			events:  []profile.Event{bought("hats", now.Add(-2*h))},
			channel: "sms", verdict: VerdictSend, offer: "phones-coupon",
		},
		{
			name:    "purchase cooldown: over after 7 days",
			events:  []profile.Event{bought("phones", now.Add(-7*24*h-time.Second))},
			channel: "sms", verdict: VerdictSend, offer: "phones-coupon",
		},
		{
			name:    "offer cooldown: sent 2 days ago on push, skipped on sms",
			events:  []profile.Event{sentMsg("push", "phones-coupon", now.Add(-48*h))},
			channel: "sms", verdict: VerdictSend, offer: "generic",
			reasons: []Reason{
				{"phones-coupon", "offer phones-coupon skipped: sent 2d ago, within its cooldown of 3d"},
				{"generic", "offer generic is eligible"},
			},
		},
		{
			name:    "offer cooldown: over after 3 days",
			events:  []profile.Event{sentMsg("push", "phones-coupon", now.Add(-72*h-time.Second))},
			channel: "sms", verdict: VerdictSend, offer: "phones-coupon",
		},
		{
			name:    "offer cooldown: another offer's send does not count",
			events:  []profile.Event{sentMsg("push", "generic", now.Add(-time.Hour))},
			channel: "sms", verdict: VerdictSend, offer: "phones-coupon",
		},
		{
			name:    "consent comes first",
			events:  []profile.Event{{Type: profile.TypeUnsubscribe, Channel: "sms", OccurredAt: now.Add(-h)}, sentMsg("sms", "", now.Add(-2*h)), sentMsg("sms", "", now.Add(-3*h))},
			channel: "sms", verdict: VerdictNone,
			reasons: []Reason{{"consent", "user unsubscribed from sms"}},
		},
		{
			name:    "quiet hours: 22:00 in Paris, HOLD",
			channel: "sms", now: time.Date(2025, 3, 1, 21, 0, 0, 0, time.UTC), verdict: VerdictHold, offer: "phones-coupon",
			reasons: []Reason{
				{"phones-coupon", "offer phones-coupon is eligible"},
				{"night", "night: quiet hours 21:00-08:00 for sms (local time 22:00 in Europe/Paris (default)); hold until 2025-03-02 08:00 CET"},
			},
		},
		{
			name:    "quiet hours do not apply to email",
			channel: "email", now: time.Date(2025, 3, 1, 21, 0, 0, 0, time.UTC), verdict: VerdictSend, offer: "phones-coupon",
		},
		{
			name:    "caps come before quiet hours: NONE, not HOLD",
			events:  []profile.Event{sentMsg("sms", "", now.Add(-2*h)), sentMsg("sms", "", now.Add(-3*h))},
			channel: "sms", now: time.Date(2025, 3, 1, 21, 0, 0, 0, time.UTC), verdict: VerdictNone,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := tt.now
			if at.IsZero() {
				at = now
			}
			p := build(t, at, tt.events...)
			d := r.Decide(p, Request{UserID: "u1", Channel: tt.channel}, at)
			if d.Verdict != tt.verdict {
				t.Errorf("verdict %v, want %v (reasons %q)", d.Verdict, tt.verdict, d.Reasons)
			}
			switch {
			case tt.offer == "" && d.Offer != nil:
				t.Errorf("offer %+v, want none", d.Offer)
			case tt.offer != "" && (d.Offer == nil || d.Offer.ID != tt.offer):
				t.Errorf("offer %+v, want %s (reasons %q)", d.Offer, tt.offer, d.Reasons)
			}
			if tt.reasons != nil && !reflect.DeepEqual(d.Reasons, tt.reasons) {
				t.Errorf("reasons\n got %q\nwant %q", d.Reasons, tt.reasons)
			}
			if d.Verdict != VerdictHold && !d.NotBefore.IsZero() {
				t.Errorf("NotBefore %v on a %v", d.NotBefore, d.Verdict)
			}
			if d.RulesVersion != r.Version() {
				t.Errorf("RulesVersion %q, want %q", d.RulesVersion, r.Version())
			}
			if d.Trace != nil {
				t.Errorf("trace without Explain: %v", d.Trace)
			}
		})
	}
}

// TestDecideCapReasonsBeforeEvaluation: a reached cap stops the decision
// before any offer expression runs, so a failing expression gives no reason.
func TestDecideCapStopsBeforeOffers(t *testing.T) {
	r := mustParse(t, `version: 1
policies:
  frequency_caps: [{id: cap, max: 1, period: 1h}]
offers:
  - {id: bad, when: 'context.x == "y"', template: t}
`)
	p := build(t, t0, sentMsg("sms", "", t0.Add(-time.Minute)))
	d := r.Decide(p, Request{Channel: "sms"}, t0)
	if d.Verdict != VerdictNone || len(d.Reasons) != 1 || d.Reasons[0].RuleID != "cap" {
		t.Errorf("got %v %q", d.Verdict, d.Reasons)
	}
}

func TestDecideQuietHours(t *testing.T) {
	const rules = `version: 1
settings: {default_timezone: Europe/Paris}
policies:
  quiet_hours:
    - {id: night, channels: [sms, push], from: "21:00", to: "08:00"}
    - {id: lunch, channels: [push], from: "12:00", to: "13:30"}
offers:
  - {id: o, template: t}
`
	r := mustParse(t, rules)
	ny, paris, tokyo := mustLoc(t, "America/New_York"), mustLoc(t, "Europe/Paris"), mustLoc(t, "Asia/Tokyo")
	tests := []struct {
		name      string
		tz        string // the user's tz attribute; "" for none
		channel   string
		now       time.Time
		notBefore time.Time // zero: SEND
	}{
		{
			name: "New York user at 22:30 local: held until 08:00 local tomorrow",
			tz:   "America/New_York", channel: "sms",
			now:       time.Date(2025, 6, 10, 22, 30, 0, 0, ny),
			notBefore: time.Date(2025, 6, 11, 8, 0, 0, 0, ny),
		},
		{
			name: "New York user at 03:30 UTC = 23:30 local: the server's day is not the user's",
			tz:   "America/New_York", channel: "sms",
			now:       time.Date(2025, 6, 11, 3, 30, 0, 0, time.UTC),
			notBefore: time.Date(2025, 6, 11, 8, 0, 0, 0, ny), // 12:00 UTC
		},
		{
			name: "New York user at 07:00 local: held until 08:00 the same day",
			tz:   "America/New_York", channel: "push",
			now:       time.Date(2025, 6, 11, 7, 0, 0, 0, ny),
			notBefore: time.Date(2025, 6, 11, 8, 0, 0, 0, ny),
		},
		{
			name: "New York user at 22:30 Paris time (16:30 local): SEND",
			tz:   "America/New_York", channel: "sms",
			now: time.Date(2025, 6, 10, 22, 30, 0, 0, paris),
		},
		{
			name:      "user without tz: the default zone, Paris",
			channel:   "sms",
			now:       time.Date(2025, 6, 10, 22, 30, 0, 0, paris),
			notBefore: time.Date(2025, 6, 11, 8, 0, 0, 0, paris),
		},
		{
			name: "unknown tz: the default zone",
			tz:   "Mars/Olympus_Mons", channel: "sms",
			now:       time.Date(2025, 6, 10, 23, 0, 0, 0, paris),
			notBefore: time.Date(2025, 6, 11, 8, 0, 0, 0, paris),
		},
		{
			name: "window start is inside",
			tz:   "Asia/Tokyo", channel: "sms",
			now:       time.Date(2025, 6, 10, 21, 0, 0, 0, tokyo),
			notBefore: time.Date(2025, 6, 11, 8, 0, 0, 0, tokyo),
		},
		{
			name: "a second before the window: SEND",
			tz:   "Asia/Tokyo", channel: "sms",
			now: time.Date(2025, 6, 10, 20, 59, 59, 0, tokyo),
		},
		{
			name: "window end is outside",
			tz:   "Asia/Tokyo", channel: "sms",
			now: time.Date(2025, 6, 11, 8, 0, 0, 0, tokyo),
		},
		{
			name: "a second before the end: held one second",
			tz:   "Asia/Tokyo", channel: "sms",
			now:       time.Date(2025, 6, 11, 7, 59, 59, 0, tokyo),
			notBefore: time.Date(2025, 6, 11, 8, 0, 0, 0, tokyo),
		},
		{
			name: "midnight exactly",
			tz:   "Asia/Tokyo", channel: "sms",
			now:       time.Date(2025, 6, 11, 0, 0, 0, 0, tokyo),
			notBefore: time.Date(2025, 6, 11, 8, 0, 0, 0, tokyo),
		},
		{
			name: "a window that does not wrap midnight, on its channel",
			tz:   "Asia/Tokyo", channel: "push",
			now:       time.Date(2025, 6, 11, 12, 15, 0, 0, tokyo),
			notBefore: time.Date(2025, 6, 11, 13, 30, 0, 0, tokyo),
		},
		{
			name: "... and not on another channel",
			tz:   "Asia/Tokyo", channel: "sms",
			now: time.Date(2025, 6, 11, 12, 15, 0, 0, tokyo),
		},
		{
			name: "DST spring forward (New York, 2025-03-09): 08:00 EDT, not 08:00 EST",
			tz:   "America/New_York", channel: "sms",
			now:       time.Date(2025, 3, 8, 22, 0, 0, 0, ny), // 03:00 UTC
			notBefore: time.Date(2025, 3, 9, 12, 0, 0, 0, time.UTC),
		},
		{
			name: "DST fall back (New York, 2025-11-02): 08:00 EST, a 25-hour night",
			tz:   "America/New_York", channel: "sms",
			now:       time.Date(2025, 11, 1, 23, 0, 0, 0, ny), // 03:00 UTC
			notBefore: time.Date(2025, 11, 2, 13, 0, 0, 0, time.UTC),
		},
		{
			name:      "DST in Paris (2025-03-30), user without tz",
			channel:   "sms",
			now:       time.Date(2025, 3, 29, 23, 0, 0, 0, time.UTC), // 00:00 CET
			notBefore: time.Date(2025, 3, 30, 6, 0, 0, 0, time.UTC),  // 08:00 CEST
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var events []profile.Event
			if tt.tz != "" {
				events = append(events, withTZ(tt.tz, tt.now.Add(-time.Hour)))
			}
			p := build(t, tt.now, events...)
			d := r.Decide(p, Request{Channel: tt.channel}, tt.now)
			if tt.notBefore.IsZero() {
				if d.Verdict != VerdictSend || !d.NotBefore.IsZero() {
					t.Errorf("got %v not before %v (reasons %q), want SEND", d.Verdict, d.NotBefore, d.Reasons)
				}
				return
			}
			if d.Verdict != VerdictHold || d.Offer == nil || d.Offer.ID != "o" {
				t.Fatalf("got %v %+v (reasons %q), want HOLD o", d.Verdict, d.Offer, d.Reasons)
			}
			if !d.NotBefore.Equal(tt.notBefore) {
				t.Errorf("NotBefore = %v (%v), want %v (%v)", d.NotBefore, d.NotBefore.UTC(), tt.notBefore, tt.notBefore.UTC())
			}
			if !d.NotBefore.After(tt.now) {
				t.Errorf("NotBefore %v is not after now %v", d.NotBefore, tt.now)
			}
			// At NotBefore the same decision sends.
			if d2 := r.Decide(p, Request{Channel: tt.channel}, d.NotBefore); d2.Verdict != VerdictSend {
				t.Errorf("at NotBefore: %v (reasons %q), want SEND", d2.Verdict, d2.Reasons)
			}
		})
	}
}

func TestDecideQuietHoursDSTGap(t *testing.T) {
	// Windows ending in the hour that a spring-forward skips: the wall
	// clock first reads past 02:30 at the transition, 03:00 EDT.
	r := mustParse(t, `version: 1
policies:
  quiet_hours: [{id: q, channels: [sms], from: "22:00", to: "02:30"}]
offers: [{id: o, template: t}]
`)
	ny := mustLoc(t, "America/New_York")
	p := build(t, t0, withTZ("America/New_York", t0))
	transition := time.Date(2025, 3, 9, 7, 0, 0, 0, time.UTC) // 02:00 EST = 03:00 EDT
	for _, now := range []time.Time{
		time.Date(2025, 3, 8, 23, 0, 0, 0, ny),
		time.Date(2025, 3, 9, 1, 15, 0, 0, ny),
		time.Date(2025, 3, 9, 1, 59, 0, 0, ny),
	} {
		d := r.Decide(p, Request{Channel: "sms"}, now)
		if d.Verdict != VerdictHold || !d.NotBefore.Equal(transition) {
			t.Errorf("at %v: %v until %v, want HOLD until %v", now, d.Verdict, d.NotBefore, transition)
		}
	}
	if d := r.Decide(p, Request{Channel: "sms"}, transition); d.Verdict != VerdictSend {
		t.Errorf("at the transition: %v, want SEND", d.Verdict)
	}

	// A window ending at 01:30 on the fall-back night: 01:30 happens
	// twice; each pass through the window ends at its own 01:30.
	r = mustParse(t, `version: 1
policies:
  quiet_hours: [{id: q, channels: [sms], from: "01:00", to: "01:30"}]
offers: [{id: o, template: t}]
`)
	firstPass := time.Date(2025, 11, 2, 5, 10, 0, 0, time.UTC)  // 01:10 EDT
	secondPass := time.Date(2025, 11, 2, 6, 10, 0, 0, time.UTC) // 01:10 EST
	for now, want := range map[time.Time]time.Time{
		firstPass:  time.Date(2025, 11, 2, 5, 30, 0, 0, time.UTC),
		secondPass: time.Date(2025, 11, 2, 6, 30, 0, 0, time.UTC),
	} {
		d := r.Decide(p, Request{Channel: "sms"}, now)
		if d.Verdict != VerdictHold || !d.NotBefore.Equal(want) {
			t.Errorf("at %v: %v until %v, want HOLD until %v", now.In(ny), d.Verdict, d.NotBefore.UTC(), want)
		}
	}
}

func TestDecideQuietHoursChained(t *testing.T) {
	// Overlapping and adjacent windows hold until the last one ends.
	r := mustParse(t, `version: 1
policies:
  quiet_hours:
    - {id: night, channels: [sms], from: "21:00", to: "08:00"}
    - {id: morning, channels: [sms], from: "07:30", to: "09:00"}
    - {id: late-morning, channels: [sms], from: "09:00", to: "09:15"}
offers: [{id: o, template: t}]
`)
	now := time.Date(2025, 6, 10, 23, 0, 0, 0, time.UTC)
	d := r.Decide(nil, Request{Channel: "sms"}, now)
	if want := time.Date(2025, 6, 11, 9, 15, 0, 0, time.UTC); d.Verdict != VerdictHold || !d.NotBefore.Equal(want) {
		t.Errorf("got %v until %v, want HOLD until %v", d.Verdict, d.NotBefore, want)
	}
	if ids := reasonIDs(d); !reflect.DeepEqual(ids, []string{"o", "night"}) {
		t.Errorf("reasons %q: the windows active now are named", d.Reasons)
	}
}

func mustLoc(t testing.TB, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func TestDecideAB(t *testing.T) {
	r := mustParse(t, `version: 1
offers:
  - {id: reminder, priority: 10, ab: {control: 0.1}, template: t}
  - {id: everyone, priority: 10, channels: [web], ab: {control: 0}, template: t}
  - {id: half, priority: 1, channels: [email], ab: {control: 0.5}, template: t}
`)
	const users = 10_000
	share := func(channel, offer string) float64 {
		control := 0
		for i := range users {
			user := fmt.Sprint("user-", i)
			d := r.Decide(nil, Request{UserID: user, Channel: channel}, t0)
			switch {
			case d.Control:
				control++
				if d.Verdict != VerdictNone || d.Offer != nil {
					t.Fatalf("%s: control with %v %+v", user, d.Verdict, d.Offer)
				}
				last := d.Reasons[len(d.Reasons)-1]
				if last.RuleID != offer || !strings.Contains(last.Message, "control group") {
					t.Fatalf("%s: control reason %q", user, d.Reasons)
				}
			case d.Verdict != VerdictSend || d.Offer.ID != offer:
				t.Fatalf("%s: %v %+v, want SEND %s", user, d.Verdict, d.Offer, offer)
			}
			// Stable: the same user always gets the same answer.
			if again := r.Decide(nil, Request{UserID: user, Channel: channel}, t0.Add(time.Hour)); again.Control != d.Control {
				t.Fatalf("%s: control %v then %v", user, d.Control, again.Control)
			}
		}
		return float64(control) / users
	}
	for _, tt := range []struct {
		channel, offer string
		want           float64
	}{
		{"sms", "reminder", 0.1},
		{"email", "reminder", 0.1}, // reminder wins on email too (priority 10 > 1)
		{"web", "reminder", 0.1},   // file order among equal priorities
	} {
		if got := share(tt.channel, tt.offer); math.Abs(got-tt.want) > 0.02 {
			t.Errorf("%s: control share %.4f, want %.2f ± 0.02", tt.channel, got, tt.want)
		}
	}

	// Different offers split independently: the control groups of two 50%
	// splits overlap on about a quarter of users, not all or none of them.
	both := 0
	for i := range users {
		u := fmt.Sprint("user-", i)
		if abBucket(u, "a") < 0.5 && abBucket(u, "b") < 0.5 {
			both++
		}
	}
	if f := float64(both) / users; math.Abs(f-0.25) > 0.02 {
		t.Errorf("two 50%% splits share %.4f of users, want 0.25 ± 0.02", f)
	}
	// Consecutive user ids are spread: in 10 buckets of [0, 1), each gets
	// its share of 10k users.
	var deciles [10]int
	for i := range users {
		deciles[int(abBucket(fmt.Sprint("user-", i), "o")*10)]++
	}
	for i, n := range deciles {
		if n < 900 || n > 1100 {
			t.Errorf("bucket decile %d has %d of %d users", i, n, users)
		}
	}

	// control 0: nobody in the control group.
	r0 := mustParse(t, "version: 1\noffers:\n  - {id: o, ab: {control: 0}, template: t}\n")
	for i := range 1000 {
		if d := r0.Decide(nil, Request{UserID: fmt.Sprint(i), Channel: "sms"}, t0); d.Control || d.Verdict != VerdictSend {
			t.Fatalf("control 0: %+v", d)
		}
	}
}

// TestABBucketIsFNV1aMixed: the bucket is part of the contract
// (docs/rules.md): changing the hash would move users between groups and
// spoil running experiments.
func TestABBucketIsFNV1aMixed(t *testing.T) {
	for _, tt := range []struct{ user, offer string }{{"u1", "cart-reminder"}, {"", ""}, {"user-42", "o"}, {"日本", "x"}} {
		h := fnv.New64a()
		h.Write([]byte(tt.user + "\x00" + tt.offer))
		x := h.Sum64()
		x ^= x >> 33
		x *= 0xff51afd7ed558ccd
		x ^= x >> 33
		x *= 0xc4ceb9fe1a85ec53
		x ^= x >> 33
		want := float64(x>>11) / (1 << 53)
		if got := abBucket(tt.user, tt.offer); got != want {
			t.Errorf("abBucket(%q, %q) = %v, want %v", tt.user, tt.offer, got, want)
		}
	}
}

func TestDecideExplain(t *testing.T) {
	r := mustParse(t, `version: 1
settings: {default_timezone: Europe/Paris}
policies:
  frequency_caps: [{id: sms-daily, channel: sms, max: 2, period: 24h}, {id: weekly, max: 5, period: 7d}]
  quiet_hours: [{id: night, channels: [sms], from: "21:00", to: "08:00"}]
  purchase_cooldown: {id: recent-purchase, period: 7d}
offers:
  - id: phones-coupon
    priority: 100
    category: phones
    cooldown: 3d
    when: profile.count("view", "phones", duration("24h")) >= 3
    template: t
  - id: web-only
    priority: 50
    channels: [web]
    template: t
  - id: split
    priority: 10
    ab: {control: 0.5}
    template: t
`)
	now := time.Date(2025, 3, 1, 21, 30, 0, 0, time.UTC) // 22:30 in Paris
	p := build(t, now, sentMsg("sms", "x", now.Add(-time.Hour)), bought("hats", now.Add(-time.Hour)))
	// A user in the treatment group of split.
	user := ""
	for i := 0; user == ""; i++ {
		if u := fmt.Sprint("user-", i); abBucket(u, "split") >= 0.5 {
			user = u
		}
	}
	d := r.Decide(p, Request{UserID: user, Channel: "sms", Explain: true}, now)
	if d.Verdict != VerdictHold || d.Offer.ID != "split" {
		t.Fatalf("got %v %+v, want HOLD split", d.Verdict, d.Offer)
	}
	want := []TraceStep{
		{"consent", "consent to sms", "granted", true},
		{"sms-daily", "frequency cap: at most 2 sms sends per 24h", "1 of 2 sends used", true},
		{"weekly", "frequency cap: at most 5 sends on all channels per 7d", "1 of 5 sends used", true},
		{"recent-purchase", "purchase cooldown of offer phones-coupon: no phones offer for 7d after a purchase", "no purchase of phones kept", true},
		{"phones-coupon", "cooldown: not again within 3d of a send", "never sent", true},
		{"phones-coupon", `when: profile.count("view", "phones", duration("24h")) >= 3`, "false", false},
		{"split", "when: (none, always eligible)", "true", true},
		{"split", "a/b split: 50% of users in the control group", d.Trace[7].Value, true},
		{"night", "quiet hours 21:00-08:00 for sms", "local time 22:30 in Europe/Paris (default): inside", false},
	}
	if !reflect.DeepEqual(d.Trace, want) {
		t.Errorf("trace:\n%s\nwant:\n%s", fmtTrace(d.Trace), fmtTrace(want))
	}
	if v := d.Trace[7].Value; !strings.HasPrefix(v, "bucket 0.") || !strings.HasSuffix(v, ": treatment group") {
		t.Errorf("a/b trace value %q", v)
	}

	// Explain does not change the decision.
	d2 := r.Decide(p, Request{UserID: user, Channel: "sms"}, now)
	d.Trace = nil
	if !reflect.DeepEqual(d, d2) {
		t.Errorf("with explain %+v\nwithout %+v", d, d2)
	}

	// Errors and cap failures are in the trace too.
	r2 := mustParse(t, `version: 1
policies:
  frequency_caps: [{id: cap, channel: sms, max: 1, period: 1h}]
offers:
  - {id: bad, priority: 2, when: 'context.x == "y"', template: t}
  - {id: bad-payload, priority: 1, template: t, payload_expr: {a: context.a}}
`)
	d = r2.Decide(nil, Request{Channel: "push", Explain: true}, now)
	want = []TraceStep{
		{"consent", "consent to push", "granted", true},
		{"bad", `when: context.x == "y"`, "error: no such key: x", false},
		{"bad-payload", "when: (none, always eligible)", "true", true},
		{"bad-payload", "payload_expr.a", "error: no such key: a", false},
	}
	if !reflect.DeepEqual(d.Trace, want) {
		t.Errorf("trace:\n%s\nwant:\n%s", fmtTrace(d.Trace), fmtTrace(want))
	}
	d = r2.Decide(build(t, now, sentMsg("sms", "", now)), Request{Channel: "sms", Explain: true}, now)
	want = []TraceStep{
		{"consent", "consent to sms", "granted", true},
		{"cap", "frequency cap: at most 1 sms sends per 1h", "1 of 1 sends used", false},
	}
	if !reflect.DeepEqual(d.Trace, want) {
		t.Errorf("trace:\n%s\nwant:\n%s", fmtTrace(d.Trace), fmtTrace(want))
	}
	p = build(t, now, profile.Event{Type: profile.TypeUnsubscribe, OccurredAt: now})
	if d := r2.Decide(p, Request{Channel: "sms", Explain: true}, now); !reflect.DeepEqual(d.Trace, []TraceStep{{"consent", "consent to sms", "unsubscribed", false}}) {
		t.Errorf("consent trace %v", d.Trace)
	}
}

func fmtTrace(steps []TraceStep) string {
	var b strings.Builder
	for _, s := range steps {
		fmt.Fprintf(&b, "  %q %q %q %v\n", s.RuleID, s.Subject, s.Value, s.Passed)
	}
	return b.String()
}

func TestDecideExplainControl(t *testing.T) {
	r := mustParse(t, "version: 1\noffers:\n  - {id: o, ab: {control: 0.5}, template: t}\n")
	user := ""
	for i := 0; user == ""; i++ {
		if u := fmt.Sprint("user-", i); abBucket(u, "o") < 0.5 {
			user = u
		}
	}
	d := r.Decide(nil, Request{UserID: user, Channel: "sms", Explain: true}, t0)
	if !d.Control || d.Verdict != VerdictNone || d.Offer != nil {
		t.Fatalf("got %+v, want control", d)
	}
	last := d.Trace[len(d.Trace)-1]
	if last.RuleID != "o" || last.Passed || !strings.HasSuffix(last.Value, ": control group") {
		t.Errorf("last step %+v", last)
	}
	want := []Reason{
		{"o", "offer o is eligible"},
		{"o", "offer o: user in the control group (50% of users get nothing, to measure the offer's lift)"},
	}
	if !reflect.DeepEqual(d.Reasons, want) {
		t.Errorf("reasons %q, want %q", d.Reasons, want)
	}
}

func TestFallback(t *testing.T) {
	r := mustParse(t, policyRules)
	d := r.Fallback("web")
	want := Decision{
		Verdict:      VerdictSend,
		Offer:        &Offer{ID: "web-fallback", Channel: "web", Template: "welcome", Payload: map[string]string{"returning": "unknown"}},
		Reasons:      []Reason{{"fallback", "fallback offer web-fallback for web"}},
		RulesVersion: r.Version(),
	}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("Fallback(web) = %+v, want %+v", d, want)
	}
	// The payload is the caller's to change.
	d.Offer.Payload["returning"] = "changed"
	if p := r.Fallback("web").Offer.Payload; !maps.Equal(p, map[string]string{"returning": "unknown"}) {
		t.Errorf("payload shared between decisions: %v", p)
	}
	for _, ch := range []string{"sms", ""} {
		d := r.Fallback(ch)
		if d.Verdict != VerdictNone || d.Offer != nil || len(d.Reasons) != 1 || d.Reasons[0].RuleID != "fallback" {
			t.Errorf("Fallback(%q) = %+v, want NONE", ch, d)
		}
	}
	var nilRules *Rules
	if d := nilRules.Fallback("web"); d.Verdict != VerdictNone {
		t.Errorf("nil rules: %+v", d)
	}
}

func TestDurations(t *testing.T) {
	tests := []struct {
		in   string
		want time.Duration
		bad  bool
	}{
		{in: "24h", want: 24 * time.Hour},
		{in: "7d", want: 7 * day},
		{in: "1d12h", want: 36 * time.Hour},
		{in: "1.5d", want: 36 * time.Hour},
		{in: "2h1d", want: 26 * time.Hour},
		{in: "90m", want: 90 * time.Minute},
		{in: "0", want: 0},
		{in: "0d", want: 0},
		{in: "-1d", want: -day},
		{in: "+1d", want: day},
		{in: "100000d", want: 100000 * day},
		{in: "", bad: true},
		{in: "d", bad: true},
		{in: "1", bad: true},
		{in: "1w", bad: true},
		{in: "1 d", bad: true},
		{in: "1dd", bad: true},
		{in: "1d2", bad: true},
		{in: "1.2.3d", bad: true},
		{in: "1e3d", bad: true},
		{in: "200000d", bad: true}, // overflows
		{in: "106751d23h48m", bad: true},
		{in: "-", bad: true},
	}
	for _, tt := range tests {
		got, err := parseDuration(tt.in)
		switch {
		case tt.bad && err == nil:
			t.Errorf("parseDuration(%q) = %v, want an error", tt.in, got)
		case !tt.bad && (err != nil || got != tt.want):
			t.Errorf("parseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestProfileFunctionsForPolicies(t *testing.T) {
	now := t0
	p := build(t, now,
		sentMsg("sms", "a", now.Add(-2*time.Hour)),
		sentMsg("push", "b", now.Add(-30*time.Hour)),
		bought("phones", now.Add(-3*24*time.Hour)),
		profile.Event{Type: "view", OccurredAt: now.Add(-90 * time.Minute)},
	)
	tests := []struct {
		expr string
		want bool
	}{
		{`profile.since("view") == duration("90m")`, true},
		{`profile.since("purchase") == duration("72h")`, true},
		{`profile.since("never") > duration("876000h")`, false}, // exactly 100*365 days
		{`profile.since("never") == duration("876000h")`, true},
		{`profile.sends("sms", duration("24h")) == 1`, true},
		{`profile.sends("", duration("24h")) == 1`, true},
		{`profile.sends("", duration("48h")) == 2`, true},
		{`profile.sends("push", duration("24h")) == 0`, true},
		{`profile.last_purchase_within("phones", duration("168h"))`, true},
		{`profile.last_purchase_within("phones", duration("48h"))`, false},
		{`profile.last_purchase_within("hats", duration("168h"))`, false},
		{`profile.last_purchase_within("", duration("168h"))`, false},
	}
	for _, tt := range tests {
		r := mustParse(t, "version: 1\noffers:\n  - id: o\n    when: '"+tt.expr+"'\n    template: t\n")
		d := r.Decide(p, Request{Channel: "sms", Explain: true}, now)
		if got := d.Verdict == VerdictSend; got != tt.want {
			t.Errorf("%s = %v, want %v (trace %v)", tt.expr, got, tt.want, d.Trace)
		}
	}
	// A later event than now: since is 0, not negative.
	r := mustParse(t, "version: 1\noffers:\n  - {id: o, when: 'profile.since(\"view\") == duration(\"0s\")', template: t}\n")
	if d := r.Decide(p, Request{Channel: "sms"}, now.Add(-2*time.Hour)); d.Verdict != VerdictSend {
		t.Errorf("since of a later event: %v", d.Reasons)
	}
	for _, expr := range []string{`profile.sends("", duration("-1h")) == 0`, `profile.last_purchase_within("x", duration("-1h"))`} {
		r := mustParse(t, "version: 1\noffers:\n  - id: o\n    when: '"+expr+"'\n    template: t\n")
		if d := r.Decide(p, Request{Channel: "sms"}, now); d.Verdict != VerdictNone || !strings.Contains(d.Reasons[0].Message, "negative window") {
			t.Errorf("%s: %v %q, want a negative window error", expr, d.Verdict, d.Reasons)
		}
	}
}
