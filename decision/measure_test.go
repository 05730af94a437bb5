package decision

import (
	"cmp"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// measureRules is the example: a trigger with a control group
// and an offer with one.
const measureRules = `version: 1
conversion:
  on: [purchase]
  window: 7d
  value: event.value
triggers:
  - id: category-interest-coupon
    on: [view]
    ab: {control: 0.5}
    action: {channel: sms, template: coupon}
offers:
  - id: phones-coupon
    ab: {control: 0.1}
    template: phones
`

// tally sums measures per campaign and variant, as the store's counters
// do.
type tally map[string]profile.Measure

func (t tally) add(ms []profile.Measure) {
	for _, m := range ms {
		k := m.Campaign + "/" + m.Variant.String()
		c := t[k]
		c.Campaign, c.Variant = m.Campaign, m.Variant
		c.Exposed += m.Exposed
		c.Converted += m.Converted
		c.Value += m.Value
		t[k] = c
	}
}

// run applies each user's events through the rules' step, on profiles
// kept encoded between calls (as the store keeps them), and tallies the
// measures and actions.
type runner struct {
	t        *testing.T
	step     profile.Step
	profiles map[string][]byte
	tally    tally
	actions  int
	statuses map[profile.Status]int
}

func newRunner(t *testing.T, r *Rules) *runner {
	return &runner{t: t, step: r.Step(profile.Limits{}), profiles: map[string][]byte{}, tally: tally{}, statuses: map[profile.Status]int{}}
}

func (rn *runner) apply(now time.Time, events ...profile.Event) {
	rn.run(events[0].UserID, now, rn.step, events)
}

func (rn *runner) run(user string, now time.Time, step profile.Step, events []profile.Event) {
	rn.t.Helper()
	p := &profile.Profile{}
	if b, ok := rn.profiles[user]; ok {
		var err error
		if p, err = profile.Decode(b); err != nil {
			rn.t.Fatal(err)
		}
	}
	p.UserID = user
	out := step(p, events, now)
	for _, r := range out.Results {
		rn.statuses[r.Status]++
	}
	if !out.Changed {
		if len(out.Measures) > 0 || len(out.Actions) > 0 {
			rn.t.Fatalf("unchanged outcome with measures %v and %d actions", out.Measures, len(out.Actions))
		}
		return
	}
	rn.tally.add(out.Measures)
	rn.actions += len(out.Actions)
	rn.profiles[user] = profile.Encode(p)
}

func ev(user, id, typ string, at time.Time, value float64) profile.Event {
	return profile.Event{ID: id, UserID: user, Type: typ, OccurredAt: at, Value: value}
}

// The acceptance scenario in the pure core: 2,000 users view once under
// a trigger holding out half of them; 600 purchase after their view, 100
// others before it. The counts are exact, and re-sending every event
// changes nothing.
func TestTriggerExposuresAndConversionsExact(t *testing.T) {
	r := mustParse(t, measureRules)
	rn := newRunner(t, r)
	now := t0.Add(time.Hour)
	var want tally = tally{}
	var all [][]profile.Event
	for i := range 2000 {
		u := fmt.Sprintf("user-%04d", i)
		viewAt := t0.Add(time.Duration(i) * time.Millisecond)
		v := profile.Measure{Campaign: "category-interest-coupon", Variant: profile.Treated, Exposed: 1}
		if InControl(u, "category-interest-coupon", 0.5) {
			v.Variant = profile.Control
		}
		evs := []profile.Event{ev(u, u+"-view", "view", viewAt, 0)}
		switch {
		case i < 600: // after the view, in order
			evs = append(evs, ev(u, u+"-buy", "purchase", viewAt.Add(10*time.Minute), 20))
			v.Converted, v.Value = 1, 20
		case i < 700: // before the view
			evs = append([]profile.Event{ev(u, u+"-buy", "purchase", viewAt.Add(-time.Minute), 20)}, evs...)
		}
		want.add([]profile.Measure{v})
		all = append(all, evs)
		for _, e := range evs {
			rn.apply(now, e)
		}
	}
	if !equalTally(rn.tally, want) {
		t.Fatalf("counts:\n got %v\nwant %v", rn.tally, want)
	}
	treated := rn.tally["category-interest-coupon/treated"]
	if rn.actions != int(treated.Exposed) {
		t.Errorf("%d actions for %d treated users", rn.actions, treated.Exposed)
	}
	if c := rn.tally["category-interest-coupon/control"]; c.Exposed < 900 || treated.Exposed < 900 {
		t.Errorf("split %d treated / %d control of 2000 at 0.5", treated.Exposed, c.Exposed)
	}
	// Every event again: duplicates, nothing counted.
	for _, evs := range all {
		for _, e := range evs {
			rn.apply(now.Add(time.Minute), e)
		}
	}
	if !equalTally(rn.tally, want) {
		t.Fatalf("after re-sending: %v, want %v", rn.tally, want)
	}
	if rn.statuses[profile.Duplicate] != 2700 {
		t.Errorf("%d duplicates, want 2700", rn.statuses[profile.Duplicate])
	}
}

func equalTally(a, b tally) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w := b[k]
		if v.Exposed != w.Exposed || v.Converted != w.Converted || math.Abs(v.Value-w.Value) > 1e-9 {
			return false
		}
	}
	return true
}

