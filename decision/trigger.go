package decision

import (
	"time"

	"cel.dev/cel-go/common/types"

	"github.com/nudge-dm/nudge/profile"
)

// StepOption configures Step.
type StepOption func(*stepConfig)

type stepConfig struct {
	onError func(*EvalError)
}

// OnEvalError sets a function called for every trigger expression that fails
// to evaluate (the trigger then does not fire for that event). The default
// ignores errors. The store may run a step more than once for the same
// events (on a transaction conflict), so f may see the same error again; it
// is called synchronously and must be safe for concurrent use when the step
// is.
func OnEvalError(f func(*EvalError)) StepOption {
	return func(c *stepConfig) { c.onError = f }
}

// Step returns the profile.Step that applies events and evaluates the
// triggers. For each event, in order: the event is applied to the profile
// (at processing time now, under limits with their defaults filled in); if
// it was applied, each trigger whose on lists the event type (or that has no
// on) is evaluated on the updated profile at event time, and fires when its
// when holds, its cooldown key is not within its cooldown, the user has
// consented to the action's channel and every payload expression
// evaluates. Finally the profile is compacted. The outcome is Changed when
// any event was applied: duplicates and rejections alone leave the stored
// profile as it is.
//
// Duplicate and rejected events never fire triggers. An action's ID is
// profile.ActionID(user, event, trigger), so a re-run step emits the same
// ids; its RulesVersion is r.Version(). The returned step is safe for
// concurrent use on distinct profiles.
func (r *Rules) Step(limits profile.Limits, opts ...StepOption) profile.Step {
	limits = limits.WithDefaults()
	var cfg stepConfig
	for _, o := range opts {
		o(&cfg)
	}
	return func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		out := profile.Outcome{Results: make([]profile.Result, len(events))}
		// One activation for the whole call: its values are updated per event.
		ev := &eventVal{}
		pv := &profileVal{p: p}
		vars := &triggerVars{event: ev, profile: pv}
		for i := range events {
			e := &events[i]
			res := p.ApplyEvent(e, now, limits)
			out.Results[i] = res
			if res.Status != profile.Applied {
				continue
			}
			out.Changed = true
			ts := r.triggersFor(e.Type)
			if len(ts.named) == 0 && len(ts.any) == 0 {
				continue
			}
			ev.set(e)
			pv.now = e.OccurredAt
			vars.now = types.Timestamp{Time: e.OccurredAt}
			var ni, ai int
			for t := ts.next(&ni, &ai); t != nil; t = ts.next(&ni, &ai) {
				if a, ok := t.fire(p, e, vars, &cfg); ok {
					a.RulesVersion = r.Version()
					out.Actions = append(out.Actions, a)
				}
			}
		}
		p.Compact(now, limits)
		return out
	}
}

func (t *trigger) fire(p *profile.Profile, e *profile.Event, vars *triggerVars, cfg *stepConfig) (profile.Action, bool) {
	fail := func(field string, err error) (profile.Action, bool) {
		if cfg.onError != nil {
			cfg.onError(&EvalError{Kind: "trigger", Rule: t.id, Field: field, UserID: e.UserID, EventID: e.ID, Err: err})
		}
		return profile.Action{}, false
	}
	ok, err := t.when.evalBool(vars)
	if err != nil {
		return fail("when", err)
	}
	// Consent is checked on the updated profile, so an unsubscribe event
	// itself never triggers a message on its channel.
	if !ok || !p.Consented(t.channel) {
		return profile.Action{}, false
	}
	key := t.id
	if t.cooldownBy != nil {
		v, err := t.cooldownBy.evalString(vars)
		if err != nil {
			return fail("cooldown_by", err)
		}
		key = t.id + "/" + v
	}
	if t.cooldown > 0 {
		// Both directions: a late event just before the last firing is as
		// much "within the cooldown" as one just after it.
		if last, ok := p.FiredAt(key); ok && absDuration(e.OccurredAt.Sub(last)) < t.cooldown {
			return profile.Action{}, false
		}
	}
	payload := make(map[string]string, len(t.payload)+len(t.exprs))
	for k, v := range t.payload {
		payload[k] = v
	}
	for _, x := range t.exprs {
		v, err := x.expr.evalString(vars)
		if err != nil {
			return fail(x.field, err)
		}
		payload[x.key] = v
	}
	if t.cooldown > 0 {
		p.MarkFired(key, e.OccurredAt)
	}
	return profile.Action{
		ID:          profile.ActionID(e.UserID, e.ID, t.id),
		UserID:      e.UserID,
		TriggerID:   t.id,
		Channel:     t.channel,
		Template:    t.template,
		Payload:     payload,
		TriggeredAt: e.OccurredAt,
		EventID:     e.ID,
	}, true
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
