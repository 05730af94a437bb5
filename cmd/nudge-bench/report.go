package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
)

// stats are one workload's counters, shared by its goroutines.
type stats struct {
	name   string
	lat    *Recorder // from the due time (open loop) or the send
	svc    Histogram // from the send: the service time alone
	mu     sync.Mutex
	errors map[string]uint64 // by gRPC code name
	// Atomically updated by the workload, read by progress.
	ops                          counter // calls (ingest: batches) answered, errors included
	events                       counter // ingest: events answered
	degraded                     counter // decide: degraded answers
	applied, duplicate, rejected counter
	sent                         counter // ingest: events sent (first sends only)
	notSent                      counter // planned calls never started (pacing fell behind)
	givenUp                      counter // ingest: batches never answered after the stream retries
}

func newStats(name string) *stats {
	return &stats{name: name, lat: NewRecorder(), errors: make(map[string]uint64)}
}

func (s *stats) addError(c codes.Code) {
	s.mu.Lock()
	s.errors[c.String()]++
	s.mu.Unlock()
}

func (s *stats) errorCount() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var n uint64
	for _, v := range s.errors {
		n += v
	}
	return n
}

// latencyJSON are latencies in microseconds.
type latencyJSON struct {
	P50  float64 `json:"p50"`
	P90  float64 `json:"p90"`
	P99  float64 `json:"p99"`
	P999 float64 `json:"p999"`
	Max  float64 `json:"max"`
	Mean float64 `json:"mean"`
}

// workloadJSON is one workload's summary. Keys are stable.
type workloadJSON struct {
	Name       string            `json:"name"`
	Seconds    float64           `json:"seconds"`
	Ops        uint64            `json:"ops"`         // calls; ingest: batches
	OpsPerSec  float64           `json:"ops_per_sec"` // throughput of calls
	Events     uint64            `json:"events"`      // ingest: events acknowledged
	EventsPerS float64           `json:"events_per_sec"`
	LatencyUS  latencyJSON       `json:"latency_us"`         // from the due time when paced
	ServiceUS  latencyJSON       `json:"service_latency_us"` // from the actual send
	Errors     map[string]uint64 `json:"errors"`             // by gRPC code
	ErrorTotal uint64            `json:"errors_total"`
	Degraded   uint64            `json:"degraded"`
	NotSent    uint64            `json:"not_sent"`
	Applied    uint64            `json:"applied"`
	Duplicate  uint64            `json:"duplicate"`
	Rejected   uint64            `json:"rejected"`
}

// ratioJSON compares decide with floor: decide's latency over floor's.
type ratioJSON struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
}

// check is one verification.
type check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// reportJSON is the final line on stdout.
type reportJSON struct {
	Workload   string         `json:"workload"`
	Params     map[string]any `json:"params"`
	Results    []workloadJSON `json:"results"`
	FloorRatio *ratioJSON     `json:"floor_ratio,omitempty"`
	Actions    *actionsJSON   `json:"actions,omitempty"`  // the actions workload
	Txn        *txnJSON       `json:"txn,omitempty"`      // the peer-watch workload
	Timers     *timersJSON    `json:"timers,omitempty"`   // the timers workload
	Shoppers   *shoppersJSON  `json:"shoppers,omitempty"` // the shoppers workload
	Features   *featuresJSON  `json:"features,omitempty"` // the features workload
	// ClientCores is the CPU nudge-bench itself used during the
	// workloads, in cores: on a small machine it is taken from the server.
	ClientCores float64 `json:"client_cores"`
	Verified    bool    `json:"verified"` // --verify given
	Checks      []check `json:"checks"`
	OK          bool    `json:"ok"` // every check passed
}

