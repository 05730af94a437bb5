package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// evalHeadroom is the part of a decision budget kept for what follows the
// profile read's deadline: go-redis and the runtime returning from a read
// that missed it (about 1 ms late at the median on 2 shared cores, up to
// 2-3 ms at the p99), evaluating the rules and sending the answer.
const evalHeadroom = 2 * time.Millisecond

// query is one user's question, from GetDecision or BatchGetDecisions.
type query struct {
	userID, channel, placement string
	context                    map[string]string
	minVersion                 uint64
	explain                    bool
}

// GetDecision reads the profile within the budget and evaluates the offers
// and policies. When the read does not finish in time or fails, it answers
// the channel's configured fallback marked degraded, with the reason,
// rather than an error: the caller's hot path always gets an answer.
func (s *Server) GetDecision(ctx context.Context, req *nudgev1.GetDecisionRequest) (*nudgev1.GetDecisionResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	q := query{
		userID:     req.GetUserId(),
		channel:    req.GetChannel(),
		placement:  req.GetPlacement(),
		context:    req.GetContext(),
		minVersion: req.GetMinProfileVersion(),
		explain:    req.GetExplain(),
	}
	if req.GetReserve() {
		return s.reserve(ctx, q, req.GetIdempotencyKey(), req.GetBudget()), nil
	}
	readCtx, cancel, readBudget := s.readContext(ctx, req.GetBudget())
	defer cancel()
	ps, errs := s.readProfiles(ctx, readCtx, readBudget, []string{q.userID}, func(ctx context.Context) ([]*profile.Profile, []error) {
		p, err := s.store.Get(ctx, q.userID)
		return []*profile.Profile{p}, []error{err}
	})
	if errs[0] != nil && ctx.Err() != nil {
		return nil, toStatus(ctx.Err())
	}
	return s.decide(ctx, s.rules.Rules(), q, ps[0], errs[0], readBudget), nil
}

// BatchGetDecisions reads every user's profile in one pipelined round trip
// and decides for each, within one budget for the whole batch.
func (s *Server) BatchGetDecisions(ctx context.Context, req *nudgev1.BatchGetDecisionsRequest) (*nudgev1.BatchGetDecisionsResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	ids := make([]string, len(req.GetQueries()))
	for i, q := range req.GetQueries() {
		ids[i] = q.GetUserId()
	}
	readCtx, cancel, readBudget := s.readContext(ctx, req.GetBudget())
	defer cancel()
	profiles, errs := s.readProfiles(ctx, readCtx, readBudget, ids, func(ctx context.Context) ([]*profile.Profile, []error) {
		return s.store.GetMany(ctx, ids)
	})
	if ctx.Err() != nil {
		return nil, toStatus(ctx.Err())
	}
	rules := s.rules.Rules()
	out := &nudgev1.BatchGetDecisionsResponse{Results: make([]*nudgev1.GetDecisionResponse, len(ids))}
	for i, q := range req.GetQueries() {
		out.Results[i] = s.decide(ctx, rules, query{
			userID:     q.GetUserId(),
			channel:    q.GetChannel(),
			placement:  q.GetPlacement(),
			context:    q.GetContext(),
			minVersion: q.GetMinProfileVersion(),
			explain:    req.GetExplain(),
		}, profiles[i], errs[i], readBudget)
	}
	return out, nil
}

// readContext returns the context for the profile read: the request's
// budget (or the default, capped to the maximum) minus the evaluation
// headroom.
func (s *Server) readContext(ctx context.Context, budget *durationpb.Duration) (context.Context, context.CancelFunc, time.Duration) {
	b := s.cfg.DefaultBudget
	if budget != nil && budget.AsDuration() > 0 {
		b = min(budget.AsDuration(), s.cfg.MaxBudget)
	}
	read := readShare(b)
	readCtx, cancel := context.WithTimeout(ctx, read)
	return readCtx, cancel, read
}

// readShare is the part of budget b the profile read gets.
func readShare(b time.Duration) time.Duration { return max(b-evalHeadroom, b/2) }

// errReadsSaturated is the read error when too many profile reads are
// already waiting on the store.
var errReadsSaturated = errors.New("too many profile reads already waiting on the store")

// errStoreFailing is the read error while the read breaker is open.
type errStoreFailing struct {
	failures int
	resume   time.Duration
}

func (e errStoreFailing) Error() string {
	return fmt.Sprintf("the last %d reads failed, so reads are paused for %v, then one probes the store", e.failures, e.resume.Round(time.Millisecond))
}

// admitRead asks the read breaker whether a read may go to the store; when
// it may not, the error to answer with.
func (s *Server) admitRead() (probe bool, err error) {
	now := time.Now() // the breaker's clock is the wall clock, not Config.Now
	ok, probe := s.reads.allow(now)
	if !ok {
		return false, errStoreFailing{failures: s.cfg.BreakerFailures, resume: s.reads.openFor(now)}
	}
	return probe, nil
}

