package decision

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cel.dev/cel-go/common/types"

	"github.com/nudge-dm/nudge/profile"
)

// featureRules are features over every kind of profile function, and
// offers that read them.
const featureRules = `version: 1
features:
  - name: views_24h
    description: Product views in the last 24 hours.
    expr: profile.count("view", duration("24h"))
  - name: views_7d
    expr: profile.count("view", duration("7d"))
  - name: distinct_categories_7d
    expr: profile.distinct("view", "category", duration("7d"))
  - name: days_since_purchase
    expr: profile.days_since("purchase")
  - name: monetary_90d
    expr: profile.monetary(duration("90d"))
  - name: sessions_24h
    expr: profile.sessions(duration("24h"), duration("30m"))
  - name: active_days_7d
    expr: profile.active_days(duration("7d"))
  - name: has_cart
    expr: profile.seen_within("add_to_cart", duration("24h"))
  - name: per_view
    description: Fails for users without views (int division by zero).
    expr: 100 / profile.count("view", duration("24h"))
  - name: avg_order_90d
    description: NaN for users without purchases.
    expr: profile.monetary(duration("90d")) / double(profile.count("purchase", duration("90d")))
offers:
  - id: engaged
    channels: [web]
    when: features.views_24h >= 2.0 && features.has_cart == 1.0
    template: engaged
    payload_expr: {views: features.views_24h}
  - id: fails
    channels: [push]
    when: features.per_view > 0.0
    template: t
  - id: fallback
    channels: [push]
    template: t
`

// shopper's events, relative to now: views of three categories over a
// week, two purchases, a cart.
func shopper(t testing.TB, now time.Time) *profile.Profile {
	at := func(d time.Duration) time.Time { return now.Add(-d) }
	return build(t, now,
		profile.Event{Type: "view", Category: "phones", OccurredAt: at(6 * 24 * time.Hour)},
		profile.Event{Type: "view", Category: "hats", OccurredAt: at(3 * 24 * time.Hour)},
		profile.Event{Type: "purchase", Category: "hats", Value: 40, OccurredAt: at(3*24*time.Hour - time.Minute)},
		profile.Event{Type: "purchase", Category: "shoes", Value: 60, OccurredAt: at(40 * 24 * time.Hour)},
		profile.Event{Type: "view", Category: "laptops", OccurredAt: at(5 * time.Hour)},
		profile.Event{Type: "view", Category: "laptops", OccurredAt: at(2 * time.Hour)},
		profile.Event{Type: "add_to_cart", Category: "laptops", OccurredAt: at(2*time.Hour - 5*time.Minute)},
	)
}

