package rulestest_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/internal/rulestest"
	"github.com/nudge-dm/nudge/profile"
)

// rulesYAML: two views within 30 minutes fire an sms; a cart starts a
// one-hour journey; sms and web offers; quiet hours at night on sms.
const rulesYAML = `version: 1
policies:
  quiet_hours:
    - id: night
      channels: [sms]
      from: "21:00"
      to: "08:00"
triggers:
  - id: viewed-twice
    on: [view]
    when: profile.count("view", duration("30m")) >= 2
    cooldown: 1h
    action: {channel: sms, template: view_nudge, payload_expr: {category: event.category}}
  - id: cart-abandoned
    on: [add_to_cart]
    wait: 1h
    unless: [purchase]
    action: {channel: push, template: cart_reminder}
offers:
  - id: phones-coupon
    priority: 10
    channels: [sms]
    when: profile.count("view", "phones", duration("24h")) >= 2
    template: phones_coupon
  - id: web-welcome
    channels: [web]
    template: welcome
`

var t0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

func parse(t *testing.T, src string) *decision.Rules {
	t.Helper()
	r, err := decision.Parse("rules.yaml", []byte(src))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	return r
}

func view(id string, at time.Time) profile.Event {
	return profile.Event{ID: id, UserID: "u1", Type: "view", Category: "phones", OccurredAt: at}
}

func verdicts(rep rulestest.Report) string {
	var b strings.Builder
	for _, cd := range rep.Decisions {
		fmt.Fprintf(&b, "%s=%s ", cd.Channel, cd.Decision.Verdict)
		if cd.Decision.Offer != nil {
			fmt.Fprintf(&b, "%s ", cd.Decision.Offer.ID)
		}
	}
	return strings.TrimSpace(b.String())
}

func TestRun(t *testing.T) {
	rules := parse(t, rulesYAML)
	second := view("e2", t0)
	cart := profile.Event{ID: "c1", UserID: "u1", Type: "add_to_cart", OccurredAt: t0}
	tests := []struct {
		name        string
		in          rulestest.Input
		wantStatus  profile.Status // 0: no event
		wantActions []string       // trigger ids
		wantTimers  []string
		wantLater   []string // "trigger@hh:mm"
		wantVerdict string
	}{
		{"a second view fires the sms trigger and the sms offer",
			rulestest.Input{History: []profile.Event{view("e1", t0.Add(-10*time.Minute))}, Event: &second},
			profile.Applied, []string{"viewed-twice"}, nil, nil, "push=none sms=send phones-coupon web=send web-welcome"},
		{"a first view fires nothing",
			rulestest.Input{Event: &second},
			profile.Applied, nil, nil, nil, "push=none sms=none web=send web-welcome"},
		{"a duplicate of the history changes nothing",
			rulestest.Input{History: []profile.Event{view("e2", t0)}, Event: &second},
			profile.Duplicate, nil, nil, nil, "push=none sms=none web=send web-welcome"},
		{"a cart schedules the journey, which fires an hour later",
			rulestest.Input{Event: &cart, Channels: []string{"push"}},
			profile.Applied, nil, []string{"cart-abandoned"}, []string{"cart-abandoned@13:00"}, "push=none"},
		{"no event: decisions on the history's profile at its latest time",
			rulestest.Input{History: []profile.Event{view("e1", t0.Add(-10*time.Minute)), view("e2", t0)}, Channels: []string{"sms"}},
			0, nil, nil, nil, "sms=send phones-coupon"},
		{"at night the sms offer is held, and the history's sms trigger deferred",
			rulestest.Input{History: []profile.Event{view("e1", t0.Add(-10*time.Minute)), view("e2", t0)}, Channels: []string{"sms"},
				Now: time.Date(2026, 11, 24, 22, 0, 0, 0, time.UTC)},
			0, nil, []string{"viewed-twice"}, []string{"viewed-twice@08:00"}, "sms=hold phones-coupon"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := rulestest.Run(rules, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if rep.UserID != "u1" || rep.RulesVersion != rules.Version() {
				t.Errorf("user %q, version %q", rep.UserID, rep.RulesVersion)
			}
			switch {
			case tt.wantStatus == 0 && rep.Event != nil:
				t.Errorf("event result %+v without an event", rep.Event)
			case tt.wantStatus != 0 && (rep.Event == nil || rep.Event.Status != tt.wantStatus):
				t.Errorf("event result %+v, want %s", rep.Event, tt.wantStatus)
			}
			if len(rep.History) != len(tt.in.History) {
				t.Errorf("%d history results for %d events", len(rep.History), len(tt.in.History))
			}
			var actions, timers, later []string
			for _, a := range rep.Actions {
				actions = append(actions, a.TriggerID)
			}
			for _, tm := range rep.Timers {
				timers = append(timers, tm.Trigger)
			}
			for _, f := range rep.Later {
				for _, a := range f.Actions {
					later = append(later, a.TriggerID+"@"+f.At.Format("15:04"))
				}
			}
			if !slices.Equal(actions, tt.wantActions) || !slices.Equal(timers, tt.wantTimers) || !slices.Equal(later, tt.wantLater) {
				t.Errorf("actions %v, timers %v, later %v; want %v, %v, %v", actions, timers, later, tt.wantActions, tt.wantTimers, tt.wantLater)
			}
			if got := verdicts(rep); got != tt.wantVerdict {
				t.Errorf("decisions %q, want %q", got, tt.wantVerdict)
			}
			for _, cd := range rep.Decisions {
				if len(cd.Decision.Trace) == 0 || cd.Decision.Trace[0].RuleID != "consent" {
					t.Errorf("decision on %s without its explain trace: %+v", cd.Channel, cd.Decision.Trace)
				}
			}
		})
	}
}

