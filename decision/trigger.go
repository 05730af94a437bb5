package decision

import (
	"cmp"
	"slices"
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

// maxReevaluations bounds how often one late event judges a trigger
// again (see Step).
const maxReevaluations = 32

// Step returns the profile.Step that applies events, evaluates the
// triggers and fires the user's due timers. For each event, in order:
//
//   - the event is applied to the profile (at processing time now, under
//     limits with their defaults filled in); duplicates and rejected
//     events do nothing more;
//   - it cancels the pending journey steps that list its type in unless,
//     when it occurred after their trigger's event and at or before their
//     due time (and with them the steps after);
//   - unless the event is older than settings.trigger_horizon (24 h by
//     default: a backfill of last month's events counts them but sends
//     nothing), each trigger whose on lists its type (or that has no on)
//     is judged:
//     its when on the updated profile at event time. A late event (one
//     before other events of the trigger's types) is also judged at the
//     later minutes that have such events, within the longest duration
//     the when names, so that whether a trigger fires does not depend on
//     arrival order; it fires at the first time its when holds;
//   - a trigger with a wait schedules a timer (profile.Timer) at the event
//     time plus the wait; one without fires now: consent, cooldown (by
//     event time), payload, then the channel limit (one action per
//     channel and event by default, by priority), frequency caps and quiet
//     hours (by processing time; quiet hours defer the action with a
//     timer), unless the trigger is transactional.
//
// Then every timer due at now fires (FireStep), so an event whose wait
// has already passed is judged at once, and the profile is compacted. The
// outcome is Changed when any event was applied or timer fired.
//
// An action's ID is profile.ActionID(user, event, trigger or step), so a
// re-run step emits the same ids; its RulesVersion is r.Version(). The
// returned step is safe for concurrent use on distinct profiles.
func (r *Rules) Step(limits profile.Limits, opts ...StepOption) profile.Step {
	limits = limits.WithDefaults()
	var cfg stepConfig
	for _, o := range opts {
		o(&cfg)
	}
	return func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		out := profile.Outcome{Results: make([]profile.Result, len(events))}
		if p.UserID == "" && len(events) > 0 {
			p.UserID = events[0].UserID
		}
		j := r.newJudge(p, now, limits, &cfg, &out)
		judgedFrom := now.Add(-r.horizon()) // older events judge no trigger
		for i := range events {
			e := &events[i]
			res := p.ApplyEvent(e, now, limits)
			out.Results[i] = res
			if res.Status != profile.Applied {
				continue
			}
			out.Changed = true
			j.measure(e)
			j.cancel(e)
			if !e.OccurredAt.Before(judgedFrom) {
				j.event(e)
			}
		}
		if j.fireDue() {
			out.Changed = true
		}
		if out.Changed {
			p.Compact(now, limits)
			j.compactMeasures()
		}
		return out
	}
}

// FireStep returns the profile.Step that fires the user's timers due at
// processing time now; the store runs it for the users its due index
// names (it takes no events). Each due timer's step is judged: a step of
// a then must pass its when (on the profile at its due time), every step
// the user's consent, its cooldown (by due time), and unless transactional
// the frequency caps and quiet hours (by processing time). It fires, is
// dropped with a reason (profile.Note), or is deferred to the end of the
// quiet hours; then the journey's next step is scheduled from this one's
// due time. A journey whose trigger is within its cooldown at its due
// time ends there: the cooldown deduplicates journeys.
func (r *Rules) FireStep(limits profile.Limits, opts ...StepOption) profile.Step {
	limits = limits.WithDefaults()
	var cfg stepConfig
	for _, o := range opts {
		o(&cfg)
	}
	return func(p *profile.Profile, _ []profile.Event, now time.Time) profile.Outcome {
		var out profile.Outcome
		j := r.newJudge(p, now, limits, &cfg, &out)
		if j.fireDue() {
			out.Changed = true
			p.Compact(now, limits)
			j.compactMeasures()
		}
		return out
	}
}

// judge is one Step call's state: the profile, the activation reused for
// every evaluation, and the actions sent per channel so far (for caps).
type judge struct {
	r      *Rules
	p      *profile.Profile
	now    time.Time
	limits profile.Limits
	cfg    *stepConfig
	out    *profile.Outcome
	// The activation, in the judge: one allocation per step call.
	ev   eventVal
	pv   profileVal
	vars triggerVars
	sent map[string]int
}

