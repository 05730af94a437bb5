package server

import (
	"context"
	"errors"
	"time"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// evalHeadroom is the part of a decision budget kept for evaluating the
// rules after the profile read.
const evalHeadroom = 500 * time.Microsecond

// GetDecision reads the profile within the budget and evaluates the offers.
// When the read does not finish in time or fails, it answers NONE marked
// degraded, with the reason, rather than an error: the caller's hot path
// always gets an answer.
func (s *Server) GetDecision(ctx context.Context, req *nudgev1.GetDecisionRequest) (*nudgev1.GetDecisionResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	budget := s.cfg.DefaultBudget
	if b := req.GetBudget(); b != nil && b.AsDuration() > 0 {
		budget = min(b.AsDuration(), s.cfg.MaxBudget)
	}
	readBudget := budget - evalHeadroom
	if readBudget < budget/2 {
		readBudget = budget / 2
	}
	readCtx, cancel := context.WithTimeout(ctx, readBudget)
	p, err := s.store.Get(readCtx, req.GetUserId())
	cancel()
	switch {
	case errors.Is(err, profile.ErrNotFound):
		p = &profile.Profile{}
	case err != nil:
		if ctx.Err() != nil {
			return nil, toStatus(ctx.Err())
		}
		s.metrics.countDecision(ctx, decision.VerdictNone, true)
		return &nudgev1.GetDecisionResponse{Decision: fallback(err, readBudget)}, nil
	}
	d := s.rules.Rules().Decide(p, decision.Request{
		Channel:   req.GetChannel(),
		Placement: req.GetPlacement(),
		Context:   req.GetContext(),
	}, s.cfg.Now())
	s.metrics.countDecision(ctx, d.Verdict, false)
	return &nudgev1.GetDecisionResponse{Decision: decisionToProto(d), ProfileVersion: p.Version}, nil
}

// fallback is the decision given when the profile could not be read.
func fallback(err error, readBudget time.Duration) *nudgev1.Decision {
	var msg string
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		msg = "profile read exceeded its budget of " + readBudget.String()
	case errors.Is(err, profile.ErrCorrupt):
		msg = "stored profile cannot be decoded: " + err.Error()
	default:
		msg = "profile store unavailable: " + err.Error()
	}
	return &nudgev1.Decision{
		Verdict:  nudgev1.Verdict_VERDICT_NONE,
		Degraded: true,
		Reasons:  []*nudgev1.Reason{{RuleId: "fallback", Message: msg}},
	}
}

func invalidArgument(err error) error {
	return status.Error(codes.InvalidArgument, "invalid request: "+err.Error())
}