func TestEvalFeatures(t *testing.T) {
	r := mustParse(t, featureRules)
	now := t0
	all := []string{"views_24h", "views_7d", "distinct_categories_7d", "days_since_purchase", "monetary_90d",
		"sessions_24h", "active_days_7d", "has_cart", "per_view", "avg_order_90d"}
	tests := []struct {
		name  string
		p     *profile.Profile
		names []string
		want  []FeatureValue // Err compared by message; "" none
		errs  []string
	}{
		{
			name: "shopper, every feature in file order",
			p:    shopper(t, now),
			want: []FeatureValue{
				{Name: "views_24h", Value: 2},
				{Name: "views_7d", Value: 4},
				{Name: "distinct_categories_7d", Value: 3},
				{Name: "days_since_purchase", Value: 3 - 1.0/(24*60)},
				{Name: "monetary_90d", Value: 100},
				{Name: "sessions_24h", Value: 2},
				{Name: "active_days_7d", Value: 3},
				{Name: "has_cart", Value: 1},
				{Name: "per_view", Value: 50},
				{Name: "avg_order_90d", Value: 50},
			},
		},
		{
			name:  "shopper, named ones in the order asked, again and unknown",
			p:     shopper(t, now),
			names: []string{"has_cart", "views_24h", "nope", "has_cart"},
			want: []FeatureValue{
				{Name: "has_cart", Value: 1},
				{Name: "views_24h", Value: 2},
				{Name: "nope"},
				{Name: "has_cart", Value: 1},
			},
			errs: []string{"", "", `decision: unknown feature: "nope"`, ""},
		},
		{
			name: "a user never seen",
			p:    &profile.Profile{},
			want: []FeatureValue{
				{Name: "views_24h"}, {Name: "views_7d"}, {Name: "distinct_categories_7d"},
				{Name: "days_since_purchase", Value: 36500},
				{Name: "monetary_90d"}, {Name: "sessions_24h"}, {Name: "active_days_7d"}, {Name: "has_cart"},
				{Name: "per_view"}, {Name: "avg_order_90d"},
			},
			errs: []string{"", "", "", "", "", "", "", "",
				"features.per_view: division by zero", "features.avg_order_90d: got NaN, want a finite number"},
		},
		{
			name:  "a nil profile is a user never seen",
			names: []string{"days_since_purchase", "per_view"},
			want:  []FeatureValue{{Name: "days_since_purchase", Value: 36500}, {Name: "per_view"}},
			errs:  []string{"", "features.per_view: division by zero"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []FeatureValue{{Name: "kept"}}
			got := r.EvalFeatures(tt.p, tt.names, now, slices.Clone(prefix))
			if len(got) != 1+len(tt.want) || got[0].Name != "kept" {
				t.Fatalf("got %+v, want %d values after the one given", got, len(tt.want))
			}
			got = got[1:]
			for i, w := range tt.want {
				g := got[i]
				wantErr := ""
				if tt.errs != nil {
					wantErr = tt.errs[i]
				}
				gotErr := ""
				if g.Err != nil {
					gotErr = g.Err.Error()
				}
				if g.Name != w.Name || math.Abs(g.Value-w.Value) > 1e-9 || gotErr != wantErr {
					t.Errorf("%d: got %s = %v (err %q), want %s = %v (err %q)", i, g.Name, g.Value, gotErr, w.Name, w.Value, wantErr)
				}
				if g.Err != nil && g.Value != 0 {
					t.Errorf("%s: value %v with an error", g.Name, g.Value)
				}
			}
		})
	}
	if got := r.EvalFeatures(nil, nil, now, nil); len(got) != len(all) {
		t.Errorf("every feature: %d values, want %d", len(got), len(all))
	}
	vals := r.EvalFeatures(nil, []string{"nope"}, now, nil)
	if !errors.Is(vals[0].Err, ErrUnknownFeature) {
		t.Errorf("unknown feature: %v, want ErrUnknownFeature", vals[0].Err)
	}
}

func TestEvalFeaturesWithoutFeatures(t *testing.T) {
	var nilRules *Rules
	for _, r := range []*Rules{nilRules, mustParse(t, seedRules)} {
		if got := r.EvalFeatures(nil, nil, t0, nil); len(got) != 0 {
			t.Errorf("%v: every feature of none: %+v", r, got)
		}
		got := r.EvalFeatures(&profile.Profile{}, []string{"x"}, t0, nil)
		if len(got) != 1 || got[0].Name != "x" || !errors.Is(got[0].Err, ErrUnknownFeature) {
			t.Errorf("unknown name: %+v", got)
		}
		if f := r.Features(); f != nil {
			t.Errorf("Features() = %+v", f)
		}
	}
}

func TestFeaturesAndCheckFeatures(t *testing.T) {
	r := mustParse(t, featureRules)
	fs := r.Features()
	if len(fs) != 10 || fs[0] != (Feature{Name: "views_24h", Description: "Product views in the last 24 hours.",
		Expr: `profile.count("view", duration("24h"))`}) || fs[9].Name != "avg_order_90d" {
		t.Errorf("Features() = %+v", fs)
	}
	fs[0].Name = "changed"
	if r.Features()[0].Name != "views_24h" {
		t.Error("Features() shares its slice")
	}

	var nilRules *Rules
	tests := []struct {
		name  string
		r     *Rules
		names []string
		want  string // "" for nil
	}{
		{"all known", r, []string{"views_24h", "has_cart", "views_24h"}, ""},
		{"none asked", r, nil, ""},
		{"unknown ones named once each, the defined listed", r, []string{"views_24h", "nope", "Views_24h", "nope"},
			`decision: unknown feature: "nope", "Views_24h" (the rules define views_24h, views_7d, distinct_categories_7d, ` +
				`days_since_purchase, monetary_90d, sessions_24h, active_days_7d, has_cart, per_view, avg_order_90d)`},
		{"rules without features", mustParse(t, seedRules), []string{"x"}, `decision: unknown feature: "x" (the rules define no features)`},
		{"nil rules", nilRules, []string{"x"}, `decision: unknown feature: "x" (the rules define no features)`},
		{"nil rules, none asked", nilRules, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.CheckFeatures(tt.names)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("CheckFeatures: %v", err)
			case tt.want != "" && (err == nil || err.Error() != tt.want || !errors.Is(err, ErrUnknownFeature)):
				t.Errorf("CheckFeatures: %v\nwant %s", err, tt.want)
			}
		})
	}

	// A long list of defined features is cut.
	many := mustParse(t, rulesOf("features", 60, "  - {name: f%d, expr: '1'}\n"))
	if err := many.CheckFeatures([]string{"x"}); err == nil || !strings.HasSuffix(err.Error(), "f48, f49 and 10 more)") {
		t.Errorf("60 features: %v", err)
	}
}

