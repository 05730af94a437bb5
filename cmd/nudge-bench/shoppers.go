package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The shoppers workload is a simulator that knows the truth, run against
// nudged with examples/shoppers.yaml:
//
//   - measure: --seeds campaigns (triggers sim-00, sim-01, ... on views
//     of their own category, each holding out half of its users), each
//     with --seed-users fresh users who view once; each user then buys
//     with probability --p-control or --p-treated (the article's 0.3% and
//     2.1% by default) by the group the campaign's split puts them in
//     (decision.InControl, the server's own hash). The events go through
//     the real ingest API. The campaign reports must then count exactly
//     the users the simulator exposed and converted, per variant (the
//     difference of the reports before and after the run), and the 95%
//     interval of the lift must contain the true lift in at least 90% of
//     the seeds (18 of 20);
//   - learn: --learn + --learn-tail decisions for fresh users on the
//     placement "learn", where the offers learn-a, learn-b and learn-c
//     compete by Thompson sampling; the simulator reports each send
//     (message_sent with the offer) and a purchase with the offer's true
//     rate (--learn-rates). The best offer must get at least 80% of the
//     sends after the first --learn; the regret (conversions lost against
//     always sending the best) is reported beside uniform random's;
//   - ingest: the measure part's events only, with no report read: the
//     ingest rate of the same events against nudged with measurement
//     off (settings.measure: false) is its baseline (scripts/bench.sh).

// shoppersJSON is the shoppers workload's own result.
type shoppersJSON struct {
	Seeds        int           `json:"seeds,omitempty"`
	SeedUsers    int           `json:"seed_users,omitempty"`
	TrueLift     float64       `json:"true_lift,omitempty"`
	Campaigns    []simCampaign `json:"campaigns,omitempty"`
	Exact        int           `json:"campaigns_exact"`
	Covered      int           `json:"intervals_covering_true_lift"`
	IngestEvents uint64        `json:"ingest_events,omitempty"`
	IngestPerSec float64       `json:"ingest_events_per_sec,omitempty"`
	Learn        *learnJSON    `json:"learn,omitempty"`
}

// simCampaign is one seed: what the simulator counted and what the
// report said.
type simCampaign struct {
	ID       string                 `json:"id"`
	Sim      profile.CampaignCounts `json:"simulated"`
	Report   profile.CampaignCounts `json:"reported"`
	Lift     float64                `json:"lift"`
	Low      float64                `json:"lift_ci_low"`
	High     float64                `json:"lift_ci_high"`
	PValue   float64                `json:"p_value"`
	HasLift  bool                   `json:"has_lift"`
	Exact    bool                   `json:"exact"`
	Contains bool                   `json:"contains_true_lift"`
}

// learnJSON is the learn part's result.
type learnJSON struct {
	Decisions     int       `json:"decisions"`
	Sends         []int     `json:"sends_per_offer"`
	TailSends     []int     `json:"tail_sends_per_offer"`
	BestShareTail float64   `json:"best_share_after_learn"`
	BestShareAll  float64   `json:"best_share_all"`
	Regret        float64   `json:"regret"`         // expected conversions lost against always the best
	UniformRegret float64   `json:"uniform_regret"` // the same for a uniform random choice
	Control       int       `json:"control"`
	Degraded      int       `json:"degraded"` // past the budget: no learn offer
	Errors        int       `json:"errors"`
	Rates         []float64 `json:"rates"`
}

// Campaign and offer ids of examples/shoppers.yaml.
func simCampaignID(k int) string { return fmt.Sprintf("sim-%02d", k) }

var learnOffers = []string{"learn-a", "learn-b", "learn-c"}

// shopperUser is user i of seed k (short, unique per run by the run tag).
func (c config) shopperUser(k, i int) string {
	return "s" + c.timerTag() + strconv.Itoa(k) + "-" + strconv.FormatInt(int64(i), 36)
}

