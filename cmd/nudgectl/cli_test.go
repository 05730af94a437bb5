package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// runCtl runs a command line and returns its exit status and outputs.
func runCtl(args ...string) (status int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	status = run(args, &out, &errOut)
	return status, out.String(), errOut.String()
}

// Every command has its own help, on stdout with status 0, whichever way
// it is asked for.
func TestHelpPerSubcommand(t *testing.T) {
	t.Setenv("NUDGE_TOKEN", "env-t0ken")
	tests := []struct {
		name    string
		args    []string
		wantOut []string
	}{
		{"help send", []string{"help", "send"},
			[]string{"Replays events", "Usage:\n  nudgectl send [FILE.jsonl|-] [flags]", "--allow-rejects", "--quiet", "Connection flags", "--addr string", "--token string"}},
		{"send -h", []string{"send", "-h"}, []string{"Usage:\n  nudgectl send [FILE.jsonl|-] [flags]"}},
		{"send --help", []string{"send", "--help"}, []string{"Usage:\n  nudgectl send [FILE.jsonl|-] [flags]"}},
		{"a subcommand's help", []string{"help", "groups", "delete"},
			[]string{"Usage:\n  nudgectl groups delete NAME [flags]", "Stop its subscribers first"}},
		{"a subcommand -h", []string{"decisions", "tail", "-h"},
			[]string{"Usage:\n  nudgectl decisions tail [flags]", "--addr string", "--all", "-n, --n int"}},
		{"a group of commands", []string{"help", "actions"},
			[]string{"Usage:\n  nudgectl actions [command]", "dead ", "tail "}},
		{"Go's -help", []string{"report", "-help"}, []string{"Usage:\n  nudgectl report [CAMPAIGN] [flags]"}},
		{"the security flags, without the token's value", []string{"decide", "-h"},
			[]string{"--channel string", "--token string", "$NUDGE_TOKEN", "--ca-file", "--cert-file", "--key-file", "--server-name", "--insecure", "--tls", "--timeout duration"}},
		{"the command list", []string{"--help"},
			[]string{"Available Commands:", "actions ", "completion ", "decide ", "decisions ", "groups ", "profile ", "report ", "rules ", "send ", "version "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, out, errOut := runCtl(tt.args...)
			if status != 0 || errOut != "" {
				t.Errorf("status %d, want 0; stderr:\n%s", status, errOut)
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(out, want) {
					t.Errorf("help lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "env-t0ken") {
				t.Errorf("help shows the token:\n%s", out)
			}
		})
	}
}

// A command line cobra refuses exits 2 with what is wrong and where to
// look, on stderr alone.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr []string
	}{
		{"an unknown flag", []string{"decide", "u", "--channel", "web", "--frob"},
			[]string{"nudgectl decide: unknown flag: --frob\n", "Run 'nudgectl decide --help' for usage.\n"}},
		{"an unknown shorthand", []string{"groups", "list", "-x"},
			[]string{"nudgectl groups list: unknown shorthand flag: 'x' in -x\n", "Run 'nudgectl groups list --help' for usage."}},
		{"a bad value", []string{"actions", "tail", "--group", "g", "-n", "many"},
			[]string{"nudgectl actions tail: invalid argument \"many\" for \"-n, --n\" flag"}},
		{"a required flag", []string{"decide", "u"}, []string{`nudgectl decide: required flag(s) "channel" not set`}},
		{"a required flag given empty", []string{"actions", "tail", "--group="}, []string{`nudgectl actions tail: flag "group" is empty`}},
		{"a missing argument", []string{"profile", "get"}, []string{"nudgectl profile get: takes one USER, got 0 arguments"}},
		{"an unknown command", []string{"frobnicate"}, []string{`nudgectl: unknown command "frobnicate" for "nudgectl"`}},
		{"an unknown subcommand", []string{"profile", "show", "u"}, []string{`nudgectl profile: unknown command "show" for "nudgectl profile"`}},
		{"no command", nil, []string{"Usage:\n  nudgectl [command]"}},
		{"no subcommand", []string{"rules"}, []string{"Usage:\n  nudgectl rules [command]", "check ", "test "}},
		{"a flag of another command", []string{"version", "--json"}, []string{"nudgectl version: unknown flag: --json"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, out, errOut := runCtl(tt.args...)
			if status != 2 || out != "" {
				t.Errorf("status %d, want 2; stdout:\n%s", status, out)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(errOut, want) {
					t.Errorf("stderr lacks %q:\n%s", want, errOut)
				}
			}
		})
	}
}