func (r *Rules) newJudge(p *profile.Profile, now time.Time, limits profile.Limits, cfg *stepConfig, out *profile.Outcome) *judge {
	j := &judge{r: r, p: p, now: now, limits: limits, cfg: cfg, out: out, pv: profileVal{p: p}}
	j.vars = triggerVars{event: &j.ev, profile: &j.pv}
	return j
}

// at sets the activation to event e at time t.
func (j *judge) at(e *profile.Event, t time.Time) {
	if j.ev.e != e {
		j.ev.set(e)
	}
	j.pv.now = t
	j.vars.now = types.Timestamp{Time: t}
}

func (j *judge) note(t *trigger, kind, reason string, due time.Time) {
	j.out.Notes = append(j.out.Notes, profile.Note{Trigger: t.id, Kind: kind, Reason: reason, Due: due})
}

func (j *judge) evalError(t *trigger, e *profile.Event, field string, err error) {
	if j.cfg.onError != nil {
		j.cfg.onError(&EvalError{Kind: "trigger", Rule: t.id, Field: field, UserID: e.UserID, EventID: e.ID, Err: err})
	}
}

// candidate is an action a trigger would send for an event, judged but
// not yet under the channel limit and the policies.
type candidate struct {
	t       *trigger // the trigger or step whose action it is
	root    *trigger // its journey's trigger
	step    int      // its index in the journey
	e       *profile.Event
	at      time.Time // event time it fires at (cooldowns): the event's, or the step's due time
	due     time.Time // zero for a trigger fired by its event
	from    time.Time // its journey's start (Timer.From); zero: at
	key     string    // cooldown key
	payload map[string]string
}

// event judges the triggers an applied event reaches.
func (j *judge) event(e *profile.Event) {
	ts := j.r.triggersFor(e.Type)
	if len(ts.named) == 0 && len(ts.any) == 0 {
		return
	}
	var now []candidate
	var ni, ai int
	for t := ts.next(&ni, &ai); t != nil; t = ts.next(&ni, &ai) {
		at, ok := j.holds(t, e)
		if !ok {
			continue
		}
		if t.wait > 0 {
			j.schedule(t, 0, e, at, at.Add(t.wait), 0)
			continue
		}
		if c, ok := j.candidate(t, t, 0, e, at, time.Time{}); ok {
			now = append(now, c)
		} else if t.hasThen() && !j.cooling(t, e, at) {
			j.next(t, 0, e, at, at, 0)
		}
	}
	if len(now) == 0 {
		return
	}
	// The channel limit: per channel, by priority, then file order (the
	// order of now). Transactional actions are not counted.
	slices.SortStableFunc(now, func(a, b candidate) int { return cmp.Compare(b.t.priority, a.t.priority) })
	taken := make(map[string]int)
	for _, c := range now {
		if !c.t.transactional && j.r.channelLimit > 0 {
			if taken[c.t.channel] >= j.r.channelLimit {
				j.note(c.t, profile.NoteDropped, profile.DropChannelLimit, time.Time{})
				continue
			}
			taken[c.t.channel]++
		}
		j.send(c)
		if c.root.hasThen() {
			j.next(c.root, 0, c.e, c.at, c.at, 0)
		}
	}
}

// holds judges t's when for e: at the event's time, and for a late event
// at the later minutes with events of t's types within its lookback. It
// returns the first time it holds.
func (j *judge) holds(t *trigger, e *profile.Event) (time.Time, bool) {
	if t.when == nil {
		return e.OccurredAt, true
	}
	j.at(e, e.OccurredAt)
	ok, err := t.when.evalBool(&j.vars)
	if err != nil {
		j.evalError(t, e, "when", err)
		return time.Time{}, false
	}
	if ok || t.lookback == 0 {
		return e.OccurredAt, ok
	}
	last := e.OccurredAt
	if len(t.on) == 0 {
		for _, at := range j.p.LastSeen {
			if at.After(last) {
				last = at
			}
		}
	} else {
		for _, typ := range t.on {
			if at, ok := j.p.LastSeen[typ]; ok && at.After(last) {
				last = at
			}
		}
	}
	if !last.After(e.OccurredAt) {
		return time.Time{}, false // in order: nothing later to complete
	}
	minutes := j.p.Minutes(t.on, e.Category, t.byCategory, e.OccurredAt, earliest(last, e.OccurredAt.Add(t.lookback)), maxReevaluations)
	for _, m := range minutes {
		at := earliest(profile.MinuteEnd(m), last)
		j.at(e, at)
		if ok, err := t.when.evalBool(&j.vars); err == nil && ok {
			return at, true
		}
	}
	return time.Time{}, false
}

