package rulestest

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
)

// MaxFirings bounds the timer firings Run simulates: a journey has at
// most 17 steps, and each may be deferred once or twice by quiet hours,
// so only a profile full of timers comes near it.
const MaxFirings = 256

// Input is what Run plays. Every field is optional, but a test of
// triggers needs an Event.
type Input struct {
	// UserID is the user played. Default: the Event's user, else the
	// first History event's. Every event must be this user's.
	UserID string
	// Profile is the user's profile before History, e.g. as the store
	// holds it. Run works on a copy (made through the store's encoding,
	// which keeps times to the millisecond) and never modifies it.
	// Default: a new user's empty profile.
	Profile *profile.Profile
	// History are events applied before Event, in one step at Now, to
	// build the profile: their results are reported, not the actions
	// their triggers fire (the profile remembers those firings, for
	// cooldowns and caps).
	History []profile.Event
	// Event is the event tested, applied after History. Default none: the
	// decisions are made on the profile Profile and History leave.
	Event *profile.Event
	// Channels are the channels decided on, in order. Default: every
	// channel the rules name (decision.Rules.Channels), sorted.
	Channels []string
	// Placement and Context are those of every decision (see
	// decision.Request).
	Placement string
	Context   map[string]string
	// Sampler draws the conversion rates of the offers that compete by
	// Thompson sampling. Default nil: they win in file order.
	Sampler decision.Sampler
	// Now is the processing time of every step and decision. Default:
	// the Event's occurred_at, else the latest History event's, else the
	// Profile's UpdatedAt.
	Now time.Time
	// Limits bound the profile as a server's do. Zero fields mean their
	// defaults (profile.DefaultLimits).
	Limits profile.Limits
}

// Report is what Run found.
type Report struct {
	// UserID and Now are the user and processing time played.
	UserID string
	Now    time.Time
	// RulesVersion is the rules' Version.
	RulesVersion string
	// History has the result of each Input.History event, in order.
	History []profile.Result
	// Event is the result of Input.Event; nil without one.
	Event *profile.Result
	// Actions are what the Event's triggers fire at once, in order, and
	// Notes what became of the trigger actions and journey steps it
	// reached (profile.Note), both as the Event's step reported them.
	Actions []profile.Action
	Notes   []profile.Note
	// Timers are the journey steps and deferred actions pending once the
	// Event is applied, by wake time.
	Timers []profile.Timer
	// Decisions are the decision on each channel, in the order of
	// Input.Channels, each with its explain trace.
	Decisions []ChannelDecision
	// Profile is the profile the decisions were made on, as the store
	// would hold it (times to the millisecond).
	Profile *profile.Profile
	// Later is what the Timers do at their wake times if no other event
	// arrives: each firing, in time order, including the steps the
	// firings schedule, up to MaxFirings.
	Later []Firing
	// Truncated says that timers were still pending after MaxFirings
	// firings: Later stops there.
	Truncated bool
}

// ChannelDecision is the decision on one channel. Its JSON is what
// nudgectl rules test --json prints.
type ChannelDecision struct {
	Channel  string            `json:"channel"`
	Decision decision.Decision `json:"decision"`
}

// Firing is what the timers due at one time do. Its JSON is what nudgectl
// rules test --json prints.
type Firing struct {
	At      time.Time        `json:"at"`
	Actions []profile.Action `json:"actions,omitempty"`
	Notes   []profile.Note   `json:"notes,omitempty"`
}

