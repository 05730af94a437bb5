package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/internal/clientflags"
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

// tempWriter returns a function that writes a file into a fresh
// temporary directory and returns its path.
func tempWriter(t *testing.T) func(name, content string) string {
	dir := t.TempDir()
	return func(name, content string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
}

func TestRulesTest(t *testing.T) {
	write := tempWriter(t)
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

// The security flags of the commands that call nudged, up to the dial: no
// server is needed to refuse what cannot work.
func TestSecurityFlags(t *testing.T) {
	dir := t.TempDir()
	events := filepath.Join(dir, "events.jsonl")
	if err := os.WriteFile(events, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	closed := closedAddr(t)
	const refused = "refusing to send the token in plaintext to 127.0.0.1"
	tests := []struct {
		name       string
		env        string // NUDGE_TOKEN
		args       []string
		wantStatus int
		wantErr    []string
		notErr     string
	}{
		{"a token is not sent in plaintext to a loopback nudged",
			"", []string{"decide", "u", "--channel", "web", "--addr", closed, "--token", "t0ken"}, 2,
			[]string{refused, "--insecure"}, ""},
		{"the token defaults to NUDGE_TOKEN",
			"env-t0ken", []string{"decide", "u", "--channel", "web", "--addr", closed}, 2,
			[]string{refused}, "env-t0ken"},
		{"an explicit empty --token sends none",
			"env-t0ken", []string{"decide", "u", "--channel", "web", "--addr", closed, "--token="}, 1,
			[]string{"nudgectl decide: Unavailable: ", "check --addr"}, ""},
		{"profile refuses a plaintext token too",
			"t0ken", []string{"profile", "get", "u", "--addr", closed}, 2, []string{refused}, ""},
		{"actions tail refuses a plaintext token too",
			"t0ken", []string{"actions", "tail", "--group", "g", "--addr", closed}, 2, []string{refused}, ""},
		{"send refuses a plaintext token too",
			"t0ken", []string{"send", events, "--addr", closed}, 2, []string{refused}, ""},
		{"report refuses a plaintext token too",
			"t0ken", []string{"report", "--addr", closed}, 2, []string{refused}, ""},
		{"--insecure allows it",
			"t0ken", []string{"decide", "u", "--channel", "web", "--addr", closed, "--insecure"}, 1,
			[]string{"Unavailable"}, ""},
		{"--insecure contradicts --ca-file",
			"", []string{"decide", "u", "--channel", "web", "--insecure", "--ca-file", notPEM}, 2,
			[]string{"--insecure (plaintext) contradicts"}, ""},
		{"--cert-file needs --key-file",
			"", []string{"profile", "get", "u", "--cert-file", notPEM}, 2,
			[]string{"--cert-file and --key-file go together"}, ""},
		{"a CA file without certificates",
			"", []string{"decide", "u", "--channel", "web", "--ca-file", notPEM}, 1,
			[]string{"no PEM certificate found"}, ""},
		{"a missing CA file",
			"", []string{"decide", "u", "--channel", "web", "--ca-file", filepath.Join(dir, "nope.pem")}, 1,
			[]string{"--ca-file: open", "nope.pem"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NUDGE_TOKEN", tt.env)
			var out, errOut bytes.Buffer
			if got := run(tt.args, &out, &errOut); got != tt.wantStatus {
				t.Errorf("status %d, want %d; stderr:\n%s", got, tt.wantStatus, errOut.String())
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(errOut.String(), want) {
					t.Errorf("stderr lacks %q:\n%s", want, errOut.String())
				}
			}
			if tt.notErr != "" && strings.Contains(errOut.String()+out.String(), tt.notErr) {
				t.Errorf("output shows %q:\n%s%s", tt.notErr, out.String(), errOut.String())
			}
		})
	}
}

func TestHelpDocumentsSecurityFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	if got := run([]string{"help"}, &out, &errOut); got != 0 {
		t.Fatalf("status %d: %s", got, errOut.String())
	}
	for _, want := range []string{"--token T", "$NUDGE_TOKEN", "--tls", "--ca-file F", "--cert-file F --key-file F", "--server-name N", "--insecure"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("usage lacks %q:\n%s", want, out.String())
		}
	}
}

func TestDescribeCallError(t *testing.T) {
	tests := []struct {
		name  string
		token string
		err   error
		want  string
	}{
		{"no token", "", status.Error(codes.Unauthenticated, "missing bearer token"),
			"Unauthenticated: missing bearer token (give a token with --token or $NUDGE_TOKEN)"},
		{"unknown token", "t0ken", status.Error(codes.Unauthenticated, "unknown token"),
			"Unauthenticated: unknown token (check --token or $NUDGE_TOKEN)"},
		{"missing role", "t0ken", status.Error(codes.PermissionDenied, `token "shop" lacks role "admin"`),
			`PermissionDenied: token "shop" lacks role "admin" (use a token with that role, or for a consumer group one whose groups name it)`},
		{"wrapped: the innermost message", "t0ken",
			fmt.Errorf("client: publisher stopped: %w", status.Error(codes.PermissionDenied, `token "shop" lacks role "ingest"`)),
			`PermissionDenied: token "shop" lacks role "ingest" (use a token with that role, or for a consumer group one whose groups name it)`},
		{"other codes as they are", "", status.Error(codes.NotFound, "no such user"), "NotFound: no such user"},
		{"not a status", "", errors.New("boom"), "boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
			s := clientflags.RegisterPFlags(fs, "test", os.Getenv)
			if err := fs.Parse([]string{"--token=" + tt.token}); err != nil {
				t.Fatal(err)
			}
			if got := s.Describe(tt.err); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

// closedAddr is a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