// shopperEvents builds the measure part's events and the simulator's own
// counts: every view first (seed after seed), then the purchases, each
// a random time after its user's view.
func shopperEvents(cfg config, now time.Time) ([]*nudgev1.Event, []profile.CampaignCounts) {
	counts := make([]profile.CampaignCounts, cfg.Seeds)
	var views, buys []*nudgev1.Event
	base := now.Add(-2 * time.Hour)
	for k := range cfg.Seeds {
		id := simCampaignID(k)
		rng := rand.New(rand.NewPCG(hashString(cfg.Prefix), uint64(k)))
		for i := range cfg.SeedUsers {
			u := cfg.shopperUser(k, i)
			at := base.Add(time.Duration(i) * time.Millisecond)
			views = append(views, &nudgev1.Event{EventId: u + "v", UserId: u, Type: "view", Category: id, OccurredAt: timestamppb.New(at)})
			arm, p := &counts[k].Treated, cfg.PTreated
			if decision.InControl(u, id, 0.5) {
				arm, p = &counts[k].Control, cfg.PControl
			}
			arm.Exposed++
			if rng.Float64() >= p {
				continue
			}
			value := math.Round((10+rng.Float64()*90)*100) / 100
			arm.Converted++
			arm.Value += value
			buyAt := at.Add(time.Second + time.Duration(rng.Int64N(int64(time.Hour))))
			buys = append(buys, &nudgev1.Event{EventId: u + "p", UserId: u, Type: "purchase", Value: value, OccurredAt: timestamppb.New(buyAt)})
		}
	}
	return append(views, buys...), counts
}

// runShoppers runs the configured parts.
func runShoppers(ctx context.Context, cfg config, conns []*client.Client, rdb *redis.Client, ingestStats *stats, stderr io.Writer) ([]workloadJSON, shoppersJSON, error) {
	var sj shoppersJSON
	var results []workloadJSON
	admin := nudgev1.NewAdminServiceClient(conns[0].Conn())
	if cfg.hasPart("measure") || cfg.hasPart("ingest") {
		events, sim := shopperEvents(cfg, time.Now())
		var before map[string]profile.CampaignCounts
		if cfg.hasPart("measure") {
			var err error
			if before, err = campaignCounts(ctx, admin); err != nil {
				return nil, sj, err
			}
			for k := range cfg.Seeds {
				if _, ok := before[simCampaignID(k)]; !ok {
					return nil, sj, usageError{Msg: fmt.Sprintf("nudged's rules have no campaign %s: run nudged with --rules examples/shoppers.yaml", simCampaignID(k))}
				}
			}
		}
		plan := ingestPlan{events: len(events), event: func(i int, _ time.Time) *nudgev1.Event { return events[i] }}
		elapsed := withProgress(cfg, stderr, func() { ingest(ctx, cfg, conns, plan, ingestStats) }, ingestStats)
		w := ingestStats.summary(elapsed)
		results = append(results, w)
		sj.IngestEvents, sj.IngestPerSec = w.Events, w.EventsPerS
		if cfg.hasPart("measure") {
			after, err := campaignCounts(ctx, admin)
			if err != nil {
				return results, sj, err
			}
			sj.Seeds, sj.SeedUsers = cfg.Seeds, cfg.SeedUsers
			sj.TrueLift = cfg.PTreated/cfg.PControl - 1
			for k := range cfg.Seeds {
				id := simCampaignID(k)
				c := simCampaign{ID: id, Sim: sim[k], Report: diffCounts(after[id], before[id])}
				c.Exact = c.Report.Treated.Exposed == c.Sim.Treated.Exposed && c.Report.Treated.Converted == c.Sim.Treated.Converted &&
					c.Report.Control.Exposed == c.Sim.Control.Exposed && c.Report.Control.Converted == c.Sim.Control.Converted &&
					near(c.Report.Treated.Value, c.Sim.Treated.Value) && near(c.Report.Control.Value, c.Sim.Control.Value)
				cmp := decision.Compare(c.Report.Treated, c.Report.Control)
				c.Lift, c.Low, c.High, c.PValue, c.HasLift = cmp.Lift, cmp.LiftLow, cmp.LiftHigh, cmp.PValue, cmp.HasLift
				c.Contains = cmp.HasLift && c.Low <= sj.TrueLift && sj.TrueLift <= c.High
				if c.Exact {
					sj.Exact++
				}
				if c.Contains {
					sj.Covered++
				}
				sj.Campaigns = append(sj.Campaigns, c)
			}
		}
	}
	if cfg.hasPart("learn") {
		if rdb != nil {
			if err := resetLearnCounters(ctx, cfg, rdb); err != nil {
				return results, sj, err
			}
		}
		dec := newStats("learn-decide")
		var lj learnJSON
		elapsed := withProgress(cfg, stderr, func() { lj = runLearn(ctx, cfg, conns, dec) }, dec)
		results = append(results, dec.summary(elapsed))
		sj.Learn = &lj
	}
	return results, sj, nil
}

// near compares two sums of the same values added in another order.
func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func diffCounts(a, b profile.CampaignCounts) profile.CampaignCounts {
	d := func(x, y profile.Arm) profile.Arm {
		return profile.Arm{Exposed: x.Exposed - y.Exposed, Converted: x.Converted - y.Converted, Value: x.Value - y.Value}
	}
	return profile.CampaignCounts{Treated: d(a.Treated, b.Treated), Control: d(a.Control, b.Control)}
}

