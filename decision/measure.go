package decision

import (
	"cmp"
	"slices"
	"time"

	"cel.dev/cel-go/cel"

	"github.com/nudge-dm/nudge/profile"
)

// This file measures campaigns: what counts as a conversion (the rules'
// conversion section), which exposures and conversions a step records,
// and the campaigns a report lists. docs/rules.md explains it for rule
// authors.
//
// A campaign is a trigger, a step of a journey, or an offer, named by its
// id. A user is exposed to it:
//   - a trigger or step: when it fires. Treated users get the action;
//     users the journey's ab split puts in control get none, and the
//     exposure is recorded all the same, at the time the action would
//     have been sent;
//   - an offer: when a send of it is reported (message_sent with
//     offer_id), for treated users; when a decision puts the user in its
//     control group (the server records those after the answer:
//     ExposeControl).
//
// The first exposure opens an attribution window of conversion.window;
// a conversion event in it (after the exposure, at most window after)
// converts the user once (profile.Expose, profile.Convert).

// conversion is the rules' conversion section.
type conversion struct {
	on     []string
	window time.Duration
	value  *expr // nil: eventValue says whether the event's value counts
	// eventValue: the value is the event's (the default section).
	eventValue bool
}

// Defaults of the conversion section.
const (
	DefaultConversionWindow = 7 * 24 * time.Hour
	minConversionWindow     = time.Minute
	maxConversionWindow     = 90 * 24 * time.Hour
)

func (cv *conversion) reaches(typ string) bool { return slices.Contains(cv.on, typ) }

// Campaign kinds.
const (
	CampaignTrigger = "trigger"
	CampaignStep    = "step"
	CampaignOffer   = "offer"
)

// Campaign is a trigger, journey step or offer, as its report names it.
type Campaign struct {
	ID string
	// Kind is CampaignTrigger, CampaignStep or CampaignOffer.
	Kind string
	// Journey is, for a step, the id of its journey's trigger.
	Journey string
	// HasControl says the campaign holds out a control group: Control of
	// the users (for a step, its journey's split).
	HasControl bool
	Control    float64
	// Thompson says the offer competes by Thompson sampling (select:
	// thompson).
	Thompson bool
}

// Campaigns returns the rules' campaigns: the triggers, each followed by
// its journey's steps, in file order, then the offers in file order.
func (r *Rules) Campaigns() []Campaign {
	if r == nil {
		return nil
	}
	return slices.Clone(r.campaigns)
}

// Conversion returns what counts as a conversion: the event types and
// the attribution window.
func (r *Rules) Conversion() (on []string, window time.Duration) {
	cv := r.conv()
	return slices.Clone(cv.on), cv.window
}

var defaultConversion = conversion{on: []string{profile.TypePurchase}, window: DefaultConversionWindow, eventValue: true}

func (r *Rules) conv() *conversion {
	if r == nil {
		return &defaultConversion
	}
	return &r.conversion
}

// compileCampaigns compiles the conversion section and lists the
// campaigns, refusing an offer whose id is also a trigger's or a step's.
func compileCampaigns(c *collector, cc *compiler, env *cel.Env, raw *rawFile, r *Rules) {
	r.conversion = defaultConversion
	if rc := raw.conversion; rc != nil {
		w := where{}
		cv := conversion{on: []string{profile.TypePurchase}, window: DefaultConversionWindow}
		if rc.onSet {
			cv.on = nil
			for _, typ := range rc.on {
				if !eventTypePattern.MatchString(typ.val) {
					c.at(w, typ.line, "conversion.on", "event type %q must match %s", typ.val, eventTypePattern)
					continue
				}
				if !slices.Contains(cv.on, typ.val) {
					cv.on = append(cv.on, typ.val)
				}
			}
			if len(rc.on) == 0 {
				c.at(w, rc.line, "conversion.on", "must list at least one event type (default: [purchase])")
			}
		}
		if rc.window.set {
			if d, ok := checkDuration(c, w, "conversion.window", rc.window, rc.line, true); ok {
				if d < minConversionWindow || d > maxConversionWindow {
					c.at(w, rc.window.line, "conversion.window", "must be from 1m to 90d, got %s", rc.window.val)
				} else {
					cv.window = d
				}
			}
		}
		if rc.value.val != "" {
			var cost uint64
			cv.value = cc.compileExpr(env, w, "conversion.value", rc.value, numberResult, &cost)
		}
		r.conversion = cv
	}

	ids := make(map[string]int)
	for _, t := range r.triggers {
		for k, st := range t.steps {
			cp := Campaign{ID: st.id, Kind: CampaignTrigger, HasControl: t.ab, Control: t.control}
			if k > 0 {
				cp.Kind, cp.Journey = CampaignStep, t.id
			}
			ids[st.id] = st.line
			r.campaigns = append(r.campaigns, cp)
		}
	}
	for _, o := range r.offers {
		if line, dup := ids[o.id]; dup {
			c.at(where{kind: kindOffer, rule: o.id}, o.line, "id",
				"%q is also the id of a trigger or journey step (line %d): a campaign's report is named by its id, so triggers, steps and offers need distinct ids",
				o.id, line)
			continue
		}
		if r.offerByID == nil {
			r.offerByID = make(map[string]*offer)
		}
		r.offerByID[o.id] = o
		r.campaigns = append(r.campaigns, Campaign{ID: o.id, Kind: CampaignOffer, HasControl: o.ab, Control: o.control, Thompson: o.thompson})
	}
}