// Flags with one dash, as Go's flag package took them, still work.
func TestGoStyleFlags(t *testing.T) {
	status, out, errOut := runCtl("rules", "check", "-json", "../../examples/rules.yaml")
	var res checkResult
	if status != 0 || json.Unmarshal([]byte(out), &res) != nil || !res.OK {
		t.Errorf("rules check -json: status %d\nstdout: %s\nstderr: %s", status, out, errOut)
	}
	status, _, errOut = runCtl("decide", "u", "-channel=web", "-addr", closedAddr(t), "-timeout", "1s", "-insecure")
	if status != 1 || !strings.Contains(errOut, "nudgectl decide: Unavailable") {
		t.Errorf("decide with one-dash flags: status %d, want 1 (the call fails)\nstderr: %s", status, errOut)
	}
	// After "--", arguments are left alone.
	if got := goStyleLongFlags(newRootCmd(nil, nil), []string{"decide", "-channel", "web", "-n", "--", "-json"}); strings.Join(got, " ") != "decide --channel web -n -- -json" {
		t.Errorf("goStyleLongFlags = %q", got)
	}
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		status, out, errOut := runCtl(args...)
		if status != 0 || !strings.HasPrefix(out, "nudgectl ") || strings.Count(out, "\n") != 1 {
			t.Errorf("%v: status %d\nstdout: %s\nstderr: %s", args, status, out, errOut)
		}
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		t.Run(shell, func(t *testing.T) {
			status, out, errOut := runCtl("completion", shell)
			if status != 0 || errOut != "" {
				t.Fatalf("status %d; stderr:\n%s", status, errOut)
			}
			if len(out) < 1000 || !strings.Contains(out, "nudgectl") {
				t.Errorf("completion %s: %d bytes, want a script that names nudgectl:\n%.500s", shell, len(out), out)
			}
		})
	}
	// What the scripts ask nudgectl for: the commands, then the flags.
	status, out, _ := runCtl("__complete", "gr")
	if status != 0 || !strings.HasPrefix(out, "groups\t") {
		t.Errorf("completing gr: status %d\n%s", status, out)
	}
	status, out, _ = runCtl("__complete", "send", "--all")
	if status != 0 || !strings.HasPrefix(out, "--allow-rejects\t") {
		t.Errorf("completing send --all: status %d\n%s", status, out)
	}
}

func TestPrintDeadLetters(t *testing.T) {
	var out bytes.Buffer
	printDeadLetters(&out, []deadLetterRow{
		{ID: "1700000000000-0", Group: "sms-sender", Deliveries: 5, Action: "a_1", User: "u42", Trigger: "coupon", Channel: "sms"},
		{ID: "1700000000001-0", Group: "push", Deliveries: 12, Action: "a_22", User: "u7"},
	})
	want := `ID               GROUP       DELIVERIES  ACTION  USER  TRIGGER  CHANNEL
1700000000000-0  sms-sender  5           a_1     u42   coupon   sms
1700000000001-0  push        12          a_22    u7    -        -
`
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	out.Reset()
	printDeadLetters(&out, nil)
	if out.String() != "no dead letters\n" {
		t.Errorf("no rows: %q", out.String())
	}
}