// recordRead tells the read breaker how a read admitted by admitRead went:
// errs are its errors (runErr that of runBounded), ctx the call's. A failure is the store
// unreachable, or a read past its deadline when it had at least the
// default budget's share (a caller's smaller budget says nothing about
// the store); the caller's own deadline or cancellation says nothing
// either.
func (s *Server) recordRead(ctx context.Context, probe bool, readBudget time.Duration, runErr error, errs ...error) {
	if errors.Is(runErr, errReadsSaturated) {
		s.reads.abandon(probe)
		return
	}
	failed := s.storeFailed(ctx, runErr, readBudget)
	for _, err := range errs {
		failed = failed || s.storeFailed(ctx, err, readBudget)
	}
	s.reads.record(time.Now(), probe, failed)
}

// storeFailed reports whether a read's err tells of a failing store.
func (s *Server) storeFailed(ctx context.Context, err error, readBudget time.Duration) bool {
	switch {
	case err == nil || ctx.Err() != nil:
		return false
	case errors.Is(err, profile.ErrUnavailable):
		return true
	default:
		return errors.Is(err, context.DeadlineExceeded) && readBudget >= s.defaultRead
	}
}

// readProfiles reads profiles within readCtx's deadline (see runBounded),
// unless the read breaker is open; on failure every user gets the error.
// ctx is the call's.
func (s *Server) readProfiles(ctx, readCtx context.Context, readBudget time.Duration, ids []string, read func(context.Context) ([]*profile.Profile, []error)) ([]*profile.Profile, []error) {
	type result struct {
		ps   []*profile.Profile
		errs []error
	}
	probe, err := s.admitRead()
	var r result
	if err == nil {
		r, err = runBounded(s, readCtx, func(ctx context.Context) result {
			ps, errs := read(ctx)
			return result{ps, errs}
		})
		s.recordRead(ctx, probe, readBudget, err, r.errs...)
	}
	if err != nil {
		r = result{ps: make([]*profile.Profile, len(ids)), errs: make([]error, len(ids))}
		for i := range r.errs {
			r.errs[i] = err
		}
	}
	return r.ps, r.errs
}

// runBounded runs fn with ctx, whose deadline is the read's share of the
// budget, when fewer than Config.MaxPendingReads calls are running it;
// past that it fails at once with errReadsSaturated, so that a slow store
// degrades decisions instead of piling them up.
//
// fn runs on the caller's goroutine: a goroutine per decision cost about a
// tenth of the server's CPU per decision (creation, stack growth, a
// cross-CPU wake-up), so the budget relies on the store honouring ctx's
// deadline (see Store). A panic in fn reaches the recovery interceptor.
func runBounded[T any](s *Server, ctx context.Context, fn func(context.Context) T) (T, error) {
	var zero T
	select {
	case s.pendingReads <- struct{}{}:
	default:
		return zero, errReadsSaturated
	}
	defer func() { <-s.pendingReads }()
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	v := fn(ctx)
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	return v, nil
}

// reserve decides with reserve: inside one transaction on the user's
// profile it returns the decision already taken with the key, or decides
// and records the decision (a SEND holding its cap slot) under the key.
// Past the budget the answer is NONE, degraded: never a SEND without its
// reservation.
func (s *Server) reserve(ctx context.Context, q query, key string, budget *durationpb.Duration) *nudgev1.GetDecisionResponse {
	readCtx, cancel, readBudget := s.readContext(ctx, budget)
	defer cancel()
	rules := s.rules.Rules()
	type result struct {
		d       *nudgev1.Decision
		version uint64
		fresh   bool
		err     error
	}
	probe, err := s.admitRead()
	var r result
	if err == nil {
		r, err = runBounded(s, readCtx, func(ctx context.Context) result {
			var r result
			r.version, r.err = s.store.Update(ctx, q.userID, func(p *profile.Profile, now time.Time) bool {
				r.fresh = false
				if res, ok := p.Reservation(key, now); ok {
					if d := new(nudgev1.Decision); proto.Unmarshal(res.Decision, d) == nil {
						r.d = d
						return false
					}
				}
				if p.Version < q.minVersion {
					r.d = staleDecision(p.Version, q.minVersion)
					r.d.DecisionId, r.d.RulesVersion = newDecisionID(), rules.Version()
					return false
				}
				dec := rules.Decide(p, q.request(), now)
				d := decisionToProto(dec)
				d.DecisionId, d.RulesVersion = newDecisionID(), rules.Version()
				// Announce the expiry as the profile stores it (milliseconds),
				// so the slot never returns before the time the sender was told.
				expires := now.Add(s.cfg.ReservationTTL).Truncate(time.Millisecond)
				holds := dec.Verdict == decision.VerdictSend
				if holds {
					d.Reservation = &nudgev1.Reservation{IdempotencyKey: key, ExpiresAt: timestamppb.New(expires)}
				}
				encoded, err := proto.Marshal(d)
				if err != nil {
					panic(fmt.Sprintf("marshal decision: %v", err)) // a plain message cannot fail
				}
				p.Reserve(profile.Reservation{Key: key, Channel: q.channel, OfferID: d.GetOffer().GetId(), Holds: holds, At: now, Expires: expires, Decision: encoded})
				r.d, r.fresh = d, true
				return true
			})
			return r
		})
		s.recordRead(ctx, probe, readBudget, err, r.err)
	}
	if err == nil {
		err = r.err
	}
	if err != nil {
		s.metrics.countDecision(ctx, decision.VerdictNone, true)
		d := &nudgev1.Decision{
			Verdict:      nudgev1.Verdict_VERDICT_NONE,
			Degraded:     true,
			DecisionId:   newDecisionID(),
			RulesVersion: rules.Version(),
			Reasons: []*nudgev1.Reason{fallbackCause(err, readBudget),
				{RuleId: "fallback", Message: "no send without a reservation: ask again with the same idempotency_key"}},
		}
		return &nudgev1.GetDecisionResponse{Decision: d}
	}
	if r.fresh {
		s.metrics.countDecision(ctx, verdictFromProto(r.d.GetVerdict()), false)
		s.audit(q, r.d, r.version)
	}
	return &nudgev1.GetDecisionResponse{Decision: r.d, ProfileVersion: r.version}
}