// TestRunDefaults: the channels default to every channel the rules name,
// the time to the event's.
func TestRunDefaults(t *testing.T) {
	rules := parse(t, rulesYAML)
	e := view("e1", t0)
	rep, err := rulestest.Run(rules, rulestest.Input{Event: &e})
	if err != nil {
		t.Fatal(err)
	}
	var chs []string
	for _, cd := range rep.Decisions {
		chs = append(chs, cd.Channel)
	}
	if want := rules.Channels(); !slices.Equal(chs, want) || !slices.Contains(chs, "push") {
		t.Errorf("channels %v, want %v", chs, want)
	}
	if !rep.Now.Equal(t0) {
		t.Errorf("now %v, want the event's %v", rep.Now, t0)
	}
	if rep.Profile == nil || rep.Profile.UserID != "u1" || rep.Profile.Totals["view"] != 1 {
		t.Errorf("profile %+v", rep.Profile)
	}
}

// TestRunStartingProfile: Run starts from the profile given, and leaves
// it as it was.
func TestRunStartingProfile(t *testing.T) {
	rules := parse(t, rulesYAML)
	start := &profile.Profile{}
	step := rules.Step(profile.Limits{})
	step(start, []profile.Event{view("e1", t0.Add(-10*time.Minute))}, t0.Add(-10*time.Minute))
	start.Version = 7
	before := profile.Encode(start)

	second := view("e2", t0)
	rep, err := rulestest.Run(rules, rulestest.Input{UserID: "u1", Profile: start, Event: &second, Channels: []string{"sms"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Actions) != 1 || rep.Actions[0].TriggerID != "viewed-twice" || rep.Actions[0].UserID != "u1" {
		t.Errorf("actions %+v, want viewed-twice for u1: the stored view counts", rep.Actions)
	}
	if got := verdicts(rep); got != "sms=send phones-coupon" {
		t.Errorf("decisions %q", got)
	}
	if rep.Profile.Totals["view"] != 2 {
		t.Errorf("profile totals %v, want 2 views", rep.Profile.Totals)
	}
	if after := profile.Encode(start); string(after) != string(before) {
		t.Error("Run modified the starting profile")
	}
	// The starting profile does not have the event: a second run
	// applies it again.
	again, err := rulestest.Run(rules, rulestest.Input{UserID: "u1", Profile: start, Event: &second, Channels: []string{"sms"}})
	if err != nil || again.Event.Status != profile.Applied || len(again.Actions) != 1 {
		t.Errorf("second run: %v %+v", err, again.Event)
	}
}

func TestRunOtherUser(t *testing.T) {
	rules := parse(t, rulesYAML)
	mine, theirs := view("e1", t0), view("e2", t0)
	theirs.UserID = "u2"
	tests := []struct {
		name  string
		in    rulestest.Input
		index int
	}{
		{"history", rulestest.Input{History: []profile.Event{mine, theirs}}, 1},
		{"event", rulestest.Input{UserID: "u1", History: []profile.Event{mine}, Event: &theirs}, -1},
		{"history, the user the event's", rulestest.Input{History: []profile.Event{mine}, Event: &theirs}, 0},
		{"the user named", rulestest.Input{UserID: "u3", History: []profile.Event{mine}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := rulestest.Run(rules, tt.in)
			var ou *rulestest.OtherUserError
			if !errors.As(err, &ou) || ou.Index != tt.index {
				t.Fatalf("got %v, want an OtherUserError at %d", err, tt.index)
			}
		})
	}
}

// TestRunTruncates: Later stops at MaxFirings, and says so.
func TestRunTruncates(t *testing.T) {
	// A journey has at most 17 steps: 20 journeys of 17 steps started
	// by one event make 340 firings.
	var b strings.Builder
	b.WriteString("version: 1\ntriggers:\n")
	for i := range 20 {
		fmt.Fprintf(&b, "  - id: t%d\n    on: [view]\n    wait: %dm\n    action: {channel: push, template: x}\n    then:\n", i, i+1)
		for j := range 16 {
			fmt.Fprintf(&b, "      - id: t%d-%d\n        wait: 1h\n        action: {channel: push, template: x}\n", i, j)
		}
	}
	rules := parse(t, b.String())
	e := view("e1", t0)
	rep, err := rulestest.Run(rules, rulestest.Input{Event: &e, Channels: []string{"push"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Later) != rulestest.MaxFirings || !rep.Truncated {
		t.Errorf("%d firings, truncated %v; want %d, true", len(rep.Later), rep.Truncated, rulestest.MaxFirings)
	}
}

func TestProblems(t *testing.T) {
	_, err := decision.Parse("playground.yaml", []byte(`version: 1
triggers:
  - id: ok
    on: [view]
    action: {channel: sms, template: t}
  - id: bad
    when: event.type ==
    action: {channel: sms, template: t}
offers:
  - id: Bad-Id
    template: t
`))
	if !errors.Is(err, decision.ErrInvalidRules) {
		t.Fatalf("parse: %v", err)
	}
	ps := rulestest.Problems(err)
	if len(ps) != 2 {
		t.Fatalf("problems %+v, want 2", ps)
	}
	when := ps[0]
	if when.Line != 7 || when.Kind != "trigger" || when.Rule != "bad" || when.Field != "when" || when.Msg == "" ||
		!strings.HasPrefix(when.Text, `playground.yaml:7: trigger "bad": when: `) {
		t.Errorf("first problem %+v, want the when of line 7", when)
	}
	if ps[1].Line != 10 || ps[1].Kind != "offer" {
		t.Errorf("second problem %+v, want the offer id of line 10", ps[1])
	}

	_, err = decision.Parse("playground.yaml", []byte("version: 1\ntriggers: [\n"))
	if ps := rulestest.Problems(err); len(ps) != 1 || ps[0].Line != 0 || !strings.Contains(ps[0].Msg, "line") {
		t.Errorf("YAML syntax error: %+v", ps)
	}
	if ps := rulestest.Problems(nil); ps != nil {
		t.Errorf("no error: %+v", ps)
	}
}
