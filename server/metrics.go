package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
)

// instruments are the server's OpenTelemetry metrics. With no meter
// configured they are no-ops.
type instruments struct {
	events       metric.Int64Counter
	ackLatency   metric.Float64Histogram
	actions      metric.Int64Counter
	decisions    metric.Int64Counter
	triggerErrs  metric.Int64Counter
	eventLag     metric.Float64Histogram
	delivered    metric.Int64Counter
	acked        metric.Int64Counter
	released     metric.Int64Counter
	refusedCalls metric.Int64Counter
	// Journeys (timers.go).
	journeySteps  metric.Int64Counter
	timerLateness metric.Float64Histogram
	timerErrs     metric.Int64Counter
	noteSets      sync.Map // noteKey -> metric.MeasurementOption (noteAttrs)
	noteCount     atomic.Int32
	recvWaiting   metric.Int64UpDownCounter
	// Measurement (measure.go).
	exposuresLost                 metric.Int64Counter
	lostQueueFull, lostStoreError metric.MeasurementOption
	statusAttrs                   map[statusReason]metric.MeasurementOption
	verdictAttrs                  map[[2]string]metric.MeasurementOption
}

func newInstruments(m metric.Meter) (*instruments, error) {
	if m == nil {
		m = noop.NewMeterProvider().Meter("")
	}
	var in instruments
	var err error
	if in.events, err = m.Int64Counter("nudge.events", metric.WithDescription("Events processed, by status (applied, duplicate, rejected).")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.ackLatency, err = m.Float64Histogram("nudge.ingest.ack_latency", metric.WithUnit("s"),
		metric.WithDescription("Time from receiving an ingest batch to answering it (Publish and Stream)."),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.actions, err = m.Int64Counter("nudge.actions.emitted", metric.WithDescription("Actions written to the outbox by triggers.")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.decisions, err = m.Int64Counter("nudge.decisions", metric.WithDescription("Decisions answered, by verdict and degraded.")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.triggerErrs, err = m.Int64Counter("nudge.trigger.eval_errors", metric.WithDescription("Trigger evaluations that failed (the trigger did not fire).")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.eventLag, err = m.Float64Histogram("nudge.event.lag", metric.WithUnit("s"),
		metric.WithDescription("Commit time minus occurred_at of applied events."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.delivered, err = m.Int64Counter("nudge.actions.delivered", metric.WithDescription("Actions sent to subscribers (redeliveries included).")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.acked, err = m.Int64Counter("nudge.actions.acked", metric.WithDescription("Deliveries acknowledged by subscribers.")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.released, err = m.Int64Counter("nudge.actions.released", metric.WithDescription("Unacknowledged deliveries handed back to their group when the member's stream ended.")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.refusedCalls, err = m.Int64Counter("nudge.rpc.refused_unread",
		metric.WithDescription("Calls refused from their headers, before their request was read, by code (Unauthenticated, PermissionDenied).")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.recvWaiting, err = m.Int64UpDownCounter("nudge.rpc.recv_waiting",
		metric.WithDescription("Batch calls waiting for room in the receive bound (limits.max_recv_bytes_in_flight) before their request is read.")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	in.recvWaiting.Add(context.Background(), 0)
	if in.exposuresLost, err = m.Int64Counter("nudge.exposures.lost",
		metric.WithDescription("Control exposures of decisions not recorded, by reason (queue_full: measurement.exposure_queue was full; store_error: the write failed): the campaign reports undercount their control groups by as much.")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	in.lostQueueFull = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", "queue_full")))
	in.lostStoreError = metric.WithAttributeSet(attribute.NewSet(attribute.String("reason", "store_error")))
	// Zero series, so that the first loss after a start is an increase.
	in.exposuresLost.Add(context.Background(), 0, in.lostQueueFull)
	in.exposuresLost.Add(context.Background(), 0, in.lostStoreError)
	if in.journeySteps, err = m.Int64Counter("nudge.journey.steps",
		metric.WithDescription("Trigger actions and journey steps judged, by trigger (or step) id, outcome (scheduled, cancelled, fired, deferred, dropped, control: held out by the ab split) and the reason of a drop.")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.timerLateness, err = m.Float64Histogram("nudge.timer.lateness", metric.WithUnit("s"),
		metric.WithDescription("Time from a journey step's due time to its firing's commit."),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	if in.timerErrs, err = m.Int64Counter("nudge.timer.poll_errors",
		metric.WithDescription("Polls of the due timers that failed (the store was unreachable, or a user's transaction failed); retried.")); err != nil {
		return nil, fmt.Errorf("server: metrics: %w", err)
	}
	// Counters without attributes start at 0, so dashboards and alerts
	// see a series before the first event.
	for _, c := range []metric.Int64Counter{in.actions, in.triggerErrs, in.delivered, in.acked, in.released, in.timerErrs} {
		c.Add(context.Background(), 0)
	}
	in.statusAttrs = make(map[statusReason]metric.MeasurementOption)
	for _, sr := range []statusReason{
		{profile.Applied, ""}, {profile.Duplicate, ""}, {profile.Rejected, ""},
		{profile.Rejected, rejectInvalid}, {profile.Rejected, profile.RejectTooOld}, {profile.Rejected, profile.RejectTooNew},
		{profile.Rejected, profile.RejectDedupHorizon},
		{profile.Rejected, rejectCorrupt},
	} {
		attrs := []attribute.KeyValue{attribute.String("status", sr.status.String())}
		if sr.reason != "" {
			attrs = append(attrs, attribute.String("reason", sr.reason))
		}
		in.statusAttrs[sr] = metric.WithAttributeSet(attribute.NewSet(attrs...))
	}
	in.verdictAttrs = make(map[[2]string]metric.MeasurementOption)
	for _, v := range []decision.Verdict{decision.VerdictSend, decision.VerdictHold, decision.VerdictNone} {
		for _, d := range []string{"false", "true"} {
			in.verdictAttrs[[2]string{v.String(), d}] = metric.WithAttributeSet(attribute.NewSet(
				attribute.String("verdict", v.String()), attribute.String("degraded", d)))
		}
	}
	return &in, nil
}

// statusReason labels the events counter. reason is set for rejections
// only: rejectInvalid (the event failed validation) or a profile.Result
// Code.
type statusReason struct {
	status profile.Status
	reason string
}

// Rejection reasons of the server's own: the event failed validation, or
// its user's stored profile cannot be read.
const (
	rejectInvalid = "invalid"
	rejectCorrupt = "corrupt_profile"
)

func (in *instruments) countEvents(ctx context.Context, sr statusReason, n int) {
	if n <= 0 {
		return
	}
	attrs, ok := in.statusAttrs[sr]
	if !ok { // a rejection code this table does not know yet: keep the status
		attrs = in.statusAttrs[statusReason{sr.status, ""}]
	}
	in.events.Add(ctx, int64(n), attrs)
}

func (in *instruments) observeAckLatency(ctx context.Context, d time.Duration) {
	in.ackLatency.Record(ctx, d.Seconds())
}

func (in *instruments) countDecision(ctx context.Context, v decision.Verdict, degraded bool) {
	d := "false"
	if degraded {
		d = "true"
	}
	in.decisions.Add(ctx, 1, in.verdictAttrs[[2]string{v.String(), d}])
}

func (in *instruments) observeLag(ctx context.Context, lag time.Duration) {
	in.eventLag.Record(ctx, lag.Seconds())
}

// countRefused counts a call admitCall refused, by its code.
func (in *instruments) countRefused(ctx context.Context, err error) {
	in.refusedCalls.Add(ctx, 1, metric.WithAttributes(attribute.String("code", status.Code(err).String())))
}