func TestAttributionWindow(t *testing.T) {
	r := mustParse(t, strings.Replace(measureRules, "control: 0.5", "control: 0", 1))
	const c = "category-interest-coupon/treated"
	tests := []struct {
		name      string
		events    []profile.Event // applied one by one, in this order
		exposed   int64
		converted int64
		value     float64
	}{
		{"purchase after the view", []profile.Event{
			ev("u", "v", "view", t0, 0), ev("u", "p", "purchase", t0.Add(time.Hour), 5)}, 1, 1, 5},
		{"purchase in the same millisecond as the view", []profile.Event{
			ev("u", "v", "view", t0, 0), ev("u", "p", "purchase", t0.Add(time.Microsecond), 5)}, 1, 0, 0},
		{"two purchases convert once", []profile.Event{
			ev("u", "v", "view", t0, 0), ev("u", "p1", "purchase", t0.Add(time.Hour), 5),
			ev("u", "p2", "purchase", t0.Add(2*time.Hour), 7)}, 1, 1, 5},
		{"a second view within the window does not count", []profile.Event{
			ev("u", "v1", "view", t0, 0), ev("u", "v2", "view", t0.Add(24*time.Hour), 0)}, 1, 0, 0},
		{"a view after the window opens a new one", []profile.Event{
			ev("u", "v1", "view", t0, 0), ev("u", "p1", "purchase", t0.Add(time.Hour), 5),
			ev("u", "v2", "view", t0.Add(7*24*time.Hour+time.Second), 0),
			ev("u", "p2", "purchase", t0.Add(7*24*time.Hour+time.Hour), 3)}, 2, 2, 8},
		{"a purchase past the window does not count", []profile.Event{
			ev("u", "v", "view", t0, 0), ev("u", "p", "purchase", t0.Add(7*24*time.Hour+time.Millisecond), 5)}, 1, 0, 0},
		{"a purchase applied before the view it follows counts when the view comes", []profile.Event{
			ev("u", "p", "purchase", t0.Add(time.Hour), 5), ev("u", "v", "view", t0, 0)}, 1, 1, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rn := newRunner(t, r)
			for _, e := range tt.events {
				// Each event at a processing time that accepts it.
				rn.apply(e.OccurredAt.Add(time.Minute), e)
			}
			got := rn.tally[c]
			if got.Exposed != tt.exposed || got.Converted != tt.converted || got.Value != tt.value {
				t.Errorf("got %d exposed, %d converted, value %v; want %d, %d, %v", got.Exposed, got.Converted, got.Value,
					tt.exposed, tt.converted, tt.value)
			}
		})
	}
}

