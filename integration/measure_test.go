package integration

import (
	"context"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Campaign measurement end to end, through the built nudged: a trigger
// holding out half of its users, on a standalone redis-server and on a
// 3-master Redis Cluster, and an offer whose control group GetDecision
// exposes. The expected counts are computed here, user by user, with
// decision.InControl; the server's must equal them exactly.

// measureTrigger is the id of the acceptance test's trigger, and so of
// its campaign.
const measureTrigger = "view-coupon"

// measureTriggerRules fires the trigger on every view and holds out half
// of the users (ab.control), with the conversion section written out.
var measureTriggerRules = []byte(`version: 1
conversion:
  on: [purchase]
  window: 7d
  value: event.value
triggers:
  - id: ` + measureTrigger + `
    on: [view]
    ab: {control: 0.5}
    action: {channel: sms, template: coupon}
`)

// campaignWorkload is the acceptance test's users: each views once, at a
// millisecond of its own; users 0..599 buy after their view (every tenth
// of them buys a second time, later still), users 600..699 bought before
// it. Half of each group's purchases (the even users) are sent before the
// views, the other half after them: the order they arrive in must not
// change the counts.
type campaignWorkload struct {
	tag  string
	base time.Time // the first view, a whole millisecond
}

const (
	campaignUsers = 2000
	buyersAfter   = 600 // users [0, buyersAfter) buy after their view
	buyersBefore  = 100 // users [buyersAfter, buyersAfter+buyersBefore) bought before it
)

func (w *campaignWorkload) user(i int) string { return fmt.Sprintf("%s-u%d", w.tag, i) }

func (w *campaignWorkload) viewAt(i int) time.Time {
	return w.base.Add(time.Duration(i) * time.Millisecond)
}

// value is user i's purchase value: whole quarters, so that the sums are
// exact in float64 and in Redis's HINCRBYFLOAT whatever their order.
func (w *campaignWorkload) value(i int) float64 { return float64(10+i%90) + 0.25*float64(i%4) }

func (w *campaignWorkload) purchase(id string, i int, at time.Time, value float64) *nudgev1.Event {
	return &nudgev1.Event{EventId: id, UserId: w.user(i), Type: "purchase", Category: "phones", Value: value, OccurredAt: timestamppb.New(at)}
}

// phases returns the events in the order they are sent: the purchases of
// the even buyers, every view, the purchases of the odd buyers, then the
// second purchases.
func (w *campaignWorkload) phases() [][]*nudgev1.Event {
	var early, views, late, again []*nudgev1.Event
	for i := range campaignUsers {
		views = append(views, &nudgev1.Event{EventId: fmt.Sprintf("%s-view-%d", w.tag, i), UserId: w.user(i), Type: "view", Category: "phones", OccurredAt: timestamppb.New(w.viewAt(i))})
		var buy *nudgev1.Event
		switch {
		case i < buyersAfter:
			buy = w.purchase(fmt.Sprintf("%s-buy-%d", w.tag, i), i, w.viewAt(i).Add(10*time.Minute), w.value(i))
			if i%10 == 0 {
				// Converted already: neither the user nor the value counts again.
				again = append(again, w.purchase(fmt.Sprintf("%s-again-%d", w.tag, i), i, w.viewAt(i).Add(20*time.Minute), 1000))
			}
		case i < buyersAfter+buyersBefore:
			buy = w.purchase(fmt.Sprintf("%s-buy-%d", w.tag, i), i, w.viewAt(i).Add(-10*time.Minute), w.value(i))
		default:
			continue
		}
		if i%2 == 0 {
			early = append(early, buy)
		} else {
			late = append(late, buy)
		}
	}
	return [][]*nudgev1.Event{early, views, late, again}
}

// want is the trigger's counts as the test computes them: every user
// exposed once in the variant InControl gives, and the buyers after their
// view converted with their first purchase's value.
func (w *campaignWorkload) want() profile.CampaignCounts {
	var c profile.CampaignCounts
	for i := range campaignUsers {
		arm := &c.Treated
		if decision.InControl(w.user(i), measureTrigger, 0.5) {
			arm = &c.Control
		}
		arm.Exposed++
		if i < buyersAfter {
			arm.Converted++
			arm.Value += w.value(i)
		}
	}
	return c
}

// publishCounting publishes events in batches of 500 over the Publish RPC,
// fails the test unless every one gets status want, and returns the
// actions the batches triggered. (publishAll fails on any action: it is
// for workloads whose actions come later, from timers.)
func publishCounting(ctx context.Context, t *testing.T, ingest nudgev1.IngestServiceClient, evs []*nudgev1.Event, want nudgev1.EventStatus) int {
	t.Helper()
	actions := 0
	for len(evs) > 0 {
		n := min(len(evs), 500)
		resp, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: evs[:n]})
		if err != nil {
			t.Fatalf("Publish: %v", err)
		}
		for _, r := range resp.Results {
			if r.Status != want {
				t.Fatalf("event %s: %s (%s), want %s", r.EventId, r.Status, r.Reason, want)
			}
		}
		actions += len(resp.Actions)
		evs = evs[n:]
	}
	return actions
}

