package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// crowdCategories are what the crowd browses.
var crowdCategories = []string{"phones", "laptops", "cameras", "headphones"}

// The crowd's simulated response to the cart reminder: a reminded shopper
// buys with buyReminded's chance, one held out (control) with buyHeldOut's.
const (
	buyReminded = 0.45
	buyHeldOut  = 0.20
)

// reminder is the offer whose lift the crowd makes measurable: it has a
// 10% control group in examples/rules.yaml.
const reminder = "cart-reminder"

// crowd plays n simulated shoppers so that the console has something to
// show. Each looks at one category three times in half an hour (the
// coupon trigger fires) and puts an item in the cart (the cart journey
// waits an hour). A sender asks each a push decision: the cart reminder
// is sent (and reported with message_sent), or the shopper is held out
// in its control group. Then shoppers buy, or not, with a chance that
// depends on whether the reminder came, and a storefront asks decisions
// on the other channels. The draws are seeded: the same n gives the same
// crowd.
func crowd(ctx context.Context, conn grpc.ClientConnInterface, n int, now time.Time) error {
	rng := rand.New(rand.NewPCG(20, 26))
	ingest := nudgev1.NewIngestServiceClient(conn)
	admin := nudgev1.NewAdminServiceClient(conn)
	decide := nudgev1.NewDecisionServiceClient(conn)
	at := func(ago time.Duration) *timestamppb.Timestamp { return timestamppb.New(now.Add(-ago)) }
	tz := daytimeZone(now)
	users := make([]string, n)
	var events []*nudgev1.Event
	for i := range n {
		u := fmt.Sprintf("demo-crowd-%03d", i)
		users[i] = u
		cat := crowdCategories[i%len(crowdCategories)]
		item := fmt.Sprintf("%s-%d", cat, rng.IntN(20))
		events = append(events,
			&nudgev1.Event{EventId: u + "-v1", UserId: u, Type: "view", Category: cat, ItemId: item, OccurredAt: at(28 * time.Minute), Attributes: map[string]string{"tz": tz}},
			&nudgev1.Event{EventId: u + "-v2", UserId: u, Type: "view", Category: cat, ItemId: item, OccurredAt: at(17 * time.Minute)},
			&nudgev1.Event{EventId: u + "-v3", UserId: u, Type: "view", Category: cat, ItemId: item, OccurredAt: at(9 * time.Minute)},
			&nudgev1.Event{EventId: u + "-cart", UserId: u, Type: "add_to_cart", Category: cat, ItemId: item, Value: 100, OccurredAt: at(5 * time.Minute)},
		)
	}
	fmt.Printf("\n== A simulated crowd of %d shoppers for the console (%d events)\n", n, len(events))
	if err := publish(ctx, ingest, events); err != nil {
		return err
	}

	// The sender's side: a push decision for each, the reminder sent and
	// reported, or the shopper held out.
	var sent []*nudgev1.Event
	control := map[string]bool{}
	for _, u := range users {
		res, err := decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: u, Channel: "push", Budget: durationpb.New(50 * time.Millisecond)})
		if err != nil {
			return fmt.Errorf("crowd: decision: %w", err)
		}
		d := res.GetDecision()
		switch {
		case d.GetControl():
			control[u] = true
		case d.GetVerdict() == nudgev1.Verdict_VERDICT_SEND && d.GetOffer().GetId() == reminder:
			sent = append(sent, &nudgev1.Event{EventId: u + "-sent", UserId: u, Type: "message_sent", Channel: "push",
				OccurredAt: timestamppb.Now(), Attributes: map[string]string{"offer_id": reminder}})
		}
	}
	if err := publish(ctx, ingest, sent); err != nil {
		return err
	}
	// Control exposures are written shortly after their decisions: wait
	// for them, so that the purchases below come after every exposure.
	want := uint64(len(sent) + len(control))
	deadline := time.Now().Add(15 * time.Second)
	for {
		rep, err := admin.GetCampaignReport(ctx, &nudgev1.GetCampaignReportRequest{CampaignId: reminder})
		if err != nil {
			return fmt.Errorf("crowd: report of %s: %w", reminder, err)
		}
		if rep.GetTreated().GetExposedUsers()+rep.GetControl().GetExposedUsers() >= want {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("crowd: %d exposures to %s not recorded within 15s", want, reminder)
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Printf("  %d cart reminders sent, %d shoppers held out (the offer's control group)\n", len(sent), len(control))

	var purchases []*nudgev1.Event
	bought := map[bool]int{}
	for _, u := range users {
		chance := buyReminded
		if control[u] {
			chance = buyHeldOut
		}
		if rng.Float64() < chance {
			bought[control[u]]++
			purchases = append(purchases, &nudgev1.Event{EventId: u + "-buy", UserId: u, Type: "purchase",
				Category: crowdCategories[rng.IntN(len(crowdCategories))], Value: float64(50 + rng.IntN(400)), OccurredAt: timestamppb.Now()})
		}
	}
	if err := publish(ctx, ingest, purchases); err != nil {
		return err
	}
	fmt.Printf("  %d bought: %d reminded, %d held out (simulated: %.0f%% of the reminded buy, %.0f%% of the others)\n",
		len(purchases), bought[false], bought[true], buyReminded*100, buyHeldOut*100)

	decisions := 0
	for _, u := range users {
		for _, ch := range []string{"sms", "web"} {
			if _, err := decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: u, Channel: ch, Budget: durationpb.New(50 * time.Millisecond)}); err != nil {
				return fmt.Errorf("crowd: decision: %w", err)
			}
			decisions++
		}
	}
	fmt.Printf("  %d more decisions asked (sms and web for each)\n", decisions)
	return nil
}

// publish sends events in batches the API accepts.
func publish(ctx context.Context, ingest nudgev1.IngestServiceClient, events []*nudgev1.Event) error {
	for len(events) > 0 {
		batch := events[:min(len(events), 2000)]
		events = events[len(batch):]
		if _, err := ingest.Publish(ctx, &nudgev1.PublishRequest{Events: batch}); err != nil {
			return fmt.Errorf("crowd: publish: %w", err)
		}
	}
	return nil
}