// actions dead prints a table by default and the JSON lines it always
// printed with --json.
func TestActionsDeadTable(t *testing.T) {
	e := newAdminRPCEnv(t)
	rdb := e.rdb
	for i, user := range []string{"u1", "u2"} {
		if err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: redisstore.DeadStream, ID: fmt.Sprintf("%d-0", i+1), Values: map[string]any{
			"dead_group": "sms-sender", "delivery_count": "5", "action_id": "a" + user, "user_id": user, "trigger_id": "coupon", "channel": "sms",
		}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	conn := []string{"--addr", e.addr, "--token", adminRPCOps, "--insecure"}
	status, out, errOut := runCtl(append([]string{"actions", "dead"}, conn...)...)
	want := `ID   GROUP       DELIVERIES  ACTION  USER  TRIGGER  CHANNEL
1-0  sms-sender  5           au1     u1    coupon   sms
2-0  sms-sender  5           au2     u2    coupon   sms
`
	if status != 0 || out != want {
		t.Errorf("actions dead: status %d\ngot\n%s\nwant\n%s\nstderr: %s", status, out, want, errOut)
	}
	status, out, errOut = runCtl(append([]string{"actions", "dead", "--json", "-n", "1"}, conn...)...)
	var line struct {
		ID            string
		Group         string
		DeliveryCount int64 `json:"delivery_count"`
	}
	if status != 0 || strings.Count(out, "\n") != 1 || json.Unmarshal([]byte(out), &line) != nil || line.ID != "1-0" || line.Group != "sms-sender" || line.DeliveryCount != 5 {
		t.Errorf("actions dead --json -n 1: status %d\nstdout: %s\nstderr: %s", status, out, errOut)
	}
}

// progressLineRE is a progress line of send when stderr is no terminal.
var progressLineRE = regexp.MustCompile(`^sent \d+  acked \d+  applied \d+  duplicate \d+  rejected \d+  \d+ events/s$`)

func TestLineProgress(t *testing.T) {
	var buf bytes.Buffer
	p := newSendProgress(&buf, os.Stdin, "day.jsonl", false)
	if _, ok := p.(*lineProgress); !ok {
		t.Fatalf("progress to a buffer is %T, want lines", p)
	}
	p.read(100)
	p.printf("day.jsonl:%d: malformed event\n", 3)
	p.update(client.Stats{Published: 1200, Acked: 1000, Applied: 990, Duplicate: 7, Rejected: 3}, 2*time.Second)
	p.finish(client.Stats{}, 3*time.Second)
	want := "day.jsonl:3: malformed event\nsent 1200  acked 1000  applied 990  duplicate 7  rejected 3  500 events/s\n"
	if buf.String() != want {
		t.Errorf("got %q\nwant %q", buf.String(), want)
	}

	buf.Reset()
	p = newSendProgress(&buf, os.Stdin, "day.jsonl", true)
	p.update(client.Stats{Published: 1}, time.Second)
	p.printf("day.jsonl:%d: malformed event\n", 3)
	if buf.String() != "day.jsonl:3: malformed event\n" {
		t.Errorf("quiet: got %q, want the message alone", buf.String())
	}

	// A file is no terminal either.
	f, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if p := newSendProgress(f, os.Stdin, "x", false); fmt.Sprintf("%T", p) != "*main.lineProgress" {
		t.Errorf("progress to a file is %T, want lines", p)
	}
}

// Without a terminal, send prints plain progress lines on stderr, no bar.
func TestSendProgressWithoutTerminal(t *testing.T) {
	defer func(d time.Duration) { progressInterval = d }(progressInterval)
	progressInterval = time.Millisecond
	addr := reportServer(t)
	at := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	var events strings.Builder
	const n = 3000
	for i := range n {
		fmt.Fprintf(&events, `{"event_id": "p-%d", "user_id": "u%d", "type": "view", "occurred_at": "%s"}`+"\n", i, i%50, at)
	}
	file := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(file, []byte(events.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	status, out, errOut := ctl(t, shopSecret, "send", file, "--addr", addr)
	if status != 0 || !strings.Contains(out, fmt.Sprintf("%d events sent: %d applied", n, n)) {
		t.Fatalf("send: status %d\nstdout: %s\nstderr: %s", status, out, errOut)
	}
	lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
	if errOut == "" || strings.ContainsAny(errOut, "\r\x1b") {
		t.Fatalf("stderr: want progress lines, no bar: %q", errOut)
	}
	for _, l := range lines {
		if !progressLineRE.MatchString(l) {
			t.Errorf("not a progress line: %q", l)
		}
	}

	status, _, errOut = ctl(t, shopSecret, "send", file, "--addr", addr, "--quiet")
	if status != 0 || errOut != "" {
		t.Errorf("send --quiet: status %d, stderr %q", status, errOut)
	}
}
