package console_test

import (
	"context"
	"errors"
	"math"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/internal/console"
)

// samplerT0 is the fake clock's start.
var samplerT0 = time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)

// samplerInstruments are the daemon's instruments the Sampler reads, with
// the names and attributes server/metrics.go, server/timers.go and
// webhook/metrics.go give them, on a real meter provider with a
// ManualReader.
type samplerInstruments struct {
	reader                             *sdkmetric.ManualReader
	provider                           *sdkmetric.MeterProvider
	events, decisions, steps, actions  metric.Int64Counter
	delivered, hookDelivered, hookFail metric.Int64Counter
	lag                                metric.Float64Histogram
}

func newSamplerInstruments(t *testing.T) *samplerInstruments {
	t.Helper()
	in := &samplerInstruments{reader: sdkmetric.NewManualReader()}
	in.provider = sdkmetric.NewMeterProvider(sdkmetric.WithReader(in.reader))
	t.Cleanup(func() { _ = in.provider.Shutdown(context.Background()) })
	m := in.provider.Meter("github.com/nudge-dm/nudge")
	var err error
	must := func() {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	in.events, err = m.Int64Counter("nudge.events")
	must()
	in.decisions, err = m.Int64Counter("nudge.decisions")
	must()
	in.steps, err = m.Int64Counter("nudge.journey.steps")
	must()
	in.actions, err = m.Int64Counter("nudge.actions.emitted")
	must()
	in.delivered, err = m.Int64Counter("nudge.actions.delivered")
	must()
	in.hookDelivered, err = m.Int64Counter("nudge.webhook.delivered")
	must()
	in.hookFail, err = m.Int64Counter("nudge.webhook.failed")
	must()
	in.lag, err = m.Float64Histogram("nudge.event.lag", metric.WithUnit("s"))
	must()
	return in
}

func (in *samplerInstruments) event(status, reason string, n int64) {
	attrs := []attribute.KeyValue{attribute.String("status", status)}
	if reason != "" {
		attrs = append(attrs, attribute.String("reason", reason))
	}
	in.events.Add(context.Background(), n, metric.WithAttributes(attrs...))
}

func (in *samplerInstruments) decision(verdict string, degraded bool, n int64) {
	d := "false"
	if degraded {
		d = "true"
	}
	in.decisions.Add(context.Background(), n, metric.WithAttributes(attribute.String("verdict", verdict), attribute.String("degraded", d)))
}

func (in *samplerInstruments) step(id, outcome, reason string, n int64) {
	attrs := []attribute.KeyValue{attribute.String("trigger", id), attribute.String("outcome", outcome)}
	if reason != "" {
		attrs = append(attrs, attribute.String("reason", reason))
	}
	in.steps.Add(context.Background(), n, metric.WithAttributes(attrs...))
}

// samplerClock is a fake clock safe for concurrent use.
type samplerClock struct{ ns atomic.Int64 }

func newSamplerClock(t time.Time) *samplerClock {
	c := &samplerClock{}
	c.ns.Store(t.UnixNano())
	return c
}
func (c *samplerClock) Now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *samplerClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func samplerMust(t *testing.T, s *console.Sampler) {
	t.Helper()
	if err := s.Sample(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// samplerLast returns the last point's value of a series, failing if it
// has not n points.
func samplerLast(t *testing.T, s console.Series, n int) float64 {
	t.Helper()
	if len(s.Points) != n {
		t.Fatalf("series has %d points, want %d: %v", len(s.Points), n, s.Points)
	}
	if n == 0 {
		return math.NaN()
	}
	return s.Points[n-1].Value
}

func samplerNear(a, b float64) bool { return math.Abs(a-b) < 1e-9 }

// Rates are the counters' deltas between two samples over the time
// between them; the degraded share and the mean lag are of the interval;
// the totals are cumulative.
func TestSamplerRatesAndTotals(t *testing.T) {
	in := newSamplerInstruments(t)
	clock := newSamplerClock(samplerT0)
	s := console.NewSampler(in.reader.Collect, console.SamplerOptions{Now: clock.Now})

	if o := s.Overview(); !o.At.IsZero() || !o.Since.IsZero() || len(o.Events.Points) != 0 || len(o.EventsByStatus) != 0 {
		t.Fatalf("Overview before any sample = %+v", o)
	}
	// Before the first sample: in the totals, in no rate.
	in.event("applied", "", 5)
	in.event("duplicate", "", 2)
	in.lag.Record(context.Background(), 100)
	in.actions.Add(context.Background(), 7)
	samplerMust(t, s)
	o := s.Overview()
	if o.At != samplerT0 || o.Since.IsZero() || o.Since.After(samplerT0) {
		t.Errorf("first sample: At %v, Since %v", o.At, o.Since)
	}
	samplerLast(t, o.Events, 0)
	if want := map[string]int64{"applied": 5, "duplicate": 2}; !reflect.DeepEqual(o.EventsByStatus, want) {
		t.Errorf("EventsByStatus = %v, want %v", o.EventsByStatus, want)
	}

	// Over the next 10 s: 30 events (20 applied), 10 decisions (2
	// degraded), lags 0.5 and 1.5 s, 15 actions, 4 delivered, 3 webhook
	// deliveries and 1 failure.
	in.event("applied", "", 20)
	in.event("duplicate", "", 5)
	in.event("rejected", "invalid", 3)
	in.event("rejected", "too_old", 2)
	in.decision("send", false, 6)
	in.decision("hold", false, 2)
	in.decision("none", true, 1)
	in.decision("send", true, 1)
	in.lag.Record(context.Background(), 0.5)
	in.lag.Record(context.Background(), 1.5)
	in.actions.Add(context.Background(), 15)
	in.delivered.Add(context.Background(), 4)
	in.hookDelivered.Add(context.Background(), 3, metric.WithAttributes(attribute.String("webhook", "crm")))
	in.hookFail.Add(context.Background(), 1, metric.WithAttributes(attribute.String("webhook", "crm"), attribute.String("reason", "timeout")))
	clock.Advance(10 * time.Second)
	samplerMust(t, s)
	o = s.Overview()
	for _, c := range []struct {
		name string
		s    console.Series
		want float64
	}{
		{"Events", o.Events, 3},
		{"Applied", o.Applied, 2},
		{"Decisions", o.Decisions, 1},
		{"Send", o.Send, 0.7},
		{"Hold", o.Hold, 0.2},
		{"None", o.None, 0.1},
		{"DegradedShare", o.DegradedShare, 0.2},
		{"EventLag", o.EventLag, 1},
		{"Actions", o.Actions, 1.5},
		{"Delivered", o.Delivered, 0.4},
		{"WebhookDelivered", o.WebhookDelivered, 0.3},
		{"WebhookFailed", o.WebhookFailed, 0.1},
	} {
		if got := samplerLast(t, c.s, 1); !samplerNear(got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
		if at := c.s.Points[0].At; at != samplerT0.Add(10*time.Second) {
			t.Errorf("%s point at %v, want the second sample's time", c.name, at)
		}
	}
	if want := map[string]int64{"applied": 25, "duplicate": 7, "rejected": 5}; !reflect.DeepEqual(o.EventsByStatus, want) {
		t.Errorf("EventsByStatus = %v, want %v", o.EventsByStatus, want)
	}
	if want := map[string]int64{"send": 7, "hold": 2, "none": 1}; !reflect.DeepEqual(o.DecisionsByVerdict, want) {
		t.Errorf("DecisionsByVerdict = %v, want %v", o.DecisionsByVerdict, want)
	}
	if o.Degraded != 2 {
		t.Errorf("Degraded = %d, want 2", o.Degraded)
	}

	// An idle interval: rates of 0, and no share or mean of nothing.
	clock.Advance(10 * time.Second)
	samplerMust(t, s)
	o = s.Overview()
	if got := samplerLast(t, o.Events, 2); got != 0 {
		t.Errorf("idle events/s = %v", got)
	}
	samplerLast(t, o.DegradedShare, 1)
	samplerLast(t, o.EventLag, 1)

	// The Overview is a copy.
	o.Events.Points[0].Value = -1
	o.EventsByStatus["applied"] = -1
	if o2 := s.Overview(); o2.Events.Points[0].Value == -1 || o2.EventsByStatus["applied"] == -1 {
		t.Error("changing an Overview changed the Sampler's")
	}
}

// Journey counts are grouped by the campaigns: each trigger with its
// steps in order; ids the rules do not name come last, alone, sorted;
// without campaigns every id is alone, sorted.
func TestSamplerFunnels(t *testing.T) {
	campaigns := []decision.Campaign{
		{ID: "welcome", Kind: decision.CampaignTrigger},
		{ID: "cart", Kind: decision.CampaignTrigger},
		{ID: "cart-email", Kind: decision.CampaignStep, Journey: "cart"},
		{ID: "cart-sms", Kind: decision.CampaignStep, Journey: "cart"},
		{ID: "banner", Kind: decision.CampaignOffer},
	}
	in := newSamplerInstruments(t)
	in.step("cart", "fired", "", 10)
	in.step("cart-email", "scheduled", "", 10)
	in.step("cart-email", "cancelled", "", 4)
	in.step("cart-email", "dropped", "consent", 1)
	in.step("cart-email", "dropped", "cooldown", 2)
	in.step("cart-email", "fired", "", 3)
	in.step("old-step", "dropped", "rule_removed", 1)
	in.step("a-removed", "fired", "", 1)

	tests := []struct {
		name      string
		campaigns func() []decision.Campaign
		want      []console.Funnel
	}{
		{"by the rules", func() []decision.Campaign { return campaigns }, []console.Funnel{
			{Trigger: "welcome", Steps: []console.FunnelStep{{ID: "welcome", Outcomes: map[string]int64{}}}},
			{Trigger: "cart", Steps: []console.FunnelStep{
				{ID: "cart", Outcomes: map[string]int64{"fired": 10}},
				{ID: "cart-email", Outcomes: map[string]int64{"scheduled": 10, "cancelled": 4, "dropped": 3, "fired": 3}},
				{ID: "cart-sms", Outcomes: map[string]int64{}},
			}},
			{Trigger: "a-removed", Steps: []console.FunnelStep{{ID: "a-removed", Outcomes: map[string]int64{"fired": 1}}}},
			{Trigger: "old-step", Steps: []console.FunnelStep{{ID: "old-step", Outcomes: map[string]int64{"dropped": 1}}}},
		}},
		{"without rules", nil, []console.Funnel{
			{Trigger: "a-removed", Steps: []console.FunnelStep{{ID: "a-removed", Outcomes: map[string]int64{"fired": 1}}}},
			{Trigger: "cart", Steps: []console.FunnelStep{{ID: "cart", Outcomes: map[string]int64{"fired": 10}}}},
			{Trigger: "cart-email", Steps: []console.FunnelStep{{ID: "cart-email", Outcomes: map[string]int64{"scheduled": 10, "cancelled": 4, "dropped": 3, "fired": 3}}}},
			{Trigger: "old-step", Steps: []console.FunnelStep{{ID: "old-step", Outcomes: map[string]int64{"dropped": 1}}}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := console.NewSampler(in.reader.Collect, console.SamplerOptions{Now: newSamplerClock(samplerT0).Now, Campaigns: tt.campaigns})
			samplerMust(t, s)
			if got := s.Overview().Funnels; !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Funnels =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// Points older than Keep are dropped, at each sample and, without new
// samples, from the Overview.
func TestSamplerKeepsPointsForKeep(t *testing.T) {
	in := newSamplerInstruments(t)
	clock := newSamplerClock(samplerT0)
	s := console.NewSampler(in.reader.Collect, console.SamplerOptions{Every: 10 * time.Second, Keep: 30 * time.Second, Now: clock.Now})
	for i := range 7 { // samples at 0, 10, ..., 60 s: points at 10..60 s
		if i > 0 {
			clock.Advance(10 * time.Second)
		}
		in.event("applied", "", int64(10*(i+1))) // 10*i events/s over interval i
		samplerMust(t, s)
	}
	pts := s.Overview().Events.Points
	var at []time.Duration
	for _, p := range pts {
		at = append(at, p.At.Sub(samplerT0))
	}
	if want := []time.Duration{30 * time.Second, 40 * time.Second, 50 * time.Second, 60 * time.Second}; !reflect.DeepEqual(at, want) {
		t.Fatalf("points at %v, want %v", at, want)
	}
	if got := pts[len(pts)-1].Value; !samplerNear(got, 7) {
		t.Errorf("last rate = %v, want 7/s", got)
	}
	clock.Advance(25 * time.Second) // no sample: at 85 s, keep from 55 s
	if got := s.Overview().Events.Points; len(got) != 1 || got[0].At != samplerT0.Add(60*time.Second) {
		t.Errorf("Overview 25 s after the last sample has points %v, want the one at 60 s", got)
	}
}

// samplerFakeCollect returns a collect func handing out the given readings
// of nudge.events (status applied), one per call, with the temporality.
func samplerFakeCollect(temporality metricdata.Temporality, values ...int64) func(context.Context, *metricdata.ResourceMetrics) error {
	i := 0
	return func(_ context.Context, rm *metricdata.ResourceMetrics) error {
		v := values[i]
		i++
		rm.ScopeMetrics = []metricdata.ScopeMetrics{{Metrics: []metricdata.Metrics{{
			Name: "nudge.events",
			Data: metricdata.Sum[int64]{Temporality: temporality, IsMonotonic: true, DataPoints: []metricdata.DataPoint[int64]{
				{Attributes: attribute.NewSet(attribute.String("status", "applied")), Value: v},
			}},
		}}}}
		return nil
	}
}

// A counter that goes back (a reset) gives a rate of 0, not a negative
// one; a reader with delta temporality gives the same rates and totals as
// a cumulative one.
func TestSamplerResetsAndDeltas(t *testing.T) {
	tests := []struct {
		name        string
		temporality metricdata.Temporality
		values      []int64
		rates       []float64
		total       int64
	}{
		{"cumulative", metricdata.CumulativeTemporality, []int64{100, 150, 250}, []float64{5, 10}, 250},
		{"reset", metricdata.CumulativeTemporality, []int64{100, 40, 90}, []float64{0, 5}, 90},
		{"delta", metricdata.DeltaTemporality, []int64{100, 50, 100}, []float64{5, 10}, 250},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newSamplerClock(samplerT0)
			s := console.NewSampler(samplerFakeCollect(tt.temporality, tt.values...), console.SamplerOptions{Now: clock.Now})
			for i := range tt.values {
				if i > 0 {
					clock.Advance(10 * time.Second)
				}
				samplerMust(t, s)
			}
			o := s.Overview()
			var rates []float64
			for _, p := range o.Events.Points {
				rates = append(rates, p.Value)
			}
			if !reflect.DeepEqual(rates, tt.rates) {
				t.Errorf("rates = %v, want %v", rates, tt.rates)
			}
			if got := o.EventsByStatus["applied"]; got != tt.total {
				t.Errorf("total = %d, want %d", got, tt.total)
			}
		})
	}
}

// A collection that fails without data records nothing; one that fails
// with data (an observable callback's error) is recorded, and its error
// returned.
func TestSamplerCollectErrors(t *testing.T) {
	errCallback := errors.New("callback failed")
	ok := samplerFakeCollect(metricdata.CumulativeTemporality, 10, 20)
	calls := 0
	collect := func(ctx context.Context, rm *metricdata.ResourceMetrics) error {
		calls++
		switch calls {
		case 1:
			return errCallback // no data
		case 2:
			_ = ok(ctx, rm)
			return errCallback // with data
		}
		return ok(ctx, rm)
	}
	clock := newSamplerClock(samplerT0)
	s := console.NewSampler(collect, console.SamplerOptions{Now: clock.Now})
	if err := s.Sample(t.Context()); !errors.Is(err, errCallback) {
		t.Fatalf("Sample without data = %v", err)
	}
	if o := s.Overview(); !o.At.IsZero() {
		t.Fatalf("a failed collection without data was recorded: %+v", o)
	}
	if err := s.Sample(t.Context()); !errors.Is(err, errCallback) {
		t.Fatalf("Sample with data and an error = %v", err)
	}
	clock.Advance(10 * time.Second)
	samplerMust(t, s)
	if o := s.Overview(); samplerLast(t, o.Events, 1) != 1 || o.EventsByStatus["applied"] != 20 {
		t.Errorf("after a collection with an error: %+v", o)
	}
}

// Run samples at once and returns nil when ctx ends, or when the meter
// provider is shut down; with a reader never registered it fails.
func TestSamplerRun(t *testing.T) {
	in := newSamplerInstruments(t)
	in.event("applied", "", 3)
	sampled := make(chan struct{}, 1)
	collect := func(ctx context.Context, rm *metricdata.ResourceMetrics) error {
		err := in.reader.Collect(ctx, rm)
		select {
		case sampled <- struct{}{}:
		default:
		}
		return err
	}
	s := console.NewSampler(collect, console.SamplerOptions{Every: time.Hour})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-sampled:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not sample at start")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run after its context ended = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if got := s.Overview().EventsByStatus["applied"]; got != 3 {
		t.Errorf("applied after Run's first sample = %d, want 3", got)
	}

	if err := in.provider.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := console.NewSampler(in.reader.Collect, console.SamplerOptions{}).Run(t.Context()); err != nil {
		t.Errorf("Run on a shut down reader = %v, want nil", err)
	}
	unregistered := sdkmetric.NewManualReader()
	if err := console.NewSampler(unregistered.Collect, console.SamplerOptions{}).Run(t.Context()); !errors.Is(err, sdkmetric.ErrReaderNotRegistered) {
		t.Errorf("Run on an unregistered reader = %v", err)
	}
}

// Samples and Overviews from many goroutines: for the race detector, and
// every Overview is consistent (its series as long as each other).
func TestSamplerConcurrentUse(t *testing.T) {
	in := newSamplerInstruments(t)
	clock := newSamplerClock(samplerT0)
	s := console.NewSampler(in.reader.Collect, console.SamplerOptions{Now: clock.Now})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if g%2 == 0 {
					in.event("applied", "", 1)
					clock.Advance(time.Second)
					if err := s.Sample(context.Background()); err != nil {
						t.Error(err)
						return
					}
					continue
				}
				o := s.Overview()
				if len(o.Events.Points) != len(o.Applied.Points) || len(o.Events.Points) != len(o.Actions.Points) {
					t.Errorf("inconsistent Overview: %d, %d and %d points", len(o.Events.Points), len(o.Applied.Points), len(o.Actions.Points))
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := s.Overview().EventsByStatus["applied"]; got != 100 {
		t.Errorf("applied = %d, want 100", got)
	}
}
