package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"strings"
	"time"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// GetDecision answers from the profile in memory when the store's
// near-cache has it current (DecisionStore.Peek), else reads it within
// the budget (budget.go), and answers with decision.Rules.Answer: when the
// read does not finish in time or fails, the channel's configured fallback
// marked degraded, with the reason, rather than an error: the caller's hot
// path always gets an answer.
func (s *Server) GetDecision(ctx context.Context, req *nudgev1.GetDecisionRequest) (*nudgev1.GetDecisionResponse, error) {
	start := time.Now()
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	if err := mayDecide(ctx, req.GetReserve(), req.GetExplain()); err != nil {
		return nil, err
	}
	q := request(req, req.GetExplain())
	q.Sampler = s.sampler()
	share := s.readBudget(req.GetBudget())
	if req.GetReserve() {
		return s.reserve(ctx, q, req.GetIdempotencyKey(), start, share), nil
	}
	read := decision.Read{Budget: share}
	var found bool
	if read.Profile, found, read.Err = s.decisions.Peek(q.UserID, q.MinVersion); !found {
		r, err := boundedRead(s, ctx, start, share, func(ctx context.Context) (decision.Read, error) {
			p, err := s.decisions.Load(ctx, q.UserID, q.MinVersion)
			return decision.Read{Profile: p, Err: err, Budget: share}, err
		})
		if read = r; err != nil {
			read = decision.Read{Err: err, Budget: share}
		}
	}
	if read.Err != nil && ctx.Err() != nil {
		return nil, toStatus(ctx.Err())
	}
	return s.answer(ctx, s.rules.Rules(), q, read), nil
}

// BatchGetDecisions answers every query whose profile the store's
// near-cache has from memory, reads the others' profiles in one pipelined
// round trip, and decides for each, within one budget for the whole batch.
func (s *Server) BatchGetDecisions(ctx context.Context, req *nudgev1.BatchGetDecisionsRequest) (*nudgev1.BatchGetDecisionsResponse, error) {
	start := time.Now()
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	if err := mayDecide(ctx, false, req.GetExplain()); err != nil {
		return nil, err
	}
	share := s.readBudget(req.GetBudget())
	reads := make([]decision.Read, len(req.GetQueries()))
	var missed []int
	var ids []string
	for i, q := range req.GetQueries() {
		r := &reads[i]
		r.Budget = share
		var found bool
		if r.Profile, found, r.Err = s.decisions.Peek(q.GetUserId(), q.GetMinProfileVersion()); !found {
			missed = append(missed, i)
			ids = append(ids, q.GetUserId())
		}
	}
	if len(missed) > 0 {
		type many struct {
			ps   []*profile.Profile
			errs []error
		}
		m, err := boundedRead(s, ctx, start, share, func(ctx context.Context) (many, error) {
			ps, errs := s.decisions.LoadMany(ctx, ids)
			return many{ps, errs}, errors.Join(errs...)
		})
		if ctx.Err() != nil {
			return nil, toStatus(ctx.Err())
		}
		for k, i := range missed {
			if err != nil {
				reads[i].Err = err
			} else {
				reads[i].Profile, reads[i].Err = m.ps[k], m.errs[k]
			}
		}
	}
	rules := s.rules.Rules()
	out := &nudgev1.BatchGetDecisionsResponse{Results: make([]*nudgev1.GetDecisionResponse, len(reads))}
	for i, q := range req.GetQueries() {
		dq := request(q, req.GetExplain())
		dq.Sampler = s.sampler()
		out.Results[i] = s.answer(ctx, rules, dq, reads[i])
	}
	return out, nil
}

// query is what GetDecisionRequest and a BatchGetDecisionsRequest's
// queries ask.
type query interface {
	GetUserId() string
	GetChannel() string
	GetPlacement() string
	GetContext() map[string]string
	GetMinProfileVersion() uint64
}

