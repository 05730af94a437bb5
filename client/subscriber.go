package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Handler handles one delivered action. Returning nil acknowledges it;
// returning an error leaves it unacknowledged, so the server delivers it
// again after its visibility timeout (and, after the maximum deliveries,
// moves it to the dead-letter stream). Delivery is at least once: a handler
// must tolerate seeing an action again (deduplicate on Action.ActionId).
type Handler func(ctx context.Context, a *nudgev1.Action, deliveryCount uint32) error

// SubscribeOption configures Subscribe.
type SubscribeOption func(*subscribeConfig)

type subscribeConfig struct {
	consumer string
	channels []string
	onError  func(error)
	min, max time.Duration
}

// Consumer names this member of the group. Give each member a stable name,
// so that after a restart its unacknowledged actions are found under it.
// Default: the server makes one up per stream.
func Consumer(name string) SubscribeOption {
	return func(c *subscribeConfig) { c.consumer = name }
}

// Channels delivers only actions on these channels. The server
// acknowledges the others for the whole group, so they are dropped for
// every member: every member of a group must use the same filter, and a
// sender that wants other channels subscribes with a group of its own.
func Channels(ch ...string) SubscribeOption {
	return func(c *subscribeConfig) { c.channels = ch }
}

// OnSubscribeError receives the errors Subscribe recovers from (a failed
// ack, a broken stream before it reconnects, a handler error).
func OnSubscribeError(f func(error)) SubscribeOption {
	return func(c *subscribeConfig) { c.onError = f }
}

// Subscribe runs h for every action delivered to this member of group, one
// at a time, and acknowledges each one h handled without error (in the
// background, batching the acks that accumulate during an Ack call). It
// reconnects with jittered backoff when the stream breaks (a server restart
// or drain), after at least the delay of a google.rpc.RetryInfo the status
// carries, and returns only when ctx ends (nil) or on an error that a retry
// cannot fix, wrapped (status.Code finds its code): InvalidArgument,
// Unimplemented (a server without an outbox), Unauthenticated (no or an
// unknown token) and PermissionDenied (a token without the subscribe role,
// or whose groups do not include group) are configuration errors, returned
// at once rather than retried forever.
func (c *Client) Subscribe(ctx context.Context, group string, h Handler, opts ...SubscribeOption) error {
	cfg := subscribeConfig{min: 50 * time.Millisecond, max: 5 * time.Second, onError: func(error) {}}
	for _, o := range opts {
		o(&cfg)
	}
	actions := nudgev1.NewActionServiceClient(c.conn)
	wait := cfg.min
	for ctx.Err() == nil {
		err := c.subscribeOnce(ctx, actions, group, h, &cfg)
		if ctx.Err() != nil {
			return nil
		}
		switch status.Code(err) {
		case codes.InvalidArgument, codes.Unimplemented, codes.PermissionDenied, codes.Unauthenticated:
			return fmt.Errorf("client: subscribe to %s: %w", group, err)
		}
		cfg.onError(fmt.Errorf("client: subscription to %s broke, reconnecting: %w", group, err))
		d := wait/2 + rand.N(wait/2+1)
		if delay, ok := retryDelay(err); ok {
			d = delay + rand.N(delay/10+1) // as the Publisher does
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		wait = min(2*wait, cfg.max)
	}
	return nil
}

// maxAckBatch is the most ack ids one Ack call carries (the API allows
// 1,000).
const maxAckBatch = 500

// subscribeOnce runs one stream until it breaks. The handler runs on this
// goroutine, one action at a time; acknowledgements go to an acker
// goroutine, which sends whatever accumulated while its previous Ack call
// was in flight as one call. One Ack call per action, in line, held a
// member to about 1,000 actions/s (one round trip each) and the actions
// behind queued up to the server's read-ahead.
func (c *Client) subscribeOnce(ctx context.Context, actions nudgev1.ActionServiceClient, group string, h Handler, cfg *subscribeConfig) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := actions.Subscribe(ctx, &nudgev1.SubscribeRequest{Group: group, Consumer: cfg.consumer, Channels: cfg.channels})
	if err != nil {
		return err
	}
	acks := make(chan ack, maxAckBatch)
	acked := make(chan struct{})
	go func() {
		defer close(acked)
		ackLoop(ctx, actions, group, acks, cfg)
	}()
	// The acks of handled actions are sent before the stream's context is
	// cancelled (deferred calls run last in, first out).
	defer func() {
		close(acks)
		<-acked
	}()
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := h(ctx, resp.GetAction(), resp.GetDeliveryCount()); err != nil {
			cfg.onError(fmt.Errorf("client: handler failed on action %s (delivery %d), left for redelivery: %w",
				resp.GetAction().GetActionId(), resp.GetDeliveryCount(), err))
			continue
		}
		// The ack names the member the server delivered to (the name it
		// made up when Consumer is not given): the server acknowledges
		// only that member's deliveries. A server that does not say
		// checks the group alone.
		a := ack{id: resp.GetAckId(), consumer: resp.GetConsumer()}
		if a.consumer == "" {
			a.consumer = cfg.consumer
		}
		select {
		case acks <- a:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// ack is a delivery to acknowledge, and the member it was made to.
type ack struct{ id, consumer string }

// ackLoop acknowledges the deliveries sent on acks, in batches of whatever
// is waiting (up to maxAckBatch, of one member: one stream's deliveries
// are all made to one) per Ack call, until acks is closed.
func ackLoop(ctx context.Context, actions nudgev1.ActionServiceClient, group string, acks <-chan ack, cfg *subscribeConfig) {
	var next *ack // taken from acks for the following batch
	for {
		first, ok := ack{}, true
		if next != nil {
			first, next = *next, nil
		} else if first, ok = <-acks; !ok {
			return
		}
		ids := []string{first.id}
	more:
		for len(ids) < maxAckBatch {
			select {
			case a, ok := <-acks:
				if !ok {
					break more
				}
				if a.consumer != first.consumer {
					next = &a
					break more
				}
				ids = append(ids, a.id)
			default:
				break more
			}
		}
		if _, err := actions.Ack(ctx, &nudgev1.AckRequest{Group: group, Consumer: first.consumer, AckIds: ids}); err != nil && !errors.Is(ctx.Err(), context.Canceled) {
			// Not acknowledged: they come back after the visibility
			// timeout.
			cfg.onError(fmt.Errorf("client: ack of %d actions: %w", len(ids), err))
		}
	}
}