// campaignCounts reads every campaign's counts from nudged's reports.
func campaignCounts(ctx context.Context, admin nudgev1.AdminServiceClient) (map[string]profile.CampaignCounts, error) {
	resp, err := admin.ListCampaignReports(ctx, &nudgev1.ListCampaignReportsRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return nil, fmt.Errorf("ListCampaignReports: %w", err)
	}
	out := make(map[string]profile.CampaignCounts, len(resp.GetReports()))
	arm := func(v *nudgev1.VariantCounts) profile.Arm {
		return profile.Arm{Exposed: int64(v.GetExposedUsers()), Converted: int64(v.GetConvertedUsers()), Value: v.GetConversionValue()}
	}
	for _, r := range resp.GetReports() {
		out[r.GetCampaignId()] = profile.CampaignCounts{Treated: arm(r.GetTreated()), Control: arm(r.GetControl())}
	}
	return out, nil
}

// resetLearnCounters deletes the learn offers' counters, so that the
// sampler starts from nothing (nudged's copy catches up within its
// measurement.refresh).
func resetLearnCounters(ctx context.Context, cfg config, rdb *redis.Client) error {
	store := redisstore.New(rdb, redisstore.Options{Buckets: cfg.Buckets})
	if err := store.DeleteCounts(ctx, learnOffers); err != nil {
		return fmt.Errorf("reset the learn offers' counters: %w", err)
	}
	return nil
}

// runLearn asks --learn + --learn-tail decisions, paced at --learn-rate,
// and reports each send and, with the offer's true rate, a purchase.
func runLearn(ctx context.Context, cfg config, conns []*client.Client, st *stats) learnJSON {
	n := cfg.Learn + cfg.LearnTail
	lj := learnJSON{Decisions: n, Rates: cfg.LearnRates, Sends: make([]int, len(learnOffers)), TailSends: make([]int, len(learnOffers))}
	best := 0
	for i, r := range cfg.LearnRates {
		if r > cfg.LearnRates[best] {
			best = i
		}
	}
	var mu sync.Mutex
	var next atomic.Int64
	var control, degraded, errs atomic.Int64
	start := time.Now()
	interval := time.Duration(float64(time.Second) / cfg.LearnRate)
	var wg sync.WaitGroup
	for w := range cfg.Concurrency {
		wg.Go(func() {
			conn := conns[w%len(conns)]
			dc := nudgev1.NewDecisionServiceClient(conn.Conn())
			ic := nudgev1.NewIngestServiceClient(conn.Conn())
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				if !sleepUntil(ctx, start.Add(time.Duration(i)*interval)) {
					return
				}
				u := "l" + cfg.timerTag() + strconv.FormatInt(int64(i), 36)
				t0 := time.Now()
				resp, err := dc.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: u, Channel: "web", Placement: "learn"})
				st.lat.Record(time.Since(t0))
				st.svc.Record(time.Since(t0))
				st.ops.Add(1)
				if err != nil {
					errs.Add(1)
					st.addError(status.Code(err))
					continue
				}
				d := resp.GetDecision()
				switch {
				case d.GetDegraded():
					// Past the budget: the fallback, no learn offer.
					degraded.Add(1)
					st.degraded.Add(1)
					continue
				case d.GetControl():
					control.Add(1)
					continue
				}
				k := offerIndex(d.GetOffer().GetId())
				if k < 0 {
					errs.Add(1)
					st.addError(codes.Unknown)
					continue
				}
				mu.Lock()
				lj.Sends[k]++
				if i >= cfg.Learn {
					lj.TailSends[k]++
				}
				mu.Unlock()
				// Seeded by the decision, so the purchases drawn do not
				// depend on the goroutines' order.
				rng := rand.New(rand.NewPCG(hashString(cfg.Prefix), uint64(i)))
				now := time.Now()
				evs := []*nudgev1.Event{{EventId: u + "s", UserId: u, Type: "message_sent", Channel: "web",
					Attributes: map[string]string{"offer_id": learnOffers[k]}, OccurredAt: timestamppb.New(now.Add(-2 * time.Second))}}
				if rng.Float64() < cfg.LearnRates[k] {
					evs = append(evs, &nudgev1.Event{EventId: u + "p", UserId: u, Type: "purchase", Value: 1, OccurredAt: timestamppb.New(now.Add(-time.Second))})
				}
				if _, err := ic.Publish(ctx, &nudgev1.PublishRequest{Events: evs}); err != nil {
					errs.Add(1)
					st.addError(status.Code(err))
				}
			}
		})
	}
	wg.Wait()
	lj.Control, lj.Degraded, lj.Errors = int(control.Load()), int(degraded.Load()), int(errs.Load())
	mean := 0.0
	for _, r := range cfg.LearnRates {
		mean += r / float64(len(cfg.LearnRates))
	}
	sends, tail := 0, 0
	for k := range lj.Sends {
		sends += lj.Sends[k]
		tail += lj.TailSends[k]
		lj.Regret += float64(lj.Sends[k]) * (cfg.LearnRates[best] - cfg.LearnRates[k])
	}
	lj.UniformRegret = float64(sends) * (cfg.LearnRates[best] - mean)
	if sends > 0 {
		lj.BestShareAll = float64(lj.Sends[best]) / float64(sends)
	}
	if tail > 0 {
		lj.BestShareTail = float64(lj.TailSends[best]) / float64(tail)
	}
	return lj
}