func staleDecision(have, want uint64) *nudgev1.Decision {
	return &nudgev1.Decision{
		Verdict: nudgev1.Verdict_VERDICT_NONE,
		Stale:   true,
		Reasons: []*nudgev1.Reason{{RuleId: "read-your-writes", Message: fmt.Sprintf(
			"stored profile is at version %d, older than the requested minimum %d: not deciding on stale data", have, want)}},
	}
}

func (q query) request() decision.Request {
	return decision.Request{
		UserID:    q.userID,
		Channel:   q.channel,
		Placement: q.placement,
		Context:   q.context,
		Explain:   q.explain,
	}
}

// decide answers one query from its profile read (p, readErr).
func (s *Server) decide(ctx context.Context, rules *decision.Rules, q query, p *profile.Profile, readErr error, readBudget time.Duration) *nudgev1.GetDecisionResponse {
	var d *nudgev1.Decision
	var version uint64
	switch {
	case errors.Is(readErr, profile.ErrNotFound):
		p, readErr = &profile.Profile{}, nil
	case readErr != nil:
		fb := rules.Fallback(q.channel)
		s.metrics.countDecision(ctx, fb.Verdict, true)
		d = decisionToProto(fb)
		d.Degraded = true
		d.Reasons = append([]*nudgev1.Reason{fallbackCause(readErr, readBudget)}, d.Reasons...)
	}
	switch {
	case d != nil:
	case p.Version < q.minVersion:
		d = staleDecision(p.Version, q.minVersion)
		version = p.Version
	default:
		dec := rules.Decide(p, q.request(), s.cfg.Now())
		s.metrics.countDecision(ctx, dec.Verdict, false)
		d = decisionToProto(dec)
		version = p.Version
	}
	d.DecisionId = newDecisionID()
	d.RulesVersion = rules.Version()
	s.audit(q, d, version)
	return &nudgev1.GetDecisionResponse{Decision: d, ProfileVersion: version}
}

// audit records the decision if it is sampled.
func (s *Server) audit(q query, d *nudgev1.Decision, version uint64) {
	if s.cfg.Audit != nil && s.cfg.Audit.Sampled(d.GetDecisionId()) {
		s.cfg.Audit.Record(auditEntry(q, d, version, s.cfg.Now()))
	}
}

func auditEntry(q query, d *nudgev1.Decision, version uint64, now time.Time) audit.Entry {
	e := audit.Entry{
		DecisionID:     d.GetDecisionId(),
		At:             now,
		UserID:         q.userID,
		Channel:        q.channel,
		Placement:      q.placement,
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

// fallbackCause is the first reason of a degraded decision: why the profile
// could not be read.
func fallbackCause(err error, readBudget time.Duration) *nudgev1.Reason {
	var msg string
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		msg = "profile read exceeded its budget of " + readBudget.String()
	case errors.Is(err, profile.ErrCorrupt):
		msg = "stored profile cannot be decoded: " + err.Error()
	default:
		msg = "profile store unavailable: " + err.Error()
	}
	return &nudgev1.Reason{RuleId: "degraded", Message: msg}
}

func invalidArgument(err error) error {
	return status.Error(codes.InvalidArgument, "invalid request: "+err.Error())
}
