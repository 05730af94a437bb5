package decision

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseErrors(t *testing.T) {
	const action = "    action: {channel: sms, template: t}\n"
	tests := []struct {
		name string
		src  string
		// want is the problem that must be among those reported.
		want RuleError
		// msg must be part of the message.
		msg string
	}{
		{
			name: "yaml syntax",
			src:  "version: 1\ntriggers: [\n",
			want: RuleError{File: "rules.yaml"},
			msg:  "yaml:",
		},
		{
			name: "two documents",
			src:  "version: 1\n---\nversion: 1\n",
			want: RuleError{File: "rules.yaml", Line: 2},
			msg:  "one YAML document",
		},
		{
			name: "comments only",
			src:  "# nothing yet\n",
			want: RuleError{File: "rules.yaml", Line: 1},
			msg:  "empty rules file",
		},
		{
			name: "top level not a mapping",
			src:  "- version: 1\n",
			want: RuleError{File: "rules.yaml", Line: 1},
			msg:  "expected a mapping, got a list",
		},
		{
			name: "empty file",
			src:  "",
			want: RuleError{File: "rules.yaml", Line: 1},
			msg:  "empty rules file",
		},
		{
			name: "version missing",
			src:  "triggers: []\n",
			want: RuleError{File: "rules.yaml", Line: 1, Field: "version"},
			msg:  "required",
		},
		{
			name: "version 2",
			src:  "version: 2\n",
			want: RuleError{File: "rules.yaml", Line: 1, Field: "version"},
			msg:  "must be 1, got 2",
		},
		{
			name: "version not an integer",
			src:  "version: one\n",
			want: RuleError{File: "rules.yaml", Line: 1, Field: "version"},
			msg:  "expected an integer",
		},
		{
			name: "unknown top-level key",
			src:  "version: 1\nrules: []\n",
			want: RuleError{File: "rules.yaml", Line: 2},
			msg:  `unknown field "rules"`,
		},
		{
			name: "triggers not a list",
			src:  "version: 1\ntriggers: {id: x}\n",
			want: RuleError{File: "rules.yaml", Line: 2, Field: "triggers"},
			msg:  "expected a list",
		},
		{
			name: "unknown trigger key",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    wen: true\n" + action,
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "trigger", Rule: "x"},
			msg:  `unknown field "wen"`,
		},
		{
			name: "unknown action key",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    action:\n      channel: sms\n      template: t\n      body: hi\n",
			want: RuleError{File: "rules.yaml", Line: 8, Kind: "trigger", Rule: "x"},
			msg:  `unknown field "action.body"`,
		},
		{
			name: "repeated key",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    on: [click]\n" + action,
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "trigger", Rule: "x", Field: "on"},
			msg:  "repeated",
		},
		{
			name: "missing id",
			src:  "version: 1\ntriggers:\n  - on: [view]\n" + action,
			want: RuleError{File: "rules.yaml", Line: 3, Kind: "trigger", Field: "id"},
			msg:  "required",
		},
		{
			name: "invalid id",
			src:  "version: 1\ntriggers:\n  - id: Bad Id\n    on: [view]\n" + action,
			want: RuleError{File: "rules.yaml", Line: 3, Kind: "trigger", Rule: "Bad Id", Field: "id"},
			msg:  "must match",
		},
		{
			name: "duplicate trigger id",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n" + action + "  - id: x\n    on: [click]\n" + action,
			want: RuleError{File: "rules.yaml", Line: 6, Kind: "trigger", Rule: "x", Field: "id"},
			msg:  "duplicate trigger id (first defined on line 3)",
		},
		{
			name: "duplicate offer id",
			src:  "version: 1\noffers:\n  - id: o\n    template: t\n  - id: o\n    template: t\n",
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "offer", Rule: "o", Field: "id"},
			msg:  "duplicate offer id",
		},
		{
			name: "undeclared reference",
			src:  "version: 1\ntriggers:\n  - id: x\n    when: evnt.category != \"\"\n" + action,
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "trigger", Rule: "x", Field: "when"},
			msg:  "ERROR: <input>:1:1: undeclared reference to 'evnt'",
		},
		{
			name: "unknown event field",
			src:  "version: 1\ntriggers:\n  - id: x\n    when: event.categroy == \"a\"\n" + action,
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "trigger", Rule: "x", Field: "when"},
			msg:  `event has no field "categroy"`,
		},
		{
			name: "unknown event field by index",
			src:  "version: 1\ntriggers:\n  - id: x\n    when: event[\"kind\"] == \"a\"\n" + action,
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "trigger", Rule: "x", Field: "when"},
			msg:  `event has no field "kind"`,
		},
		{
			name: "when not bool",
			src:  "version: 1\ntriggers:\n  - id: x\n    when: profile.total(\"view\")\n" + action,
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "trigger", Rule: "x", Field: "when"},
			msg:  "must be a bool expression, but its type is int",
		},
		{
			name: "bad duration literal",
			src:  "version: 1\ntriggers:\n  - id: x\n    when: profile.count(\"view\", duration(\"1w\")) > 0\n" + action,
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "trigger", Rule: "x", Field: "when"},
			msg:  "invalid duration argument",
		},
		{
			name: "wrong function arguments",
			src:  "version: 1\ntriggers:\n  - id: x\n    when: profile.count(\"view\", 30) > 0\n" + action,
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "trigger", Rule: "x", Field: "when"},
			msg:  "found no matching overload for 'count'",
		},
		{
			name: "offer cannot see event",
			src:  "version: 1\noffers:\n  - id: o\n    when: event.type == \"view\"\n    template: t\n",
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "offer", Rule: "o", Field: "when"},
			msg:  "undeclared reference to 'event'",
		},
		{
			name: "bad event type in on",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [View]\n" + action,
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "trigger", Rule: "x", Field: "on"},
			msg:  `event type "View" must match`,
		},
		{
			name: "fires on everything",
			src:  "version: 1\ntriggers:\n  - id: x\n" + action,
			want: RuleError{File: "rules.yaml", Line: 3, Kind: "trigger", Rule: "x"},
			msg:  "needs on or when",
		},
		{
			name: "invalid cooldown",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    cooldown: 1w\n" + action,
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "trigger", Rule: "x", Field: "cooldown"},
			msg:  `invalid duration "1w"`,
		},
		{
			name: "negative cooldown",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    cooldown: -1h\n" + action,
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "trigger", Rule: "x", Field: "cooldown"},
			msg:  "must not be negative",
		},
		{
			name: "cooldown_by without cooldown",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    cooldown_by: event.category\n" + action,
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "trigger", Rule: "x", Field: "cooldown_by"},
			msg:  "needs a positive cooldown",
		},
		{
			name: "cooldown_by with a zero cooldown",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    cooldown: 0s\n    cooldown_by: event.category\n" + action,
			want: RuleError{File: "rules.yaml", Line: 6, Kind: "trigger", Rule: "x", Field: "cooldown_by"},
			msg:  "needs a positive cooldown",
		},
		{
			name: "cooldown_by not a string",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    cooldown: 1h\n    cooldown_by: '[event.category]'\n" + action,
			want: RuleError{File: "rules.yaml", Line: 6, Kind: "trigger", Rule: "x", Field: "cooldown_by"},
			msg:  "must give a string",
		},
		{
			name: "missing action",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n",
			want: RuleError{File: "rules.yaml", Line: 3, Kind: "trigger", Rule: "x", Field: "action"},
			msg:  "required",
		},
		{
			name: "missing channel",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    action:\n      template: t\n",
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "trigger", Rule: "x", Field: "action.channel"},
			msg:  "required",
		},
		{
			name: "bad channel",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    action:\n      channel: SMS\n      template: t\n",
			want: RuleError{File: "rules.yaml", Line: 6, Kind: "trigger", Rule: "x", Field: "action.channel"},
			msg:  `"SMS" must match`,
		},
		{
			name: "missing template",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    action:\n      channel: sms\n",
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "trigger", Rule: "x", Field: "action.template"},
			msg:  "required",
		},
		{
			name: "payload not strings",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    action:\n      channel: sms\n      template: t\n      payload:\n        a: {b: c}\n",
			want: RuleError{File: "rules.yaml", Line: 9, Kind: "trigger", Rule: "x", Field: "action.payload.a"},
			msg:  "expected a string, got a mapping",
		},
		{
			name: "payload_expr does not compile",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    action:\n      channel: sms\n      template: t\n      payload_expr:\n        c: event.category +\n",
			want: RuleError{File: "rules.yaml", Line: 9, Kind: "trigger", Rule: "x", Field: "action.payload_expr.c"},
			msg:  "ERROR: <input>:1:",
		},
		{
			name: "payload key in both",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    action:\n      channel: sms\n      template: t\n      payload: {c: a}\n      payload_expr: {c: event.category}\n",
			want: RuleError{File: "rules.yaml", Line: 9, Kind: "trigger", Rule: "x", Field: "action.payload_expr.c"},
			msg:  `key "c" is also in payload`,
		},
		{
			name: "offer priority not an integer",
			src:  "version: 1\noffers:\n  - id: o\n    priority: high\n    template: t\n",
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "offer", Rule: "o", Field: "priority"},
			msg:  "expected an integer",
		},
		{
			name: "offer bad channel",
			src:  "version: 1\noffers:\n  - id: o\n    channels: [sms, Web]\n    template: t\n",
			want: RuleError{File: "rules.yaml", Line: 4, Kind: "offer", Rule: "o", Field: "channels"},
			msg:  `channel "Web" must match`,
		},
		{
			name: "offer missing template",
			src:  "version: 1\noffers:\n  - id: o\n    priority: 1\n",
			want: RuleError{File: "rules.yaml", Line: 3, Kind: "offer", Rule: "o", Field: "template"},
			msg:  "required",
		},
		{
			name: "same id for a trigger and an offer",
			src: "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    action: {channel: sms, template: t}\n" +
				"offers:\n  - id: x\n    template: t\n",
			want: RuleError{File: "rules.yaml", Line: 7, Kind: "offer", Rule: "x", Field: "id"},
			msg:  `"x" is also the id of a trigger or journey step (line 3)`,
		},
		{
			name: "trigger ab control out of range",
			src:  "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    ab: {control: 1.5}\n" + action,
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "trigger", Rule: "x", Field: "ab.control"},
			msg:  "must be in [0, 1)",
		},
		{
			name: "ab on a journey step",
			src: "version: 1\ntriggers:\n  - id: x\n    on: [view]\n" + action +
				"    then:\n      - id: y\n        wait: 1h\n        ab: {control: 0.5}\n        action: {channel: sms, template: t}\n",
			want: RuleError{File: "rules.yaml", Line: 9, Kind: "step", Rule: "y"},
			msg:  `unknown field "ab"`,
		},
		{
			name: "offer select unknown",
			src:  "version: 1\noffers:\n  - id: o\n    template: t\n    select: greedy\n",
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "offer", Rule: "o", Field: "select"},
			msg:  "must be priority",
		},
		{
			name: "conversion window too long",
			src:  "version: 1\nconversion:\n  on: [purchase]\n  window: 100d\n",
			want: RuleError{File: "rules.yaml", Line: 4, Field: "conversion.window"},
			msg:  "must be from 1m to 90d",
		},
		{
			name: "conversion bad event type",
			src:  "version: 1\nconversion:\n  on: [Purchase]\n",
			want: RuleError{File: "rules.yaml", Line: 3, Field: "conversion.on"},
			msg:  `event type "Purchase" must match`,
		},
		{
			name: "conversion empty on",
			src:  "version: 1\nconversion:\n  on: []\n",
			want: RuleError{File: "rules.yaml", Line: 2, Field: "conversion.on"},
			msg:  "at least one event type",
		},
		{
			name: "conversion value not a number",
			src:  "version: 1\nconversion:\n  value: string(event.value)\n",
			want: RuleError{File: "rules.yaml", Line: 3, Field: "conversion.value"},
			msg:  "must be a number",
		},
		{
			name: "conversion unknown field",
			src:  "version: 1\nconversion:\n  windows: 7d\n",
			want: RuleError{File: "rules.yaml", Line: 3},
			msg:  `unknown field "conversion.windows"`,
		},
		{
			name: "offer payload_expr not convertible",
			src:  "version: 1\noffers:\n  - id: o\n    template: t\n    payload_expr: {c: context}\n",
			want: RuleError{File: "rules.yaml", Line: 5, Kind: "offer", Rule: "o", Field: "payload_expr.c"},
			msg:  "must give a string",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Parse("rules.yaml", []byte(tt.src))
			if err == nil {
				t.Fatalf("Parse succeeded (%d rules), want an error", len(r.triggers)+len(r.offers))
			}
			if !errors.Is(err, ErrInvalidRules) {
				t.Errorf("error %v does not match ErrInvalidRules", err)
			}
			for _, re := range ruleErrors(err) {
				got := *re
				got.Msg = ""
				if got == tt.want && strings.Contains(re.Msg, tt.msg) {
					return
				}
			}
			t.Errorf("no problem %+v with message containing %q in:\n%v", tt.want, tt.msg, err)
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	src := `version: 1
triggers:
  - id: a
    on: [view]
    when: evnt.x
    action: {channel: sms, template: t}
  - id: b
    on: [view]
    action: {channel: sms}
offers:
  - id: c
    template: t
    when: "1"
`
	_, err := Parse("rules.yaml", []byte(src))
	got := ruleErrors(err)
	want := []string{
		`rules.yaml:5: trigger "a": when: ERROR: <input>:1:1: undeclared reference to 'evnt'`,
		`rules.yaml:9: trigger "b": action.template: required`,
		`rules.yaml:13: offer "c": when: must be a bool expression, but its type is int`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d problems, want %d:\n%v", len(got), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i].Error(), w) {
			t.Errorf("problem %d = %q, want prefix %q", i, got[i].Error(), w)
		}
	}
}