func TestOfferExposures(t *testing.T) {
	r := mustParse(t, measureRules)
	rn := newRunner(t, r)
	at := t0
	var treatedUser, controlUser string
	for i := 0; treatedUser == "" || controlUser == ""; i++ {
		u := fmt.Sprintf("u%d", i)
		if InControl(u, "phones-coupon", 0.1) {
			controlUser = cmp.Or(controlUser, u)
		} else {
			treatedUser = cmp.Or(treatedUser, u)
		}
	}
	sent := func(u, id string) profile.Event {
		e := ev(u, id, profile.TypeMessageSent, at, 0)
		e.Channel, e.Attributes = "push", map[string]string{profile.AttrOfferID: "phones-coupon"}
		return e
	}
	// A treated user: the reported send exposes; a purchase converts.
	rn.apply(at.Add(time.Minute), sent(treatedUser, "s1"))
	rn.apply(at.Add(time.Minute), ev(treatedUser, "b1", "purchase", at.Add(30*time.Second), 12.5))
	// A send of another offer, or of no offer, exposes nothing.
	other := sent(treatedUser, "s2")
	other.Attributes[profile.AttrOfferID] = "not-an-offer"
	rn.apply(at.Add(time.Minute), other)
	// A control user: a send reported in spite of the split is not an
	// exposure; the decision's control exposure is, once.
	rn.apply(at.Add(time.Minute), sent(controlUser, "s3"))
	expose := r.ExposeControl(profile.Limits{}, "phones-coupon", at)
	rn.run(controlUser, at.Add(time.Minute), expose, nil)
	rn.run(controlUser, at.Add(time.Minute), r.ExposeControl(profile.Limits{}, "phones-coupon", at.Add(time.Hour)), nil)
	rn.apply(at.Add(2*time.Hour), ev(controlUser, "b2", "purchase", at.Add(90*time.Minute), 4))

	want := tally{}
	want.add([]profile.Measure{
		{Campaign: "phones-coupon", Variant: profile.Treated, Exposed: 1, Converted: 1, Value: 12.5},
		{Campaign: "phones-coupon", Variant: profile.Control, Exposed: 1, Converted: 1, Value: 4},
	})
	if !equalTally(rn.tally, want) {
		t.Errorf("got %v, want %v", rn.tally, want)
	}
}

func TestDecideControlNamesTheOffer(t *testing.T) {
	r := mustParse(t, measureRules)
	for i := range 200 {
		u := fmt.Sprintf("u%d", i)
		d := r.Decide(nil, Request{UserID: u, Channel: "push"}, t0)
		if d.Control != InControl(u, "phones-coupon", 0.1) {
			t.Fatalf("user %s: Control %v, InControl %v", u, d.Control, !d.Control)
		}
		if d.Control && d.ControlOffer != "phones-coupon" {
			t.Fatalf("control decision names offer %q", d.ControlOffer)
		}
	}
}

// A journey's split holds a control user out of every step, each step
// recording its own exposure.
func TestJourneyControlGroup(t *testing.T) {
	r := mustParse(t, `version: 1
triggers:
  - id: cart
    on: [add_to_cart]
    wait: 1h
    ab: {control: 0.5}
    action: {channel: push, template: a}
    then:
      - id: cart-email
        wait: 1h
        action: {channel: email, template: b}
`)
	step, fire := r.Step(profile.Limits{}), r.FireStep(profile.Limits{})
	for _, u := range []string{"u1", "u2", "u3", "u4", "u5", "u6"} {
		control := InControl(u, "cart", 0.5)
		p := &profile.Profile{UserID: u}
		got := tally{}
		out := step(p, []profile.Event{ev(u, "c", "add_to_cart", t0, 0)}, t0)
		got.add(out.Measures)
		actions := 0
		for _, at := range []time.Time{t0.Add(time.Hour), t0.Add(2 * time.Hour)} {
			out := fire(p, nil, at)
			got.add(out.Measures)
			actions += len(out.Actions)
		}
		v := profile.Treated
		if control {
			v = profile.Control
		}
		for _, id := range []string{"cart", "cart-email"} {
			if m := got[id+"/"+v.String()]; m.Exposed != 1 {
				t.Errorf("user %s (control %v): %s exposures %v", u, control, id, got)
			}
		}
		if wantActions := map[bool]int{false: 2, true: 0}[control]; actions != wantActions {
			t.Errorf("user %s (control %v): %d actions, want %d", u, control, actions, wantActions)
		}
	}
}