func latencyOf(h *Histogram) latencyJSON {
	return latencyJSON{
		P50: us(h.Quantile(0.5)), P90: us(h.Quantile(0.9)), P99: us(h.Quantile(0.99)),
		P999: us(h.Quantile(0.999)), Max: us(h.Max()), Mean: us(h.Mean()),
	}
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// summary turns s, measured over elapsed, into its JSON form.
func (s *stats) summary(elapsed time.Duration) workloadJSON {
	h := &s.lat.Total
	s.mu.Lock()
	errs := maps.Clone(s.errors)
	s.mu.Unlock()
	w := workloadJSON{
		Name: s.name, Seconds: elapsed.Seconds(),
		Ops: s.ops.Load(), Events: s.events.Load(),
		LatencyUS: latencyOf(h), ServiceUS: latencyOf(&s.svc),
		Errors: errs, Degraded: s.degraded.Load(), NotSent: s.notSent.Load(),
		Applied: s.applied.Load(), Duplicate: s.duplicate.Load(), Rejected: s.rejected.Load(),
	}
	for _, v := range errs {
		w.ErrorTotal += v
	}
	if sec := elapsed.Seconds(); sec > 0 {
		w.OpsPerSec = float64(w.Ops) / sec
		w.EventsPerS = float64(w.Events) / sec
	}
	return w
}

// printHuman writes the report for people.
func printHuman(out io.Writer, r reportJSON) {
	fmt.Fprintf(out, "== nudge-bench %s\n", r.Workload)
	keys := slices.Sorted(maps.Keys(r.Params))
	var ps []string
	for _, k := range keys {
		ps = append(ps, fmt.Sprintf("%s=%v", k, r.Params[k]))
	}
	fmt.Fprintf(out, "parameters: %s\n", strings.Join(ps, " "))
	for _, w := range r.Results {
		fmt.Fprintf(out, "-- %s: %.2fs, %d calls (%.0f/s)", w.Name, w.Seconds, w.Ops, w.OpsPerSec)
		if w.Events > 0 {
			fmt.Fprintf(out, ", %d events (%.0f events/s; applied %d, duplicate %d, rejected %d)", w.Events, w.EventsPerS, w.Applied, w.Duplicate, w.Rejected)
		}
		fmt.Fprintln(out)
		l := w.LatencyUS
		fmt.Fprintf(out, "   latency: p50 %s  p90 %s  p99 %s  p999 %s  max %s  mean %s\n",
			fmtUS(l.P50), fmtUS(l.P90), fmtUS(l.P99), fmtUS(l.P999), fmtUS(l.Max), fmtUS(l.Mean))
		if s := w.ServiceUS; s != l {
			fmt.Fprintf(out, "   service time (from the actual send): p50 %s  p90 %s  p99 %s  p999 %s  max %s\n",
				fmtUS(s.P50), fmtUS(s.P90), fmtUS(s.P99), fmtUS(s.P999), fmtUS(s.Max))
		}
		fmt.Fprintf(out, "   errors: %d", w.ErrorTotal)
		for _, k := range slices.Sorted(maps.Keys(w.Errors)) {
			fmt.Fprintf(out, " %s=%d", k, w.Errors[k])
		}
		fmt.Fprintf(out, "  degraded: %d  not sent (pacing behind): %d\n", w.Degraded, w.NotSent)
		if w.NotSent > 0 {
			fmt.Fprintf(out, "   WARNING: the target rate was not sustained: %d planned calls never started (the callers were all busy until the drain limit); their latencies are missing from the quantiles, which are therefore too low; try more --concurrency or a lower --rate\n", w.NotSent)
		}
	}
	if a := r.Actions; a != nil {
		fmt.Fprintf(out, "actions: built to fire %d, fired %d, received %d (%.0f/s), missing %d, deliveries %d, other runs' %d; stragglers took %.2fs; subscribe errors %d %s\n",
			a.Blocks, a.Fired, a.Received, a.ActionsPerSec, a.Missing, a.Deliveries, a.Foreign, a.GraceWaitS, a.SubErrors, a.LastSubErr)
	}
	if t := r.Txn; t != nil {
		fmt.Fprintf(out, "transactions: %d committed, %d retries, %d failed %s\n", t.Committed, t.Retries, t.Failed, t.FirstErr)
	}
	if sj := r.Shoppers; sj != nil {
		printShoppers(out, sj)
	}
	if f := r.Features; f != nil {
		fmt.Fprintf(out, "features: %s (rules %s); %d rows: %d with a feature error, %d of users without a profile\n",
			strings.Join(f.Served, ","), f.RulesVersion, f.Rows, f.RowErrors, f.NotFound)
		if f.FirstRowError != "" {
			fmt.Fprintf(out, "   first feature error: %s\n", f.FirstRowError)
		}
	}
	fmt.Fprintf(out, "nudge-bench itself used %.2f cores\n", r.ClientCores)
	if r.FloorRatio != nil {
		fmt.Fprintf(out, "decide / floor: p50 %.2fx  p99 %.2fx\n", r.FloorRatio.P50, r.FloorRatio.P99)
	}
	for _, c := range r.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		fmt.Fprintf(out, "verify %s %s: %s\n", mark, c.Name, c.Detail)
	}
}

func fmtUS(v float64) string {
	return time.Duration(v * 1e3).Round(time.Microsecond).String()
}

// printJSON writes r as one line.
func printJSON(out io.Writer, r reportJSON) error {
	if r.Checks == nil {
		r.Checks = []check{}
	}
	for i := range r.Results {
		if r.Results[i].Errors == nil {
			r.Results[i].Errors = map[string]uint64{}
		}
	}
	enc := json.NewEncoder(out) // one line, with its newline
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}

// progress prints a line per second on out until stop is closed: per
// workload the calls done, the rate over the last second and that second's
// p99.
func progress(out io.Writer, every time.Duration, stop <-chan struct{}, all ...*stats) {
	t := time.NewTicker(every)
	defer t.Stop()
	start := time.Now()
	last := make([]uint64, len(all))
	prev := start
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			var parts []string
			for i, s := range all {
				done := s.ops.Load()
				win := s.lat.SwapWindow()
				rate := float64(done-last[i]) / now.Sub(prev).Seconds()
				last[i] = done
				part := fmt.Sprintf("%s done=%d rate=%.0f/s p99=%s", s.name, done, rate, win.Quantile(0.99).Round(time.Microsecond))
				if ev := s.events.Load(); ev > 0 {
					part += fmt.Sprintf(" events=%d", ev)
				}
				if e := s.errorCount(); e > 0 {
					part += fmt.Sprintf(" errors=%d", e)
				}
				parts = append(parts, part)
			}
			prev = now
			fmt.Fprintf(out, "[%5.1fs] %s\n", now.Sub(start).Seconds(), strings.Join(parts, " | "))
		}
	}
}

// counter is a count shared between a workload's goroutines.
type counter = atomic.Uint64
