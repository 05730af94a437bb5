package client_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
// accumulated during an Ack call as one call: the first Ack call is held
// until the handler has handled 150 actions (the server delivers up to its
// MaxUnacked, 200 here, without acks), so the acks handled behind it go
// out together in the second call: the two calls carry at least the 150.
// (In line, one call per action, the handler could not get past the
// first.)
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

	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	allHandled := make(chan struct{})
	var mu sync.Mutex
	const hold = 150
	var sizes []int // ack ids per Ack call
	var miscounted []string
	acked := map[string]bool{}
	allAcked := make(chan struct{})
	heldAck := func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		r, ok := req.(*nudgev1.AckRequest)
		if !ok {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		mu.Lock()
		first := len(sizes) == 0
		sizes = append(sizes, len(r.GetAckIds()))
		mu.Unlock()
		if first {
			select {
			case <-allHandled:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			// The member's name is the one the server made up, and
			// every ack counts (a wrong name would count none).
			if n := reply.(*nudgev1.AckResponse).GetAcked(); n != uint32(len(r.GetAckIds())) || !strings.HasPrefix(r.GetConsumer(), "c-") {
				miscounted = append(miscounted, fmt.Sprintf("%d of %d acked as %q", n, len(r.GetAckIds()), r.GetConsumer()))
			}
			for _, id := range r.GetAckIds() {
				acked[id] = true
			}
			if len(acked) == users {
				close(allAcked)
			}
		}
		return err
	}
	c, err := client.Dial(e.addr, client.WithDialOptions(grpc.WithUnaryInterceptor(heldAck)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	handled := 0
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(ctx, "batched", func(context.Context, *nudgev1.Action, uint32) error {
			if handled++; handled == hold {
				close(allHandled)
			}
			return nil
		})
	}()
	select {
	case <-allAcked:
	case <-ctx.Done():
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%d of %d actions acknowledged before the deadline (%d handled)", len(acked), users, handled)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Subscribe returned %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("ack ids per Ack call: %v", sizes)
	if len(miscounted) > 0 {
		t.Errorf("Ack calls that did not acknowledge all they carried: %v", miscounted)
	}
	if len(sizes) < 2 || sizes[0]+sizes[1] < hold {
		t.Errorf("ack ids per Ack call %v: want the acks that waited behind the first call (of the %d handled before it returned) in the second", sizes, hold)
	}
}
