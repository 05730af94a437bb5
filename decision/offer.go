package decision

import (
	"slices"
	"time"

	"cel.dev/cel-go/common/types"

	"github.com/nudge-dm/nudge/profile"
)

// Verdict says what to do.
type Verdict int

const (
	// VerdictNone: do nothing.
	VerdictNone Verdict = iota + 1
	// VerdictSend: send the offer now.
	VerdictSend
	// VerdictHold: an offer applies, but a policy holds it (frequency caps,
	// quiet hours). Decide does not return it yet; it is part of the
	// vocabulary so that callers handle it from the start.
	VerdictHold
)

func (v Verdict) String() string {
	switch v {
	case VerdictNone:
		return "none"
	case VerdictSend:
		return "send"
	case VerdictHold:
		return "hold"
	}
	return "unknown"
}

// Request is what a decider asks about.
type Request struct {
	// Channel the caller would use (sms, push, email, web, ...). Offers that
	// list channels only match one of them; offers without channels match
	// any.
	Channel string
	// Placement is where the answer will be shown, e.g. "home_banner".
	Placement string
	// Context is caller context, visible to offer rules as context. It is
	// only read.
	Context map[string]string
}

// Reason explains one step of a decision.
type Reason struct {
	// RuleID is the offer id, "consent" for the consent check, or "" when no
	// rule is concerned.
	RuleID  string
	Message string
}

// Offer is the offer to send.
type Offer struct {
	ID       string
	Channel  string
	Template string
	Payload  map[string]string
}

// Decision is the answer to a Request, with its reasons.
type Decision struct {
	Verdict Verdict
	// Offer is set when the verdict is VerdictSend.
	Offer *Offer
	// Reasons says why, in evaluation order: offers skipped because their
	// expressions failed, then the winner or why there is none.
	Reasons []Reason
}

var noContext = types.NewStringStringMap(types.DefaultTypeAdapter, nil)

// Decide picks the offer to send to the user of p on req.Channel at
// processing time now. p may be an empty profile (or nil) for an unknown
// user. A user who has not consented to the channel gets VerdictNone with
// reason "consent". Otherwise offers are tried by priority (highest first,
// ties in file order), skipping those not for the channel; the first whose
// when holds and whose payload evaluates wins. An offer whose expression
// fails is skipped with a reason saying why. Decide is safe for concurrent
// use; it does not modify p.
func (r *Rules) Decide(p *profile.Profile, req Request, now time.Time) Decision {
	if p == nil {
		p = &profile.Profile{}
	}
	if !p.Consented(req.Channel) {
		return Decision{Verdict: VerdictNone, Reasons: []Reason{{RuleID: "consent", Message: "user unsubscribed from " + req.Channel}}}
	}
	var reasons []Reason
	if r != nil && len(r.offers) > 0 {
		vars := &offerVars{
			profile:   &profileVal{p: p, now: now},
			now:       types.Timestamp{Time: now},
			channel:   types.String(req.Channel),
			placement: types.String(req.Placement),
			context:   noContext,
		}
		if req.Context != nil {
			vars.context = types.NewStringStringMap(types.DefaultTypeAdapter, req.Context)
		}
		for _, o := range r.offers {
			if len(o.channels) > 0 && !slices.Contains(o.channels, req.Channel) {
				continue
			}
			ok, err := o.when.evalBool(vars)
			if err != nil {
				reasons = append(reasons, Reason{RuleID: o.id, Message: "offer " + o.id + " skipped: when: " + err.Error()})
				continue
			}
			if !ok {
				continue
			}
			payload, field, err := o.evalPayload(vars)
			if err != nil {
				reasons = append(reasons, Reason{RuleID: o.id, Message: "offer " + o.id + " skipped: " + field + ": " + err.Error()})
				continue
			}
			reasons = append(reasons, Reason{RuleID: o.id, Message: "offer " + o.id + " is eligible"})
			return Decision{
				Verdict: VerdictSend,
				Offer:   &Offer{ID: o.id, Channel: req.Channel, Template: o.template, Payload: payload},
				Reasons: reasons,
			}
		}
	}
	return Decision{Verdict: VerdictNone, Reasons: append(reasons, Reason{Message: "no eligible offer"})}
}

func (o *offer) evalPayload(vars *offerVars) (map[string]string, string, error) {
	payload := make(map[string]string, len(o.payload)+len(o.exprs))
	for k, v := range o.payload {
		payload[k] = v
	}
	for _, x := range o.exprs {
		v, err := x.expr.evalString(vars)
		if err != nil {
			return nil, x.field, err
		}
		payload[x.key] = v
	}
	return payload, "", nil
}
