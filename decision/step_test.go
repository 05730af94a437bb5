package decision

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// batch is one call of the step: events processed at now.
type batch struct {
	events []profile.Event
	now    time.Time
}

// run applies the batches in order to one profile and returns every action
// (as "trigger@event-id" with the category payload) and evaluation error.
func run(t *testing.T, r *Rules, p *profile.Profile, batches ...batch) (actions []profile.Action, errs []*EvalError) {
	t.Helper()
	var mu sync.Mutex
	step := r.Step(profile.Limits{}, OnEvalError(func(e *EvalError) {
		mu.Lock()
		defer mu.Unlock()
		errs = append(errs, e)
	}))
	for _, b := range batches {
		out := step(p, b.events, b.now)
		if len(out.Results) != len(b.events) {
			t.Fatalf("%d results for %d events", len(out.Results), len(b.events))
		}
		actions = append(actions, out.Actions...)
	}
	return actions, errs
}

func fired(actions []profile.Action) []string {
	out := make([]string, len(actions))
	for i, a := range actions {
		out[i] = a.TriggerID + "@" + a.EventID
	}
	return out
}

func TestSeedScenario(t *testing.T) {
	r := mustParse(t, seedRules)
	tests := []struct {
		name    string
		batches []batch
		want    []string
	}{
		{
			name:    "fires once across 5 views in 30 minutes",
			batches: []batch{{views("v", "phones", t0, 5*time.Minute, 5), t0.Add(25 * time.Minute)}},
			want:    []string{"category-interest-coupon@v-2"},
		},
		{
			name: "one event per batch",
			batches: func() []batch {
				var bs []batch
				for _, e := range views("v", "phones", t0, 5*time.Minute, 5) {
					bs = append(bs, batch{[]profile.Event{e}, e.OccurredAt.Add(time.Second)})
				}
				return bs
			}(),
			want: []string{"category-interest-coupon@v-2"},
		},
		{
			name: "fires again for another category",
			batches: []batch{
				{views("p", "phones", t0, time.Minute, 3), t0.Add(5 * time.Minute)},
				{views("l", "laptops", t0.Add(10*time.Minute), time.Minute, 4), t0.Add(15 * time.Minute)},
			},
			want: []string{"category-interest-coupon@p-2", "category-interest-coupon@l-2"},
		},
		{
			name: "respects the 24h cooldown, then fires again",
			batches: []batch{
				{views("a", "phones", t0, time.Minute, 3), t0.Add(5 * time.Minute)},
				// 23h later: within the cooldown.
				{views("b", "phones", t0.Add(23*time.Hour), time.Minute, 3), t0.Add(23*time.Hour + 5*time.Minute)},
				// 25h later: the cooldown is over.
				{views("c", "phones", t0.Add(25*time.Hour), time.Minute, 3), t0.Add(25*time.Hour + 5*time.Minute)},
			},
			want: []string{"category-interest-coupon@a-2", "category-interest-coupon@c-2"},
		},
		{
			name: "a late event before the firing is within the cooldown too",
			batches: []batch{
				{views("a", "phones", t0.Add(2*time.Hour), time.Minute, 3), t0.Add(2*time.Hour + 5*time.Minute)},
				{views("late", "phones", t0, time.Minute, 3), t0.Add(2*time.Hour + 6*time.Minute)},
			},
			want: []string{"category-interest-coupon@a-2"},
		},
		{
			name: "views spread over more than 30 minutes do not fire",
			batches: []batch{{
				views("v", "phones", t0, 20*time.Minute, 5), // 0, 20, 40, 60, 80 min: at most 2 per window
				t0.Add(90 * time.Minute),
			}},
		},
		{
			name: "a late event outside the window does not count",
			batches: []batch{
				{[]profile.Event{view("a", "phones", t0.Add(time.Hour)), view("b", "phones", t0.Add(time.Hour+10*time.Minute))}, t0.Add(time.Hour + 11*time.Minute)},
				// Arrives last but happened 70 minutes before b: judged at its
				// own time, its window holds only itself.
				{[]profile.Event{view("late", "phones", t0)}, t0.Add(time.Hour + 12*time.Minute)},
			},
		},
		{
			name: "a late event inside the window completes the count",
			batches: []batch{
				{[]profile.Event{view("a", "phones", t0), view("b", "phones", t0.Add(20*time.Minute))}, t0.Add(21 * time.Minute)},
				// Arrives last, happened between a and b: at its own time only
				// a and itself are in the window, but at b's time all three
				// are, so it fires (as it would have in order, at b); c is
				// then within the cooldown.
				{[]profile.Event{view("late", "phones", t0.Add(10*time.Minute))}, t0.Add(22 * time.Minute)},
				{[]profile.Event{view("c", "phones", t0.Add(25*time.Minute))}, t0.Add(26 * time.Minute)},
			},
			want: []string{"category-interest-coupon@late"},
		},
		{
			name: "views without a category do not fire",
			batches: []batch{
				{views("v", "", t0, time.Minute, 5), t0.Add(10 * time.Minute)},
			},
		},
		{
			name: "other event types do not fire",
			batches: []batch{{[]profile.Event{
				event("c1", "click", t0), event("c2", "click", t0), event("c3", "click", t0),
			}, t0.Add(time.Minute)}},
		},
		{
			name: "rejected events do not fire",
			batches: []batch{
				// Older than the retention (90 days) at processing time.
				{views("old", "phones", t0, time.Minute, 3), t0.Add(100 * 24 * time.Hour)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			actions, errs := run(t, r, &profile.Profile{}, tt.batches...)
			if got := fired(actions); !slices.Equal(got, tt.want) {
				t.Errorf("fired %q, want %q", got, tt.want)
			}
			if len(errs) > 0 {
				t.Errorf("evaluation errors: %v", errs)
			}
		})
	}
}

func TestSeedAction(t *testing.T) {
	r := mustParse(t, seedRules)
	actions, _ := run(t, r, &profile.Profile{}, batch{views("v", "phones", t0, time.Minute, 3), t0.Add(5 * time.Minute)})
	if len(actions) != 1 {
		t.Fatalf("got %d actions, want 1", len(actions))
	}
	want := profile.Action{
		ID:          profile.ActionID("u1", "v-2", "category-interest-coupon"),
		UserID:      "u1",
		TriggerID:   "category-interest-coupon",
		Channel:     "sms",
		Template:    "category_coupon",
		Payload:     map[string]string{"discount": "10%", "category": "phones"},
		TriggeredAt: t0.Add(2 * time.Minute),
		EventID:     "v-2",

		RulesVersion: r.Version(),
	}
	got := actions[0]
	if !maps.Equal(got.Payload, want.Payload) {
		t.Errorf("payload = %v, want %v", got.Payload, want.Payload)
	}
	got.Payload, want.Payload = nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("action = %+v, want %+v", got, want)
	}
}