// cooldown returns t's cooldown key for e, and whether the cooldown
// holds at event time at: both directions, since a late event just before
// the last firing is as much "within the cooldown" as one just after it.
// ok is false when cooldown_by failed to evaluate.
func (j *judge) cooldown(t *trigger, e *profile.Event, at time.Time) (key string, holds, ok bool) {
	key, ok = j.cooldownKey(t, e, at)
	if !ok || t.cooldown == 0 {
		return key, false, ok
	}
	last, seen := j.p.FiredAt(key)
	return key, seen && absDuration(at.Sub(last)) < t.cooldown, true
}

// cooling reports whether t's cooldown holds at event time at for e.
func (j *judge) cooling(t *trigger, e *profile.Event, at time.Time) bool {
	_, holds, _ := j.cooldown(t, e, at)
	return holds
}

func (j *judge) cooldownKey(t *trigger, e *profile.Event, at time.Time) (string, bool) {
	if t.cooldownBy == nil {
		return t.id, true
	}
	j.at(e, at)
	v, err := t.cooldownBy.evalString(&j.vars)
	if err != nil {
		j.evalError(t, e, "cooldown_by", err)
		return "", false
	}
	return t.id + "/" + v, true
}

// candidate judges what the action of step (of root's journey) needs
// besides the channel limit and policies: consent, cooldown at event
// time at, and its payload. A refusal is noted.
func (j *judge) candidate(t, root *trigger, step int, e *profile.Event, at, due time.Time) (candidate, bool) {
	// Consent is checked on the updated profile, so an unsubscribe event
	// itself never triggers a message on its channel.
	if !j.p.Consented(t.channel) {
		j.note(t, profile.NoteDropped, profile.DropConsent, due)
		return candidate{}, false
	}
	key, holds, ok := j.cooldown(t, e, at)
	switch {
	case !ok:
		j.note(t, profile.NoteDropped, profile.DropEvalError, due)
		return candidate{}, false
	case holds:
		j.note(t, profile.NoteDropped, profile.DropCooldown, due)
		return candidate{}, false
	}
	payload, ok := j.payload(t, e, at)
	if !ok {
		j.note(t, profile.NoteDropped, profile.DropEvalError, due)
		return candidate{}, false
	}
	return candidate{t: t, root: root, step: step, e: e, at: at, due: due, key: key, payload: payload}, true
}

func (j *judge) payload(t *trigger, e *profile.Event, at time.Time) (map[string]string, bool) {
	payload := make(map[string]string, len(t.payload)+len(t.exprs))
	for k, v := range t.payload {
		payload[k] = v
	}
	if len(t.exprs) > 0 {
		j.at(e, at)
	}
	for _, x := range t.exprs {
		v, err := x.expr.evalString(&j.vars)
		if err != nil {
			j.evalError(t, e, x.field, err)
			return nil, false
		}
		payload[x.key] = v
	}
	return payload, true
}

// send puts a judged candidate under the frequency caps and quiet hours
// (unless transactional), and emits, defers or drops its action.
func (j *judge) send(c candidate) {
	t := c.t
	if !t.transactional {
		if j.capped(t.channel) {
			j.note(t, profile.NoteDropped, profile.DropFrequencyCap, c.due)
			return
		}
		var d Decision
		if until, held := j.r.quietUntil(&d, j.p, Request{Channel: t.channel}, j.now); held {
			timer := profile.Timer{Trigger: c.root.id, Step: c.step, Due: cmp.Or(c.due, c.at), Wake: until.UTC(),
				From: cmp.Or(c.from, c.at), Deferred: true, Event: stored(c.root, c.e)}
			if !j.p.Schedule(timer, j.limits.MaxTimers) {
				j.note(t, profile.NoteDropped, profile.DropTimerLimit, c.due)
				return
			}
			j.markFired(c)
			j.note(t, profile.NoteDeferred, "", c.due)
			return
		}
	}
	j.emit(c)
}

