package decision

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
)

// fuzzLimits keep each execution of FuzzParse cheap: an input over 8 KiB
// is refused at once (the size limit is under test too), and none
// compiles more than 32 expressions, each a fraction of a millisecond.
var fuzzLimits = Limits{MaxBytes: 8 << 10, MaxExpressions: 32}

// FuzzParse checks that no rules file makes Parse, or the rules it
// accepts, panic, and that every rejection is what Parse promises: an
// ErrInvalidRules made of *RuleError problems, each naming the file, a
// line of it (or 0) and a known rule kind, at most maxReportedErrors of
// them plus one summary.
func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("../examples/rules.yaml"); err == nil {
		f.Add(data)
		f.Add(withoutComments(data)) // under fuzzLimits.MaxBytes
	}
	f.Add([]byte(seedRules))
	f.Add([]byte(offerRules))
	f.Add([]byte(policyRules))
	f.Add([]byte("version: 1\npolicies:\n  quiet_hours: [{id: q, channels: [sms], from: \"23:59\", to: \"00:00\"}]\noffers: [{id: o, ab: {control: 0.5}, template: t}]\n"))
	f.Add([]byte("version: 1\nsettings: {default_timezone: Pacific/Chatham}\nfallbacks: {web: {offer_id: w, template: t}}\n"))
	f.Add([]byte("version: 1\ntriggers:\n  - id: x\n    when: evnt.x\n"))
	f.Add([]byte("version: 1\ntriggers: &a [*a]\n"))
	f.Add([]byte("version: 1\noffers:\n  - {id: o, template: t, payload_expr: {a: 'context.a + string(1/0)'}}\n"))
	f.Add([]byte("version: 1\nfeatures:\n  - {name: v, expr: 'profile.count(\"view\", duration(\"7d\")) / profile.sessions(duration(\"1d\"), duration(\"30m\"))'}\n" +
		"  - {name: w, expr: 'profile.days_since(\"purchase\") > 1.0'}\n" +
		"offers:\n  - {id: o, when: features.v > 0.0, score: 'features.w / 0.0', template: t, payload_expr: {v: features.v}}\n  - {id: p, score: '1', template: t}\n"))
	f.Add([]byte("version: [1]\n---\nversion: 2\n"))
	f.Add([]byte("\t\x00: \xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse("fuzz.yaml", data, WithLimits(fuzzLimits))
		if err != nil {
			if !errors.Is(err, ErrInvalidRules) {
				t.Fatalf("error %v is not ErrInvalidRules", err)
			}
			checkRuleErrors(t, err, "fuzz.yaml", data)
			return
		}
		// Whatever was accepted must evaluate without panicking.
		p := &profile.Profile{}
		now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
		events := []profile.Event{
			{ID: "1", UserID: "u", Type: "view", Category: "phones", OccurredAt: now, Attributes: map[string]string{"a": "b"}},
			{ID: "2", UserID: "u", Type: "purchase", Value: 10, OccurredAt: now},
			{ID: "3", UserID: "u", Type: "click", OccurredAt: now},
			{ID: "4", UserID: "u", Type: "message_sent", Channel: "sms", OccurredAt: now, Attributes: map[string]string{"offer_id": "o"}},
			{ID: "5", UserID: "u", Type: "login", OccurredAt: now, Attributes: map[string]string{"tz": "Australia/Lord_Howe"}},
		}
		r.Step(profile.Limits{})(p, events, now)
		for _, ch := range []string{"sms", "push", "web", ""} {
			for _, at := range []time.Time{now, now.Add(11 * time.Hour)} {
				d := r.Decide(p, Request{UserID: "u", Channel: ch, Placement: "home", Context: map[string]string{"a": "b"}, Explain: true}, at)
				if d.Verdict == VerdictHold && !d.NotBefore.After(at) {
					t.Fatalf("HOLD until %v, not after %v", d.NotBefore, at)
				}
			}
			r.Fallback(ch)
		}
		names := []string{"Nope"} // never a feature name
		for _, ft := range r.Features() {
			names = append(names, ft.Name)
		}
		if err := r.CheckFeatures(names); !errors.Is(err, ErrUnknownFeature) {
			t.Fatalf("CheckFeatures(%q) = %v", names, err)
		}
		for _, pr := range []*profile.Profile{p, {}, nil} {
			if got := r.EvalFeatures(pr, nil, now, nil); len(got) != len(names)-1 {
				t.Fatalf("EvalFeatures: %d values, want %d", len(got), len(names)-1)
			}
			if got := r.EvalFeatures(pr, names, now, nil); len(got) != len(names) || got[0].Err == nil {
				t.Fatalf("EvalFeatures(%q) = %+v", names, got)
			}
		}
	})
}

// withoutComments drops the comment lines of a YAML file.
func withoutComments(data []byte) []byte {
	var out []byte
	for line := range bytes.Lines(data) {
		if !bytes.HasPrefix(bytes.TrimSpace(line), []byte("#")) {
			out = append(out, line...)
		}
	}
	return out
}

// ruleKinds are the values of RuleError.Kind.
var ruleKinds = map[string]bool{"": true, kindTrigger: true, kindStep: true, kindOffer: true, kindFeature: true,
	kindFrequencyCap: true, kindQuietHours: true, kindPurchaseCooldown: true, kindFallback: true}

// checkRuleErrors fails the test unless every problem joined in err is a
// *RuleError located in file, whose data has the given content.
func checkRuleErrors(t *testing.T, err error, file string, data []byte) {
	t.Helper()
	// YAML breaks lines at \n, \r, NEL, LS and PS (\r\n counts twice here,
	// which only loosens the bound). A problem at the very end of a file
	// that has no final line break is on the line after its last: "---"
	// alone is "fuzz.yaml:2: expected a mapping".
	maxLine := 2
	for _, brk := range []string{"\n", "\r", "\u0085", "\u2028", "\u2029"} {
		maxLine += bytes.Count(data, []byte(brk))
	}
	var leaves []error
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		leaves = append(leaves, err)
	}
	walk(err)
	if len(leaves) == 0 || len(leaves) > maxReportedErrors+1 {
		t.Fatalf("%d problems reported, want 1 to %d: %v", len(leaves), maxReportedErrors+1, err)
	}
	for _, leaf := range leaves {
		re, ok := leaf.(*RuleError)
		switch {
		case !ok:
			t.Fatalf("problem %v (%T) is not a *RuleError", leaf, leaf)
		case re.File != file:
			t.Fatalf("problem %q names file %q, want %q", re, re.File, file)
		case re.Line < 0 || re.Line > maxLine:
			t.Fatalf("problem %q is on line %d, after the end of the file (line %d at most)", re, re.Line, maxLine)
		case !ruleKinds[re.Kind]:
			t.Fatalf("problem %q has kind %q", re, re.Kind)
		case re.Kind == "" && re.Rule != "":
			t.Fatalf("file-level problem %q names rule %q", re, re.Rule)
		case re.Msg == "":
			t.Fatalf("problem %+v has no message", re)
		}
	}
}
