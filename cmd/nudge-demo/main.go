// Command nudge-demo replays a short browsing session against a running
// nudged and prints what nudge made of it: the per-event results, the coupon
// the seed scenario triggers (3 views of one category in 30 minutes), the
// decision a storefront would get, and the profile.
//
// Against a nudged with tokens, give one with the ingest, decide and admin
// roles in $NUDGE_TOKEN (or --token); against one serving TLS, --ca-file
// (or --tls for a certificate the system roots verify). As with the Go
// client, a loopback --addr is dialled in plaintext unless --tls or
// --ca-file, and a token is sent only over TLS unless --insecure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
	_ "time/tzdata" // the shopper's zone must not depend on the host's zoneinfo

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/internal/clientflags"
	"github.com/nudge-dm/nudge/internal/version"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:7070", "nudged address")
	user := flag.String("user", fmt.Sprintf("demo-shopper-%d", time.Now().Unix()%100000), "user id to play")
	wait := flag.Duration("wait", 0, "wait this long for nudged to report SERVING")
	metrics := flag.String("metrics", "", "nudged's /metrics URL: print the figures the session moved")
	crowdSize := flag.Int("crowd", 0, "then play this many simulated shoppers (carts, views, purchases, decisions), for the console to show")
	sec := clientflags.Register(flag.CommandLine, "ingest, decide and admin", os.Getenv)
	showVersion := flag.Bool("version", false, "print nudge-demo's version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println(version.String("nudge-demo"))
		return
	}
	if err := run(*addr, *user, *wait, *crowdSize, sec); err != nil {
		fmt.Fprintln(os.Stderr, "nudge-demo:", err)
		if errors.As(err, new(clientflags.UsageError)) {
			os.Exit(2)
		}
		os.Exit(1)
	}
	if *metrics != "" {
		if err := printMetrics(*metrics); err != nil {
			fmt.Fprintln(os.Stderr, "nudge-demo:", err)
			os.Exit(1)
		}
	}
}

// shownMetrics are the series printed after the session, by name prefix.
var shownMetrics = []string{
	"nudge_events_total", "nudge_event_lag_seconds_count", "nudge_event_lag_seconds_sum",
	"nudge_ingest_ack_latency_seconds_count", "nudge_store_transactions_total", "nudge_store_conflicts_total",
	"nudge_decisions_total", "nudge_actions_emitted_total", "nudge_rules_info", "rpc_server_call_duration_seconds_count",
}

// printMetrics prints the series of shownMetrics from a /metrics scrape.
func printMetrics(url string) error {
	resp, err := http.Get(url)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("metrics: GET %s: %s", url, resp.Status)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	fmt.Printf("== What an operator sees on %s (excerpt)\n", url)
	for line := range strings.SplitSeq(string(body), "\n") {
		for _, m := range shownMetrics {
			if strings.HasPrefix(line, m+"{") || strings.HasPrefix(line, m+" ") {
				fmt.Println("  " + line)
			}
		}
	}
	return nil
}

// demoZones are where the demo's shopper may live: at any hour, one of
// them has daytime (09:00 to 20:00), outside the bundled rules' quiet
// hours (21:00 to 08:00), so the coupon goes at once whenever the demo
// runs.
var demoZones = []string{"Europe/Paris", "America/New_York", "America/Los_Angeles", "Asia/Tokyo", "Asia/Kolkata"}

// daytimeZone returns the first of demoZones where it is daytime at now.
func daytimeZone(now time.Time) string {
	for _, z := range demoZones {
		loc, err := time.LoadLocation(z)
		if err != nil {
			continue
		}
		if h := now.In(loc).Hour(); h >= 9 && h < 20 {
			return z
		}
	}
	return demoZones[0]
}

