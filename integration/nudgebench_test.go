package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/internal/redistest"
)

// benchReport is the part of nudge-bench's JSON line the test reads.
type benchReport struct {
	Workload string `json:"workload"`
	Results  []struct {
		Name      string `json:"name"`
		Ops       uint64 `json:"ops"`
		Events    uint64 `json:"events"`
		Applied   uint64 `json:"applied"`
		Duplicate uint64 `json:"duplicate"`
		Rejected  uint64 `json:"rejected"`
		NotSent   uint64 `json:"not_sent"`
		Errors    uint64 `json:"errors_total"`
		LatencyUS struct {
			P50 float64 `json:"p50"`
			P99 float64 `json:"p99"`
		} `json:"latency_us"`
	} `json:"results"`
	FloorRatio *struct {
		P50 float64 `json:"p50"`
		P99 float64 `json:"p99"`
	} `json:"floor_ratio"`
	Features *struct {
		Served    []string `json:"served"`
		Rows      uint64   `json:"rows"`
		RowErrors uint64   `json:"row_errors"`
		NotFound  uint64   `json:"not_found"`
	} `json:"features"`
	Verified bool `json:"verified"`
	Checks   []struct {
		Name string `json:"name"`
		OK   bool   `json:"ok"`
	} `json:"checks"`
	OK bool `json:"ok"`
}

// runNudgeBench runs the binary, bounded, and parses its last stdout line.
func runNudgeBench(t *testing.T, bin string, args ...string) benchReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, append(args, "--quiet")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("nudge-bench %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	var r benchReport
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("last line is not the JSON report: %v\n%s", err, stdout.String())
	}
	if !r.OK || !r.Verified || len(r.Checks) == 0 {
		t.Fatalf("verification did not pass:\n%s", stdout.String())
	}
	for _, c := range r.Checks {
		if !c.OK {
			t.Errorf("check %s failed", c.Name)
		}
	}
	return r
}

// The built nudge-bench against a built nudged and a real Redis, small
// sizes: ingest verified exactly once (Zipf; then uniform, and again with
// the same event ids: all duplicates, nothing counted twice), decide and
// floor at a fixed rate with their ratio, and mixed.
func TestNudgeBenchAgainstNudged(t *testing.T) {
	nudgedBin, bench := buildNudged(t), buildCommand(t, "nudge-bench")
	rs := redistest.Start(t)
	n := startNudged(t, nudgedBin, "--redis-addr", rs.Addr)
	common := []string{"--addr", n.addr, "--redis-addr", rs.Addr, "--users", "2000", "--verify"}

	// Uniform: with Zipf the hottest of 2000 users gets more events than
	// the server remembers ids per user (DedupMax 2048), so a replay of
	// its oldest ones would count again, as documented.
	ingest := append([]string{"--workload", "ingest", "--events", "20000", "--dist", "uniform", "--prefix", "it"}, common...)
	r := runNudgeBench(t, bench, append([]string{"--workload", "ingest", "--events", "20000", "--prefix", "zipf"}, common...)...)
	if len(r.Results) != 1 || r.Results[0].Applied != 20000 {
		t.Fatalf("ingest, Zipf: %+v", r.Results)
	}
	r = runNudgeBench(t, bench, ingest...)
	if len(r.Results) != 1 || r.Results[0].Applied != 20000 || r.Results[0].Ops != 40 {
		t.Fatalf("ingest: %+v", r.Results)
	}
	r = runNudgeBench(t, bench, ingest...)
	if got := r.Results[0]; got.Applied != 0 || got.Duplicate != 20000 {
		t.Fatalf("ingest again with the same ids: applied %d duplicate %d, want 0 and 20000", got.Applied, got.Duplicate)
	}

	r = runNudgeBench(t, bench, append([]string{"--workload", "decide,floor", "--rate", "500", "--duration", "2s", "--seed", "--prefix", "it2"}, common...)...)
	if len(r.Results) != 2 || r.Results[0].Name != "decide" || r.Results[1].Name != "floor" || r.FloorRatio == nil {
		t.Fatalf("decide,floor: %+v", r)
	}
	for _, w := range r.Results {
		// 2 s at 500/s: 1000 calls planned, each run half in 2 rounds.
		if w.Ops+w.NotSent != 1000 || w.Ops < 900 || w.Errors != 0 || w.LatencyUS.P50 <= 0 || w.LatencyUS.P99 < w.LatencyUS.P50 {
			t.Errorf("%s: %+v", w.Name, w)
		}
	}
	if r.FloorRatio.P50 <= 0 || r.FloorRatio.P99 <= 0 {
		t.Errorf("floor ratio %+v", *r.FloorRatio)
	}

	r = runNudgeBench(t, bench, append([]string{"--workload", "mixed", "--rate", "200", "--ingest-rate", "5000", "--duration", "2s", "--prefix", "it3"}, common...)...)
	if len(r.Results) != 2 || r.Results[0].Name != "ingest" || r.Results[0].Applied != 10000 || r.Results[1].Name != "decide" || r.Results[1].Ops < 360 {
		t.Fatalf("mixed: %+v", r.Results)
	}
}

// The features workload, small: GetFeatures for batches of 1 and 10 of
// 500 users with seeded 90-day histories, every row with all the bundled
// rules' features, and one result per batch size.
func TestNudgeBenchFeatures(t *testing.T) {
	nudgedBin, bench := buildNudged(t), buildCommand(t, "nudge-bench")
	rs := redistest.Start(t)
	n := startNudged(t, nudgedBin, "--redis-addr", rs.Addr)
	r := runNudgeBench(t, bench, "--workload", "features", "--addr", n.addr, "--users", "500", "--dist", "uniform",
		"--seed", "--seed-events", "10", "--batch-sizes", "1,10", "--concurrency", "2", "--duration", "2s", "--verify")
	if len(r.Results) != 2 || r.Results[0].Name != "features-1" || r.Results[1].Name != "features-10" {
		t.Fatalf("results %+v, want features-1 and features-10", r.Results)
	}
	for _, w := range r.Results {
		if w.Ops == 0 || w.Errors != 0 || w.LatencyUS.P50 <= 0 || w.LatencyUS.P99 < w.LatencyUS.P50 {
			t.Errorf("%s: %+v", w.Name, w)
		}
	}
	if f := r.Features; f == nil || len(f.Served) == 0 || f.Rows != r.Results[0].Ops+10*r.Results[1].Ops || f.RowErrors != 0 || f.NotFound != 0 {
		t.Errorf("features section %+v", f)
	}
}
