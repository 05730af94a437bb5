package decision

import (
	"maps"
	"strconv"
	"strings"
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
	// VerdictHold: an offer applies, but not now: the user's quiet hours
	// hold it until Decision.NotBefore.
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
	// UserID is the user decided for. It keys A/B splits (the same user
	// always lands in the same group of an offer); nothing else reads it.
	UserID string
	// Channel the caller would use (sms, push, email, web, ...). Offers that
	// list channels only match one of them; offers without channels match
	// any.
	Channel string
	// Placement is where the answer will be shown, e.g. "home_banner".
	Placement string
	// Context is caller context, visible to offer rules as context. It is
	// only read.
	Context map[string]string
	// Explain asks for Decision.Trace.
	Explain bool
	// ID is the decision's id, given back in Decision.ID (callers draw it
	// at random; the package draws nothing).
	ID string
	// MinVersion is the oldest profile version the caller accepts
	// (read-your-writes): an older profile gets a Stale answer (Answer,
	// Reserve).
	MinVersion uint64
	// Sampler draws the conversion rates of offers that compete by
	// Thompson sampling (select: thompson); nil: the first eligible one
	// wins, as by priority.
	Sampler Sampler
}

// Sampler draws an offer's conversion rate from its posterior given
// its measured conversions (treated users exposed and converted), which
// it also returns for the trace. It must be safe for concurrent use.
type Sampler interface {
	Sample(offerID string) (rate float64, exposed, converted int64)
}

// Reason explains one step of a decision.
type Reason struct {
	// RuleID is the offer or policy id, "consent" for the consent check,
	// "fallback" for a fallback decision, or "" when no rule is concerned.
	RuleID  string `json:"rule_id,omitempty"`
	Message string
}

// TraceStep is one check of a decision's evaluation (Request.Explain).
type TraceStep struct {
	// RuleID is the offer or policy checked ("consent" for consent).
	RuleID string `json:"rule_id,omitempty"`
	// Subject says what was checked, e.g. "when: <expression>" or
	// "frequency cap: at most 2 sms sends per 24h".
	Subject string `json:"subject"`
	// Value is what it gave, e.g. "true", "1 of 2 sends used", or an
	// evaluation error.
	Value string `json:"value"`
	// Passed is whether the candidate got past this check.
	Passed bool
}

// Offer is the offer to send.
type Offer struct {
	ID       string `json:"id"`
	Channel  string `json:"channel"`
	Template string `json:"template"`
	Payload  map[string]string
}

// Decision is the answer to a Request, with its reasons. Its JSON form is
// what a reservation keeps (Rules.Reserve).
type Decision struct {
	// ID is Request.ID (Answer, Reserve).
	ID      string  `json:"id,omitempty"`
	Verdict Verdict `json:"verdict"`
	// Offer is set when the verdict is VerdictSend or VerdictHold.
	Offer *Offer `json:"offer,omitempty"`
	// NotBefore is, for VerdictHold, when sending becomes allowed (in the
	// user's time zone); zero otherwise.
	NotBefore time.Time `json:"not_before,omitzero"`
	// Control is true when the user is in the control group of the winning
	// offer's A/B split: the verdict is then VerdictNone and Offer nil.
	Control bool `json:"control,omitempty"`
	// ControlOffer is, with Control, the offer whose control group the
	// user is in: the decision exposed the user to it (ExposeControl).
	ControlOffer string `json:"control_offer,omitempty"`
	// Reasons says why, in evaluation order: each policy or failed
	// expression that blocked a candidate, then the winner or why there is
	// none.
	Reasons []Reason `json:"reasons,omitempty"`
	// Trace has one step per check, in evaluation order, when the request
	// asked for it (Request.Explain); nil otherwise.
	Trace []TraceStep `json:"trace,omitempty"`
	// RulesVersion is the Version of the rules that decided.
	RulesVersion string `json:"rules_version"`
	// Degraded is set when the profile could not be read: the decision is
	// the channel's fallback (Answer) or VerdictNone (ReserveFailed).
	Degraded bool `json:"degraded,omitempty"`
	// Stale is set when the profile was older than Request.MinVersion:
	// the verdict is VerdictNone.
	Stale bool `json:"stale,omitempty"`
	// Hold is set on a send decided with reserve: the cap slot it holds.
	Hold *Hold
}

