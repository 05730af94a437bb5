package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/internal/version"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// readyTimeout bounds the wait for nudged to answer its health check.
const readyTimeout = 15 * time.Second

// run is the whole command; it returns the exit status: 0 done (and
// verified, with --verify), 1 a failure or a failed check, 2 bad flags.
func run(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	cfg, err := parseConfig(args, stderr, getenv, time.Now())
	if errors.Is(err, flag.ErrHelp) {
		return 2
	}
	if err != nil { // flag's own errors are printed by the flag set already
		if errors.As(err, new(usageError)) || !strings.HasPrefix(err.Error(), "flag ") {
			fmt.Fprintln(stderr, "nudge-bench:", err)
		}
		return 2
	}
	if cfg.Version {
		fmt.Fprintln(stdout, version.String("nudge-bench"))
		return 0
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cfg.ServeHealth != "" {
		if err := serveHealth(ctx, cfg.ServeHealth, stderr); err != nil {
			fmt.Fprintln(stderr, "nudge-bench:", err)
			return 1
		}
		return 0
	}
	r, err := bench(ctx, cfg, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "nudge-bench:", err)
		if errors.As(err, new(usageError)) {
			return 2
		}
		return 1
	}
	printHuman(stdout, r)
	if err := printJSON(stdout, r); err != nil {
		fmt.Fprintln(stderr, "nudge-bench:", err)
		return 1
	}
	if !r.OK {
		return 1
	}
	return 0
}