func run(addr, user string, wait time.Duration, crowdSize int, sec *clientflags.Flags) error {
	c, err := sec.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	conn := c.Conn()
	ctx, cancel := context.WithTimeout(context.Background(), wait+30*time.Second)
	defer cancel()
	if err := waitServing(ctx, healthpb.NewHealthClient(conn), wait); err != nil {
		return err
	}

	now := time.Now()
	at := func(ago time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-ago)) }
	session := []*nudgev1.Event{
		{EventId: user + "-1", UserId: user, Type: "view", Category: "phones", ItemId: "phone-a", Value: 699, OccurredAt: at(25 * time.Minute), Attributes: map[string]string{"tz": daytimeZone(now)}},
		{EventId: user + "-2", UserId: user, Type: "view", Category: "laptops", ItemId: "laptop-x", Value: 1299, OccurredAt: at(20 * time.Minute)},
		{EventId: user + "-3", UserId: user, Type: "view", Category: "phones", ItemId: "phone-b", Value: 799, OccurredAt: at(12 * time.Minute)},
		{EventId: user + "-4", UserId: user, Type: "search", Category: "phones", OccurredAt: at(8 * time.Minute), Attributes: map[string]string{"query": "phone 256GB"}},
		{EventId: user + "-5", UserId: user, Type: "view", Category: "phones", ItemId: "phone-a", Value: 699, OccurredAt: at(3 * time.Minute)},
		{EventId: user + "-6", UserId: user, Type: "view", Category: "phones", ItemId: "phone-c", Value: 899, OccurredAt: at(1 * time.Minute)},
		{EventId: user + "-7", UserId: "", Type: "view", OccurredAt: at(time.Minute)}, // invalid: no user
	}

	fmt.Printf("== Streaming a browsing session of %s (%d events, one bad) to %s\n", user, len(session), addr)
	ingest := nudgev1.NewIngestServiceClient(conn)
	stream, err := ingest.Stream(ctx)
	if err != nil {
		return err
	}
	// One event per batch, as a click-stream collector would send them,
	// each once the previous one is answered: the server may apply batches
	// in flight together in any order, and a trigger counts the views up to
	// its event's time, so out of order the coupon might not fire.
	var responses []*nudgev1.StreamResponse
	for i, e := range session {
		err := stream.Send(&nudgev1.StreamRequest{Seq: uint64(i + 1), Events: []*nudgev1.Event{e}})
		var resp *nudgev1.StreamResponse
		if err == nil || errors.Is(err, io.EOF) {
			// On io.EOF the server ended the stream (a refused token,
			// say): Recv has its status.
			resp, err = stream.Recv()
		}
		if err != nil {
			return err
		}
		responses = append(responses, resp)
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("stream end: %v, want io.EOF", err)
	}
	byID := make(map[string]*nudgev1.Event)
	for _, e := range session {
		byID[e.EventId] = e
	}
	coupons := 0
	for _, resp := range responses {
		for _, r := range resp.Results {
			e := byID[r.EventId]
			line := fmt.Sprintf("  seq %d  %-8s %-8s %-8s -> %s", resp.Seq, e.GetType(), e.GetCategory(), ago(now, e.GetOccurredAt()), strings.TrimPrefix(r.Status.String(), "EVENT_STATUS_"))
			if r.Reason != "" {
				line += "  (" + r.Reason + ")"
			}
			fmt.Println(line)
		}
		for _, a := range resp.Actions {
			coupons++
			fmt.Printf("  >>> TRIGGERED %s: %s via %s, template %s, payload %v\n", a.ActionId, a.TriggerId, a.Channel, a.Template, a.Payload)
		}
	}
	if coupons == 0 {
		return errors.New("expected the session to trigger a coupon, none was triggered")
	}

	fmt.Println("\n== Re-sending the first event (a producer retry): nothing counts twice")
	pub, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: session[:1]})
	if err != nil {
		return err
	}
	fmt.Printf("  %s -> %s\n", pub.Results[0].EventId, strings.TrimPrefix(pub.Results[0].Status.String(), "EVENT_STATUS_"))

	// Read-your-writes: the decision is made on a profile at least as
	// recent as the last event's commit. A 50 ms budget, not the server's
	// 10 ms default: the demo's first decision also runs on a fresh server
	// of a machine that may be busy building, and should show the offer.
	var seen uint64
	for _, resp := range responses {
		for _, r := range resp.Results {
			seen = max(seen, r.GetProfileVersion())
		}
	}
	fmt.Println("\n== A storefront asks for a decision (GetDecision, channel sms, budget 50ms, min_profile_version of the last event)")
	dec, err := nudgev1.NewDecisionServiceClient(conn).GetDecision(ctx, &nudgev1.GetDecisionRequest{
		UserId: user, Channel: "sms", Placement: "checkout", Budget: durationpb.New(50 * time.Millisecond), MinProfileVersion: seen,
	})
	if err != nil {
		return err
	}
	d := dec.Decision
	fmt.Printf("  verdict %s", strings.TrimPrefix(d.Verdict.String(), "VERDICT_"))
	if d.Offer != nil {
		fmt.Printf(", offer %s (template %s, payload %v)", d.Offer.Id, d.Offer.Template, d.Offer.Payload)
	}
	if d.NotBefore != nil {
		fmt.Printf(", not before %s (quiet hours in the shopper's time zone)", d.NotBefore.AsTime().Format(time.RFC3339))
	}
	fmt.Printf(", degraded=%v, profile version %d\n", d.Degraded, dec.ProfileVersion)
	for _, r := range d.Reasons {
		fmt.Printf("  reason [%s] %s\n", r.RuleId, r.Message)
	}

	fmt.Println("\n== The profile (GetProfile), 30-minute counts")
	prof, err := nudgev1.NewProfileServiceClient(conn).GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: user})
	if err != nil {
		return err
	}
	for _, c := range prof.Profile.Counts {
		if c.Window.AsDuration() == 30*time.Minute && c.Count > 0 {
			cat := c.Category
			if cat == "" {
				cat = "(all)"
			}
			fmt.Printf("  %-8s %-8s %d\n", c.Type, cat, c.Count)
		}
	}
	fmt.Printf("  version %d, tz %q, %d event ids remembered for dedup\n", prof.Profile.Version, prof.Profile.Attributes["tz"], prof.Profile.RememberedEventIds)
	if crowdSize > 0 {
		return crowd(ctx, conn, crowdSize, now)
	}
	return nil
}

func ago(now time.Time, t *timestamppb.Timestamp) string {
	return now.Sub(t.AsTime()).Round(time.Minute).String() + " ago"
}

// waitServing polls the health service until it reports SERVING or wait
// passes.
func waitServing(ctx context.Context, h healthpb.HealthClient, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := h.Check(cctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = fmt.Errorf("status %s", resp.Status)
			}
			return fmt.Errorf("nudged is not serving: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
