package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRulesCheck(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("version: 1\noffers:\n  - id: typo\n    when: profile.count(\"view\", 3) >= 1\n    template: t\n  - id: typo\n    template: t\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantStatus int
		wantOut    []string
	}{
		{"the bundled example is valid", []string{"rules", "check", "../../examples/rules.yaml"}, 0, []string{"rules.yaml: ok:", "triggers", "version"}},
		{"errors name file, line and rule", []string{"rules", "check", bad}, 1, []string{"bad.yaml:4: offer \"typo\": when:", "bad.yaml:6: offer \"typo\""}},
		{"a missing file", []string{"rules", "check", filepath.Join(dir, "nope.yaml")}, 1, []string{"nope.yaml"}},
		{"no file", []string{"rules", "check"}, 2, nil},
		{"unknown command", []string{"frobnicate"}, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if got := run(tt.args, &out, &errOut); got != tt.wantStatus {
				t.Errorf("status %d, want %d; stdout:\n%s\nstderr:\n%s", got, tt.wantStatus, out.String(), errOut.String())
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}

func TestRulesCheckJSON(t *testing.T) {
	var out, errOut bytes.Buffer
	if got := run([]string{"rules", "check", "--json", "../../examples/rules.yaml"}, &out, &errOut); got != 0 {
		t.Fatalf("status %d: %s", got, errOut.String())
	}
	var res checkResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out.String())
	}
	if !res.OK || res.Triggers == 0 || res.Offers == 0 || res.Version == "" {
		t.Errorf("result = %+v", res)
	}
}

func TestRulesTest(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	history := write("p.json", `{"events": [
  {"event_id": "h1", "user_id": "u42", "type": "view", "category": "phones", "occurred_at": "2026-11-24T11:40:00Z", "attributes": {"tz": "Europe/Paris"}},
  {"event_id": "h2", "user_id": "u42", "type": "view", "category": "phones", "occurred_at": "2026-11-24T11:50:00Z"}]}`)
	third := write("e.json", `{"event_id": "e3", "user_id": "u42", "type": "view", "category": "phones", "occurred_at": "2026-11-24T11:58:00Z"}`)
	night := write("night.json", `{"event_id": "e4", "user_id": "u42", "type": "view", "category": "phones", "occurred_at": "2026-11-24T22:30:00Z"}`)
	bad := write("bad.json", `{"event_id": "e5", "user_id": "", "type": "view", "occurred_at": "2026-11-24T11:58:00Z"}`)
	stranger := write("stranger.json", `{"event_id": "e6", "user_id": "u7", "type": "view", "occurred_at": "2026-11-24T11:58:00Z"}`)
	const rules = "../../examples/rules.yaml"

	tests := []struct {
		name       string
		args       []string
		wantStatus int
		wantOut    []string
	}{
		{"the third view fires the coupon and the sms offer is sent",
			[]string{"rules", "test", rules, "--profile", history, "--event", third, "--channels", "sms"}, 0,
			[]string{"event e3: applied", "fires a_", "category-interest-coupon via sms", "decision on sms: SEND phones-coupon", "ok sms-daily-cap"}},
		{"at night in Paris the sms is held until 08:00",
			[]string{"rules", "test", rules, "--profile", history, "--event", night, "--channels", "sms"}, 0,
			[]string{"decision on sms: HOLD phones-coupon not before 2026-11-25T08:00:00+01:00", "x  night"}},
		{"a new user, every channel the rules name",
			[]string{"rules", "test", rules, "--event", third}, 0,
			[]string{"no trigger fires", "decision on email:", "decision on push:", "decision on sms: NONE", "decision on web: SEND web-welcome"}},
		{"an invalid event is refused like the server would", []string{"rules", "test", rules, "--event", bad}, 1, nil},
		{"history of another user", []string{"rules", "test", rules, "--profile", history, "--event", stranger}, 1, nil},
		{"no event", []string{"rules", "test", rules}, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if got := run(tt.args, &out, &errOut); got != tt.wantStatus {
				t.Errorf("status %d, want %d; stdout:\n%s\nstderr:\n%s", got, tt.wantStatus, out.String(), errOut.String())
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
		})
	}
}