// bench runs the configured workloads and returns the report.
func bench(ctx context.Context, cfg config, stderr io.Writer) (reportJSON, error) {
	var conns []*client.Client
	if !cfg.only("peer-watch") { // the only workload without nudged
		var err error
		if conns, err = cfg.dial(); err != nil {
			return reportJSON{}, err
		}
		defer func() {
			for _, c := range conns {
				_ = c.Close()
			}
		}()
		if err := waitReady(ctx, conns[0]); err != nil {
			return reportJSON{}, err
		}
	}
	var err error
	var rdb *redis.Client
	if cfg.RedisAddr != "" {
		rdb = redis.NewClient(&redis.Options{Addr: cfg.RedisAddr, PoolSize: cfg.Concurrency + 4})
		defer rdb.Close()
		if err := rdb.Ping(ctx).Err(); err != nil {
			return reportJSON{}, fmt.Errorf("--redis-addr %s: %w", cfg.RedisAddr, err)
		}
	}
	r := reportJSON{Workload: strings.Join(cfg.Workloads, ","), Params: cfg.params(), Verified: cfg.Verify, OK: true}
	if cfg.Seed {
		start := time.Now()
		seedProfiles := seed
		if cfg.has("features") {
			seedProfiles = seedHistory
		}
		n, err := seedProfiles(ctx, cfg, conns)
		if err != nil {
			return r, fmt.Errorf("seed: %w", err)
		}
		fmt.Fprintf(stderr, "seeded %d profiles in %v\n", n, time.Since(start).Round(time.Millisecond))
	}
	var ingestStats *stats
	var baseline uint64
	if cfg.has("ingest") || cfg.has("mixed") || cfg.has("actions") || cfg.has("timers") || cfg.has("shoppers") {
		ingestStats = newStats("ingest")
		if cfg.Verify && rdb != nil {
			if baseline, err = sumViews(ctx, cfg, rdb); err != nil {
				return r, err
			}
		}
	}
	cpu0, wall0 := cpuTime(), time.Now()
	switch {
	case cfg.only("ingest"):
		elapsed := withProgress(cfg, stderr, func() {
			ingest(ctx, cfg, conns, ingestPlan{events: cfg.Events}, ingestStats)
		}, ingestStats)
		r.Results = append(r.Results, ingestStats.summary(elapsed))
	case cfg.only("actions"):
		ing, act, aj := runActions(ctx, cfg, conns, ingestStats, stderr)
		r.Results = append(r.Results, ing, act)
		r.Actions = &aj
	case cfg.only("timers"):
		ing, late, tj, err := runTimers(ctx, cfg, conns, rdb, ingestStats, stderr)
		if err != nil {
			return r, err
		}
		r.Results = append(r.Results, ing, late)
		r.Timers = &tj
	case cfg.only("shoppers"):
		res, sj, err := runShoppers(ctx, cfg, conns, rdb, ingestStats, stderr)
		if err != nil {
			return r, err
		}
		r.Results = append(r.Results, res...)
		r.Shoppers = &sj
	case cfg.only("peer-watch"):
		st := newStats("peer-watch")
		var res workloadJSON
		var tj txnJSON
		withProgress(cfg, stderr, func() { res, tj, err = runPeerWatch(ctx, cfg, rdb, st) }, st)
		if err != nil {
			return r, err
		}
		r.Results = append(r.Results, res)
		r.Txn = &tj
	case cfg.only("freshness"):
		read := cfg
		read.Addr = cfg.ReadAddr
		readConns, err := read.dial()
		if err != nil {
			return r, err
		}
		defer func() {
			for _, c := range readConns {
				_ = c.Close()
			}
		}()
		st := newStats("freshness")
		elapsed := withProgress(cfg, stderr, func() { err = runFreshness(ctx, cfg, conns, readConns, st) }, st)
		if err != nil {
			return r, err
		}
		r.Results = append(r.Results, st.summary(elapsed))
	case cfg.only("mixed"):
		dec := newStats("decide")
		var ingestElapsed time.Duration
		elapsed := withProgress(cfg, stderr, func() {
			var wg sync.WaitGroup
			wg.Go(func() {
				start := time.Now()
				ingest(ctx, cfg, conns, ingestPlan{events: cfg.mixedEvents(), rate: cfg.IngestRate, start: start}, ingestStats)
				ingestElapsed = time.Since(start)
			})
			paced(ctx, cfg, cfg.Duration, dec, decideCall(cfg, conns))
			wg.Wait()
		}, ingestStats, dec)
		r.Results = append(r.Results, ingestStats.summary(ingestElapsed), dec.summary(elapsed))
	default: // decide, decide-http, floor, health, features, decide,floor, decide-http,decide
		// The paced calls, each a result: a workload, or a batch size of
		// features.
		var names []string
		var calls []callFunc
		var tally *featureTally
		for _, w := range cfg.Workloads {
			switch w {
			case "decide":
				calls = append(calls, decideCall(cfg, conns))
			case "floor":
				calls = append(calls, floorCall(cfg, conns, rdb))
			case "decide-http":
				calls = append(calls, decideHTTPCall(cfg))
			case "health":
				calls = append(calls, healthCall(conns))
			case "features":
				tally = &featureTally{}
				for _, size := range cfg.BatchSizes {
					names = append(names, featureName(size))
					calls = append(calls, featuresCall(cfg, conns, size, tally))
				}
				continue
			}
			names = append(names, w)
		}
		rounds := 1
		if len(calls) > 1 {
			rounds = cfg.Rounds
		}
		all := make([]*stats, len(calls))
		elapsed := make([]time.Duration, len(calls))
		for i, name := range names {
			all[i] = newStats(name)
		}
		withProgress(cfg, stderr, func() {
			for range rounds {
				for i, call := range calls {
					start := time.Now()
					paced(ctx, cfg, cfg.Duration/time.Duration(rounds), all[i], call)
					elapsed[i] += time.Since(start)
				}
			}
		}, all...)
		for i := range all {
			r.Results = append(r.Results, all[i].summary(elapsed[i]))
		}
		if tally != nil {
			f := tally.summary(cfg)
			r.Features = &f
		}
		if len(cfg.Workloads) == 2 {
			d, f := &all[0].lat.Total, &all[1].lat.Total
			r.FloorRatio = &ratioJSON{
				P50: ratio(d.Quantile(0.5), f.Quantile(0.5)),
				P99: ratio(d.Quantile(0.99), f.Quantile(0.99)),
			}
		}
	}
	r.ClientCores = (cpuTime() - cpu0).Seconds() / time.Since(wall0).Seconds()
	if ctx.Err() != nil {
		return r, fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if r.Shoppers != nil {
		// checked below
	} else if cfg.Verify && r.Timers != nil {
		for _, w := range r.Results {
			r.Checks = append(r.Checks, check{Name: w.Name + " errors", OK: w.ErrorTotal == 0, Detail: fmt.Sprintf("%d call errors", w.ErrorTotal)})
		}
		r.Checks = append(r.Checks, timerChecks(*r.Timers)...)
	} else if cfg.Verify {
		r.Checks = verify(ctx, cfg, r.Results, rdb, baseline)
		if r.Actions != nil {
			r.Checks = append(r.Checks, actionChecks(*r.Actions)...)
		}
		if r.Features != nil {
			r.Checks = append(r.Checks, featureChecks(cfg, *r.Features)...)
		}
	}
	if r.Txn != nil { // always: a floor that lost updates is no floor
		r.Checks = append(r.Checks, peerCheck(*r.Txn))
	}
	if r.Shoppers != nil { // always: the simulator is a check
		for _, w := range r.Results {
			r.Checks = append(r.Checks, check{Name: w.Name + " errors", OK: w.ErrorTotal == 0 && w.Rejected == 0,
				Detail: fmt.Sprintf("%d call errors, %d events rejected", w.ErrorTotal, w.Rejected)})
		}
		r.Checks = append(r.Checks, shopperChecks(cfg, *r.Shoppers)...)
	}
	for _, c := range r.Checks {
		r.OK = r.OK && c.OK
	}
	return r, nil
}

// cpuTime is the CPU time (user and system) this process used so far; 0
// where getrusage fails.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// mixedEvents is how many events mixed sends: --ingest-rate for --duration.
func (c config) mixedEvents() int { return max(int(c.IngestRate*c.Duration.Seconds()), 1) }

func ratio(a, b time.Duration) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// withProgress runs f with the progress lines on stderr (unless --quiet)
// and returns how long f took.
func withProgress(cfg config, stderr io.Writer, f func(), all ...*stats) time.Duration {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if !cfg.Quiet {
		wg.Go(func() { progress(stderr, time.Second, stop, all...) })
	}
	start := time.Now()
	f()
	elapsed := time.Since(start)
	close(stop)
	wg.Wait()
	return elapsed
}

// waitReady waits until nudged answers its health check.
func waitReady(ctx context.Context, c *client.Client) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(c.Conn()).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return fmt.Errorf("nudged health check: %w", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("nudged health check: %s", resp.GetStatus())
	}
	return nil
}