type fakeSampler map[string]float64

func (f fakeSampler) Sample(id string) (float64, int64, int64) { return f[id], 100, 3 }

func TestThompsonSelect(t *testing.T) {
	r := mustParse(t, `version: 1
offers:
  - id: top
    priority: 20
    when: context.top == "yes"
    template: t
  - id: a
    priority: 10
    select: thompson
    template: a
  - id: b
    priority: 10
    select: thompson
    template: b
  - id: c
    priority: 10
    select: thompson
    when: context.c == "yes"
    template: c
  - id: fixed
    priority: 10
    template: f
  - id: low
    priority: 1
    select: thompson
    template: l
`)
	tests := []struct {
		name    string
		sampler Sampler
		ctx     map[string]string
		want    string
	}{
		{"best draw wins", fakeSampler{"a": 0.01, "b": 0.04, "c": 0.9, "low": 0.99}, map[string]string{"top": "no", "c": "no"}, "b"},
		{"ineligible offers do not compete", fakeSampler{"a": 0.05, "b": 0.04}, map[string]string{"top": "no", "c": "no"}, "a"},
		{"eligible ones do", fakeSampler{"a": 0.05, "b": 0.04, "c": 0.06}, map[string]string{"top": "no", "c": "yes"}, "c"},
		{"a higher priority wins first", fakeSampler{"a": 0.9}, map[string]string{"top": "yes"}, "top"},
		{"no sampler: file order", nil, map[string]string{"top": "no", "c": "no"}, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := r.Decide(nil, Request{UserID: "u", Channel: "push", Context: tt.ctx, Sampler: tt.sampler, Explain: true}, t0)
			if d.Offer == nil || d.Offer.ID != tt.want {
				t.Fatalf("offer %+v, want %s; reasons %v", d.Offer, tt.want, d.Reasons)
			}
			if tt.sampler != nil && tt.want != "top" {
				last := d.Reasons[len(d.Reasons)-2].Message // then "offer ... is eligible"
				if !strings.Contains(last, "chosen by thompson sampling") {
					t.Errorf("reasons %v", d.Reasons)
				}
			}
		})
	}
}

func TestCompare(t *testing.T) {
	// 210 of 10,000 treated, 30 of 10,000 control: rates 2.1% and 0.3%.
	c := Compare(profile.Arm{Exposed: 10000, Converted: 210}, profile.Arm{Exposed: 10000, Converted: 30})
	near := func(name string, got, want, tol float64) {
		t.Helper()
		if math.Abs(got-want) > tol {
			t.Errorf("%s = %v, want %v ± %v", name, got, want, tol)
		}
	}
	near("uplift", c.Uplift, 0.018, 1e-12)
	near("lift", c.Lift, 6, 1e-12)
	// Katz: se = sqrt(1/210 - 1/10000 + 1/30 - 1/10000) = 0.19467...
	se := math.Sqrt(1.0/210 - 1.0/10000 + 1.0/30 - 1.0/10000)
	near("lift_ci_low", c.LiftLow, 7*math.Exp(-z95*se)-1, 1e-9)
	near("lift_ci_high", c.LiftHigh, 7*math.Exp(z95*se)-1, 1e-9)
	if c.LiftLow > 6 || c.LiftHigh < 6 || c.LiftLow < 3 {
		t.Errorf("interval [%v, %v]", c.LiftLow, c.LiftHigh)
	}
	// z = 0.018 / sqrt(0.012 * 0.988 * 2/10000) = 11.71...: p far below 1e-20.
	if !c.HasPValue || c.PValue > 1e-20 {
		t.Errorf("p = %v", c.PValue)
	}
	// No difference: p = 1, lift 0, interval around 0.
	same := Compare(profile.Arm{Exposed: 1000, Converted: 50}, profile.Arm{Exposed: 1000, Converted: 50})
	near("p of no difference", same.PValue, 1, 1e-12)
	if same.Lift != 0 || same.LiftLow >= 0 || same.LiftHigh <= 0 {
		t.Errorf("same rates: %+v", same)
	}
	// A textbook z-test: 60/100 vs 45/100: z = 0.15/sqrt(0.525*0.475*0.02) = 2.1246, p = 0.0336.
	near("p", Compare(profile.Arm{Exposed: 100, Converted: 60}, profile.Arm{Exposed: 100, Converted: 45}).PValue, 0.03362, 1e-4)

	if c := Compare(profile.Arm{Exposed: 100, Converted: 5}, profile.Arm{}); c.HasUplift || c.HasLift || c.HasPValue {
		t.Errorf("no control: %+v", c)
	}
	if c := Compare(profile.Arm{Exposed: 100, Converted: 5}, profile.Arm{Exposed: 100}); !c.HasUplift || c.HasLift || !c.HasPValue {
		t.Errorf("no control conversion: %+v", c)
	}
	if c := Compare(profile.Arm{Exposed: 100}, profile.Arm{Exposed: 100, Converted: 5}); !c.HasLift || c.Lift != -1 || c.LiftLow != -1 || math.IsInf(c.LiftHigh, 0) || c.LiftHigh <= 0 {
		t.Errorf("no treated conversion: %+v", c)
	}
}