// InControl reports whether the user is in the control group of a
// campaign that holds out the share control of its users: a stable hash
// of the user and the campaign (for a journey, its trigger) below the
// share. The same user is always in the same group of a campaign, and
// the groups of different campaigns are independent.
func InControl(userID, campaignID string, control float64) bool {
	return control > 0 && abBucket(userID, campaignID) < control
}

// measure records what an applied event does to the campaigns: a
// conversion event converts the open windows (and is kept), and a
// reported send of an offer exposes a treated user.
func (j *judge) measure(e *profile.Event) {
	if !j.r.measuring() {
		return
	}
	cv := j.r.conv()
	if cv.reaches(e.Type) {
		value := 0.0
		switch {
		case cv.value != nil:
			j.at(e, e.OccurredAt)
			v, err := cv.value.evalNumber(&j.vars)
			if err != nil {
				if j.cfg.onError != nil {
					j.cfg.onError(&EvalError{Kind: "conversion", Rule: "conversion", Field: "value", UserID: e.UserID, EventID: e.ID, Err: err})
				}
			} else {
				value = max(-profile.MaxValueTotal, min(v, profile.MaxValueTotal))
			}
		case cv.eventValue:
			value = e.Value
		}
		j.out.Measures = append(j.out.Measures, j.p.Convert(e.OccurredAt, value, cv.window, j.limits.MaxConversions)...)
	}
	if e.Type == profile.TypeMessageSent && j.r != nil {
		id := e.Attributes[profile.AttrOfferID]
		if o := j.r.offerByID[id]; o != nil && !(o.ab && InControl(j.userID(e), o.id, o.control)) {
			j.expose(o.id, profile.Treated, e.OccurredAt)
		}
	}
}

// userID is the judged user's id: the profile's, else the event's.
func (j *judge) userID(e *profile.Event) string { return cmp.Or(j.p.UserID, e.UserID) }

// expose records an exposure to a campaign at at.
func (j *judge) expose(campaign string, v profile.Variant, at time.Time) {
	if !j.r.measuring() {
		return
	}
	if m, ok := j.p.Expose(campaign, v, at, j.r.conv().window); ok {
		j.out.Measures = append(j.out.Measures, m)
	}
}

// measuring reports whether the rules record exposures and
// conversions (settings.measure, default true). With measurement off,
// the ab splits still hold users out; nothing is counted.
func (r *Rules) measuring() bool { return r == nil || !r.noMeasure }

// compactMeasures forgets the windows and conversions nothing can use
// any more.
func (j *judge) compactMeasures() {
	j.p.CompactMeasures(j.now, j.r.conv().window, j.limits)
}

// ExposeControl returns the step that records a decision's control
// exposure: the user was put in the control group of the offer at at
// (the decision's time). The server runs it after the answer, so that
// recording it adds no round trip to the decision. Like every exposure,
// it counts only when no window of the offer is open for the user.
func (r *Rules) ExposeControl(limits profile.Limits, offerID string, at time.Time) profile.Step {
	limits = limits.WithDefaults()
	window := r.conv().window
	measuring := r.measuring()
	return func(p *profile.Profile, _ []profile.Event, now time.Time) profile.Outcome {
		var out profile.Outcome
		if !measuring {
			return out
		}
		if m, ok := p.Expose(offerID, profile.Control, at, window); ok {
			out.Measures = []profile.Measure{m}
			out.Changed = true
			p.CompactMeasures(now, window, limits)
		}
		return out
	}
}