// params are the flags that shaped the run, for the report.
func (c config) params() map[string]any {
	p := map[string]any{"addr": c.Addr, "conns": c.Conns, "users": c.Users, "dist": c.Dist}
	if c.Dist == "zipf" {
		p["zipf_s"] = c.ZipfS
	}
	if c.has("ingest") || c.has("mixed") || c.has("actions") {
		p["streams"], p["batch"], p["inflight"], p["prefix"] = c.Streams, c.Batch, c.InFlight, c.Prefix
	}
	if c.has("ingest") {
		p["events"] = c.Events
	}
	if c.has("mixed") || c.has("actions") {
		p["ingest_rate"], p["events"] = c.IngestRate, c.mixedEvents()
	}
	switch {
	case c.only("actions"):
		p["duration_s"], p["group"], p["subscribers"], p["action_every"], p["grace_s"] = c.Duration.Seconds(), c.Group, c.Subscribers, c.ActionEvery, c.Grace.Seconds()
		delete(p, "dist") // fresh users, one per block
		delete(p, "zipf_s")
		delete(p, "users")
	case c.only("timers"):
		p["timers"], p["timer_rate"], p["timer_lead_s"], p["ingest_rate"], p["group"] = c.Timers, c.TimerRate, c.TimerLead.Seconds(), c.IngestRate, c.Group
		delete(p, "dist")
		delete(p, "zipf_s")
	case c.only("shoppers"):
		p = map[string]any{"addr": c.Addr, "conns": c.Conns, "parts": strings.Join(c.Parts, ","), "streams": c.Streams, "batch": c.Batch, "inflight": c.InFlight}
		if c.hasPart("measure") || c.hasPart("ingest") {
			p["seeds"], p["seed_users"], p["p_control"], p["p_treated"] = c.Seeds, c.SeedUsers, c.PControl, c.PTreated
		}
		if c.hasPart("learn") {
			p["learn"], p["learn_tail"], p["learn_rate"], p["learn_rates"], p["concurrency"] = c.Learn, c.LearnTail, c.LearnRate, c.LearnRates, c.Concurrency
		}
	case c.only("peer-watch"):
		p["concurrency"], p["duration_s"], p["events"], p["max_attempts"] = c.Concurrency, c.Duration.Seconds(), c.Events, peerMaxAttempts
		delete(p, "addr")
		delete(p, "conns")
	case !c.only("ingest"):
		p["rate"], p["concurrency"], p["duration_s"], p["seed"] = c.Rate, c.Concurrency, c.Duration.Seconds(), c.Seed
		if c.has("decide") || c.has("mixed") {
			p["channel"] = c.Channel
			p["budget_ms"] = float64(c.Budget) / 1e6
		}
	}
	if c.only("features") {
		p["batch_sizes"], p["features"] = c.BatchSizes, "all"
		if c.Features != nil {
			p["features"] = strings.Join(c.Features, ",")
		}
		if c.Seed {
			p["seed_events"], p["seed_span_h"] = c.SeedEvents, c.SeedSpan.Hours()
		}
		if len(c.BatchSizes) > 1 {
			p["rounds"] = c.Rounds
		}
	}
	if len(c.Workloads) > 1 {
		p["rounds"] = c.Rounds
	}
	return p
}