func TestStepDuplicates(t *testing.T) {
	// No cooldown: only deduplication can stop a re-sent event from firing.
	r := mustParse(t, `version: 1
triggers:
  - id: third-view
    on: [view]
    when: profile.count("view", duration("30m")) == 3
    action: {channel: sms, template: t}
`)
	p := &profile.Profile{}
	vs := views("v", "phones", t0, time.Minute, 3)
	step := r.Step(profile.Limits{})

	out := step(p, vs, t0.Add(5*time.Minute))
	if got := fired(out.Actions); !slices.Equal(got, []string{"third-view@v-2"}) {
		t.Fatalf("first delivery fired %q", got)
	}
	// The whole batch again, as after a producer reconnect, and the firing
	// event twice within one batch.
	for _, events := range [][]profile.Event{vs, {vs[2], vs[2]}} {
		out := step(p, events, t0.Add(6*time.Minute))
		for i, res := range out.Results {
			if res.Status != profile.Duplicate {
				t.Errorf("event %s: %v, want duplicate", events[i].ID, res.Status)
			}
		}
		if len(out.Actions) != 0 {
			t.Errorf("re-delivery fired %q", fired(out.Actions))
		}
	}
	if n := p.Count("view", "", time.Hour, t0.Add(time.Hour)); n != 3 {
		t.Errorf("profile counts %d views, want 3", n)
	}
}

