package integration

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"gopkg.in/yaml.v3"

	"github.com/nudge-dm/nudge/internal/daytime"
	"github.com/nudge-dm/nudge/internal/redistest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// promtool validates the alert rules and runs their unit tests
// (deploy/prometheus/alerts_test.yml). scripts/ensure-tools.sh installs it.
func TestAlertRulesPassPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install the Debian package prometheus (scripts/ensure-tools.sh does)")
	}
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "../deploy/prometheus"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// metricNameRE finds metric names in PromQL: nudge's own, the gRPC ones
// from otelgrpc, and the process and Go runtime collectors. Label names
// are removed first (labelsRE).
var (
	metricNameRE = regexp.MustCompile(`\b((?:nudge|rpc|process|go)_[a-z0-9_]+)\b`)
	labelsRE     = regexp.MustCompile(`\{[^}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
)

func metricNames(expr string) []string {
	return metricNameRE.FindAllString(labelsRE.ReplaceAllString(expr, " "), -1)
}

// namesInQueries returns the metric names the dashboard and the alert rules
// query.
func namesInQueries(t *testing.T) map[string][]string {
	t.Helper()
	used := map[string][]string{} // name -> where
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	raw, err := os.ReadFile("../deploy/grafana/nudge.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("deploy/grafana/nudge.json is not valid JSON: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricNames(tg.Expr) {
				used[m] = append(used[m], "dashboard panel "+strconv.Quote(p.Title))
			}
		}
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	raw, err = os.ReadFile("../deploy/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &rules); err != nil {
		t.Fatal(err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			for _, m := range metricNames(r.Expr) {
				used[m] = append(used[m], "alert "+r.Alert)
			}
		}
	}
	if len(used) < 10 {
		t.Fatalf("found only %d metric names in the dashboard and alerts: is the pattern right?", len(used))
	}
	return used
}

// sample is one line of a Prometheus text scrape.
type sample struct {
	name   string
	labels string
	value  float64
}

var sampleRE = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)`)

func parseScrape(t *testing.T, text string) []sample {
	t.Helper()
	var out []sample
	for line := range strings.SplitSeq(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := sampleRE.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("unparsable /metrics line %q", line)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("unparsable value in %q", line)
		}
		out = append(out, sample{m[1], m[2], v})
	}
	return out
}

// sum adds the samples of a name whose labels contain every fragment.
func sum(samples []sample, name string, fragments ...string) (float64, bool) {
	var total float64
	found := false
	for _, s := range samples {
		if s.name != name {
			continue
		}
		ok := true
		for _, f := range fragments {
			ok = ok && strings.Contains(s.labels, f)
		}
		if ok {
			total += s.value
			found = true
		}
	}
	return total, found
}