// outboxLen is the number of entries in the outbox streams.
func outboxLen(ctx context.Context, t *testing.T, rdb redis.UniversalClient) int64 {
	t.Helper()
	return int64(len(outboxEntries(ctx, t, rdb)))
}

// wantArm fails the test unless a report's variant has exactly the
// arm's counts.
func wantArm(t *testing.T, name string, got *nudgev1.VariantCounts, want profile.Arm) {
	t.Helper()
	if got.GetExposedUsers() != uint64(want.Exposed) || got.GetConvertedUsers() != uint64(want.Converted) ||
		got.GetConversionValue() != want.Value || got.GetConversionRate() != want.Rate() {
		t.Errorf("%s: exposed %d, converted %d, value %v, rate %v; want exposed %d, converted %d, value %v, rate %v", name,
			got.GetExposedUsers(), got.GetConvertedUsers(), got.GetConversionValue(), got.GetConversionRate(),
			want.Exposed, want.Converted, want.Value, want.Rate())
	}
}

// wantCampaignReport fails the test unless the report has exactly the
// counts, and the comparison of the variants the counts define.
func wantCampaignReport(t *testing.T, got *nudgev1.GetCampaignReportResponse, id, kind string, share float64, want profile.CampaignCounts) {
	t.Helper()
	if got.GetCampaignId() != id || got.GetKind() != kind || got.GetControlShare() != share {
		t.Errorf("report of %q, kind %q, control share %v; want %q, %q, %v", got.GetCampaignId(), got.GetKind(), got.GetControlShare(), id, kind, share)
	}
	wantArm(t, id+" treated", got.GetTreated(), want.Treated)
	wantArm(t, id+" control", got.GetControl(), want.Control)
	uplift := want.Treated.Rate() - want.Control.Rate()
	if got.Uplift == nil || math.Abs(got.GetUplift()-uplift) > 1e-12 {
		t.Errorf("%s: uplift %v, want %v", id, got.Uplift, uplift)
	}
	if got.Lift == nil || got.LiftCiLow == nil || got.LiftCiHigh == nil || got.PValue == nil {
		t.Errorf("%s: lift %v [%v, %v], p-value %v: want all four, both variants converted", id, got.Lift, got.LiftCiLow, got.LiftCiHigh, got.PValue)
	}
}