// markFired starts the candidate's cooldown.
func (j *judge) markFired(c candidate) {
	if c.t.cooldown > 0 && c.key != "" {
		j.p.MarkFired(c.key, c.at)
	}
}

// emit writes the candidate's action, and records the exposure: a user
// in the control group of the journey's split gets no action (but the
// cooldown, as a treated user would).
func (j *judge) emit(c candidate) {
	t := c.t
	j.markFired(c)
	userID := j.userID(c.e)
	at := c.at
	if !c.due.IsZero() {
		at = j.now
	}
	if c.root.ab && InControl(userID, c.root.id, c.root.control) {
		j.expose(t.id, profile.Control, at)
		j.note(t, profile.NoteControl, "", c.due)
		return
	}
	j.expose(t.id, profile.Treated, at)
	if j.sent == nil {
		j.sent = make(map[string]int)
	}
	j.sent[t.channel]++
	a := profile.Action{
		ID:           profile.ActionID(userID, c.e.ID, t.id),
		UserID:       userID,
		TriggerID:    t.id,
		Channel:      t.channel,
		Template:     t.template,
		Payload:      c.payload,
		TriggeredAt:  c.at,
		EventID:      c.e.ID,
		RulesVersion: j.r.Version(),
	}
	if !c.due.IsZero() {
		a.TriggeredAt, a.DueAt = j.now, c.due
	}
	j.out.Actions = append(j.out.Actions, a)
	j.note(t, profile.NoteFired, "", c.due)
}

// capped reports whether a frequency cap of the channel is reached at
// processing time, counting the sends reported, the live reservations
// and the actions this step has already sent.
func (j *judge) capped(channel string) bool {
	for _, fc := range j.r.caps {
		if !fc.appliesTo(channel) {
			continue
		}
		n := fc.used(j.p, j.now)
		if fc.channel == "" {
			for _, k := range j.sent {
				n += k
			}
		} else {
			n += j.sent[fc.channel]
		}
		if n >= fc.max {
			return true
		}
	}
	return false
}

// schedule adds the timer of step of root's journey, due at due, for the
// journey that e started at from, unless an event the profile already
// holds cancels it (an unless event that arrived before the trigger's).
func (j *judge) schedule(root *trigger, step int, e *profile.Event, from, due time.Time, cancelFrom int) {
	steps := root.steps
	t := profile.Timer{Trigger: root.id, Step: step, Due: due, Wake: due, From: from, CancelFrom: cancelFrom, Event: stored(root, e)}
	last := len(steps)
	if cancelFrom > 0 {
		last = min(last, cancelFrom)
	}
	// Out of order: an unless event already applied whose time falls in
	// the window of this step or a later one.
	d := due
	for s := step; s < last; s++ {
		if s > step {
			d = d.Add(steps[s].wait)
		}
		if j.unlessBetween(steps[s], from, d) {
			if s == step {
				j.note(steps[s], profile.NoteCancelled, "", due)
				return
			}
			t.CancelFrom = s
			break
		}
	}
	if !j.p.Schedule(t, j.limits.MaxTimers) {
		j.note(steps[step], profile.NoteDropped, profile.DropTimerLimit, due)
		return
	}
	j.note(steps[step], profile.NoteScheduled, "", due)
}

// stored is e as a timer of root's journey keeps it: without the user
// (the profile's), and without its type when root reacts to that type
// alone (fire puts it back), since every byte is paid per pending timer.
func stored(root *trigger, e *profile.Event) profile.Event {
	s := *e
	s.UserID = ""
	if len(root.on) == 1 && root.on[0] == e.Type {
		s.Type = ""
	}
	return s
}

func (j *judge) unlessBetween(st *trigger, from, to time.Time) bool {
	for _, typ := range st.unless {
		if j.p.OccurredBetween(typ, from, to) {
			return true
		}
	}
	return false
}

// next schedules the step after step of root's journey, due its wait
// after this one's due time, unless the journey ends here.
func (j *judge) next(root *trigger, step int, e *profile.Event, from, due time.Time, cancelFrom int) {
	steps := root.steps
	n := step + 1
	if n >= len(steps) || (cancelFrom > 0 && n >= cancelFrom) {
		return
	}
	j.schedule(root, n, e, from, due.Add(steps[n].wait), cancelFrom)
}

