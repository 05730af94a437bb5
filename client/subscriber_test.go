package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The Subscriber acknowledges what its handler handled, gets back what the
// handler failed on (with a higher delivery count), and reconnects across a
// server restart.
func TestSubscriber(t *testing.T) {
	e := newEnv(t)
	c := e.dial(t)
	const users = 50
	pub := c.NewPublisher()
	for u := range users {
		for i := range 3 { // 3 views of phones: the seed trigger fires once per user
			ev := view(fmt.Sprintf("s%d-%d", u, i), fmt.Sprintf("sub-user-%d", u), "phones")
			if err := pub.Publish(ctxT(t), ev); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := pub.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var mu sync.Mutex
	handled := map[string]int{} // action id -> successful handlings
	failedOnce := ""
	var counts []uint32
	restarted := false
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(ctx, "sms-sender", func(_ context.Context, a *nudgev1.Action, n uint32) error {
			mu.Lock()
			defer mu.Unlock()
			if failedOnce == "" {
				failedOnce = a.GetActionId()
				return errors.New("the SMS gateway said no") // left for redelivery
			}
			if a.GetActionId() == failedOnce {
				counts = append(counts, n)
			}
			handled[a.GetActionId()]++
			if len(handled) == users {
				cancel()
			}
			return nil
		}, client.Consumer("member-1"))
	}()
	// Restart the server once some actions were handled.
	for ctx.Err() == nil {
		mu.Lock()
		n := len(handled)
		mu.Unlock()
		if n >= users/2 && !restarted {
			e.stop()
			e.start()
			restarted = true
		}
		if n == users {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Subscribe returned %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != users {
		t.Fatalf("%d of %d actions handled before the deadline", len(handled), users)
	}
	if len(counts) == 0 || counts[0] < 2 {
		t.Errorf("the action the handler failed on came back with counts %v, want a delivery count of 2 or more", counts)
	}
	if !restarted {
		t.Error("the server was not restarted during the subscription")
	}
}

func TestSubscriberRefusesBadGroup(t *testing.T) {
	e := newEnv(t)
	c := e.dial(t)
	err := c.Subscribe(ctxT(t), "Bad Group!", func(context.Context, *nudgev1.Action, uint32) error { return nil })
	if err == nil {
		t.Fatal("Subscribe with an invalid group returned nil")
	}
}