// request is q as decision asks it, with a new decision id.
func request(q query, explain bool) decision.Request {
	return decision.Request{
		UserID:     q.GetUserId(),
		Channel:    q.GetChannel(),
		Placement:  q.GetPlacement(),
		Context:    q.GetContext(),
		Explain:    explain,
		MinVersion: q.GetMinProfileVersion(),
		ID:         newDecisionID(),
	}
}

// answer answers one query from its profile read, counts and audits it.
func (s *Server) answer(ctx context.Context, rules *decision.Rules, q decision.Request, read decision.Read) *nudgev1.GetDecisionResponse {
	now := s.cfg.Now()
	d := rules.Answer(read, q, now)
	s.recordControl(ctx, d, q.UserID, now)
	var version uint64
	if read.Err == nil {
		version = read.Profile.Version
	}
	if !d.Stale {
		s.metrics.countDecision(ctx, d.Verdict, d.Degraded)
	}
	pd := decisionToProto(d)
	s.audit(q, pd, version)
	return &nudgev1.GetDecisionResponse{Decision: pd, ProfileVersion: version}
}

// reserve decides with reserve: one transaction on the user's profile runs
// decision.Rules.Reserve (the decision already taken with the key, or a new
// one recorded under it). Past the budget the answer is NONE, degraded:
// never a SEND without its reservation.
func (s *Server) reserve(ctx context.Context, q decision.Request, key string, start time.Time, share time.Duration) *nudgev1.GetDecisionResponse {
	rules := s.rules.Rules()
	type reserved struct {
		decision.Reserved
		version uint64
		err     error
	}
	r, err := boundedRead(s, ctx, start, share, func(ctx context.Context) (reserved, error) {
		var r reserved
		r.version, r.err = s.decisions.Update(ctx, q.UserID, func(p *profile.Profile, now time.Time) bool {
			r.Reserved = rules.Reserve(p, q, key, s.cfg.ReservationTTL, now)
			return r.Fresh
		})
		return r, r.err
	})
	if err == nil {
		err = r.err
	}
	if err != nil {
		d := rules.ReserveFailed(q, err, share)
		s.metrics.countDecision(ctx, d.Verdict, true)
		return &nudgev1.GetDecisionResponse{Decision: decisionToProto(d)}
	}
	d := decisionToProto(r.Decision)
	if r.Fresh {
		s.recordControl(ctx, r.Decision, q.UserID, s.cfg.Now())
		s.metrics.countDecision(ctx, r.Verdict, false)
		s.audit(q, d, r.version)
	}
	return &nudgev1.GetDecisionResponse{Decision: d, ProfileVersion: r.version}
}

// audit records the decision if it is sampled.
func (s *Server) audit(q decision.Request, d *nudgev1.Decision, version uint64) {
	if s.cfg.Audit != nil && s.cfg.Audit.Sampled(d.GetDecisionId()) {
		s.cfg.Audit.Record(auditEntry(q, d, version, s.cfg.Now()))
	}
}

func auditEntry(q decision.Request, d *nudgev1.Decision, version uint64, now time.Time) audit.Entry {
	e := audit.Entry{
		DecisionID:     d.GetDecisionId(),
		At:             now,
		UserID:         q.UserID,
		Channel:        q.Channel,
		Placement:      q.Placement,
		Verdict:        strings.ToLower(strings.TrimPrefix(d.GetVerdict().String(), "VERDICT_")),
		OfferID:        d.GetOffer().GetId(),
		Degraded:       d.GetDegraded(),
		Stale:          d.GetStale(),
		Control:        d.GetControl(),
		ProfileVersion: version,
		RulesVersion:   d.GetRulesVersion(),
	}
	for _, r := range d.GetReasons() {
		e.Reasons = append(e.Reasons, audit.Reason{RuleID: r.GetRuleId(), Message: r.GetMessage()})
	}
	return e
}

// newDecisionID returns a random 128-bit id.
func newDecisionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	return "d_" + hex.EncodeToString(b[:])
}