// Hold is the frequency-cap slot a send decided with reserve holds.
type Hold struct {
	// Key is the idempotency key of the reservation.
	Key string `json:"key"`
	// ExpiresAt is when the slot returns unless a message_sent event with
	// the key confirms the send first.
	ExpiresAt time.Time `json:"expires_at"`
}

var noContext = types.NewStringStringMap(types.DefaultTypeAdapter, nil)

// Decide picks the offer to send to the user of p on req.Channel at
// processing time now. p may be an empty profile (or nil) for an unknown
// user. The checks, in order (docs/rules.md describes them for rule
// authors):
//
//  1. consent: a user who unsubscribed from the channel gets VerdictNone
//     (reason "consent");
//  2. frequency caps for the channel and global caps: if any is reached,
//     VerdictNone with a reason per reached cap;
//  3. offers by priority (highest first, ties in file order) that are for
//     the channel: an offer is skipped, with a reason, when its category
//     was bought within the purchase cooldown or it was sent within its
//     own cooldown; then skipped when its when is false, or with a reason
//     when when, its payload or its score fails to evaluate. Within a
//     priority, the offers left with a score are ranked by it (highest
//     first, ties in file order) before those without one, which keep
//     file order. The first one left wins;
//  4. the winner's A/B split: a user in the control group gets
//     VerdictNone with Control set;
//  5. quiet hours for the channel, in the user's time zone (profile
//     attribute tz, else the rules' default): inside a window, VerdictHold
//     with the winner and NotBefore the end of the window;
//  6. otherwise VerdictSend.
//
// Decide is safe for concurrent use; it does not modify p.
func (r *Rules) Decide(p *profile.Profile, req Request, now time.Time) Decision {
	if p == nil {
		p = &profile.Profile{}
	}
	d := Decision{RulesVersion: r.Version()}
	consented := p.Consented(req.Channel)
	if req.Explain {
		v := "granted"
		if !consented {
			v = "unsubscribed"
		}
		d.trace("consent", "consent to "+req.Channel, v, consented)
	}
	if !consented {
		d.Verdict = VerdictNone
		d.Reasons = []Reason{{RuleID: "consent", Message: "user unsubscribed from " + req.Channel}}
		return d
	}
	if r == nil {
		return d.none()
	}
	if r.capped(&d, p, req, now) {
		d.Verdict = VerdictNone
		return d
	}
	o, payload := r.pick(&d, p, req, now)
	if o == nil {
		return d.none()
	}
	d.Reasons = append(d.Reasons, Reason{RuleID: o.id, Message: "offer " + o.id + " is eligible"})
	if o.ab {
		b := abBucket(req.UserID, o.id)
		control := b < o.control
		if req.Explain {
			v := "bucket " + strconv.FormatFloat(b, 'f', 4, 64) + ": "
			if control {
				v += "control group"
			} else {
				v += "treatment group"
			}
			d.trace(o.id, "a/b split: "+formatShare(o.control)+" of users in the control group", v, !control)
		}
		if control {
			d.Verdict, d.Control, d.ControlOffer = VerdictNone, true, o.id
			d.Reasons = append(d.Reasons, Reason{RuleID: o.id, Message: "offer " + o.id + ": user in the control group (" +
				formatShare(o.control) + " of users get nothing, to measure the offer's lift)"})
			return d
		}
	}
	d.Offer = &Offer{ID: o.id, Channel: req.Channel, Template: o.template, Payload: payload}
	if until, held := r.quietUntil(&d, p, req, now); held {
		d.Verdict, d.NotBefore = VerdictHold, until
		return d
	}
	d.Verdict = VerdictSend
	return d
}