// cancel removes or cuts short the pending steps that e cancels: those
// listing its type in unless, when it occurred after their journey's
// start and at or before their due time.
func (j *judge) cancel(e *profile.Event) {
	if len(j.p.Timers) == 0 {
		return
	}
	kept := j.p.Timers[:0]
	for _, t := range j.p.Timers {
		root := j.r.byID[t.Trigger]
		if root == nil || !e.OccurredAt.After(t.From) {
			kept = append(kept, t)
			continue
		}
		steps := root.steps
		last := len(steps)
		if t.Deferred {
			last = t.Step + 1
		}
		if t.CancelFrom > 0 {
			last = min(last, t.CancelFrom)
		}
		due, cut := t.Due, -1
		for s := t.Step; s < last && s < len(steps); s++ {
			if s > t.Step {
				due = due.Add(steps[s].wait)
			}
			if slices.Contains(steps[s].unless, e.Type) && !e.OccurredAt.After(due) {
				cut = s
				break
			}
		}
		switch {
		case cut < 0:
			kept = append(kept, t)
		case cut == t.Step:
			j.note(steps[cut], profile.NoteCancelled, "", t.Due)
		default:
			j.note(steps[cut], profile.NoteCancelled, "", due)
			t.CancelFrom = cut
			kept = append(kept, t)
		}
	}
	clear(j.p.Timers[len(kept):])
	j.p.Timers = kept
	if len(j.p.Timers) == 0 {
		j.p.Timers = nil
	}
}

// fireDue fires the timers due at now, and those their firing schedules
// that are due too (a late event's journey catches up). It reports
// whether any fired.
func (j *judge) fireDue() bool {
	fired := false
	for range maxSteps + 2 { // each round advances every journey a step
		due := j.p.TakeDue(j.now)
		if len(due) == 0 {
			break
		}
		fired = true
		for i := range due {
			j.fire(&due[i])
		}
	}
	return fired
}

// fire judges one due timer.
func (j *judge) fire(t *profile.Timer) {
	t.Event.UserID = j.p.UserID
	root := j.r.byID[t.Trigger]
	if root == nil || t.Step >= len(root.steps) {
		j.out.Notes = append(j.out.Notes, profile.Note{Trigger: t.Trigger, Kind: profile.NoteDropped, Reason: profile.DropRuleRemoved, Due: t.Due})
		return
	}
	st := root.steps[t.Step]
	if t.Event.Type == "" && len(root.on) == 1 {
		t.Event.Type = root.on[0]
	}
	if t.Deferred {
		// Judged at its due time; consent and the caps may have changed
		// since, and the quiet hours may hold it again.
		if !j.p.Consented(st.channel) {
			j.note(st, profile.NoteDropped, profile.DropConsent, t.Due)
			return
		}
		payload, ok := j.payload(st, &t.Event, t.Due)
		if !ok {
			j.note(st, profile.NoteDropped, profile.DropEvalError, t.Due)
			return
		}
		// No cooldown key: the cooldown was marked when it was deferred.
		j.send(candidate{t: st, root: root, step: t.Step, e: &t.Event, at: t.Due, due: t.Due, from: t.From, payload: payload})
		return
	}
	if t.Step > 0 && st.when != nil {
		j.at(&t.Event, t.Due)
		ok, err := st.when.evalBool(&j.vars)
		if err != nil {
			j.evalError(st, &t.Event, "when", err)
		}
		if err != nil || !ok {
			reason := profile.DropWhen
			if err != nil {
				reason = profile.DropEvalError
			}
			j.note(st, profile.NoteDropped, reason, t.Due)
			j.next(root, t.Step, &t.Event, t.From, t.Due, t.CancelFrom)
			return
		}
	}
	if t.Step == 0 && j.cooling(st, &t.Event, t.Due) {
		// The journey's trigger is within its cooldown: another journey
		// of the trigger fired; this one ends.
		j.note(st, profile.NoteDropped, profile.DropCooldown, t.Due)
		return
	}
	if c, ok := j.candidate(st, root, t.Step, &t.Event, t.Due, t.Due); ok {
		c.from = t.From // a deferral stays cancellable by the unless events after it
		j.send(c)
	}
	j.next(root, t.Step, &t.Event, t.From, t.Due, t.CancelFrom)
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func absDuration(d time.Duration) time.Duration {
	if d < 0 {
		return -d
	}
	return d
}