// Run plays in on rules (which must not be nil), in the order nudged
// would: the History, then the Event, then a decision on each channel,
// then the pending timers at their wake times. It fails only with an
// *OtherUserError, or when the starting profile cannot be copied (a
// profile.ErrCorrupt; a profile read from a store never is).
func Run(rules *decision.Rules, in Input) (Report, error) {
	if err := in.Check(); err != nil {
		return Report{}, err
	}
	user := in.user()
	now := in.Now
	if now.IsZero() {
		now = defaultNow(in)
	}
	p := &profile.Profile{}
	if in.Profile != nil {
		var err error
		if p, err = profile.Decode(profile.Encode(in.Profile)); err != nil {
			return Report{}, fmt.Errorf("rulestest: copy the starting profile: %w", err)
		}
	}
	p.UserID = user
	rep := Report{UserID: user, Now: now, RulesVersion: rules.Version()}

	step := rules.Step(in.Limits)
	if len(in.History) > 0 {
		rep.History = step(p, in.History, now).Results
	}
	if in.Event != nil {
		out := step(p, []profile.Event{*in.Event}, now)
		rep.Event = &out.Results[0]
		rep.Actions, rep.Notes = out.Actions, out.Notes
	}
	// A copy: the firings below rearrange p.Timers.
	rep.Timers = slices.Clone(p.Timers)

	chs := in.Channels
	if len(chs) == 0 {
		chs = rules.Channels()
	}
	for _, ch := range chs {
		d := rules.Decide(p, decision.Request{UserID: user, Channel: ch, Placement: in.Placement, Context: in.Context,
			Explain: true, Sampler: in.Sampler}, now)
		rep.Decisions = append(rep.Decisions, ChannelDecision{Channel: ch, Decision: d})
	}
	var err error
	if rep.Profile, err = profile.Decode(profile.Encode(p)); err != nil {
		return Report{}, fmt.Errorf("rulestest: copy the profile: %w", err)
	}
	rep.Profile.UserID = user

	// Last, as it moves the profile on: fire the timers at their wake
	// times, as nudged would if no other event arrived.
	rep.Later, rep.Truncated = fireTimers(rules, in.Limits, p)
	return rep, nil
}

// defaultNow is Input.Now's default.
func defaultNow(in Input) time.Time {
	if in.Event != nil {
		return in.Event.OccurredAt
	}
	var latest time.Time
	for i := range in.History {
		if t := in.History[i].OccurredAt; t.After(latest) {
			latest = t
		}
	}
	if latest.IsZero() && in.Profile != nil {
		latest = in.Profile.UpdatedAt
	}
	return latest
}

// fireTimers runs the rules' FireStep on p at each wake time of its
// timers in turn, until none is left or MaxFirings (then truncated), and
// returns what each firing did.
func fireTimers(rules *decision.Rules, limits profile.Limits, p *profile.Profile) (later []Firing, truncated bool) {
	fire := rules.FireStep(limits)
	for range MaxFirings {
		at := p.NextWake()
		if at.IsZero() {
			return later, false
		}
		o := fire(p, nil, at)
		later = append(later, Firing{At: at, Actions: o.Actions, Notes: o.Notes})
	}
	return later, !p.NextWake().IsZero()
}

// Problem is one problem of a rules file that did not load.
type Problem struct {
	// Line is the 1-based line of the problem, or 0 when unknown (a YAML
	// syntax error says its line in Msg).
	Line int
	// Kind, Rule and Field locate the problem in the file, as in
	// decision.RuleError; empty when not known.
	Kind, Rule, Field string
	// Msg says what is wrong.
	Msg string
	// Text is the whole problem as nudged and nudgectl print it:
	// file:line: kind "id": field: message.
	Text string
}

// Problems flattens the error of decision.Parse or decision.Load into one
// Problem per rule error, in the order reported (file order). An error
// that is not a *decision.RuleError (a file that cannot be read) is one
// Problem with only Msg and Text.
func Problems(err error) []Problem {
	var out []Problem
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var re *decision.RuleError
		if errors.As(err, &re) {
			out = append(out, Problem{Line: re.Line, Kind: re.Kind, Rule: re.Rule, Field: re.Field, Msg: re.Msg, Text: re.Error()})
			return
		}
		out = append(out, Problem{Msg: err.Error(), Text: err.Error()})
	}
	if err != nil {
		walk(err)
	}
	return out
}
