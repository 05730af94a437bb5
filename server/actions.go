package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"slices"
	"time"

	"google.golang.org/grpc"

	"github.com/nudge-dm/nudge/delivery"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Outbox is what the server needs to deliver actions (ActionService) and
// to manage consumer groups (AdminService).
type Outbox interface {
	Read(ctx context.Context, group, consumer string) ([]delivery.Delivery, error)
	// Ack acknowledges only deliveries pending for the group, and for the
	// consumer when it is not empty.
	Ack(ctx context.Context, group, consumer string, ackIDs []string) (int, error)
	// AckRead acknowledges deliveries Read has just returned, without
	// Ack's ownership lookup.
	AckRead(ctx context.Context, group string, ackIDs []string) (int, error)
	Pending(ctx context.Context, group, consumer string) (int64, error)
	Release(ctx context.Context, group, consumer string, sent []string) (int, error)
	Groups(ctx context.Context, now time.Time) ([]delivery.Group, error)
	// DeleteGroup fails with delivery.ErrGroupNotFound for a group no
	// stream has.
	DeleteGroup(ctx context.Context, group string) (int, error)
}

// releaseTimeout bounds the release of a gone member's actions.
const releaseTimeout = 5 * time.Second

var _ Outbox = (*delivery.Outbox)(nil)

// Subscribe streams the group's actions to one member until the caller
// goes away or the server drains (UNAVAILABLE: resubscribe elsewhere).
// When the stream ends, the actions delivered to the member and not
// acknowledged go back to the group at once (see delivery.Outbox.Release),
// rather than after the visibility timeout.
func (s *Server) Subscribe(req *nudgev1.SubscribeRequest, stream grpc.ServerStreamingServer[nudgev1.SubscribeResponse]) (err error) {
	if err := s.validator.Validate(req); err != nil {
		return invalidArgument(err)
	}
	if s.cfg.Outbox == nil {
		return errNoOutbox
	}
	ctx := stream.Context()
	group, consumer := req.GetGroup(), req.GetConsumer()
	// Before the first read, which would create the group.
	if err := mayUseGroup(ctx, group); err != nil {
		return err
	}
	if consumer == "" {
		var b [8]byte
		_, _ = rand.Read(b[:])
		consumer = "c-" + hex.EncodeToString(b[:])
	}
	// handed is whether an action was read for the member; sentIDs are
	// the ack ids sent to it, in order (the last 2 × MaxUnacked or more),
	// from which the release tells what the member cannot have been
	// handling.
	handed := false
	var sentIDs []string
	defer func() {
		if handed {
			s.release(ctx, group, consumer, sentIDs)
		}
	}()
	sent := 0 // since the member's pending count was last read
	for {
		select {
		case <-s.draining:
			return errSubscribeDraining
		default:
		}
		// Send at most MaxUnacked actions the member has not acknowledged:
		// more would sit in buffers past the visibility timeout and be
		// redelivered to another member while this one still works on
		// them.
		if sent >= s.cfg.MaxUnacked/2 {
			if err := s.waitForAcks(ctx, group, consumer, 0); err != nil {
				return err
			}
			sent = 0
		}
		ds, err := s.cfg.Outbox.Read(ctx, group, consumer)
		handed = true // even a failed read may have claimed actions for the member
		if err != nil {
			if ctx.Err() != nil {
				return toStatus(ctx.Err())
			}
			return unavailable("read the outbox", err)
		}
		// The filter drops the other channels' actions for the whole
		// group (see SubscribeRequest.channels): only a token naming the
		// group gets here. They are acknowledged before the others are
		// sent; they were just read for this member, so without Ack's
		// ownership lookup.
		kept, skipped := ds, []string(nil)
		if chans := req.GetChannels(); len(chans) > 0 {
			kept = nil
			for _, d := range ds {
				if slices.Contains(chans, d.Action.Channel) {
					kept = append(kept, d)
				} else {
					skipped = append(skipped, d.AckID)
				}
			}
		}
		if len(skipped) > 0 {
			if _, err := s.cfg.Outbox.AckRead(ctx, group, skipped); err != nil && ctx.Err() == nil {
				return unavailable("acknowledge filtered actions", err)
			}
		}
		for i, d := range kept {
			// A read returns up to one action per stream: with many
			// buckets, more than MaxUnacked.
			if sent >= s.cfg.MaxUnacked/2 {
				if err := s.waitForAcks(ctx, group, consumer, int64(len(kept)-i)); err != nil {
					return err
				}
				sent = 0
			}
			a := ActionToProto(&d.Action)
			if err := stream.Send(&nudgev1.SubscribeResponse{Action: a, AckId: d.AckID, DeliveryCount: uint32(d.Count), Consumer: consumer}); err != nil {
				return err
			}
			s.metrics.delivered.Add(ctx, 1)
			sent++
			if sentIDs = append(sentIDs, d.AckID); len(sentIDs) > 4*s.cfg.MaxUnacked {
				sentIDs = append(sentIDs[:0], sentIDs[len(sentIDs)-2*s.cfg.MaxUnacked:]...)
			}
		}
	}
}

// release hands the actions a gone member did not acknowledge back to its
// group; a failure leaves them to the visibility timeout.
func (s *Server) release(ctx context.Context, group, consumer string, sent []string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	n, err := s.cfg.Outbox.Release(ctx, group, consumer, sent)
	if err != nil {
		s.cfg.Logger.Warn("releasing a gone member's actions failed: they come back after the visibility timeout", "group", group, "consumer", consumer, "err", err)
		return
	}
	if n > 0 {
		s.metrics.released.Add(ctx, int64(n))
	}
}

// waitForAcks waits until fewer than MaxUnacked actions are pending for the
// member, polling its pending count, of which held were read for it and
// not sent yet.
func (s *Server) waitForAcks(ctx context.Context, group, consumer string, held int64) error {
	for {
		n, err := s.cfg.Outbox.Pending(ctx, group, consumer)
		if err != nil {
			if ctx.Err() != nil {
				return toStatus(ctx.Err())
			}
			return unavailable("read pending actions", err)
		}
		if n-held < int64(s.cfg.MaxUnacked) {
			return nil
		}
		if err := s.pause(ctx, 20*time.Millisecond, errSubscribeDraining); err != nil {
			return err
		}
	}
}

// pause waits d for a stream that polls: nil after d; the call's status
// if ctx ends first; drained if the server drains first.
func (s *Server) pause(ctx context.Context, d time.Duration, drained error) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return toStatus(ctx.Err())
	case <-s.draining:
		return drained
	case <-t.C:
		return nil
	}
}

// Ack acknowledges deliveries made to the group (and to the consumer,
// when the request names it); other ack ids are left alone and not
// counted.
func (s *Server) Ack(ctx context.Context, req *nudgev1.AckRequest) (*nudgev1.AckResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	if s.cfg.Outbox == nil {
		return nil, errNoOutbox
	}
	if err := mayUseGroup(ctx, req.GetGroup()); err != nil {
		return nil, err
	}
	n, err := s.cfg.Outbox.Ack(ctx, req.GetGroup(), req.GetConsumer(), req.GetAckIds())
	switch {
	case errors.Is(err, delivery.ErrBadAckID):
		return nil, toStatus(err)
	case err != nil:
		return nil, unavailable("acknowledge", err)
	}
	s.metrics.acked.Add(ctx, int64(n))
	return &nudgev1.AckResponse{Acked: uint32(n)}, nil
}
