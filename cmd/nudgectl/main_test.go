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
