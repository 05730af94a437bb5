package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/internal/clientflags"
)

// config is every setting of a run, from the flags.
type config struct {
	Workloads []string // ingest, decide, floor, mixed, actions, features, peer-watch; "decide,floor" is the only pair
	Addr      string
	HTTPAddr  string // nudged's HTTP/JSON listener (decide-http)
	Conns     int
	// Security, as nudgectl and nudge-demo (clientflags).
	Security *clientflags.Flags

	// Users and their ids: UserPrefix + 0..Users-1.
	Users      int
	UserPrefix string
	Dist       string // zipf or uniform
	ZipfS      float64

	// Ingest.
	Events     int
	Streams    int
	Batch      int
	InFlight   int
	Prefix     string  // event id prefix, unique per run
	IngestRate float64 // events/s of mixed and actions

	// Decide and floor.
	Rate        float64 // calls/s; 0: as fast as Concurrency callers go
	Concurrency int
	Duration    time.Duration
	Channel     string
	Budget      time.Duration // 0: the server's
	Rounds      int           // decide,floor: alternate the two this many times
	Seed        bool

	// Features: users per GetFeatures call, one result per size (run in
	// turn, --rounds times, each for Duration in all); the features asked
	// (nil: every feature of the rules); and what --seed writes per user:
	// SeedEvents events over the SeedSpan before now. Set for the
	// features workload alone.
	BatchSizes []int
	Features   []string
	SeedEvents int
	SeedSpan   time.Duration

	// Actions: the subscriber's consumer group and how many members, the
	// events per fired action, and how long to wait for stragglers.
	Group       string
	Subscribers int
	ActionEvery int
	Grace       time.Duration

	// Timers: how many journeys, how many come due per second, how long
	// after the start the first is due, and the bundled journey's trigger
	// and wait.
	Timers       int
	TimerRate    float64
	TimerLead    time.Duration
	TimerWait    time.Duration
	TimerTrigger string

	// Shoppers: which parts, the seeds (campaigns) and users of each, the
	// true conversion rates, and the learning run.
	Parts      []string
	Seeds      int
	SeedUsers  int
	PControl   float64
	PTreated   float64
	Learn      int
	LearnTail  int
	LearnRate  float64
	LearnRates []float64

	Verify    bool
	RedisAddr string
	// ReadAddr is the nudged freshness asks decisions of; ServeHealth the
	// address --serve-health serves on.
	ReadAddr, ServeHealth string
	// Version: print the version and exit.
	Version bool
	Buckets int
	Quiet   bool
}

// usageError is a flag value or combination that cannot work: exit 2.
type usageError = clientflags.UsageError