func (d *Decision) none() Decision {
	d.Verdict = VerdictNone
	d.Reasons = append(d.Reasons, Reason{Message: "no eligible offer"})
	return *d
}

func (d *Decision) trace(rule, subject, value string, passed bool) {
	d.Trace = append(d.Trace, TraceStep{RuleID: rule, Subject: subject, Value: value, Passed: passed})
}

// capped checks the frequency caps that apply to the channel, and reports
// whether one is reached.
func (r *Rules) capped(d *Decision, p *profile.Profile, req Request, now time.Time) bool {
	reached := false
	for _, fc := range r.caps {
		if !fc.appliesTo(req.Channel) {
			continue
		}
		n := fc.used(p, now)
		full := n >= fc.max
		if req.Explain {
			d.trace(fc.id, fc.subject, strconv.Itoa(n)+" of "+strconv.Itoa(fc.max)+" sends used", !full)
		}
		if !full {
			continue
		}
		reached = true
		what := fc.channel + " sends"
		if fc.channel == "" {
			what = "sends on all channels"
		}
		d.Reasons = append(d.Reasons, Reason{RuleID: fc.id, Message: fc.id + ": " + strconv.Itoa(n) + " of " +
			strconv.Itoa(fc.max) + " " + what + " in the last " + fc.periodText})
	}
	return reached
}

// pick returns the offer for the channel that wins: by priority, the
// first that passes its cooldowns and conditions, with its payload, or
// nil. Within a priority, the eligible offers with a score that
// evaluates are ranked by it first (highest wins, ties in file order);
// only when none is left do the offers without one compete, in file
// order (or by Thompson sampling).
func (r *Rules) pick(d *Decision, p *profile.Profile, req Request, now time.Time) (*offer, map[string]string) {
	if len(r.offers) == 0 {
		return nil, nil
	}
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
	if len(r.features) > 0 {
		vars.rules = r
	}
	for i := 0; i < len(r.offers); {
		end := i + 1
		for end < len(r.offers) && r.offers[end].priority == r.offers[i].priority {
			end++
		}
		if r.scored {
			if o, payload := r.bestScore(d, p, req, now, vars, r.offers[i:end]); o != nil {
				return o, payload
			}
		}
		for k := i; k < end; k++ {
			o := r.offers[k]
			if o.score != nil || !o.forChannel(req.Channel) {
				continue
			}
			payload, ok := r.eligible(d, p, req, now, vars, o)
			if !ok {
				continue
			}
			if o.thompson {
				return r.thompson(d, p, req, now, vars, k, payload)
			}
			return o, payload
		}
		i = end
	}
	return nil, nil
}

// bestScore returns the eligible offer of group (offers of one priority)
// for the channel whose score is the highest, ties in file order, with
// its payload; nil if no offer with a score is eligible. An offer whose
// score fails to evaluate is skipped, with a reason.
func (r *Rules) bestScore(d *Decision, p *profile.Profile, req Request, now time.Time, vars *offerVars, group []*offer) (*offer, map[string]string) {
	var best *offer
	var bestPayload map[string]string
	var bestScore float64
	var ranked []string // "id score" of the candidates, for the reason
	for _, o := range group {
		if o.score == nil || !o.forChannel(req.Channel) {
			continue
		}
		payload, ok := r.eligible(d, p, req, now, vars, o)
		if !ok {
			continue
		}
		score, err := o.score.evalNumber(vars)
		if req.Explain {
			v := formatScore(score)
			if err != nil {
				v = "error: " + err.Error()
			}
			d.trace(o.id, "score: "+o.score.src, v, err == nil)
		}
		if err != nil {
			d.Reasons = append(d.Reasons, Reason{RuleID: o.id, Message: "offer " + o.id + " skipped: score: " + err.Error()})
			continue
		}
		ranked = append(ranked, o.id+" "+formatScore(score))
		if best == nil || score > bestScore {
			best, bestPayload, bestScore = o, payload, score
		}
	}
	if len(ranked) > 1 {
		d.Reasons = append(d.Reasons, Reason{RuleID: best.id, Message: "offer " + best.id + " ranked first by score: " +
			strings.Join(ranked, ", ")})
	}
	return best, bestPayload
}

