package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// A producer publishes a user's page views; the third view of a category
// fires the bundled rules' SMS coupon trigger.
func ExamplePublisher() {
	c, err := client.Dial(exampleAddr) // loopback: plaintext
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	user := exampleUser("alice")
	p := c.NewPublisher(
		client.OnResult(func(r *nudgev1.EventResult) {
			fmt.Println(r.GetEventId(), r.GetStatus())
		}),
		client.OnAction(func(a *nudgev1.Action) {
			fmt.Println("action:", a.GetTriggerId(), a.GetChannel(), a.GetPayload()["category"])
		}),
	)
	ctx := context.Background()
	for _, id := range []string{"v1", "v2", "v3", "v1"} { // v1 twice: deduplicated
		err := p.Publish(ctx, &nudgev1.Event{
			EventId:    id,
			UserId:     user,
			Type:       "view",
			Category:   "phones",
			OccurredAt: timestamppb.New(time.Now().Add(-time.Minute)),
		})
		if err != nil {
			log.Fatal(err)
		}
		// Flush after every event only to print in a fixed order: results
		// of different batches may come back in any order.
		if err := p.Flush(ctx); err != nil {
			log.Fatal(err)
		}
	}
	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}
	st := p.Stats()
	fmt.Printf("published %d: %d applied, %d duplicate\n", st.Published, st.Applied, st.Duplicate)
	// Output:
	// v1 EVENT_STATUS_APPLIED
	// v2 EVENT_STATUS_APPLIED
	// v3 EVENT_STATUS_APPLIED
	// action: category-interest-coupon sms phones
	// v1 EVENT_STATUS_DUPLICATE
	// published 4: 3 applied, 1 duplicate
}

// A storefront asks what to show in a banner of a product page.
func ExampleClient_Decide() {
	c, err := client.Dial(exampleAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// A storefront would give a few milliseconds; this example runs
	// beside the other tests on a busy machine, under the race detector,
	// and must not get the degraded fallback.
	d, err := c.Decide(context.Background(), exampleUser("bob"), "web",
		client.WithPlacement("home_banner"),
		client.WithBudget(2*time.Second),
	)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(d.GetVerdict(), d.GetOffer().GetId(), d.GetOffer().GetTemplate())
	// Output:
	// VERDICT_SEND web-welcome welcome
}

// A page of product tiles asks for all its users at once.
func ExampleClient_DecideBatch() {
	c, err := client.Dial(exampleAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ds, err := c.DecideBatch(context.Background(), []client.Query{
		{UserID: exampleUser("carol"), Channel: "web"},
		{UserID: exampleUser("dave"), Channel: "email"},
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, d := range ds {
		fmt.Println(d.GetVerdict(), d.GetOffer().GetId())
	}
	// Output:
	// VERDICT_SEND web-welcome
	// VERDICT_NONE
}

// A scoring service reads a user's features (the rules file's features
// section) for its model, and those of a user never seen.
func ExampleClient_GetFeatures() {
	c, err := client.Dial(exampleAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()

	user := exampleUser("erin")
	p := c.NewPublisher()
	for i, category := range []string{"phones", "tv"} {
		err := p.Publish(ctx, &nudgev1.Event{
			EventId:    fmt.Sprint("f", i),
			UserId:     user,
			Type:       "view",
			Category:   category,
			OccurredAt: timestamppb.New(time.Now().Add(-time.Hour)),
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	if err := p.Close(ctx); err != nil {
		log.Fatal(err)
	}

	f, err := c.GetFeatures(ctx, []string{user, exampleUser("never-seen")},
		"views_7d", "distinct_categories_7d", "days_since_purchase")
	if err != nil {
		log.Fatal(err)
	}
	for i, r := range f.Rows {
		fmt.Printf("user %d found=%v", i, r.GetFound())
		for _, name := range f.Names {
			fmt.Printf(" %s=%v", name, r.GetValues()[name])
		}
		fmt.Println()
	}
	// Output:
	// user 0 found=true views_7d=2 distinct_categories_7d=2 days_since_purchase=36500
	// user 1 found=false views_7d=0 distinct_categories_7d=0 days_since_purchase=36500
}