func offerIndex(id string) int {
	for k, o := range learnOffers {
		if o == id {
			return k
		}
	}
	return -1
}

// shopperChecks are the shoppers workload's checks (always made: they
// are what it is for).
func shopperChecks(cfg config, sj shoppersJSON) []check {
	var out []check
	if cfg.hasPart("measure") {
		out = append(out,
			check{Name: "reports count exactly", OK: sj.Exact == sj.Seeds,
				Detail: fmt.Sprintf("%d of %d campaigns: exposed and converted users per variant and their value equal the simulator's", sj.Exact, sj.Seeds)},
			check{Name: "intervals cover the true lift", OK: sj.Covered*10 >= sj.Seeds*9,
				Detail: fmt.Sprintf("%d of %d 95%% intervals contain the true lift %.2f (want at least 90%%)", sj.Covered, sj.Seeds, sj.TrueLift)})
	}
	if l := sj.Learn; l != nil {
		out = append(out,
			check{Name: "the sampler learns", OK: l.BestShareTail >= 0.8 && l.Errors == 0,
				Detail: fmt.Sprintf("the best offer got %.1f%% of the sends after %d decisions (%.1f%% over all), regret %.0f vs uniform %.0f conversions, %d errors",
					100*l.BestShareTail, cfg.Learn, 100*l.BestShareAll, l.Regret, l.UniformRegret, l.Errors)})
	}
	return out
}

// parseRates reads --learn-rates.
func parseRates(s string) ([]float64, error) {
	var out []float64
	for f := range strings.SplitSeq(s, ",") {
		r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
		if err != nil || r < 0 || r > 1 {
			return nil, fmt.Errorf("--learn-rates: %q is not a rate in [0, 1]", f)
		}
		out = append(out, r)
	}
	if len(out) != len(learnOffers) {
		return nil, fmt.Errorf("--learn-rates: want %d rates (for %s), got %d", len(learnOffers), strings.Join(learnOffers, ", "), len(out))
	}
	return out, nil
}

// printShoppers writes the shoppers workload's result for people.
func printShoppers(out io.Writer, sj *shoppersJSON) {
	if len(sj.Campaigns) > 0 {
		fmt.Fprintf(out, "campaigns (true lift %.2f):\n", sj.TrueLift)
		fmt.Fprintf(out, "   %-7s %17s %17s %8s %20s %9s %s\n", "id", "treated conv/exp", "control conv/exp", "lift", "95% interval", "p", "")
		for _, c := range sj.Campaigns {
			mark := ""
			if !c.Exact {
				mark += " COUNTS DIFFER from the simulator's"
			}
			if !c.Contains {
				mark += " (misses the true lift)"
			}
			fmt.Fprintf(out, "   %-7s %8d/%-8d %8d/%-8d %8.2f [%8.2f, %8.2f] %9.2g%s\n", c.ID,
				c.Report.Treated.Converted, c.Report.Treated.Exposed, c.Report.Control.Converted, c.Report.Control.Exposed,
				c.Lift, c.Low, c.High, c.PValue, mark)
		}
	}
	if sj.IngestEvents > 0 {
		fmt.Fprintf(out, "ingest with measurement: %d events, %.0f events/s\n", sj.IngestEvents, sj.IngestPerSec)
	}
	if l := sj.Learn; l != nil {
		fmt.Fprintf(out, "learn: %d decisions (%d degraded), sends per offer %v (after the first part %v), control %d; best share %.1f%% after, %.1f%% over all; regret %.1f vs uniform %.1f conversions\n",
			l.Decisions, l.Degraded, l.Sends, l.TailSends, l.Control, 100*l.BestShareTail, 100*l.BestShareAll, l.Regret, l.UniformRegret)
	}
}