func formatScore(v float64) string { return strconv.FormatFloat(v, 'g', -1, 64) }

// eligible checks an offer for the channel: its cooldowns, its when and
// its payload.
func (r *Rules) eligible(d *Decision, p *profile.Profile, req Request, now time.Time, vars *offerVars, o *offer) (map[string]string, bool) {
	if pc := r.purchaseCooldown; pc != nil && o.category != "" {
		last, ok := p.LastPurchase(o.category)
		within := ok && !last.Before(now.Add(-pc.period))
		if req.Explain {
			v := "no purchase of " + o.category + " kept"
			if ok {
				v = o.category + " bought " + profile.FormatDuration(now.Sub(last)) + " ago"
			}
			d.trace(pc.id, "purchase cooldown of offer "+o.id+": no "+o.category+" offer for "+pc.periodText+" after a purchase", v, !within)
		}
		if within {
			d.Reasons = append(d.Reasons, Reason{RuleID: pc.id, Message: "offer " + o.id + " skipped: " + o.category +
				" bought " + profile.FormatDuration(now.Sub(last)) + " ago, within the purchase cooldown of " + pc.periodText})
			return nil, false
		}
	}
	if o.cooldown > 0 {
		last, ok := p.LastSent(o.id)
		within := ok && !last.Before(now.Add(-o.cooldown))
		if req.Explain {
			v := "never sent"
			if ok {
				v = "sent " + profile.FormatDuration(now.Sub(last)) + " ago"
			}
			d.trace(o.id, "cooldown: not again within "+o.cooldownText+" of a send", v, !within)
		}
		if within {
			d.Reasons = append(d.Reasons, Reason{RuleID: o.id, Message: "offer " + o.id + " skipped: sent " +
				profile.FormatDuration(now.Sub(last)) + " ago, within its cooldown of " + o.cooldownText})
			return nil, false
		}
	}
	ok, err := o.when.evalBool(vars)
	if req.Explain {
		d.traceWhen(o, ok, err)
	}
	if err != nil {
		d.Reasons = append(d.Reasons, Reason{RuleID: o.id, Message: "offer " + o.id + " skipped: when: " + err.Error()})
		return nil, false
	}
	if !ok {
		return nil, false
	}
	payload, field, err := o.evalPayload(vars)
	if err != nil {
		if req.Explain {
			d.trace(o.id, field, "error: "+err.Error(), false)
		}
		d.Reasons = append(d.Reasons, Reason{RuleID: o.id, Message: "offer " + o.id + " skipped: " + field + ": " + err.Error()})
		return nil, false
	}
	return payload, true
}

// thompson picks among the eligible thompson offers of the priority of
// r.offers[first] (eligible, with payload) for the channel: each one's
// conversion rate is drawn from its posterior (Request.Sampler) and the
// best draw wins. Without a sampler the first one wins.
func (r *Rules) thompson(d *Decision, p *profile.Profile, req Request, now time.Time, vars *offerVars, first int, payload map[string]string) (*offer, map[string]string) {
	lead := r.offers[first]
	type arm struct {
		o       *offer
		payload map[string]string
	}
	arms := []arm{{lead, payload}}
	for _, o := range r.offers[first+1:] {
		if o.priority != lead.priority {
			break // by priority: the rest are lower
		}
		if !o.thompson || !o.forChannel(req.Channel) {
			continue
		}
		if pl, ok := r.eligible(d, p, req, now, vars, o); ok {
			arms = append(arms, arm{o, pl})
		}
	}
	if req.Sampler == nil || len(arms) == 1 {
		return lead, payload
	}
	best, bestDraw := 0, -1.0
	for k, a := range arms {
		draw, exposed, converted := req.Sampler.Sample(a.o.id)
		if req.Explain {
			d.trace(a.o.id, "thompson sampling: a conversion rate drawn from its measured conversions",
				"drew "+strconv.FormatFloat(draw, 'f', 4, 64)+" ("+strconv.FormatInt(converted, 10)+" of "+
					strconv.FormatInt(exposed, 10)+" treated users converted)", true)
		}
		if draw > bestDraw {
			best, bestDraw = k, draw
		}
	}
	ids := make([]string, len(arms))
	for k, a := range arms {
		ids[k] = a.o.id
	}
	w := arms[best].o
	d.Reasons = append(d.Reasons, Reason{RuleID: w.id, Message: "offer " + w.id + " chosen by thompson sampling among " +
		strings.Join(ids, ", ") + " (best draw of a conversion rate: " + strconv.FormatFloat(bestDraw, 'f', 4, 64) + ")"})
	return w, arms[best].payload
}

