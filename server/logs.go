package server

import (
	"context"
	"math"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/delivery"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// DecisionLog reads back the log of sampled decisions that an AuditLog
// writes: AdminService.TailDecisions.
type DecisionLog interface {
	// Newest is the id of the newest entry kept ("0-0" with none): Read
	// after it returns only the entries written later.
	Newest(ctx context.Context) (string, error)
	// Read returns up to count entries after the one with id after
	// ("0-0": from the oldest kept), oldest first, without waiting.
	Read(ctx context.Context, after string, count int64) ([]audit.Record, error)
}

var _ DecisionLog = (*audit.Log)(nil)

// DeadLetters lists the dead-letter stream: AdminService.ListDeadActions.
type DeadLetters interface {
	// DeadAfter lists up to count entries after the one with id after
	// ("": from the oldest), oldest first.
	DeadAfter(ctx context.Context, after string, count int64) ([]delivery.DeadEntry, error)
}

var _ DeadLetters = (*delivery.Outbox)(nil)

const (
	// tailPoll is how long TailDecisions waits before reading the
	// decision log again once a read found no more. It polls rather than
	// blocks in Redis (XREAD BLOCK): a follower then holds none of the
	// store client's connections, which decisions share, between reads,
	// and a draining server never waits on a blocked read.
	tailPoll = 200 * time.Millisecond
	// tailBatch is the most entries one read of the decision log
	// returns, and so one TailDecisionsResponse carries.
	tailBatch = 100
	// defaultDeadLimit is ListDeadActions' limit when the request has
	// none.
	defaultDeadLimit = 100
)

// TailDecisions streams the decision log, from the decisions recorded
// after the call (or the oldest kept) on, until the caller goes away,
// limit entries are sent, or the server drains (UNAVAILABLE). Entries that
// do not decode are skipped, and logged.
func (s *Server) TailDecisions(req *nudgev1.TailDecisionsRequest, stream grpc.ServerStreamingServer[nudgev1.TailDecisionsResponse]) error {
	if err := s.validator.Validate(req); err != nil {
		return invalidArgument(err)
	}
	dl := s.cfg.DecisionLog
	if dl == nil {
		return errNoDecisionLog
	}
	ctx := stream.Context()
	after := "0-0"
	if !req.GetFromOldest() {
		var err error
		if after, err = dl.Newest(ctx); err != nil {
			return readFailed(ctx, "read the decision log", err)
		}
	}
	// The starting point is fixed: the headers tell the caller that what
	// is recorded from now on will come.
	if err := stream.SendHeader(nil); err != nil {
		return err
	}
	limit, sent := int(req.GetLimit()), 0
	for {
		select {
		case <-s.draining:
			return errTailDraining
		default:
		}
		n := tailBatch
		if limit > 0 {
			n = min(n, limit-sent)
		}
		recs, err := dl.Read(ctx, after, int64(n))
		if err != nil {
			return readFailed(ctx, "read the decision log", err)
		}
		resp := &nudgev1.TailDecisionsResponse{Entries: make([]*nudgev1.DecisionLogEntry, 0, len(recs))}
		for i := range recs {
			r := &recs[i]
			after = r.ID
			if r.Err != nil {
				s.cfg.Logger.WarnContext(ctx, "decision log entry skipped: it does not decode", "id", r.ID, "err", r.Err)
				continue
			}
			resp.Entries = append(resp.Entries, decisionLogEntry(&r.Entry))
		}
		if len(resp.Entries) > 0 {
			if err := stream.Send(resp); err != nil {
				return err
			}
			if sent += len(resp.Entries); limit > 0 && sent >= limit {
				return nil
			}
		}
		if len(recs) == n {
			continue // more may be waiting
		}
		if err := s.pause(ctx, tailPoll, errTailDraining); err != nil {
			return err
		}
	}
}

// ListDeadActions lists the dead-letter stream, a page at a time.
func (s *Server) ListDeadActions(ctx context.Context, req *nudgev1.ListDeadActionsRequest) (*nudgev1.ListDeadActionsResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	if s.cfg.DeadLetters == nil {
		return nil, errNoDeadLetters
	}
	limit := int64(req.GetLimit())
	if limit == 0 {
		limit = defaultDeadLimit
	}
	dead, err := s.cfg.DeadLetters.DeadAfter(ctx, req.GetAfter(), limit)
	if err != nil {
		return nil, readFailed(ctx, "list dead letters", err)
	}
	resp := &nudgev1.ListDeadActionsResponse{DeadActions: make([]*nudgev1.DeadAction, 0, len(dead))}
	for i := range dead {
		d := &dead[i]
		if d.ActionErr != nil {
			s.cfg.Logger.WarnContext(ctx, "dead letter does not decode as an action: listed with what could be read", "id", d.ID, "err", d.ActionErr)
		}
		a := ActionToProto(&d.Action)
		if d.Action.TriggeredAt.IsZero() { // not read: absent, not year 1
			a.TriggeredAt = nil
		}
		da := &nudgev1.DeadAction{
			Id:            d.ID,
			Action:        a,
			Group:         d.Group,
			DeliveryCount: uint32(min(max(d.DeliveryCount, 0), math.MaxUint32)),
			OutboxStream:  d.Stream,
			OutboxId:      d.StreamID,
		}
		if !d.At.IsZero() {
			da.DeadLetteredAt = timestamppb.New(d.At)
		}
		resp.DeadActions = append(resp.DeadActions, da)
	}
	return resp, nil
}

// readFailed is the status of a failed read of a log: the caller's
// cancellation or deadline, or the store unavailable.
func readFailed(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return toStatus(ctx.Err())
	}
	return unavailable(what, err)
}

// decisionLogEntry is the API's form of a decision log entry.
func decisionLogEntry(e *audit.Entry) *nudgev1.DecisionLogEntry {
	// The log keeps the verdict's name in lower case (auditEntry).
	verdict := nudgev1.Verdict(nudgev1.Verdict_value["VERDICT_"+strings.ToUpper(e.Verdict)])
	pe := &nudgev1.DecisionLogEntry{
		DecisionId:     e.DecisionID,
		At:             timestamppb.New(e.At),
		UserId:         e.UserID,
		Channel:        e.Channel,
		Placement:      e.Placement,
		Verdict:        verdict,
		OfferId:        e.OfferID,
		Degraded:       e.Degraded,
		Stale:          e.Stale,
		Control:        e.Control,
		ProfileVersion: e.ProfileVersion,
		RulesVersion:   e.RulesVersion,
	}
	if len(e.Reasons) > 0 {
		pe.Reasons = make([]*nudgev1.Reason, len(e.Reasons))
		for i, r := range e.Reasons {
			pe.Reasons[i] = &nudgev1.Reason{RuleId: r.RuleID, Message: r.Message}
		}
	}
	return pe
}