// viewChunk is how many profiles sumViews reads per round trip.
const viewChunk = 1000

// sumViews is the sum of the users' all-time view counts, read from Redis
// directly.
func sumViews(ctx context.Context, cfg config, rdb *redis.Client) (uint64, error) {
	store := redisstore.New(rdb, redisstore.Options{Buckets: cfg.Buckets})
	var sum uint64
	ids := make([]string, 0, viewChunk)
	for lo := 0; lo < cfg.Users; lo += viewChunk {
		ids = ids[:0]
		for u := lo; u < min(lo+viewChunk, cfg.Users); u++ {
			ids = append(ids, cfg.userID(u))
		}
		profiles, errs := store.GetMany(ctx, ids, nil)
		for i, p := range profiles {
			switch {
			case errors.Is(errs[i], profile.ErrNotFound):
			case errs[i] != nil:
				return 0, fmt.Errorf("read profile %s: %w", ids[i], errs[i])
			default:
				sum += p.Total("view")
			}
		}
	}
	return sum, nil
}

// verify checks the run: every ingested event applied exactly once, no
// rejects, no call errors, and with Redis the view totals grew by the
// events sent.
func verify(ctx context.Context, cfg config, results []workloadJSON, rdb *redis.Client, baseline uint64) []check {
	var checks []check
	add := func(name string, ok bool, format string, a ...any) {
		checks = append(checks, check{Name: name, OK: ok, Detail: fmt.Sprintf(format, a...)})
	}
	for _, w := range results {
		add(w.Name+" errors", w.ErrorTotal == 0, "%d call errors", w.ErrorTotal)
		if w.Name != "ingest" {
			continue
		}
		want := uint64(cfg.Events)
		if cfg.has("mixed") || cfg.has("actions") {
			want = uint64(cfg.mixedEvents())
		}
		add("ingest exactly once", w.Applied+w.Duplicate == want && w.Rejected == 0,
			"applied %d + duplicate %d = %d of %d events sent, %d rejected", w.Applied, w.Duplicate, w.Applied+w.Duplicate, want, w.Rejected)
		if rdb == nil {
			continue
		}
		after, err := sumViews(ctx, cfg, rdb)
		if err != nil {
			add("profiles view totals", false, "%v", err)
			continue
		}
		// Equal to applied, not to the events sent: a re-run with the same
		// --prefix applies nothing (all duplicates) and must add nothing.
		add("profiles view totals", after-baseline == w.Applied,
			"view totals grew by %d (%d -> %d), applied %d", after-baseline, baseline, after, w.Applied)
	}
	return checks
}