// TestNudgedCampaignReportExact is the acceptance test of campaign
// measurement, on a standalone redis-server and on a 3-master Redis
// Cluster: 2,000 users view once under a trigger holding out half of
// them; 600 buy after their view, 100 others bought before it (sent
// before or after the views). The report's users exposed and converted
// and its conversion values, per variant, are exactly the workload's;
// the actions are exactly the treated users'; sending every event again
// (all DUPLICATE) changes nothing.
func TestNudgedCampaignReportExact(t *testing.T) {
	bin := buildNudged(t)
	rules := writeRules(t, measureTriggerRules)
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) (args []string, rdb redis.UniversalClient)
	}{
		{"standalone", func(t *testing.T) ([]string, redis.UniversalClient) {
			s := redistest.Start(t)
			return []string{"--redis-addr", s.Addr}, s.Client(t)
		}},
		{"cluster", func(t *testing.T) ([]string, redis.UniversalClient) {
			c := redistest.StartCluster(t, 3)
			return []string{"--redis-cluster", strings.Join(c.Addrs(), ",")}, c.Client(t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, rdb := tc.start(t)
			n := startNudged(t, bin, append(args, "--rules", rules)...)
			conn := dial(t, n.addr)
			ingest, admin := nudgev1.NewIngestServiceClient(conn), nudgev1.NewAdminServiceClient(conn)
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()

			w := &campaignWorkload{tag: "m-" + tc.name, base: time.UnixMilli(time.Now().Add(-time.Hour).UnixMilli())}
			want := w.want()
			if want.Control.Converted == 0 || want.Treated.Converted == 0 || want.Control.Exposed < 900 || want.Treated.Exposed < 900 {
				t.Fatalf("the workload's split does not test both variants: %+v", want)
			}
			phases := w.phases()
			actions := 0
			for _, evs := range phases {
				actions += publishCounting(ctx, t, ingest, evs, nudgev1.EventStatus_EVENT_STATUS_APPLIED)
			}

			report, err := admin.GetCampaignReport(ctx, &nudgev1.GetCampaignReportRequest{CampaignId: measureTrigger})
			if err != nil {
				t.Fatalf("GetCampaignReport: %v", err)
			}
			wantCampaignReport(t, report, measureTrigger, decision.CampaignTrigger, 0.5, want)
			if actions != int(want.Treated.Exposed) {
				t.Errorf("Publish answered %d actions, want one per treated user: %d", actions, want.Treated.Exposed)
			}
			outbox := outboxLen(ctx, t, rdb)
			if outbox != want.Treated.Exposed {
				t.Errorf("%d outbox entries, want one per treated user: %d", outbox, want.Treated.Exposed)
			}
			list, err := admin.ListCampaignReports(ctx, &nudgev1.ListCampaignReportsRequest{})
			if err != nil {
				t.Fatalf("ListCampaignReports: %v", err)
			}
			if r := list.GetReports(); len(r) != 1 || !proto.Equal(r[0], report) {
				t.Errorf("ListCampaignReports = %v, want the one report %v", r, report)
			}

			// Every event again, in the same order: duplicates, nothing
			// counted, nothing sent.
			for _, evs := range phases {
				if a := publishCounting(ctx, t, ingest, evs, nudgev1.EventStatus_EVENT_STATUS_DUPLICATE); a != 0 {
					t.Errorf("re-sent events answered %d actions", a)
				}
			}
			again, err := admin.GetCampaignReport(ctx, &nudgev1.GetCampaignReportRequest{CampaignId: measureTrigger})
			if err != nil {
				t.Fatalf("GetCampaignReport: %v", err)
			}
			if !proto.Equal(again, report) {
				t.Errorf("after every event was sent again, the report is\n%v\nwant it unchanged:\n%v", again, report)
			}
			if o := outboxLen(ctx, t, rdb); o != outbox {
				t.Errorf("after every event was sent again, %d outbox entries, want %d", o, outbox)
			}
			t.Logf("%s: treated %+v, control %+v; uplift %.4f, p-value %.3g", measureTrigger, want.Treated, want.Control, report.GetUplift(), report.GetPValue())
		})
	}
}

// measureOffer is the id of the offer whose control group decisions
// expose.
const measureOffer = "banner"

// measureOfferRules is an offer every web decision may win, holding out
// 30% of the users; the conversion section is the default (purchase,
// 7d, the event's value).
var measureOfferRules = []byte(`version: 1
offers:
  - id: ` + measureOffer + `
    channels: [web]
    ab: {control: 0.3}
    template: banner
`)