func TestParseCapsProblems(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\ntriggers:\n")
	for range 2 * maxReportedErrors {
		b.WriteString("  - {id: x, on: [view], action: {channel: sms, template: t}}\n")
	}
	_, err := Parse("rules.yaml", []byte(b.String()))
	got := ruleErrors(err)
	if len(got) != maxReportedErrors+1 {
		t.Fatalf("got %d problems, want %d", len(got), maxReportedErrors+1)
	}
	if last := got[len(got)-1].Msg; !strings.Contains(last, "more problems not shown") {
		t.Errorf("last problem = %q, want a count of the rest", last)
	}
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name             string
		src              string
		triggers, offers int
	}{
		{name: "version only", src: "version: 1\n"},
		{name: "null lists", src: "version: 1\ntriggers:\noffers:\n"},
		{name: "seed", src: seedRules, triggers: 1},
		{
			name: "anchors and aliases",
			src: "version: 1\ntriggers:\n  - id: x\n    on: &types [view, click]\n    action: &act {channel: sms, template: t}\n" +
				"  - id: y\n    on: *types\n    action: *act\n",
			triggers: 2,
		},
		{
			name: "block scalar expression and numeric payload",
			src: "version: 1\noffers:\n  - id: o\n    when: >-\n      profile.purchase_value() > 100 &&\n      profile.purchase_count() >= 2\n" +
				"    template: t\n    payload: {n: 10, b: true}\n",
			offers: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := mustParse(t, tt.src)
			if trig, off := r.Counts(); trig != tt.triggers || off != tt.offers {
				t.Errorf("Counts() = %d, %d; want %d, %d", trig, off, tt.triggers, tt.offers)
			}
			if v := r.Version(); len(v) != 12 {
				t.Errorf("Version() = %q, want 12 hex digits", v)
			}
		})
	}
}

func TestVersion(t *testing.T) {
	a, b := mustParse(t, seedRules), mustParse(t, seedRules)
	if a.Version() != b.Version() {
		t.Errorf("same content, versions %q and %q", a.Version(), b.Version())
	}
	c := mustParse(t, seedRules+"offers: []\n")
	if a.Version() == c.Version() {
		t.Errorf("different content, same version %q", a.Version())
	}
	var nilRules *Rules
	if v := nilRules.Version(); v != "" {
		t.Errorf("nil rules version = %q", v)
	}
}

func TestLoadExamples(t *testing.T) {
	r, err := Load("../examples/rules.yaml")
	if err != nil {
		t.Fatalf("examples/rules.yaml: %v", err)
	}
	if trig, off := r.Counts(); trig == 0 || off == 0 {
		t.Errorf("Counts() = %d, %d; want triggers and offers", trig, off)
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope.yaml"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want os.ErrNotExist", err)
	}
	if errors.Is(err, ErrInvalidRules) {
		t.Errorf("a missing file is not invalid rules: %v", err)
	}
}
