package decision

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParsePolicyErrors(t *testing.T) {
	const f = "rules.yaml"
	caps := func(body string) string { return "version: 1\npolicies:\n  frequency_caps:\n" + body }
	quiet := func(body string) string { return "version: 1\npolicies:\n  quiet_hours:\n" + body }
	offer := func(body string) string { return "version: 1\noffers:\n  - id: o\n    template: t\n" + body }
	tests := []struct {
		name string
		src  string
		want RuleError
		msg  string
	}{
		// settings
		{"settings not a mapping", "version: 1\nsettings: [a]\n",
			RuleError{File: f, Line: 2, Field: "settings"}, "expected a mapping"},
		{"unknown settings key", "version: 1\nsettings:\n  timezone: UTC\n",
			RuleError{File: f, Line: 3}, `unknown field "settings.timezone"`},
		{"unknown time zone", "version: 1\nsettings:\n  default_timezone: Europe/Pariss\n",
			RuleError{File: f, Line: 3, Field: "settings.default_timezone"}, `unknown time zone "Europe/Pariss"`},
		{"Local time zone", "version: 1\nsettings: {default_timezone: Local}\n",
			RuleError{File: f, Line: 2, Field: "settings.default_timezone"}, "depends on the server"},
		{"empty time zone", "version: 1\nsettings: {default_timezone: \"\"}\n",
			RuleError{File: f, Line: 2, Field: "settings.default_timezone"}, "must not be empty"},
		{"time zone not a string", "version: 1\nsettings: {default_timezone: [UTC]}\n",
			RuleError{File: f, Line: 2, Field: "settings.default_timezone"}, "expected a string"},

		// policies
		{"policies not a mapping", "version: 1\npolicies: []\n",
			RuleError{File: f, Line: 2, Field: "policies"}, "expected a mapping"},
		{"unknown policy", "version: 1\npolicies:\n  frequency_cap: []\n",
			RuleError{File: f, Line: 3}, `unknown field "policies.frequency_cap" (known fields: frequency_caps, quiet_hours, purchase_cooldown)`},
		{"frequency_caps not a list", "version: 1\npolicies:\n  frequency_caps: {id: x}\n",
			RuleError{File: f, Line: 3, Field: "policies.frequency_caps"}, "expected a list"},
		{"cap not a mapping", caps("    - x\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap"}, "expected a mapping"},

		// frequency caps
		{"cap unknown key", caps("    - {id: c, max: 1, period: 1h, channels: [sms]}\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Rule: "c"}, `unknown field "channels" (known fields: id, channel, max, period)`},
		{"cap without id", caps("    - {max: 1, period: 1h}\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Field: "id"}, "required"},
		{"cap bad id", caps("    - {id: Cap, max: 1, period: 1h}\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Rule: "Cap", Field: "id"}, "must match"},
		{"cap bad channel", caps("    - {id: c, channel: SMS, max: 1, period: 1h}\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Rule: "c", Field: "channel"}, `"SMS" must match`},
		{"cap without max", caps("    - id: c\n      period: 1h\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Rule: "c", Field: "max"}, "required"},
		{"cap max 0", caps("    - {id: c, max: 0, period: 1h}\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Rule: "c", Field: "max"}, "must be at least 1, got 0"},
		{"cap max negative", caps("    - {id: c, max: -2, period: 1h}\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Rule: "c", Field: "max"}, "must be at least 1, got -2"},
		{"cap max not an integer", caps("    - id: c\n      max: 1.5\n      period: 1h\n"),
			RuleError{File: f, Line: 5, Kind: "frequency_cap", Rule: "c", Field: "max"}, "expected an integer"},
		{"cap without period", caps("    - {id: c, max: 1}\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Rule: "c", Field: "period"}, "required"},
		{"cap bad period", caps("    - id: c\n      max: 1\n      period: 1 week\n"),
			RuleError{File: f, Line: 6, Kind: "frequency_cap", Rule: "c", Field: "period"}, `invalid duration "1 week"`},
		{"cap zero period", caps("    - {id: c, max: 1, period: 0d}\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Rule: "c", Field: "period"}, "must be positive"},
		{"cap negative period", caps("    - {id: c, max: 1, period: -1d}\n"),
			RuleError{File: f, Line: 4, Kind: "frequency_cap", Rule: "c", Field: "period"}, "must not be negative"},
		{"duplicate cap id", caps("    - {id: c, max: 1, period: 1h}\n    - {id: c, max: 2, period: 1d}\n"),
			RuleError{File: f, Line: 5, Kind: "frequency_cap", Rule: "c", Field: "id"}, "duplicate policy id (first defined on line 4)"},

		// quiet hours
		{"quiet hours unknown key", quiet("    - {id: q, channels: [sms], from: \"21:00\", to: \"08:00\", tz: UTC}\n"),
			RuleError{File: f, Line: 4, Kind: "quiet_hours", Rule: "q"}, `unknown field "tz"`},
		{"quiet hours without channels", quiet("    - {id: q, from: \"21:00\", to: \"08:00\"}\n"),
			RuleError{File: f, Line: 4, Kind: "quiet_hours", Rule: "q", Field: "channels"}, "required"},
		{"quiet hours with empty channels", quiet("    - {id: q, channels: [], from: \"21:00\", to: \"08:00\"}\n"),
			RuleError{File: f, Line: 4, Kind: "quiet_hours", Rule: "q", Field: "channels"}, "required"},
		{"quiet hours bad channel", quiet("    - id: q\n      channels: [sms, \"*\"]\n      from: \"21:00\"\n      to: \"08:00\"\n"),
			RuleError{File: f, Line: 5, Kind: "quiet_hours", Rule: "q", Field: "channels"}, `channel "*" must match`},
		{"quiet hours without from", quiet("    - {id: q, channels: [sms], to: \"08:00\"}\n"),
			RuleError{File: f, Line: 4, Kind: "quiet_hours", Rule: "q", Field: "from"}, "required (local time as HH:MM)"},
		{"quiet hours bad from", quiet("    - id: q\n      channels: [sms]\n      from: \"9:00\"\n      to: \"08:00\"\n"),
			RuleError{File: f, Line: 6, Kind: "quiet_hours", Rule: "q", Field: "from"}, `invalid time "9:00"`},
		{"quiet hours to 24:00", quiet("    - {id: q, channels: [sms], from: \"21:00\", to: \"24:00\"}\n"),
			RuleError{File: f, Line: 4, Kind: "quiet_hours", Rule: "q", Field: "to"}, `invalid time "24:00" (want HH:MM, 00:00 to 23:59)`},
		{"quiet hours unquoted sexagesimal", quiet("    - {id: q, channels: [sms], from: 21:00, to: \"08:00:00\"}\n"),
			RuleError{File: f, Line: 4, Kind: "quiet_hours", Rule: "q", Field: "to"}, `invalid time "08:00:00"`},
		{"quiet hours empty window", quiet("    - {id: q, channels: [sms], from: \"08:00\", to: \"08:00\"}\n"),
			RuleError{File: f, Line: 4, Kind: "quiet_hours", Rule: "q", Field: "to"}, "must differ from from"},
		{"quiet hours id used by a cap", "version: 1\npolicies:\n  frequency_caps: [{id: p, max: 1, period: 1h}]\n  quiet_hours:\n    - {id: p, channels: [sms], from: \"21:00\", to: \"08:00\"}\n",
			RuleError{File: f, Line: 5, Kind: "quiet_hours", Rule: "p", Field: "id"}, "duplicate policy id (first defined on line 3)"},

		// purchase cooldown
		{"purchase cooldown a list", "version: 1\npolicies:\n  purchase_cooldown: [{id: p, period: 1d}]\n",
			RuleError{File: f, Line: 3, Kind: "purchase_cooldown"}, "expected a mapping, got a list"},
		{"purchase cooldown without id", "version: 1\npolicies:\n  purchase_cooldown: {period: 7d}\n",
			RuleError{File: f, Line: 3, Kind: "purchase_cooldown", Field: "id"}, "required"},
		{"purchase cooldown without period", "version: 1\npolicies:\n  purchase_cooldown: {id: p}\n",
			RuleError{File: f, Line: 3, Kind: "purchase_cooldown", Rule: "p", Field: "period"}, "required"},
		{"purchase cooldown bad period", "version: 1\npolicies:\n  purchase_cooldown:\n    id: p\n    period: 7days\n",
			RuleError{File: f, Line: 5, Kind: "purchase_cooldown", Rule: "p", Field: "period"}, `invalid duration "7days"`},
		{"purchase cooldown unknown key", "version: 1\npolicies:\n  purchase_cooldown:\n    id: p\n    period: 7d\n    category: phones\n",
			RuleError{File: f, Line: 6, Kind: "purchase_cooldown", Rule: "p"}, `unknown field "category"`},
		{"policy id of an offer", "version: 1\npolicies:\n  purchase_cooldown: {id: o, period: 1d}\noffers:\n  - {id: o, template: t}\n",
			RuleError{File: f, Line: 3, Kind: "purchase_cooldown", Rule: "o", Field: "id"}, "already used by the offer on line 5"},
		{"reserved policy id", "version: 1\npolicies:\n  purchase_cooldown: {id: consent, period: 1d}\n",
			RuleError{File: f, Line: 3, Kind: "purchase_cooldown", Rule: "consent", Field: "id"}, "reserved"},

		// fallbacks
		{"fallbacks a list", "version: 1\nfallbacks: [web]\n",
			RuleError{File: f, Line: 2, Field: "fallbacks"}, "expected a mapping of channel to offer"},
		{"fallback bad channel", "version: 1\nfallbacks:\n  Web: {offer_id: w, template: t}\n",
			RuleError{File: f, Line: 3, Kind: "fallback", Rule: "Web"}, `channel "Web" must match`},
		{"fallback for every channel", "version: 1\nfallbacks:\n  \"*\": {offer_id: w, template: t}\n",
			RuleError{File: f, Line: 3, Kind: "fallback", Rule: "*"}, `channel "*" must match`},
		{"fallback without offer_id", "version: 1\nfallbacks:\n  web: {template: t}\n",
			RuleError{File: f, Line: 3, Kind: "fallback", Rule: "web", Field: "offer_id"}, "required"},
		{"fallback bad offer_id", "version: 1\nfallbacks:\n  web:\n    offer_id: Web Welcome\n    template: t\n",
			RuleError{File: f, Line: 4, Kind: "fallback", Rule: "web", Field: "offer_id"}, "must match"},
		{"fallback without template", "version: 1\nfallbacks:\n  web: {offer_id: w}\n",
			RuleError{File: f, Line: 3, Kind: "fallback", Rule: "web", Field: "template"}, "required"},
		{"fallback with an expression", "version: 1\nfallbacks:\n  web:\n    offer_id: w\n    template: t\n    payload_expr: {a: channel}\n",
			RuleError{File: f, Line: 6, Kind: "fallback", Rule: "web"}, `unknown field "payload_expr" (known fields: offer_id, template, payload)`},
		{"fallback payload not strings", "version: 1\nfallbacks:\n  web: {offer_id: w, template: t, payload: {a: [1]}}\n",
			RuleError{File: f, Line: 3, Kind: "fallback", Rule: "web", Field: "payload.a"}, "expected a string"},
		{"fallback empty", "version: 1\nfallbacks:\n  web:\n",
			RuleError{File: f, Line: 3, Kind: "fallback", Rule: "web"}, "expected a mapping"},

		// offers
		{"offer bad cooldown", offer("    cooldown: 3 days\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "cooldown"}, `invalid duration "3 days"`},
		{"offer negative cooldown", offer("    cooldown: -3d\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "cooldown"}, "must not be negative"},
		{"offer ab not a mapping", offer("    ab: 0.1\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "ab"}, "expected a mapping"},
		{"offer ab without control", offer("    ab: {}\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "ab.control"}, "required"},
		{"offer ab null", offer("    ab:\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "ab.control"}, "required"},
		{"offer ab control 1", offer("    ab:\n      control: 1\n"),
			RuleError{File: f, Line: 6, Kind: "offer", Rule: "o", Field: "ab.control"}, "must be in [0, 1)"},
		{"offer ab control negative", offer("    ab: {control: -0.1}\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "ab.control"}, "must be in [0, 1)"},
		{"offer ab control a percentage", offer("    ab: {control: 10%}\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "ab.control"}, `expected a number, got "10%"`},
		{"offer ab control nan", offer("    ab: {control: .nan}\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "ab.control"}, "expected a number"},
		{"offer ab unknown key", offer("    ab: {control: 0.1, treatment: 0.9}\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o"}, `unknown field "ab.treatment" (known fields: control)`},
		{"offer category with a newline", offer("    category: \"pho\\nnes\"\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "category"}, "without control characters"},
		{"offer category not a string", offer("    category: [phones]\n"),
			RuleError{File: f, Line: 5, Kind: "offer", Rule: "o", Field: "category"}, "expected a string"},
		{"trigger cooldown in days is fine, in weeks not", "version: 1\ntriggers:\n  - id: x\n    on: [view]\n    cooldown: 1d\n    cooldown_by: event.category\n" +
			"    action: {channel: sms, template: t}\n  - id: y\n    on: [view]\n    cooldown: 2w\n    action: {channel: sms, template: t}\n",
			RuleError{File: f, Line: 10, Kind: "trigger", Rule: "y", Field: "cooldown"}, `invalid duration "2w"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(f, []byte(tt.src))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			if !errors.Is(err, ErrInvalidRules) {
				t.Errorf("error %v does not match ErrInvalidRules", err)
			}
			for _, re := range ruleErrors(err) {
				got := *re
				got.Msg = ""
				if got == tt.want && strings.Contains(re.Msg, tt.msg) {
					if n := len(ruleErrors(err)); n != 1 {
						t.Errorf("%d problems reported, want 1 (no follow-on noise):\n%v", n, err)
					}
					return
				}
			}
			t.Errorf("no problem %+v with message containing %q in:\n%v", tt.want, tt.msg, err)
		})
	}
}

func TestParsePoliciesValid(t *testing.T) {
	r := mustParse(t, `version: 1
settings:
  default_timezone: America/New_York
policies:
  frequency_caps:
    - {id: sms-daily, channel: sms, max: 2, period: 24h}
    - {id: global, channel: "*", max: 8, period: 7d}
    - {id: global-2, max: 20, period: 1d12h}
  quiet_hours:
    - {id: night, channels: [sms, push, sms], from: "21:00", to: "08:00"}
    - {id: lunch, channels: [push], from: "12:00", to: "13:30"}
  purchase_cooldown: {id: recent-purchase, period: 168h}
fallbacks:
  web: {offer_id: web-fallback, template: welcome, payload: {n: 1}}
  email: {offer_id: email-fallback, template: newsletter}
offers:
  - {id: o, category: phones, cooldown: 3d, ab: {control: 0.25}, template: t}
  - {id: p, cooldown: 0s, ab: {control: 0}, template: t}
`)
	if r.defaultTZ.String() != "America/New_York" {
		t.Errorf("default tz %v", r.defaultTZ)
	}
	if len(r.caps) != 3 || r.caps[0].channel != "sms" || r.caps[1].channel != "" || r.caps[2].period != 36*time.Hour {
		t.Errorf("caps %+v", r.caps)
	}
	if len(r.quiet) != 2 || len(r.quiet[0].channels.list) != 2 || r.quiet[0].from != 21*60 || r.quiet[1].to != 13*60+30 {
		t.Errorf("quiet hours %+v", r.quiet)
	}
	if r.purchaseCooldown == nil || r.purchaseCooldown.period != 7*day {
		t.Errorf("purchase cooldown %+v", r.purchaseCooldown)
	}
	if len(r.fallbacks) != 2 || r.fallbacks["web"].payload["n"] != "1" {
		t.Errorf("fallbacks %+v", r.fallbacks)
	}
	o := r.offers[0]
	if o.category != "phones" || o.cooldown != 3*day || !o.ab || o.control != 0.25 {
		t.Errorf("offer %+v", o)
	}
	if d := mustParse(t, "version: 1\n"); d.defaultTZ != time.UTC {
		t.Errorf("default tz without settings: %v", d.defaultTZ)
	}
	for _, src := range []string{
		"version: 1\nsettings:\npolicies:\nfallbacks:\n",
		"version: 1\npolicies:\n  frequency_caps:\n  quiet_hours:\n  purchase_cooldown:\n",
	} {
		mustParse(t, src)
	}
}