func TestStepRerunIsDeterministic(t *testing.T) {
	// The store re-runs a step on a fresh copy of the profile after a
	// conflict: the outcome must be the same.
	r := mustParse(t, seedRules)
	events := views("v", "phones", t0, time.Minute, 4)
	step := r.Step(profile.Limits{})
	a := step(&profile.Profile{}, events, t0.Add(5*time.Minute))
	b := step(&profile.Profile{}, events, t0.Add(5*time.Minute))
	if !slices.Equal(fired(a.Actions), fired(b.Actions)) || a.Actions[0].ID != b.Actions[0].ID {
		t.Errorf("re-run differs: %q vs %q", fired(a.Actions), fired(b.Actions))
	}
}

func TestStepTriggerSelection(t *testing.T) {
	r := mustParse(t, `version: 1
settings: {max_actions_per_channel: 0} # every trigger's action, to see which fire
triggers:
  - id: any-big
    when: event.value > 100
    action: {channel: push, template: t}
  - id: on-view
    on: [view]
    action: {channel: push, template: t}
  - id: on-click-or-view
    on: [click, view]
    when: "true"
    action: {channel: push, template: t}
  - id: any-second
    when: event.value > 100
    action: {channel: push, template: t}
`)
	tests := []struct {
		name string
		e    profile.Event
		want []string
	}{
		{"view, in file order", profile.Event{ID: "1", Type: "view", Value: 500, OccurredAt: t0},
			[]string{"any-big@1", "on-view@1", "on-click-or-view@1", "any-second@1"}},
		{"click", profile.Event{ID: "2", Type: "click", OccurredAt: t0}, []string{"on-click-or-view@2"}},
		{"type no trigger names", profile.Event{ID: "3", Type: "search", Value: 500, OccurredAt: t0},
			[]string{"any-big@3", "any-second@3"}},
		{"type no trigger names, when false", profile.Event{ID: "4", Type: "search", OccurredAt: t0}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			actions, _ := run(t, r, &profile.Profile{}, batch{[]profile.Event{tt.e}, t0})
			if got := fired(actions); !slices.Equal(got, tt.want) {
				t.Errorf("fired %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStepConsent(t *testing.T) {
	r := mustParse(t, seedRules)
	consent := func(id, typ, channel string, at time.Time) profile.Event {
		e := event(id, typ, at)
		e.Channel = channel
		return e
	}
	tests := []struct {
		name   string
		events []profile.Event
		want   []string
	}{
		{
			name:   "unsubscribed from sms",
			events: append([]profile.Event{consent("u", "unsubscribe", "sms", t0)}, views("v", "phones", t0, time.Minute, 5)...),
		},
		{
			name:   "unsubscribed from everything",
			events: append([]profile.Event{consent("u", "unsubscribe", "all", t0)}, views("v", "phones", t0, time.Minute, 5)...),
		},
		{
			name:   "unsubscribed from push only",
			events: append([]profile.Event{consent("u", "unsubscribe", "push", t0)}, views("v", "phones", t0, time.Minute, 5)...),
			want:   []string{"category-interest-coupon@v-2"},
		},
		{
			name: "subscribed again: the next view fires (no cooldown was spent)",
			events: append(append([]profile.Event{consent("u", "unsubscribe", "sms", t0)}, views("v", "phones", t0, time.Minute, 4)...),
				consent("s", "subscribe", "sms", t0.Add(5*time.Minute)), view("w", "phones", t0.Add(6*time.Minute)), view("x", "phones", t0.Add(7*time.Minute))),
			want: []string{"category-interest-coupon@w"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			actions, _ := run(t, r, &profile.Profile{}, batch{tt.events, t0.Add(10 * time.Minute)})
			if got := fired(actions); !slices.Equal(got, tt.want) {
				t.Errorf("fired %q, want %q", got, tt.want)
			}
		})
	}
}

func TestStepEvaluationErrors(t *testing.T) {
	nested := "[0,1,2,3,4,5,6,7,8,9]"
	expensive := fmt.Sprintf("%[1]s.all(a, %[1]s.all(b, %[1]s.all(c, %[1]s.all(d, a+b+c+d >= 0))))", nested)
	tests := []struct {
		name  string
		rule  string
		field string
	}{
		{
			name:  "payload_expr reads a missing attribute",
			rule:  "    when: 'true'\n    action: {channel: sms, template: t, payload_expr: {coupon: event.attributes.coupon}}\n",
			field: "action.payload_expr.coupon",
		},
		{
			name:  "when compares a missing attribute",
			rule:  "    when: event.attributes[\"tier\"] == \"gold\"\n    action: {channel: sms, template: t}\n",
			field: "when",
		},
		{
			name:  "cooldown_by divides by zero",
			rule:  "    cooldown: 1h\n    cooldown_by: string(1 / (size(event.category) - 6))\n    action: {channel: sms, template: t}\n",
			field: "cooldown_by",
		},
		{
			name:  "negative window",
			rule:  "    when: profile.count(\"view\", duration(\"-1h\")) > 0\n    action: {channel: sms, template: t}\n",
			field: "when",
		},
		{
			name:  "cost limit",
			rule:  "    when: '" + expensive + "'\n    action: {channel: sms, template: t}\n",
			field: "when",
		},
		{
			name:  "payload_expr gives a map at runtime",
			rule:  "    when: 'true'\n    action: {channel: sms, template: t, payload_expr: {a: event.attributes}}\n",
			field: "action.payload_expr.a",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustParse(t, "version: 1\ntriggers:\n  - id: broken\n    on: [view]\n"+tt.rule+
				"  - id: fine\n    on: [view]\n    action: {channel: sms, template: t}\n")
			actions, errs := run(t, r, &profile.Profile{}, batch{[]profile.Event{view("v", "phones", t0)}, t0})
			if got := fired(actions); !slices.Equal(got, []string{"fine@v"}) {
				t.Errorf("fired %q, want only the healthy trigger", got)
			}
			if len(errs) != 1 {
				t.Fatalf("got %d evaluation errors, want 1: %v", len(errs), errs)
			}
			e := errs[0]
			if e.Kind != "trigger" || e.Rule != "broken" || e.Field != tt.field || e.EventID != "v" || e.UserID != "u1" || e.Err == nil {
				t.Errorf("error = %+v, want trigger broken field %s event v", e, tt.field)
			}
		})
	}
}

func TestStepNilRules(t *testing.T) {
	var r *Rules
	out := r.Step(profile.Limits{})(&profile.Profile{}, views("v", "phones", t0, time.Minute, 3), t0.Add(5*time.Minute))
	if !out.Changed || len(out.Actions) != 0 {
		t.Errorf("nil rules: %+v, want events applied and no actions", out)
	}
}

func TestStepProfileFunctions(t *testing.T) {
	// Each expression must hold on the last event of the history below.
	history := []profile.Event{
		{ID: "1", Type: "view", Category: "phones", OccurredAt: t0},
		{ID: "2", Type: "view", Category: "laptops", OccurredAt: t0.Add(time.Minute)},
		{ID: "3", Type: "add_to_cart", Category: "phones", OccurredAt: t0.Add(2 * time.Minute)},
		{ID: "4", Type: "purchase", Value: 120.5, OccurredAt: t0.Add(3 * time.Minute), Attributes: map[string]string{"tz": "Asia/Shanghai"}},
		{ID: "5", Type: "unsubscribe", Channel: "email", OccurredAt: t0.Add(4 * time.Minute)},
		{ID: "6", Type: "view", Category: "phones", ItemID: "sku-1", Channel: "web", Value: 9.5, OccurredAt: t0.Add(5 * time.Minute),
			Attributes: map[string]string{"ref": "mail"}},
	}
	exprs := []string{
		`profile.count("view", duration("1h")) == 3`,
		`profile.count("view", "phones", duration("1h")) == 2`,
		`profile.count("view", "phones", duration("4m")) == 1`,
		`profile.count("view", "", duration("1h")) == 0`,
		`profile.total("view") == 3 && profile.total("search") == 0`,
		`profile.seen_within("purchase", duration("5m")) && !profile.seen_within("purchase", duration("1m"))`,
		`!profile.seen_within("search", duration("24h"))`,
		`profile.last_seen("purchase") > profile.last_seen("add_to_cart")`,
		`profile.last_seen("search") == timestamp("1970-01-01T00:00:00Z")`,
		`profile.purchase_count() == 1 && profile.purchase_value() == 120.5 && profile.purchase_value() > 100`,
		`!profile.consented("email") && profile.consented("sms")`,
		`profile.attr("tz") == "Asia/Shanghai" && profile.attr("nope") == ""`,
		`now == event.occurred_at && now == timestamp("2025-03-01T12:05:00Z")`,
		`event.id == "6" && event.user_id == "u1" && event.type == "view" && event.category == "phones"`,
		`event.item_id == "sku-1" && event.channel == "web" && event.value == 9.5 && event.value > 9`,
		`event.attributes.ref == "mail" && "ref" in event.attributes && !has(event.attributes.tz)`,
		`has(event.category) && "category" in event && size(event) == 9`,
		`event.exists(k, k == "occurred_at") && event["type"] == "view"`,
		`now.getHours() == 12`,
		`event.category.upperAscii() == "PHONES"`,
	}
	for i := range history {
		history[i].UserID = "u1"
	}
	for _, x := range exprs {
		t.Run(x, func(t *testing.T) {
			src := fmt.Sprintf("version: 1\ntriggers:\n  - id: probe\n    when: %q\n    action: {channel: sms, template: t}\n", x)
			r, err := Parse("rules.yaml", []byte(src))
			if err != nil {
				t.Fatal(err)
			}
			actions, errs := run(t, r, &profile.Profile{}, batch{history, t0.Add(10 * time.Minute)})
			if len(errs) > 0 {
				t.Fatalf("evaluation error: %v", errs[0])
			}
			if got := fired(actions); !slices.Contains(got, "probe@6") {
				t.Errorf("false on the last event (fired %q)", got)
			}
		})
	}
}

// TestTriggerHorizon: an event older than settings.trigger_horizon is
// applied and counted, but judges no trigger; a journey's unless still
// hears of it.
func TestTriggerHorizon(t *testing.T) {
	const src = `version: 1
%s
triggers:
  - id: any-view
    on: [view]
    action: {channel: push, template: t}
`
	old := t0.Add(-30 * time.Hour)
	tests := []struct {
		name     string
		settings string
		want     []string
	}{
		{"default 24h: a 30-hour-old view fires nothing", "", nil},
		{"a 2-day horizon judges it", "settings: {trigger_horizon: 2d}", []string{"any-view@old"}},
		{"a 1-hour horizon", "settings: {trigger_horizon: 1h}", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustParse(t, fmt.Sprintf(src, tt.settings))
			var p profile.Profile
			ev := profile.Event{ID: "old", UserID: "u", Type: "view", OccurredAt: old}
			actions, errs := run(t, r, &p, batch{[]profile.Event{ev}, t0})
			if len(errs) > 0 {
				t.Fatalf("evaluation errors: %v", errs)
			}
			if got := fired(actions); !reflect.DeepEqual(got, tt.want) && len(got)+len(tt.want) > 0 {
				t.Errorf("fired %v, want %v", got, tt.want)
			}
			if got := p.Count("view", "", 7*24*time.Hour, t0); got != 1 {
				t.Errorf("the old view counts %d, want 1", got)
			}
		})
	}
	for _, bad := range []string{"0", "-1h", "soon"} {
		if _, err := Parse("r.yaml", fmt.Appendf(nil, src, "settings: {trigger_horizon: "+bad+"}")); err == nil {
			t.Errorf("trigger_horizon %q loaded, want an error", bad)
		}
	}
}
