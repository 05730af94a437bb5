package server

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/internal/rulestest"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// playgroundFile names the rules of a TestRules request in their
// problems.
const playgroundFile = "playground.yaml"

// ruleLimits is what a RuleSource says of the limits its files are held
// to; a *decision.Live says it. TestRules holds its files to them too.
type ruleLimits interface {
	Limits() decision.Limits
}

var _ ruleLimits = (*decision.Live)(nil)

// TestRules plays rules on a user with internal/rulestest, the core of
// nudgectl rules test, and writes nothing: it reads the user's stored
// profile (ProfileStore.Get) and the rules in force, and that is all the
// state it touches; no Update, no outbox, no exposure, no audit.
func (s *Server) TestRules(ctx context.Context, req *nudgev1.TestRulesRequest) (*nudgev1.TestRulesResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	in := rulestest.Input{
		UserID:    req.GetUserId(),
		Channels:  req.GetChannels(),
		Placement: req.GetPlacement(),
		Context:   req.GetContext(),
		Now:       s.cfg.Now(),
		Limits:    s.cfg.Limits,
	}
	if req.GetNow() != nil {
		in.Now = req.GetNow().AsTime()
	}
	if e := req.GetEvent(); e != nil {
		ev := EventFromProto(e)
		in.Event = &ev
	}
	if len(req.GetHistory()) > 0 {
		in.History = make([]profile.Event, len(req.GetHistory()))
		for i, e := range req.GetHistory() {
			in.History[i] = EventFromProto(e)
		}
	}
	if err := in.Check(); err != nil {
		return nil, otherUser(err)
	}
	resp := &nudgev1.TestRulesResponse{}
	if req.GetUserId() != "" {
		p, err := s.profiles.Get(ctx, req.GetUserId())
		switch {
		case errors.Is(err, profile.ErrNotFound):
		case err != nil && ctx.Err() != nil:
			return nil, toStatus(ctx.Err())
		case err != nil:
			return nil, toStatus(err)
		default:
			in.Profile = p
			resp.ProfileFound, resp.ProfileVersion = true, p.Version
		}
	}

	// One call plays at a time: compiling the largest rules file the
	// limits allow takes about 3 s of a core and 650 MB of short-lived
	// garbage (decision.Limits), and each of up to 10,000 history events
	// may cost rules.max_event_cost to judge; several at once would take
	// that from the decisions served meanwhile.
	if err := s.plays.Acquire(ctx, 1); err != nil {
		return nil, toStatus(err)
	}
	defer s.plays.Release(1)
	rules := s.rules.Rules()
	if req.GetRules() == "" {
		// The counts of the rules in force's offers: thompson offers
		// compete as in GetDecision.
		in.Sampler = s.sampler()
	} else {
		var limits decision.Limits // zero fields: the defaults
		if l, ok := s.rules.(ruleLimits); ok {
			limits = l.Limits()
		}
		var err error
		rules, err = decision.Parse(playgroundFile, []byte(req.GetRules()), decision.WithLimits(limits))
		switch {
		case errors.Is(err, decision.ErrInvalidRules):
			// Only the problems: the rest would describe rules that
			// do not exist.
			bad := &nudgev1.TestRulesResponse{}
			for _, p := range rulestest.Problems(err) {
				bad.Problems = append(bad.Problems, problemToProto(p))
			}
			return bad, nil
		case err != nil:
			return nil, toStatus(fmt.Errorf("compile the rules: %w", err))
		}
	}
	rep, err := rulestest.Run(rules, in)
	if err != nil {
		return nil, toStatus(err) // a stored profile that does not copy
	}
	reportToProto(resp, req, &rep)
	return resp, nil
}

// otherUser is the status of a TestRules request with an event of
// another user. The ids are worded as profile's errors word them, so that
// the server redacts them like those (redactUsers).
func otherUser(err error) error {
	var ou *rulestest.OtherUserError
	if !errors.As(err, &ou) {
		return toStatus(err)
	}
	return invalidRequest(fmt.Sprintf("%s.user_id: the event is for user %q, not user %q (the request's user_id, else the event's, else history[0]'s)",
		ou.Field(), ou.UserID, ou.Want))
}

func problemToProto(p rulestest.Problem) *nudgev1.RulesProblem {
	return &nudgev1.RulesProblem{
		Line:    uint32(max(p.Line, 0)),
		Kind:    p.Kind,
		RuleId:  p.Rule,
		Field:   p.Field,
		Message: p.Msg,
		Text:    p.Text,
	}
}

// reportToProto fills resp with rep, the report of req. The profile's
// counts end at rep.Now, as the decisions' windows do.
func reportToProto(resp *nudgev1.TestRulesResponse, req *nudgev1.TestRulesRequest, rep *rulestest.Report) {
	resp.RulesVersion = rep.RulesVersion
	resp.UserId = rep.UserID
	resp.Now = timestamppb.New(rep.Now)
	for i, r := range rep.History {
		resp.History = append(resp.History, playedToProto(req.GetHistory()[i].GetEventId(), r))
	}
	if rep.Event != nil {
		resp.Event = playedToProto(req.GetEvent().GetEventId(), *rep.Event)
	}
	resp.Actions = actionsToProto(rep.Actions)
	resp.Notes = notesToProto(rep.Notes)
	for _, t := range rep.Timers {
		pt := &nudgev1.PendingTimer{TriggerId: t.Trigger, Step: uint32(max(t.Step, 0)), Wake: timestamppb.New(t.Wake), Deferred: t.Deferred}
		if !t.Due.IsZero() {
			pt.Due = timestamppb.New(t.Due)
		}
		resp.Timers = append(resp.Timers, pt)
	}
	for _, cd := range rep.Decisions {
		resp.Decisions = append(resp.Decisions, &nudgev1.ChannelDecision{Channel: cd.Channel, Decision: decisionToProto(cd.Decision)})
	}
	resp.Profile = profileToProto(rep.UserID, rep.Profile, rep.Now)
	for _, f := range rep.Later {
		resp.Later = append(resp.Later, &nudgev1.TimerFiring{At: timestamppb.New(f.At), Actions: actionsToProto(f.Actions), Notes: notesToProto(f.Notes)})
	}
	resp.LaterTruncated = rep.Truncated
}

func playedToProto(eventID string, r profile.Result) *nudgev1.PlayedEvent {
	return &nudgev1.PlayedEvent{EventId: eventID, Status: statusToProto(r.Status), Reason: r.Reason}
}

func notesToProto(notes []profile.Note) []*nudgev1.ActionNote {
	if len(notes) == 0 {
		return nil
	}
	out := make([]*nudgev1.ActionNote, len(notes))
	for i, n := range notes {
		out[i] = &nudgev1.ActionNote{TriggerId: n.Trigger, Kind: n.Kind, Reason: n.Reason}
		if !n.Due.IsZero() {
			out[i].Due = timestamppb.New(n.Due)
		}
	}
	return out
}