// After traffic like the demo's, /metrics has every figure the issue names
// with non-zero values, the dashboard and the alerts query only metrics
// that exist, and the event lag shows an event that arrived 10 minutes
// late.
func TestMetricsAfterTrafficCoverDashboardAndAlerts(t *testing.T) {
	rs := redistest.Start(t)
	bin := buildNudged(t)
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, daytime.Rules(time.Now()), 0o600); err != nil {
		t.Fatal(err)
	}
	n := startNudged(t, bin, "--redis-addr", rs.Addr, "--rules", rules, "--rules-reload", "-1s",
		"--metrics-listen", "127.0.0.1:0", "--visibility-timeout", "1h")
	conn := dial(t, n.addr)
	ctx := t.Context()

	// Ingest: the seed scenario (3 phone views trigger an SMS action), one
	// event 10 minutes late, one re-sent (duplicate), one invalid, one older
	// than the retention.
	now := time.Now()
	ev := func(id string, ago time.Duration) *nudgev1.Event {
		return &nudgev1.Event{EventId: id, UserId: "obs-user", Type: "view", Category: "phones", OccurredAt: timestamppb.New(now.Add(-ago))}
	}
	first := ev("v1", 3*time.Second)
	first.Attributes = map[string]string{"tz": daytimeTZ()} // outside the bundled rules' quiet hours whatever the hour
	batch := []*nudgev1.Event{first, ev("v2", 2*time.Second), ev("v3", time.Second), ev("late", 10*time.Minute),
		{EventId: "bad", UserId: "obs-user", Type: "Not A Type", OccurredAt: timestamppb.New(now)}, ev("ancient", 91*24*time.Hour)}
	ingest := nudgev1.NewIngestServiceClient(conn)
	resp, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: batch})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetActions()) != 1 {
		t.Fatalf("the seed scenario emitted %d actions, want 1: %v", len(resp.GetActions()), resp)
	}
	if _, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: batch[:1]}); err != nil {
		t.Fatal(err)
	}
	// Decisions.
	decide := nudgev1.NewDecisionServiceClient(conn)
	for range 3 {
		if _, err := decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: "obs-user", Channel: "push", Budget: durationpb.New(time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	// Delivery: a group takes the action and acknowledges it; a second
	// group takes it and leaves it pending.
	actions := nudgev1.NewActionServiceClient(conn)
	for _, group := range []string{"obs-sender", "obs-lagging"} {
		sub, err := actions.Subscribe(ctx, &nudgev1.SubscribeRequest{Group: group, Consumer: "c1"})
		if err != nil {
			t.Fatal(err)
		}
		d, err := sub.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if group == "obs-sender" {
			if _, err := actions.Ack(ctx, &nudgev1.AckRequest{Group: group, Consumer: d.GetConsumer(), AckIds: []string{d.GetAckId()}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A broken rules file, reloaded at once by SIGHUP: refused and counted.
	if err := os.WriteFile(rules, []byte("triggers: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := n.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}

	// nudged logs the refusal after counting it: wait for that line.
	refused := time.After(20 * time.Second)
	for waiting := true; waiting; {
		select {
		case line, ok := <-n.logs:
			if !ok {
				t.Fatal("nudged exited")
			}
			waiting = !strings.Contains(line, "rules reload refused")
		case <-refused:
			t.Fatal("nudged did not log the refused reload within 20s")
		}
	}
	samples := parseScrape(t, httpGet(t, n.metrics))
	names := map[string]bool{}
	for _, s := range samples {
		names[s.name] = true
	}

	// Every metric the dashboard or an alert queries exists.
	used := namesInQueries(t)
	for _, name := range slices.Sorted(maps.Keys(used)) {
		if !names[name] {
			t.Errorf("%s is queried by %s but /metrics has no such series", name, strings.Join(slices.Compact(used[name]), ", "))
		}
	}

	// The figures the issue names, with non-zero values.
	for _, c := range []struct {
		name      string
		fragments []string
		want      float64 // at least
	}{
		{"nudge_events_total", []string{`status="applied"`}, 4},
		{"nudge_events_total", []string{`status="duplicate"`}, 1},
		{"nudge_events_total", []string{`status="rejected"`, `reason="invalid"`}, 1},
		{"nudge_events_total", []string{`status="rejected"`, `reason="too_old"`}, 1},
		{"nudge_event_lag_seconds_count", nil, 4},
		{"nudge_ingest_ack_latency_seconds_count", nil, 2},
		{"nudge_store_transactions_total", nil, 1}, // the re-sent batch commits nothing
		{"nudge_decisions_total", []string{`degraded="false"`}, 3},
		{"nudge_actions_emitted_total", nil, 1},
		{"nudge_actions_delivered_total", nil, 2},
		{"nudge_actions_acked_total", nil, 1},
		{"nudge_outbox_pending", []string{`group="obs-lagging"`}, 1},
		{"nudge_rules_info", []string{`version="`}, 1},
		{"nudge_rules_reloads_total", []string{`result="failed"`}, 1},
		{"nudge_rules_refused", nil, 1},
		{"rpc_server_call_duration_seconds_count", []string{`rpc_method="nudge.v1.DecisionService/GetDecision"`, `rpc_response_status_code="OK"`}, 3},
		{"rpc_server_call_duration_seconds_count", []string{`rpc_method="nudge.v1.IngestService/Publish"`}, 2},
		{"process_resident_memory_bytes", nil, 1},
	} {
		got, found := sum(samples, c.name, c.fragments...)
		if !found || got < c.want {
			t.Errorf("%s%v = %v (found %v), want at least %v", c.name, c.fragments, got, found, c.want)
		}
	}
	for _, c := range []struct {
		name      string
		fragments []string
	}{
		{"nudge_store_retries_exhausted_total", nil}, // present, zero: nothing gave up
		{"nudge_outbox_pending", []string{`group="obs-sender"`}},
		{"nudge_outbox_abandoned", []string{`group="obs-lagging"`}}, // idle, not for 24h
		{"nudge_outbox_trimmed_past_abandoned_total", nil},
	} {
		if got, found := sum(samples, c.name, c.fragments...); !found || got != 0 {
			t.Errorf("%s%v = %v (found %v), want a zero series", c.name, c.fragments, got, found)
		}
	}

	// Event lag: the late event is in the buckets above 5 minutes, the
	// fresh ones are not.
	le300, _ := sum(samples, "nudge_event_lag_seconds_bucket", `le="300"`)
	le1800, _ := sum(samples, "nudge_event_lag_seconds_bucket", `le="1800"`)
	le5, _ := sum(samples, "nudge_event_lag_seconds_bucket", `le="5"`)
	if le1800-le300 != 1 || le5 != 3 {
		t.Errorf("event lag buckets: le=5 %v (want the 3 fresh views), le=300..1800 %v (want the 10-minute-late one)", le5, le1800-le300)
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", fmt.Sprint(httpGet(t, n.metrics)))
	}
}