// TestNudgedOfferControlExposures: 400 users ask for a web decision (a
// quarter of them twice); the decisions that put a user in the offer's
// control group are recorded by nudged's measurement actor after the
// answer. The treated users are exposed by the send reported
// (message_sent with offer_id); a third of all users buy after the
// decisions and every eighth bought before them. Once nudged has stopped
// (SIGTERM: the gRPC server drains, then the actor writes what is
// queued), the counters in Redis are exactly the workload's, and a nudged
// started again on them reports the same.
func TestNudgedOfferControlExposures(t *testing.T) {
	const users = 400
	bin := buildNudged(t)
	rs := redistest.Start(t)
	// Correctness here: a decision whose profile read took longer than the
	// default budget's share for it (8 ms) would be degraded on a loaded machine.
	args := []string{"--redis-addr", rs.Addr, "--rules", writeRules(t, measureOfferRules), "--decision-budget", "1s", "--decision-budget-max", "1s"}
	n := startNudged(t, bin, args...)
	conn := dial(t, n.addr)
	ingest, decide := nudgev1.NewIngestServiceClient(conn), nudgev1.NewDecisionServiceClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()

	user := func(i int) string { return fmt.Sprintf("offer-u%d", i) }
	value := func(i int) float64 { return float64(5 + i%20) }
	control := func(i int) bool { return decision.InControl(user(i), measureOffer, 0.3) }
	boughtBefore := func(i int) bool { return i%8 == 1 }
	buys := func(i int) bool { return i%3 == 0 }

	// Before the decisions: purchases that no exposure can attribute.
	start := time.Now()
	var before []*nudgev1.Event
	for i := range users {
		if boughtBefore(i) {
			before = append(before, &nudgev1.Event{EventId: fmt.Sprintf("ob-%d", i), UserId: user(i), Type: "purchase", Value: 99, OccurredAt: timestamppb.New(start.Add(-10 * time.Minute))})
		}
	}
	publishCounting(ctx, t, ingest, before, nudgev1.EventStatus_EVENT_STATUS_APPLIED)

	var want profile.CampaignCounts
	for i := range users {
		decisions := 1
		if i%4 == 0 {
			decisions = 2 // the second is in the window the first opened: not counted again
		}
		for k := range decisions {
			// A 1s budget: a decision degraded on a busy machine would
			// expose nobody (the test wants each from the profile).
			resp, err := decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: user(i), Channel: "web", Budget: durationpb.New(time.Second)})
			if err != nil {
				t.Fatalf("GetDecision(%s) #%d: %v", user(i), k+1, err)
			}
			d := resp.GetDecision()
			switch {
			case d.GetControl() != control(i):
				t.Fatalf("GetDecision(%s): control %v, want %v", user(i), d.GetControl(), control(i))
			case !control(i) && (d.GetVerdict() != nudgev1.Verdict_VERDICT_SEND || d.GetOffer().GetId() != measureOffer):
				t.Fatalf("GetDecision(%s): %v %q, want SEND %s; reasons %v", user(i), d.GetVerdict(), d.GetOffer().GetId(), measureOffer, d.GetReasons())
			}
		}
		arm := &want.Treated
		if control(i) {
			arm = &want.Control
		}
		arm.Exposed++
		if buys(i) {
			arm.Converted++
			arm.Value += value(i)
		}
	}
	if want.Control.Converted == 0 || want.Treated.Converted == 0 {
		t.Fatalf("the workload's split does not test both variants: %+v", want)
	}

	// After every decision (whose time is its exposure's): the treated
	// users' sends, then the purchases. They may arrive before or after
	// the actor writes the control exposures; either way a purchase after
	// the exposure converts it.
	decided := time.Now()
	var after []*nudgev1.Event
	for i := range users {
		if !control(i) {
			after = append(after, &nudgev1.Event{EventId: fmt.Sprintf("os-%d", i), UserId: user(i), Type: "message_sent", Channel: "web",
				Attributes: map[string]string{profile.AttrOfferID: measureOffer}, OccurredAt: timestamppb.New(decided.Add(time.Second))})
		}
	}
	for i := range users {
		if buys(i) {
			after = append(after, &nudgev1.Event{EventId: fmt.Sprintf("op-%d", i), UserId: user(i), Type: "purchase", Value: value(i), OccurredAt: timestamppb.New(decided.Add(2 * time.Second))})
		}
	}
	publishCounting(ctx, t, ingest, after, nudgev1.EventStatus_EVENT_STATUS_APPLIED)

	stopNudged(t, n)
	if logs := n.drainLogs(); strings.Contains(logs, "control exposures failed") {
		t.Errorf("nudged failed to record control exposures:\n%s", logs)
	}
	counts, err := redisstore.New(rs.Client(t), redisstore.Options{}).Counts(ctx, []string{measureOffer})
	if err != nil {
		t.Fatal(err)
	}
	if got := counts[measureOffer]; got != want {
		t.Fatalf("counters of %s once nudged stopped:\n got %+v\nwant %+v", measureOffer, got, want)
	}

	n = startNudged(t, bin, args...)
	report, err := nudgev1.NewAdminServiceClient(dial(t, n.addr)).GetCampaignReport(ctx, &nudgev1.GetCampaignReportRequest{CampaignId: measureOffer})
	if err != nil {
		t.Fatalf("GetCampaignReport: %v", err)
	}
	wantCampaignReport(t, report, measureOffer, decision.CampaignOffer, 0.3, want)
	t.Logf("%s: treated %+v, control %+v", measureOffer, want.Treated, want.Control)
}