func (d *Decision) traceWhen(o *offer, ok bool, err error) {
	if o.when == nil {
		d.trace(o.id, "when: (none, always eligible)", "true", true)
		return
	}
	v := strconv.FormatBool(ok)
	if err != nil {
		v = "error: " + err.Error()
	}
	d.trace(o.id, "when: "+o.when.src, v, ok && err == nil)
}

// quietUntil checks the quiet hours for the channel in the user's time
// zone, and returns when the user's quiet hours end if they hold the
// offer now.
func (r *Rules) quietUntil(d *Decision, p *profile.Profile, req Request, now time.Time) (time.Time, bool) {
	var loc *time.Location
	var badTZ, zone string
	var local time.Time
	var mine, held []*quietHours
	for _, q := range r.quiet {
		if !q.channels.has(req.Channel) {
			continue
		}
		mine = append(mine, q)
		if loc == nil {
			loc, badTZ = r.location(p)
			local = now.In(loc)
		}
		in := q.active(local)
		if req.Explain {
			if zone == "" {
				zone = r.zoneNote(p, loc, badTZ)
			}
			v := "local time " + local.Format("15:04") + " in " + zone + ": "
			if in {
				v += "inside"
			} else {
				v += "outside"
			}
			d.trace(q.id, "quiet hours "+q.window+" for "+strings.Join(q.channels.list, ", "), v, !in)
		}
		if in {
			held = append(held, q)
		}
	}
	if len(held) == 0 {
		return time.Time{}, false
	}
	// The hold ends when no window of the channel is active any more:
	// windows may overlap or follow each other.
	until := local
	for range len(mine) + 1 {
		next := until
		for _, q := range mine {
			if q.active(until) {
				if e := q.end(until); e.After(next) {
					next = e
				}
			}
		}
		if !next.After(until) {
			break
		}
		until = next
	}
	if zone == "" {
		zone = r.zoneNote(p, loc, badTZ)
	}
	for _, q := range held {
		d.Reasons = append(d.Reasons, Reason{RuleID: q.id, Message: q.id + ": quiet hours " + q.window + " for " + req.Channel +
			" (local time " + local.Format("15:04") + " in " + zone + "); hold until " + until.Format("2006-01-02 15:04 MST")})
	}
	return until, true
}

// Fallback is the decision for a channel when the profile cannot be read
// (the store is slow or down): the literal offer of the rules' fallbacks
// section for the channel (VerdictSend), or VerdictNone when it has none.
// No policy is checked, since there is no profile. Callers mark the
// decision degraded. It is safe for concurrent use.
func (r *Rules) Fallback(channel string) Decision {
	d := Decision{Verdict: VerdictNone, RulesVersion: r.Version()}
	var fb *fallback
	if r != nil {
		fb = r.fallbacks[channel]
	}
	if fb == nil {
		d.Reasons = []Reason{{RuleID: "fallback", Message: "no fallback offer for " + channel}}
		return d
	}
	d.Verdict = VerdictSend
	d.Offer = &Offer{ID: fb.offerID, Channel: channel, Template: fb.template, Payload: maps.Clone(fb.payload)}
	d.Reasons = []Reason{{RuleID: "fallback", Message: "fallback offer " + fb.offerID + " for " + channel}}
	return d
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