// The Beta draws have the posterior's mean and spread (a seeded source:
// the same figures every run).
func TestBetaSampler(t *testing.T) {
	counts := map[string][2]int64{"a": {1000, 40}, "new": {0, 0}}
	s := BetaSampler{Counts: func(id string) (int64, int64) { return counts[id][0], counts[id][1] }, Rand: rand.New(rand.NewPCG(1, 2))}
	for id, c := range counts {
		const n = 20000
		var sum, sq float64
		for range n {
			x, exposed, converted := s.Sample(id)
			if x < 0 || x > 1 || exposed != c[0] || converted != c[1] {
				t.Fatalf("%s: draw %v (%d, %d)", id, x, exposed, converted)
			}
			sum += x
			sq += x * x
		}
		a, b := 1+float64(c[1]), 1+float64(c[0]-c[1])
		mean, sd := a/(a+b), math.Sqrt(a*b/((a+b)*(a+b)*(a+b+1)))
		gotMean := sum / n
		gotSD := math.Sqrt(sq/n - gotMean*gotMean)
		if math.Abs(gotMean-mean) > 4*sd/math.Sqrt(n) || math.Abs(gotSD-sd) > 0.05*sd {
			t.Errorf("%s: mean %v sd %v, want %v and %v", id, gotMean, gotSD, mean, sd)
		}
	}
}

// settings.measure: false records nothing, and still holds the control
// group out.
func TestMeasureOff(t *testing.T) {
	r := mustParse(t, strings.Replace(measureRules, "version: 1\n", "version: 1\nsettings: {measure: false}\n", 1))
	rn := newRunner(t, r)
	for i := range 100 {
		u := fmt.Sprintf("u%d", i)
		rn.apply(t0, ev(u, "v", "view", t0, 0))
		rn.apply(t0.Add(time.Minute), ev(u, "p", "purchase", t0.Add(time.Second), 1))
		rn.run(u, t0, r.ExposeControl(profile.Limits{}, "phones-coupon", t0), nil)
	}
	if len(rn.tally) != 0 {
		t.Errorf("measured %v", rn.tally)
	}
	if rn.actions == 0 || rn.actions == 100 {
		t.Errorf("%d actions for 100 users at control 0.5", rn.actions)
	}
	if _, err := Parse("rules.yaml", []byte("version: 1\nsettings: {measure: maybe}\n")); err == nil || !strings.Contains(err.Error(), "settings.measure: expected true or false") {
		t.Errorf("Parse = %v", err)
	}
}