func TestEvalFeaturesConcurrent(t *testing.T) {
	r := mustParse(t, featureRules)
	p := shopper(t, t0)
	want := r.EvalFeatures(p, nil, t0, nil)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			var out []FeatureValue
			for range 100 {
				out = r.EvalFeatures(p, nil, t0, out[:0])
				if !reflect.DeepEqual(out, want) {
					t.Errorf("got %+v, want %+v", out, want)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestOffersReadFeatures(t *testing.T) {
	r := mustParse(t, featureRules)
	p := shopper(t, t0)
	d := r.Decide(p, Request{Channel: "web", Explain: true}, t0)
	if d.Verdict != VerdictSend || d.Offer.ID != "engaged" || d.Offer.Payload["views"] != "2" {
		t.Errorf("web: %v %+v (%q)", d.Verdict, d.Offer, d.Reasons)
	}
	if s := d.Trace[len(d.Trace)-1]; s.Subject != "when: features.views_24h >= 2.0 && features.has_cart == 1.0" || s.Value != "true" {
		t.Errorf("trace %+v", d.Trace)
	}
	// Without views, per_view fails: the offer reading it is skipped
	// with the feature's error.
	d = r.Decide(&profile.Profile{}, Request{Channel: "push"}, t0)
	want := []Reason{
		{"fails", "offer fails skipped: when: features.per_view: division by zero"},
		{"fallback", "offer fallback is eligible"},
	}
	if d.Verdict != VerdictSend || !reflect.DeepEqual(d.Reasons, want) {
		t.Errorf("push: %v %q, want %q", d.Verdict, d.Reasons, want)
	}
	if d := r.Decide(&profile.Profile{}, Request{Channel: "web"}, t0); d.Verdict != VerdictNone {
		t.Errorf("web, new user: %v %+v", d.Verdict, d.Offer)
	}
}

// A feature read several times in a decision is evaluated once: the
// decision's activation remembers it.
func TestOfferFeaturesAreMemoized(t *testing.T) {
	r := mustParse(t, featureRules)
	vars := &offerVars{profile: &profileVal{p: shopper(t, t0), now: t0}, now: types.Timestamp{Time: t0}, rules: r}
	a, ok := vars.ResolveName("features.views_24h")
	if !ok || a != types.Double(2) {
		t.Fatalf("features.views_24h = %v, %v", a, ok)
	}
	vars.profile = &profileVal{p: &profile.Profile{}, now: t0} // what a second evaluation would see
	if b, _ := vars.ResolveName("features.views_24h"); b != a {
		t.Errorf("evaluated again: %v", b)
	}
	if _, ok := vars.ResolveName("features.nope"); ok {
		t.Error("features.nope resolved")
	}
	if _, ok := (&offerVars{}).ResolveName("features.views_24h"); ok {
		t.Error("resolved without rules")
	}
}

func TestFeatureParseErrors(t *testing.T) {
	const offer = "offers:\n  - id: o\n    template: t\n"
	tests := []struct {
		name string
		src  string
		want RuleError // Msg: part of the message
	}{
		{
			name: "features not a list",
			src:  "version: 1\nfeatures: {name: x}\n",
			want: RuleError{Line: 2, Field: "features", Msg: "expected a list, got a mapping"},
		},
		{
			name: "a feature not a mapping",
			src:  "version: 1\nfeatures:\n  - views\n",
			want: RuleError{Line: 3, Kind: "feature", Msg: "expected a mapping, got a scalar"},
		},
		{
			name: "unknown field",
			src:  "version: 1\nfeatures:\n  - name: x\n    expr: '1'\n    when: 'true'\n",
			want: RuleError{Line: 5, Kind: "feature", Rule: "x", Msg: `unknown field "when" (known fields: name, description, expr)`},
		},
		{
			name: "name missing",
			src:  "version: 1\nfeatures:\n  - expr: '1'\n",
			want: RuleError{Line: 3, Kind: "feature", Field: "name", Msg: "required"},
		},
		{
			name: "name with capitals",
			src:  "version: 1\nfeatures:\n  - name: Views7d\n    expr: '1'\n",
			want: RuleError{Line: 3, Kind: "feature", Rule: "Views7d", Field: "name", Msg: "must match ^[a-z][a-z0-9_]{0,63}$"},
		},
		{
			name: "name with a dash",
			src:  "version: 1\nfeatures:\n  - name: views-7d\n    expr: '1'\n",
			want: RuleError{Line: 3, Kind: "feature", Rule: "views-7d", Field: "name", Msg: "must match"},
		},
		{
			name: "name too long",
			src:  "version: 1\nfeatures:\n  - name: a" + strings.Repeat("b", 64) + "\n    expr: '1'\n",
			want: RuleError{Line: 3, Kind: "feature", Rule: "a" + strings.Repeat("b", 64), Field: "name", Msg: "must match"},
		},
		{
			name: "name a CEL keyword",
			src:  "version: 1\nfeatures:\n  - name: in\n    expr: '1'\n",
			want: RuleError{Line: 3, Kind: "feature", Rule: "in", Field: "name", Msg: `"in" is a CEL keyword: offers could not read features.in`},
		},
		{
			name: "duplicate name",
			src:  "version: 1\nfeatures:\n  - name: x\n    expr: '1'\n  - name: y\n    expr: '2'\n  - name: x\n    expr: '3'\n",
			want: RuleError{Line: 7, Kind: "feature", Rule: "x", Field: "name", Msg: "duplicate feature name (first defined on line 3)"},
		},
		{
			name: "expr missing",
			src:  "version: 1\nfeatures:\n  - name: x\n    description: nothing\n",
			want: RuleError{Line: 3, Kind: "feature", Rule: "x", Field: "expr", Msg: "required"},
		},
		{
			name: "a string feature",
			src:  "version: 1\nfeatures:\n  - name: tz\n    expr: profile.attr(\"tz\")\n",
			want: RuleError{Line: 4, Kind: "feature", Rule: "tz", Field: "expr",
				Msg: "must be a number (int, uint or double) or a bool (1 or 0), but its type is string"},
		},
		{
			name: "a list feature",
			src:  "version: 1\nfeatures:\n  - name: x\n    expr: '[1, 2]'\n",
			want: RuleError{Line: 4, Kind: "feature", Rule: "x", Field: "expr", Msg: "but its type is list(int)"},
		},
		{
			name: "a duration feature",
			src:  "version: 1\nfeatures:\n  - name: since_purchase\n    expr: profile.since(\"purchase\")\n",
			want: RuleError{Line: 4, Kind: "feature", Rule: "since_purchase", Field: "expr", Msg: "but its type is duration"},
		},
		{
			name: "a dyn feature",
			src:  "version: 1\nfeatures:\n  - name: x\n    expr: dyn(1)\n",
			want: RuleError{Line: 4, Kind: "feature", Rule: "x", Field: "expr", Msg: "but its type is dyn (convert it: double(...))"},
		},
		{
			name: "a feature reads no request",
			src:  "version: 1\nfeatures:\n  - name: x\n    expr: 'channel == \"sms\"'\n",
			want: RuleError{Line: 4, Kind: "feature", Rule: "x", Field: "expr", Msg: "undeclared reference to 'channel'"},
		},
		{
			name: "a feature reads no other feature",
			src:  "version: 1\nfeatures:\n  - name: x\n    expr: '1'\n  - name: y\n    expr: features.x + 1.0\n",
			want: RuleError{Line: 6, Kind: "feature", Rule: "y", Field: "expr", Msg: "undeclared reference to 'features"},
		},
		{
			name: "an offer reads an unknown feature",
			src:  "version: 1\nfeatures:\n  - name: views_7d\n    expr: profile.count(\"view\", duration(\"7d\"))\n" + offer + "    when: features.view_7d > 1.0\n",
			want: RuleError{Line: 8, Kind: "offer", Rule: "o", Field: "when", Msg: "undeclared reference to 'features.view_7d' (did you mean 'features.views_7d'?)"},
		},
		{
			name: "an offer reads a feature of a file without features",
			src:  "version: 1\n" + offer + "    payload_expr: {v: features.x}\n",
			want: RuleError{Line: 5, Kind: "offer", Rule: "o", Field: "payload_expr.v", Msg: "undeclared reference to 'features"},
		},
		{
			name: "a trigger reads no feature",
			src:  "version: 1\nfeatures:\n  - name: x\n    expr: '1'\ntriggers:\n  - id: t\n    when: features.x > 0.0\n    action: {channel: sms, template: t}\n",
			want: RuleError{Line: 7, Kind: "trigger", Rule: "t", Field: "when", Msg: "undeclared reference to 'features"},
		},
		{
			name: "distinct of another field, in a feature",
			src:  "version: 1\nfeatures:\n  - name: x\n    expr: profile.distinct(\"view\", \"item_id\", duration(\"7d\"))\n",
			want: RuleError{Line: 4, Kind: "feature", Rule: "x", Field: "expr",
				Msg: `profile.distinct: field "item_id" is not supported (only "category": the profile counts events per type and category)`},
		},
		{
			name: "distinct of another field, in a trigger",
			src:  "version: 1\ntriggers:\n  - id: t\n    on: [view]\n    when: profile.distinct(\"view\", \"type\", duration(\"1h\")) > 2\n    action: {channel: sms, template: t}\n",
			want: RuleError{Line: 5, Kind: "trigger", Rule: "t", Field: "when", Msg: `profile.distinct: field "type" is not supported`},
		},
		{
			name: "score not a number",
			src:  "version: 1\n" + offer + "    score: '\"high\"'\n",
			want: RuleError{Line: 5, Kind: "offer", Rule: "o", Field: "score", Msg: "must be a number (double or int), but its type is string"},
		},
		{
			name: "score with thompson",
			src:  "version: 1\n" + offer + "    select: thompson\n    score: '1'\n",
			want: RuleError{Line: 6, Kind: "offer", Rule: "o", Field: "score", Msg: "cannot be used with select: thompson"},
		},
		{
			name: "too many features",
			src:  rulesOf("features", 4, "  - {name: f%d, expr: '1'}\n"),
			want: RuleError{Line: 6, Field: "features", Msg: "the file has 4 features, over the limit of 3 (max_features) from this one on"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("rules.yaml", []byte(tt.src), WithLimits(Limits{MaxFeatures: 3}))
			if !errors.Is(err, ErrInvalidRules) {
				t.Fatalf("Parse: %v, want ErrInvalidRules", err)
			}
			w := tt.want
			for _, re := range ruleErrors(err) {
				if re.Line == w.Line && re.Kind == w.Kind && re.Rule == w.Rule && re.Field == w.Field && strings.Contains(re.Msg, w.Msg) {
					return
				}
			}
			t.Errorf("no problem is %+v:\n%v", w, err)
		})
	}
}

// A feature whose expression is wrong is reported once, where it is
// defined, not again in the offers that read it.
func TestBadFeatureReportedOnce(t *testing.T) {
	_, err := Parse("rules.yaml", []byte(`version: 1
features:
  - name: x
    expr: profile.attr("tz")
offers:
  - {id: o, when: features.x > 1.0, template: t}
`))
	if errs := ruleErrors(err); len(errs) != 1 || errs[0].Kind != kindFeature || errs[0].Line != 4 {
		t.Errorf("got %v, want one problem on line 4", err)
	}
}

func TestDecideScore(t *testing.T) {
	const rules = `version: 1
features:
  - name: phone_views
    expr: profile.count("view", "phones", duration("24h"))
  - name: hat_views
    expr: profile.count("view", "hats", duration("24h"))
offers:
  - {id: top, priority: 10, channels: [vip], template: t}
  - {id: plain, priority: 5, template: t}
  - {id: phones, priority: 5, score: features.phone_views, template: t}
  - {id: hats, priority: 5, score: 'features.hat_views * 1.5', template: t}
  - {id: broken, priority: 5, channels: [push], score: '1 / (profile.count("view", duration("1h")) - 1)', template: t}
  - {id: tie, priority: 5, channels: [web], score: '3', template: t}
  - {id: closed, priority: 5, when: 'false', score: '1000', template: t}
  - {id: low, priority: 1, score: '1000', template: t}
`
	r := mustParse(t, rules)
	at := func(d time.Duration) time.Time { return t0.Add(-d) }
	tests := []struct {
		name    string
		events  []profile.Event
		channel string
		want    string
		reasons []Reason
	}{
		{
			name:    "priority first: a higher priority wins whatever the scores",
			channel: "vip",
			want:    "top",
			reasons: []Reason{{"top", "offer top is eligible"}},
		},
		{
			name:    "the best score among the offers with one",
			events:  append(views("p", "phones", at(time.Hour), time.Minute, 4), views("h", "hats", at(2*time.Hour), time.Minute, 2)...),
			channel: "sms",
			want:    "phones",
			reasons: []Reason{{"phones", "offer phones ranked first by score: phones 4, hats 3"}, {"phones", "offer phones is eligible"}},
		},
		{
			name:    "a score beats the offers without one, even 0",
			channel: "sms",
			want:    "phones",
			reasons: []Reason{{"phones", "offer phones ranked first by score: phones 0, hats 0"}, {"phones", "offer phones is eligible"}},
		},
		{
			name:    "ties in file order",
			events:  views("p", "phones", at(time.Hour), time.Minute, 3),
			channel: "web",
			want:    "phones",
			reasons: []Reason{{"phones", "offer phones ranked first by score: phones 3, hats 0, tie 3"}, {"phones", "offer phones is eligible"}},
		},
		{
			name:    "a score that fails skips its offer, with a reason",
			events:  []profile.Event{view("v", "", at(30*time.Minute))},
			channel: "push",
			want:    "phones",
			reasons: []Reason{
				{"broken", "offer broken skipped: score: division by zero"},
				{"phones", "offer phones ranked first by score: phones 0, hats 0"},
				{"phones", "offer phones is eligible"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := build(t, t0, tt.events...)
			d := r.Decide(p, Request{Channel: tt.channel}, t0)
			if d.Verdict != VerdictSend || d.Offer.ID != tt.want || !reflect.DeepEqual(d.Reasons, tt.reasons) {
				t.Errorf("got %v %+v %q\nwant %s %q", d.Verdict, d.Offer, d.Reasons, tt.want, tt.reasons)
			}
		})
	}

	// Without any scored offer eligible, the others compete in file
	// order.
	only := mustParse(t, `version: 1
offers:
  - {id: a, when: 'false', score: '1', template: t}
  - {id: b, template: t}
  - {id: c, score: '1', template: t, channels: [web]}
`)
	if d := only.Decide(nil, Request{Channel: "sms"}, t0); d.Offer == nil || d.Offer.ID != "b" || len(d.Reasons) != 1 {
		t.Errorf("no scored offer eligible: %+v", d)
	}
}

func TestDecideScoreTrace(t *testing.T) {
	r := mustParse(t, `version: 1
offers:
  - {id: a, score: 'double(profile.count("view", duration("1h"))) * 0.5', template: t}
  - {id: b, when: 'true', score: '1 / profile.count("view", duration("1h"))', template: t}
  - {id: c, score: 'double(profile.count("view", duration("1h"))) / 0.0', template: t}
`)
	d := r.Decide(build(t, t0, view("v", "x", t0.Add(-time.Minute))), Request{Channel: "sms", Explain: true}, t0)
	var got []string
	for _, s := range d.Trace {
		got = append(got, fmt.Sprintf("%s | %s | %s | %v", s.RuleID, s.Subject, s.Value, s.Passed))
	}
	want := []string{
		"consent | consent to sms | granted | true",
		"a | when: (none, always eligible) | true | true",
		`a | score: double(profile.count("view", duration("1h"))) * 0.5 | 0.5 | true`,
		`b | when: true | true | true`,
		`b | score: 1 / profile.count("view", duration("1h")) | 1 | true`,
		"c | when: (none, always eligible) | true | true",
		`c | score: double(profile.count("view", duration("1h"))) / 0.0 | error: got +Inf, want a finite number | false`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("trace\n got %q\nwant %q", got, want)
	}
	if d.Offer == nil || d.Offer.ID != "b" {
		t.Errorf("winner %+v", d.Offer)
	}
	if !slices.Contains(d.Reasons, Reason{"c", "offer c skipped: score: got +Inf, want a finite number"}) {
		t.Errorf("reasons %q", d.Reasons)
	}
}

// duration() takes days, as rules-file durations do.
func TestDurationDays(t *testing.T) {
	r := mustParse(t, `version: 1
features:
  - name: week
    expr: duration("7d") == duration("168h") && duration("1.5d") == duration("36h") && duration("-1d") == duration("-24h")
  - name: views_7d
    expr: profile.count("view", duration("7d"))
triggers:
  - id: t
    on: [view]
    when: profile.count("view", duration("2d")) >= 2 && duration("1d12h") == duration("36h")
    action: {channel: sms, template: t}
offers:
  - {id: o, when: 'profile.seen_within("view", duration("1d"))', template: t}
`)
	vals := r.EvalFeatures(nil, []string{"week"}, t0, nil)
	if vals[0].Value != 1 || vals[0].Err != nil {
		t.Errorf("week: %+v", vals[0])
	}
	p := build(t, t0, view("a", "", t0.Add(-20*time.Hour)), view("b", "", t0.Add(-time.Hour)))
	if got := r.EvalFeatures(p, []string{"views_7d"}, t0, nil); got[0].Value != 2 {
		t.Errorf("views_7d = %+v", got[0])
	}
	if d := r.Decide(p, Request{Channel: "sms"}, t0); d.Offer == nil {
		t.Errorf("offer: %q", d.Reasons)
	}
	if lb := r.byID["t"].lookback; lb != maxLookback {
		t.Errorf("lookback of a when over 2d: %v, want %v", lb, maxLookback)
	}

	// A malformed literal is still reported where it is.
	for _, src := range []string{`duration("7dd")`, `duration("7w")`, `duration("d")`} {
		_, err := Parse("rules.yaml", []byte("version: 1\noffers:\n  - id: o\n    template: t\n    when: profile.seen_within(\"view\", "+src+")\n"))
		if err == nil || !strings.Contains(err.Error(), "offer \"o\": when: ERROR: <input>:1:38: invalid duration argument") {
			t.Errorf("%s: %v", src, err)
		}
	}
}

func TestLookbackReadsDays(t *testing.T) {
	for src, want := range map[string]time.Duration{
		`profile.count("view", duration("30m")) > 1`:                                 30 * time.Minute,
		`profile.count("view", duration("0.5d")) > 1`:                                12 * time.Hour,
		`profile.count("view", duration("7d")) > 1`:                                  maxLookback,
		`profile.count("view", duration("2h")) > profile.count("x", duration("1d"))`: 24 * time.Hour,
		`true`: 0,
	} {
		if got := lookback(src); got != want {
			t.Errorf("lookback(%s) = %v, want %v", src, got, want)
		}
	}
}

// The profile functions of features, on a profile built from events.
func TestFeatureProfileFunctions(t *testing.T) {
	env, err := envs()
	if err != nil {
		t.Fatal(err)
	}
	now := t0
	at := func(d time.Duration) time.Time { return now.Add(-d) }
	p := build(t, now,
		profile.Event{Type: "purchase", Category: "hats", Value: 20, OccurredAt: at(50 * 24 * time.Hour)},
		profile.Event{Type: "purchase", Category: "hats", Value: 30, OccurredAt: at(5 * 24 * time.Hour)},
		profile.Event{Type: "purchase", Category: "shoes", Value: 12.5, OccurredAt: at(2 * time.Hour)},
		profile.Event{Type: "refund", Category: "hats", Value: 30, OccurredAt: at(time.Hour)},
		profile.Event{Type: "view", Category: "hats", OccurredAt: at(3 * time.Hour)},
		profile.Event{Type: "view", Category: "shoes", OccurredAt: at(2*time.Hour + 10*time.Minute)},
		profile.Event{Type: "view", OccurredAt: at(2 * time.Hour)},
		profile.Event{Type: "view", Category: "shoes", OccurredAt: at(10 * time.Minute)},
	)
	vars := &featureVars{pv: profileVal{p: p, now: now}, now: types.Timestamp{Time: now}}
	tests := []struct{ src, want string }{
		{`profile.sum("purchase", duration("24h"))`, "12.5"},
		{`profile.sum("purchase", duration("7d"))`, "42.5"},
		{`profile.sum("purchase", duration("90d"))`, "62.5"},
		{`profile.sum("purchase", "hats", duration("90d"))`, "50"},
		{`profile.sum("purchase", "", duration("90d"))`, "0"},
		{`profile.sum("view", duration("24h"))`, "0"},
		{`profile.sum("purchase", duration("-1h"))`, "error: sum: negative window -1h0m0s"},
		{`profile.monetary(duration("90d"))`, "62.5"},
		{`profile.monetary(duration("7d")) - profile.sum("refund", duration("7d"))`, "12.5"},
		{`profile.monetary(duration("1h"))`, "0"},
		{`profile.monetary(duration("-1s"))`, "error: monetary: negative window -1s"},
		{`profile.distinct("view", "category", duration("24h"))`, "2"},
		{`profile.distinct("view", "category", duration("1h"))`, "1"},
		{`profile.distinct("purchase", "category", duration("90d"))`, "2"},
		{`profile.distinct("click", "category", duration("90d"))`, "0"},
		{`profile.distinct("view", ["category", "item_id"][1], duration("1h"))`,
			`error: distinct: field "item_id" is not supported (only "category": the profile counts events per type and category)`},
		{`profile.distinct("view", "category", duration("-1h"))`, "error: distinct: negative window -1h0m0s"},
		{`profile.sessions(duration("24h"), duration("45m"))`, "4"},
		{`profile.sessions(duration("24h"), duration("2h"))`, "1"},
		{`profile.sessions(duration("50m"), duration("30m"))`, "1"},
		{`profile.sessions(duration("24h"), duration("0s"))`, "error: sessions: the gap must be positive, got 0s"},
		{`profile.sessions(duration("-1h"), duration("1m"))`, "error: sessions: negative window -1h0m0s"},
		{`profile.active_days(duration("24h"))`, "1"},
		{`profile.active_days(duration("7d"))`, "2"},
		{`profile.active_days(duration("90d"))`, "3"},
		{`profile.active_days(duration("-1h"))`, "error: active_days: negative window -1h0m0s"},
		{`profile.days_since("purchase")`, fmt.Sprint(2.0 / 24)},
		{`profile.days_since("view") < 10.5 / (24.0 * 60.0)`, "true"},
		{`profile.days_since("wishlist")`, "36500"},
	}
	for _, tt := range tests {
		got, err := evalDoc(env.feature, tt.src, vars)
		if err != nil {
			got = "error: " + err.Error()
		}
		if got != tt.want {
			t.Errorf("%s = %s, want %s", tt.src, got, tt.want)
		}
	}
	// A future event: 0 days since, not negative.
	future := build(t, now, profile.Event{Type: "login", OccurredAt: now.Add(time.Minute)})
	vars.pv.p = future
	if got, err := evalDoc(env.feature, `profile.days_since("login")`, vars); got != "0" || err != nil {
		t.Errorf("days_since of a later event: %s %v", got, err)
	}
}

func BenchmarkEvalFeatures(b *testing.B) {
	r := mustParse(b, featureRules)
	p := shopper(b, t0)
	names := []string{"views_24h", "days_since_purchase", "has_cart", "views_7d"}
	var out []FeatureValue
	b.ReportAllocs()
	for b.Loop() {
		out = r.EvalFeatures(p, names, t0, out[:0])
	}
}
