package webhook

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// instruments are the nudge.webhook.* figures, shared by every webhook of
// a Dispatcher; each webhook records with its own attributes (hookMetrics).
type instruments struct {
	delivered metric.Int64Counter
	failed    metric.Int64Counter
	filtered  metric.Int64Counter
	expired   metric.Int64Counter
	inFlight  metric.Int64UpDownCounter
	latency   metric.Float64Histogram
}

// latencyBounds resolve receivers answering in a few milliseconds as well
// as ones near the default 10s timeout.
var latencyBounds = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}

func newInstruments(m metric.Meter) (*instruments, error) {
	var in instruments
	var err error
	if in.delivered, err = m.Int64Counter("nudge.webhook.delivered",
		metric.WithDescription("Actions a webhook's receiver accepted (2xx), by webhook; each is then acknowledged for its group.")); err != nil {
		return nil, err
	}
	if in.failed, err = m.Int64Counter("nudge.webhook.failed",
		metric.WithDescription("Failed webhook attempts, by webhook and reason (timeout, connection, http_3xx, http_4xx, http_5xx, http_other); each is retried or dead-lettered.")); err != nil {
		return nil, err
	}
	if in.filtered, err = m.Int64Counter("nudge.webhook.filtered",
		metric.WithDescription("Actions on channels a webhook does not take, acknowledged for its group without a request.")); err != nil {
		return nil, err
	}
	if in.expired, err = m.Int64Counter("nudge.webhook.expired",
		metric.WithDescription("Actions older than a webhook's max_age, acknowledged for its group without a request.")); err != nil {
		return nil, err
	}
	if in.inFlight, err = m.Int64UpDownCounter("nudge.webhook.in_flight",
		metric.WithDescription("Webhook requests in flight, by webhook (at most its max_in_flight).")); err != nil {
		return nil, err
	}
	if in.latency, err = m.Float64Histogram("nudge.webhook.latency", metric.WithUnit("s"),
		metric.WithDescription("Duration of webhook attempts, successful or not, by webhook: from sending the request to the end of the response or the failure."),
		metric.WithExplicitBucketBoundaries(latencyBounds...)); err != nil {
		return nil, err
	}
	return &in, nil
}

// hookMetrics records one webhook's figures.
type hookMetrics struct {
	in     *instruments
	attrs  metric.MeasurementOption
	reason map[string]metric.MeasurementOption
}

func (in *instruments) forHook(name string) hookMetrics {
	h := hookMetrics{in: in, attrs: metric.WithAttributeSet(attribute.NewSet(attribute.String("webhook", name))), reason: map[string]metric.MeasurementOption{}}
	for _, r := range []string{ReasonTimeout, ReasonConnection, Reason3xx, Reason4xx, Reason5xx, ReasonOther} {
		h.reason[r] = metric.WithAttributeSet(attribute.NewSet(attribute.String("webhook", name), attribute.String("reason", r)))
	}
	// Shown from the start, at 0, so that a query of their rate finds them.
	ctx := context.Background()
	in.delivered.Add(ctx, 0, h.attrs)
	in.filtered.Add(ctx, 0, h.attrs)
	in.expired.Add(ctx, 0, h.attrs)
	in.inFlight.Add(ctx, 0, h.attrs)
	return h
}

func (h hookMetrics) delivered(ctx context.Context)       { h.in.delivered.Add(ctx, 1, h.attrs) }
func (h hookMetrics) filtered(ctx context.Context, n int) { h.in.filtered.Add(ctx, int64(n), h.attrs) }
func (h hookMetrics) expired(ctx context.Context, n int)  { h.in.expired.Add(ctx, int64(n), h.attrs) }
func (h hookMetrics) inFlight(ctx context.Context, n int) { h.in.inFlight.Add(ctx, int64(n), h.attrs) }
func (h hookMetrics) failed(ctx context.Context, reason string) {
	h.in.failed.Add(ctx, 1, h.reason[reason])
}
func (h hookMetrics) latency(ctx context.Context, d time.Duration) {
	h.in.latency.Record(ctx, d.Seconds(), h.attrs)
}