// parseConfig reads the flags; getenv supplies $NUDGE_TOKEN and now the
// default event id prefix.
func parseConfig(args []string, stderr io.Writer, getenv func(string) string, now time.Time) (config, error) {
	var c config
	fs := flag.NewFlagSet("nudge-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	workload := fs.String("workload", "ingest", "ingest, decide, decide-http, floor, health, freshness, mixed, actions, timers, shoppers, features, peer-watch, or decide,floor or decide-http,decide (both in one run, alternating, see --rounds)")
	fs.StringVar(&c.Addr, "addr", "127.0.0.1:7070", "nudged address")
	fs.IntVar(&c.Conns, "conns", 2, "gRPC connections; streams and callers are spread over them")
	c.Security = clientflags.Register(fs, "ingest and decide", getenv)
	fs.IntVar(&c.Users, "users", 100_000, "users: events are spread over them, decisions asked for them, --seed writes them")
	fs.StringVar(&c.UserPrefix, "user-prefix", "bench-user-", "user ids are this prefix and 0..users-1")
	fs.StringVar(&c.Dist, "dist", "zipf", "how users are drawn: zipf or uniform")
	fs.Float64Var(&c.ZipfS, "zipf-s", 1.1, "Zipf exponent s (> 1)")
	fs.IntVar(&c.Events, "events", 1_000_000, "ingest: events to send")
	fs.IntVar(&c.Streams, "streams", 4, "ingest: concurrent IngestService/Stream calls")
	fs.IntVar(&c.Batch, "batch", 0, "ingest, mixed, actions: events per batch, at most 5000 (default 500; actions 100)")
	fs.IntVar(&c.InFlight, "inflight", 8, "ingest: batches in flight per stream")
	fs.StringVar(&c.Prefix, "prefix", "", "ingest: event id prefix, so that a re-run does not deduplicate (default: from the start time)")
	fs.Float64Var(&c.IngestRate, "ingest-rate", 0, "mixed, actions: events per second sent during --duration (default 20000; actions 10000)")
	fs.Float64Var(&c.Rate, "rate", 5000, "decide, floor, mixed, features: calls per second, open loop (0: as fast as --concurrency callers go; features' default)")
	fs.IntVar(&c.Concurrency, "concurrency", 16, "decide, floor, mixed, features, peer-watch: concurrent callers (peer-watch: workers)")
	fs.DurationVar(&c.Duration, "duration", 20*time.Second, "decide, floor, mixed, actions, features: how long to send (decide,floor and features' batch sizes: each); peer-watch: its time bound")
	fs.StringVar(&c.Channel, "channel", "sms", "decide: channel asked for")
	fs.DurationVar(&c.Budget, "budget", 0, "decide: budget of each call (default: the server's)")
	fs.IntVar(&c.Rounds, "rounds", 2, "decide,floor: alternate decide and floor this many times, each for duration/rounds (features: the batch sizes)")
	fs.BoolVar(&c.Seed, "seed", false, "decide, floor, mixed: first write one profile per user through IngestService/Publish; features: a history per user (--seed-events, --seed-span)")
	batchSizes := fs.String("batch-sizes", "1,10,100", "features: users per GetFeatures call, comma separated, each at most 1000; each size is a result of its own")
	features := fs.String("features", "", "features: the features asked for, comma separated (default: every feature of nudged's rules)")
	seedEvents := fs.Int("seed-events", 20, "features: events per user --seed writes")
	seedSpan := fs.Duration("seed-span", 89*24*time.Hour, "features: --seed spreads each user's events uniformly over this long before now (within nudged's profile retention, 90 days by default)")
	fs.StringVar(&c.Group, "group", "nudge-bench", "actions: the subscribers' consumer group")
	fs.IntVar(&c.Subscribers, "subscribers", 1, "actions: members of the group, each on its own ActionService/Subscribe stream")
	fs.IntVar(&c.ActionEvery, "action-every", 10, "actions: one action per this many events, 3..18 (a fresh user views one category 3 times and others once)")
	fs.DurationVar(&c.Grace, "grace", 5*time.Second, "actions: how long to wait for actions still due after the last event was answered")
	fs.IntVar(&c.Timers, "timers", 100_000, "timers: journeys scheduled (add_to_cart events of fresh users)")
	fs.Float64Var(&c.TimerRate, "timer-rate", 10_000, "timers: journeys coming due per second")
	fs.DurationVar(&c.TimerLead, "timer-lead", 15*time.Second, "timers: the first journey is due this long after the start (scheduling must fit in it)")
	fs.DurationVar(&c.TimerWait, "timer-wait", time.Hour, "timers: the wait of the journey's trigger in nudged's rules")
	fs.StringVar(&c.TimerTrigger, "timer-trigger", "cart-abandoned", "timers: the journey's trigger id in nudged's rules (on add_to_cart with an item)")
	parts := fs.String("parts", "measure,learn", "shoppers: measure (exact counts, interval coverage), learn (thompson offers), ingest (the measure part's events alone)")
	fs.IntVar(&c.Seeds, "seeds", 20, "shoppers: campaigns measured, each with its own users (at most 20, the campaigns of examples/shoppers.yaml)")
	fs.IntVar(&c.SeedUsers, "seed-users", 20_000, "shoppers: users per campaign, each viewing once")
	fs.Float64Var(&c.PControl, "p-control", 0.003, "shoppers: true conversion rate of control users")
	fs.Float64Var(&c.PTreated, "p-treated", 0.021, "shoppers: true conversion rate of treated users")
	fs.IntVar(&c.Learn, "learn", 20_000, "shoppers: decisions before the learning is judged")
	fs.IntVar(&c.LearnTail, "learn-tail", 5_000, "shoppers: decisions after --learn over which the best offer's share is judged")
	fs.Float64Var(&c.LearnRate, "learn-rate", 1000, "shoppers: decisions per second of the learn part")
	learnRates := fs.String("learn-rates", "0.01,0.02,0.04", "shoppers: true conversion rates of learn-a, learn-b and learn-c")
	fs.BoolVar(&c.Verify, "verify", false, "check the run: ingest exactly once (and the profiles' view totals with --redis-addr); no call errors; actions: every fired action delivered")
	fs.StringVar(&c.RedisAddr, "redis-addr", "", "nudged's Redis (standalone, no auth): needed by floor and peer-watch, and by --verify to read profiles back")
	fs.StringVar(&c.ReadAddr, "read-addr", "", "freshness: the nudged decisions are asked of (events go to --addr)")
	fs.StringVar(&c.HTTPAddr, "http-addr", "", "decide-http: nudged's HTTP/JSON listener host:port (plaintext; the token, if any, as a bearer)")
	fs.StringVar(&c.ServeHealth, "serve-health", "", "serve a bare grpc-go health service on this address until stopped, instead of a workload (the CPU floor of --workload health)")
	fs.IntVar(&c.Buckets, "buckets", 1024, "nudged's profile buckets (its key layout), for --redis-addr")
	fs.BoolVar(&c.Quiet, "quiet", false, "no progress lines on stderr")
	fs.BoolVar(&c.Version, "version", false, "print nudge-bench's version and exit")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, usageError{Msg: fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	c.Parts = strings.Split(*parts, ",")
	rates, err := parseRates(*learnRates)
	if err != nil {
		return c, usageError{Msg: err.Error()}
	}
	c.LearnRates = rates
	if c.Prefix == "" {
		c.Prefix = "nb" + now.UTC().Format("20060102T150405.000")
	}
	c.Workloads = strings.Split(*workload, ",")
	if c.has("features") {
		if c.BatchSizes, err = parseSizes(*batchSizes); err != nil {
			return c, usageError{Msg: err.Error()}
		}
		if *features != "" {
			c.Features = strings.Split(*features, ",")
		}
		c.SeedEvents, c.SeedSpan = *seedEvents, *seedSpan
		// A sweep of batch sizes compares latencies: closed loop unless
		// a rate is asked for.
		rateSet := false
		fs.Visit(func(f *flag.Flag) { rateSet = rateSet || f.Name == "rate" })
		if !rateSet {
			c.Rate = 0
		}
	}
	// The actions workload measures latency, so it sends smaller batches at
	// a lower rate than the throughput workloads by default.
	if c.Batch == 0 {
		c.Batch = 500
		if c.has("actions") {
			c.Batch = 100
		}
	}
	if c.IngestRate == 0 {
		c.IngestRate = 20_000
		switch {
		case c.has("actions"):
			c.IngestRate = 10_000
		case c.has("timers"):
			c.IngestRate = 5_000
		}
	}
	return c, c.validate()
}

// validate checks the values and their combinations.
func (c config) validate() error {
	bad := func(format string, a ...any) error { return usageError{Msg: fmt.Sprintf(format, a...)} }
	switch w := strings.Join(c.Workloads, ","); w {
	case "ingest", "decide", "decide-http", "floor", "health", "freshness", "mixed", "actions", "timers", "shoppers", "features", "peer-watch", "decide,floor", "decide-http,decide":
	default:
		return bad("--workload %q: want ingest, decide, decide-http, floor, health, freshness, mixed, actions, timers, shoppers, features, peer-watch, decide,floor or decide-http,decide", w)
	}
	if c.has("decide-http") && c.HTTPAddr == "" {
		return bad("--workload decide-http needs --http-addr")
	}
	if c.has("freshness") && c.ReadAddr == "" {
		return bad("--workload freshness needs --read-addr")
	}
	for _, p := range c.Parts {
		if p != "measure" && p != "learn" && p != "ingest" {
			return bad("--parts %q: want measure, learn or ingest, comma separated", p)
		}
	}
	if c.hasPart("measure") && c.hasPart("ingest") {
		return bad("--parts: measure already sends the ingest part's events")
	}
	if _, err := c.Security.Options(); err != nil { // contradictory flags, unreadable files
		return err
	}
	switch {
	case c.Conns < 1:
		return bad("--conns must be at least 1")
	case c.Users < 1:
		return bad("--users must be at least 1")
	case c.Dist != "zipf" && c.Dist != "uniform":
		return bad("--dist %q: want zipf or uniform", c.Dist)
	case c.Dist == "zipf" && c.ZipfS <= 1:
		return bad("--zipf-s must be above 1")
	case c.Events < 1:
		return bad("--events must be at least 1")
	case c.Streams < 1 || c.InFlight < 1:
		return bad("--streams and --inflight must be at least 1")
	case c.Batch < 1 || c.Batch > 5000:
		return bad("--batch must be within 1..5000 (the server's limit)")
	case c.Rate < 0 || c.IngestRate < 0:
		return bad("--rate and --ingest-rate must be 0 or more")
	case c.Concurrency < 1:
		return bad("--concurrency must be at least 1")
	case c.Duration <= 0:
		return bad("--duration must be positive")
	case c.Rounds < 1:
		return bad("--rounds must be at least 1")
	case c.Buckets < 1:
		return bad("--buckets must be at least 1")
	case c.has("floor") && c.RedisAddr == "":
		return bad("floor reads a profile from Redis on every call: give --redis-addr")
	case c.has("peer-watch") && c.RedisAddr == "":
		return bad("peer-watch runs its transactions on Redis directly: give --redis-addr")
	case c.Seed && (c.only("ingest") || c.only("actions") || c.only("peer-watch")):
		return bad("--seed is for decide, floor and mixed")
	case c.Subscribers < 1:
		return bad("--subscribers must be at least 1")
	case c.ActionEvery < 3 || c.ActionEvery > maxActionEvery:
		return bad("--action-every must be within 3..%d", maxActionEvery)
	case c.Grace < 0:
		return bad("--grace must not be negative")
	case c.Group == "":
		return bad("--group must not be empty")
	case c.Timers < 1 || c.TimerRate <= 0 || c.TimerLead <= 0 || c.TimerWait <= 0:
		return bad("--timers, --timer-rate, --timer-lead and --timer-wait must be positive")
	case c.Seeds < 1 || c.Seeds > 20:
		return bad("--seeds must be within 1..20 (the campaigns of examples/shoppers.yaml)")
	case c.SeedUsers < 1 || c.Learn < 0 || c.LearnTail < 1 || c.LearnRate <= 0:
		return bad("--seed-users, --learn-tail and --learn-rate must be positive, --learn not negative")
	case !(c.PControl > 0 && c.PControl < 1 && c.PTreated >= 0 && c.PTreated <= 1):
		return bad("--p-control must be in (0, 1) and --p-treated in [0, 1]")
	case c.has("features") && (c.SeedEvents < 1 || c.SeedSpan <= 0):
		return bad("--seed-events and --seed-span must be positive")
	}
	return nil
}

func (c config) has(w string) bool     { return slices.Contains(c.Workloads, w) }
func (c config) hasPart(p string) bool { return slices.Contains(c.Parts, p) }
func (c config) only(w string) bool    { return len(c.Workloads) == 1 && c.Workloads[0] == w }

// userID is the id of user u.
func (c config) userID(u int) string { return c.UserPrefix + strconv.Itoa(u) }

// dial opens --conns connections.
func (c config) dial() ([]*client.Client, error) {
	var conns []*client.Client
	for range c.Conns {
		cl, err := c.Security.Dial(c.Addr)
		if err != nil {
			for _, d := range conns {
				_ = d.Close()
			}
			return nil, err
		}
		conns = append(conns, cl)
	}
	return conns, nil
}

// parseSizes reads --batch-sizes: distinct sizes within 1..maxFeatureUsers.
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > maxFeatureUsers {
			return nil, fmt.Errorf("--batch-sizes %q: want sizes from 1 to %d, comma separated", s, maxFeatureUsers)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("--batch-sizes %q: %d twice", s, n)
		}
		out = append(out, n)
	}
	return out, nil
}
