package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

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

// The Subscriber acknowledges in the background, and sends the acks that
// accumulated during an Ack call as one call: with each Ack call held
// 20 ms, 300 actions take a handful of calls, not 300 round trips.
func TestSubscriberBatchesAcks(t *testing.T) {
	e := newEnv(t)
	const users = 300
	pub := e.dial(t).NewPublisher()
	for u := range users {
		for i := range 3 { // 3 views of phones: the seed trigger fires once per user
			if err := pub.Publish(ctxT(t), view(fmt.Sprintf("b%d-%d", u, i), fmt.Sprintf("batch-user-%d", u), "phones")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := pub.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	calls, acked := 0, map[string]bool{}
	allAcked := make(chan struct{})
	slowAck := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if r, ok := req.(*nudgev1.AckRequest); ok {
			time.Sleep(20 * time.Millisecond) // a slow network, on purpose
			err := invoker(ctx, method, req, reply, cc, opts...)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				calls++
				for _, id := range r.GetAckIds() {
					acked[id] = true
				}
				if len(acked) == users {
					close(allAcked)
				}
			}
			return err
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
	c, err := client.Dial(e.addr, client.WithDialOptions(grpc.WithUnaryInterceptor(slowAck)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(ctx, "batched", func(context.Context, *nudgev1.Action, uint32) error { return nil })
	}()
	select {
	case <-allAcked:
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%d of %d actions acknowledged before the deadline", len(acked), users)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Subscribe returned %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d actions acknowledged in %d Ack calls", len(acked), calls)
	if calls > 30 {
		t.Errorf("%d Ack calls for %d actions: the acks were not batched", calls, users)
	}
}
