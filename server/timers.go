package server

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
)

// TimerStore fires the users whose timers are due in profile
// transactions, one poll at a time (profile/redisstore, timers.go).
type TimerStore interface {
	FireDue(ctx context.Context, now time.Time, limit int, step profile.Step) (profile.BatchOutcome, error)
}

// TimerConfig paces RunTimers.
type TimerConfig struct {
	// Poll is the time between two polls of the due index when the last
	// found nothing more to do. Default 100ms: with a poll's own time, a
	// due timer fires well within a second.
	Poll time.Duration
	// Batch is the most users fired per poll. Default 2,000.
	Batch int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c TimerConfig) withDefaults() TimerConfig {
	if c.Poll <= 0 {
		c.Poll = 100 * time.Millisecond
	}
	if c.Batch <= 0 {
		c.Batch = 2000
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// RunTimers fires due timers until ctx ends: it polls the store's due
// index, fires the users found with the rules in force (decision.Rules
// FireStep), then raises the index of the shards it read to what they
// still hold. A poll that fired anyone is followed at once by another;
// one that found nothing due waits Poll. Every instance may run it: two instances firing one user race on the
// profile's WATCH, and the loser finds nothing due. Store errors are
// logged and counted, and the poll is tried again after Poll.
func (s *Server) RunTimers(ctx context.Context, ts TimerStore, cfg TimerConfig) error {
	cfg = cfg.withDefaults()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		n, err := s.FireDue(ctx, ts, cfg)
		if err != nil && ctx.Err() == nil {
			s.metrics.timerErrs.Add(ctx, 1)
			s.cfg.Logger.WarnContext(ctx, "firing timers failed", "err", s.redactUsers(err.Error()))
		}
		if n > 0 && err == nil {
			// Timers come due continuously under load: poll again at
			// once rather than let the next ones wait a Poll. Idle
			// polls (nothing due) wait.
			t.Reset(0)
		} else {
			t.Reset(cfg.Poll)
		}
	}
}

// FireDue runs one poll of RunTimers and returns the number of users
// fired. Its error may name a user: RunTimers redacts it when it logs it.
func (s *Server) FireDue(ctx context.Context, ts TimerStore, cfg TimerConfig) (int, error) {
	cfg = cfg.withDefaults()
	step := s.rules.Rules().FireStep(s.cfg.Limits, decision.OnEvalError(s.triggerError))
	out, err := ts.FireDue(ctx, cfg.Now(), cfg.Batch, step)
	s.countNotes(ctx, out.Notes, cfg.Now())
	s.metrics.actions.Add(ctx, int64(len(out.Actions)))
	if err != nil {
		return len(out.Events), err
	}
	return len(out.Events), nil
}

// countNotes counts what became of journey steps and trigger actions,
// and the lateness of the steps that fired: one Add per distinct
// (trigger, outcome, reason) of the batch, with attribute sets reused
// across batches (noteAttrs).
func (s *Server) countNotes(ctx context.Context, notes []profile.Note, now time.Time) {
	if len(notes) == 0 {
		return
	}
	counts := make(map[noteKey]int64, 4)
	for _, n := range notes {
		counts[noteKey{n.Trigger, n.Kind, n.Reason}]++
		if n.Kind == profile.NoteFired && !n.Due.IsZero() {
			s.metrics.timerLateness.Record(ctx, max(0, now.Sub(n.Due)).Seconds())
		}
	}
	for k, n := range counts {
		s.metrics.journeySteps.Add(ctx, n, s.metrics.noteAttrs(k))
	}
}

// noteKey is the attributes of a nudge.journey.steps count.
type noteKey struct{ trigger, kind, reason string }

// maxNoteAttrs bounds the cached attribute sets: ids come from the rules
// (bounded by their limits), but reloads may rename them for ever.
const maxNoteAttrs = 4096

// noteAttrs returns the measurement option of k, cached.
func (in *instruments) noteAttrs(k noteKey) metric.MeasurementOption {
	if v, ok := in.noteSets.Load(k); ok {
		return v.(metric.MeasurementOption)
	}
	attrs := []attribute.KeyValue{attribute.String("trigger", k.trigger), attribute.String("outcome", k.kind)}
	if k.reason != "" {
		attrs = append(attrs, attribute.String("reason", k.reason))
	}
	opt := metric.WithAttributeSet(attribute.NewSet(attrs...))
	if in.noteCount.Load() < maxNoteAttrs {
		if _, loaded := in.noteSets.LoadOrStore(k, opt); !loaded {
			in.noteCount.Add(1)
		}
	}
	return opt
}
