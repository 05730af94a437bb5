package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/internal/clientflags"
)

func parse(t *testing.T, env map[string]string, args ...string) (config, error) {
	t.Helper()
	return parseConfig(args, io.Discard, func(k string) string { return env[k] }, time.Date(2026, 11, 24, 21, 0, 0, 0, time.UTC))
}

func TestDefaults(t *testing.T) {
	c, err := parse(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := config{
		Workloads: []string{"ingest"}, Addr: "127.0.0.1:7070", Conns: 2,
		Users: 100_000, UserPrefix: "bench-user-", Dist: "zipf", ZipfS: 1.1,
		Events: 1_000_000, Streams: 4, Batch: 500, InFlight: 8, Prefix: "nb20261124T210000.000", IngestRate: 20_000,
		Rate: 5000, Concurrency: 16, Duration: 20 * time.Second, Channel: "sms", Rounds: 2, Buckets: 1024,
		Group: "nudge-bench", Subscribers: 1, ActionEvery: 10, Grace: 5 * time.Second,
		Timers: 100_000, TimerRate: 10_000, TimerLead: 15 * time.Second, TimerWait: time.Hour, TimerTrigger: "cart-abandoned",
		Parts: []string{"measure", "learn"}, Seeds: 20, SeedUsers: 20_000, PControl: 0.003, PTreated: 0.021,
		Learn: 20_000, LearnTail: 5_000, LearnRate: 1000, LearnRates: []float64{0.01, 0.02, 0.04},
	}
	if !slices.Equal(c.Workloads, want.Workloads) {
		t.Errorf("workloads %v", c.Workloads)
	}
	c.Workloads, want.Workloads = nil, nil
	c.Security = nil // its own package's tests cover it
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
}

// The actions workload measures latency: smaller batches and a lower rate
// by default, and explicit values win.
func TestActionsDefaults(t *testing.T) {
	c, err := parse(t, nil, "--workload", "actions")
	if err != nil {
		t.Fatal(err)
	}
	if c.Batch != 100 || c.IngestRate != 10_000 {
		t.Errorf("actions: batch %d, ingest rate %v; want 100 and 10000", c.Batch, c.IngestRate)
	}
	c, err = parse(t, nil, "--workload", "actions", "--batch", "20", "--ingest-rate", "500")
	if err != nil {
		t.Fatal(err)
	}
	if c.Batch != 20 || c.IngestRate != 500 {
		t.Errorf("explicit: batch %d, ingest rate %v; want 20 and 500", c.Batch, c.IngestRate)
	}
	if c, _ := parse(t, nil, "--workload", "mixed"); c.Batch != 500 || c.IngestRate != 20_000 {
		t.Errorf("mixed: batch %d, ingest rate %v; want 500 and 20000", c.Batch, c.IngestRate)
	}
}

func TestTokenFromEnvironment(t *testing.T) {
	env := map[string]string{clientflags.TokenEnv: "from-env"}
	if c, _ := parse(t, env); c.Security.Token() != "from-env" {
		t.Errorf("token %q, want the variable's", c.Security.Token())
	}
	if c, _ := parse(t, env, "--token", "flag"); c.Security.Token() != "flag" {
		t.Errorf("token %q, want the flag's", c.Security.Token())
	}
	if c, _ := parse(t, env, "--token="); c.Security.Token() != "" {
		t.Errorf("token %q, want none with an explicit empty --token", c.Security.Token())
	}
}

func TestFlagValidation(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string // "" for valid
	}{
		{"decide,floor", []string{"--workload", "decide,floor", "--redis-addr", "127.0.0.1:6379"}, ""},
		{"mixed with seed", []string{"--workload", "mixed", "--seed"}, ""},
		{"closed loop", []string{"--workload", "decide", "--rate", "0"}, ""},
		{"uniform ignores zipf-s", []string{"--dist", "uniform", "--zipf-s", "0.5"}, ""},
		{"actions", []string{"--workload", "actions", "--subscribers", "2", "--action-every", "3", "--grace", "0s"}, ""},
		{"peer-watch", []string{"--workload", "peer-watch", "--redis-addr", "127.0.0.1:6379", "--dist", "uniform"}, ""},
		{"peer-watch needs redis", []string{"--workload", "peer-watch"}, "--redis-addr"},
		{"actions with seed", []string{"--workload", "actions", "--seed"}, "--seed"},
		{"peer-watch with seed", []string{"--workload", "peer-watch", "--redis-addr", "x:1", "--seed"}, "--seed"},
		{"zero subscribers", []string{"--workload", "actions", "--subscribers", "0"}, "--subscribers"},
		{"action-every too small", []string{"--workload", "actions", "--action-every", "2"}, "--action-every"},
		{"action-every too large", []string{"--workload", "actions", "--action-every", "19"}, "--action-every"},
		{"negative grace", []string{"--workload", "actions", "--grace", "-1s"}, "--grace"},
		{"empty group", []string{"--workload", "actions", "--group", ""}, "--group"},
		{"actions,ingest", []string{"--workload", "actions,ingest"}, "--workload"},
		{"unknown workload", []string{"--workload", "read"}, "--workload"},
		{"floor,decide order", []string{"--workload", "floor,decide", "--redis-addr", "x:1"}, "--workload"},
		{"floor needs redis", []string{"--workload", "floor"}, "--redis-addr"},
		{"decide,floor needs redis", []string{"--workload", "decide,floor"}, "--redis-addr"},
		{"insecure and tls", []string{"--insecure", "--ca-file", "ca.pem"}, "--insecure"},
		{"zero conns", []string{"--conns", "0"}, "--conns"},
		{"zero users", []string{"--users", "0"}, "--users"},
		{"bad dist", []string{"--dist", "pareto"}, "--dist"},
		{"zipf s at 1", []string{"--zipf-s", "1"}, "--zipf-s"},
		{"batch over the server's limit", []string{"--batch", "5001"}, "--batch"},
		{"zero inflight", []string{"--inflight", "0"}, "--inflight"},
		{"negative rate", []string{"--workload", "decide", "--rate", "-1"}, "--rate"},
		{"zero duration", []string{"--workload", "decide", "--duration", "0s"}, "--duration"},
		{"zero rounds", []string{"--rounds", "0"}, "--rounds"},
		{"seed with ingest", []string{"--seed"}, "--seed"},
		{"positional argument", []string{"extra"}, "unexpected argument"},
		{"shoppers", []string{"--workload", "shoppers", "--parts", "ingest", "--seeds", "3", "--p-treated", "0"}, ""},
		{"shoppers unknown part", []string{"--workload", "shoppers", "--parts", "measure,stats"}, "--parts"},
		{"shoppers measure and ingest", []string{"--workload", "shoppers", "--parts", "measure,ingest"}, "--parts"},
		{"shoppers too many seeds", []string{"--workload", "shoppers", "--seeds", "21"}, "--seeds"},
		{"shoppers control rate 0", []string{"--workload", "shoppers", "--p-control", "0"}, "--p-control"},
		{"shoppers two learn rates", []string{"--workload", "shoppers", "--learn-rates", "0.1,0.2"}, "--learn-rates"},
		{"shoppers bad learn rate", []string{"--workload", "shoppers", "--learn-rates", "0.1,2,0.3"}, "--learn-rates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, nil, tt.args...)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if !errors.As(err, new(usageError)) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %v, want a usage error mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestRunExitStatusForBadFlags(t *testing.T) {
	var stderr bytes.Buffer
	getenv := func(string) string { return "" }
	if code := run([]string{"--workload", "floor"}, io.Discard, &stderr, getenv); code != 2 || !strings.Contains(stderr.String(), "--redis-addr") {
		t.Errorf("exit %d, stderr %q", code, stderr.String())
	}
	if code := run([]string{"--no-such-flag"}, io.Discard, io.Discard, getenv); code != 2 {
		t.Errorf("unknown flag: exit %d", code)
	}
	if code := run([]string{"-h"}, io.Discard, io.Discard, getenv); code != 2 {
		t.Errorf("-h: exit %d", code)
	}
}

// The JSON line keeps its keys: scripts read them.
func TestJSONLineKeys(t *testing.T) {
	st := newStats("decide")
	st.lat.Record(time.Millisecond)
	st.ops.Add(1)
	r := reportJSON{Workload: "decide", Params: map[string]any{"rate": 5000.0}, Results: []workloadJSON{st.summary(time.Second)}, OK: true}
	var out bytes.Buffer
	if err := printJSON(&out, r); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out.String(), "\n"); n != 1 {
		t.Fatalf("%d lines, want 1: %s", n, out.String())
	}
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"workload", "params", "results", "verified", "checks", "ok"} {
		if _, ok := got[k]; !ok {
			t.Errorf("key %q missing", k)
		}
	}
	res := got["results"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "seconds", "ops", "ops_per_sec", "events", "events_per_sec", "latency_us", "service_latency_us", "errors", "errors_total", "degraded", "not_sent", "applied", "duplicate", "rejected"} {
		if _, ok := res[k]; !ok {
			t.Errorf("result key %q missing", k)
		}
	}
	lat := res["latency_us"].(map[string]any)
	for _, k := range []string{"p50", "p90", "p99", "p999", "max", "mean"} {
		if _, ok := lat[k]; !ok {
			t.Errorf("latency key %q missing", k)
		}
	}
	if p50 := lat["p50"].(float64); p50 < 990 || p50 > 1010 {
		t.Errorf("p50 %v µs, want about 1000", p50)
	}
}
