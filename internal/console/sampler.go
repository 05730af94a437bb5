package console

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/nudge-dm/nudge/decision"
)

// The instruments the Sampler reads, as the server, the daemon and the
// webhooks register them (server/metrics.go, webhook/metrics.go), and the
// attribute keys it reads from them.
const (
	samplerEvents           = "nudge.events"            // status (applied, duplicate, rejected), reason
	samplerDecisions        = "nudge.decisions"         // verdict, degraded ("true", "false")
	samplerEventLag         = "nudge.event.lag"         // histogram, seconds
	samplerJourneySteps     = "nudge.journey.steps"     // trigger (the trigger's or step's id), outcome, reason
	samplerActionsEmitted   = "nudge.actions.emitted"   // no attributes
	samplerActionsDelivered = "nudge.actions.delivered" // no attributes
	samplerWebhookDelivered = "nudge.webhook.delivered" // webhook
	samplerWebhookFailed    = "nudge.webhook.failed"    // webhook, reason

	samplerKeyStatus   attribute.Key = "status"
	samplerKeyVerdict  attribute.Key = "verdict"
	samplerKeyDegraded attribute.Key = "degraded"
	samplerKeyTrigger  attribute.Key = "trigger"
	samplerKeyOutcome  attribute.Key = "outcome"
)

// SamplerOptions configure a Sampler. The zero value of a field means its
// default.
type SamplerOptions struct {
	// Every is the time between two samples of Run. Default 10s.
	Every time.Duration
	// Keep is how long the points of the Overview's series are kept.
	// Default 1h.
	Keep time.Duration
	// Now is the clock of the samples. Default time.Now.
	Now func() time.Time
	// Campaigns returns the campaigns of the rules in force
	// (decision.Rules.Campaigns, e.g. of decision.Live.Rules()), read at
	// each Overview: they say which journey a step belongs to, since
	// nudge.journey.steps names a trigger or a step by its own id only,
	// and the order of the funnels and their steps. Default nil: every id
	// counted is a funnel of its own, in id order.
	Campaigns func() []decision.Campaign
}

// Point is one value of a series: the rate (or share, or mean) over the
// interval between two samples, at the end of that interval.
type Point struct {
	At    time.Time
	Value float64
}

// Series is a run of points, oldest first. What its values are (a rate,
// a share, seconds) is said by the Overview field that holds it.
type Series struct {
	Points []Point
}

// FunnelStep is a trigger or journey step and what became of it: the
// count of each outcome of nudge.journey.steps (scheduled, cancelled,
// fired, deferred, dropped, control; dropped of every reason together)
// since the process started. An outcome not seen is not in the map.
type FunnelStep struct {
	ID       string
	Outcomes map[string]int64
}

// Funnel is a trigger and its journey's steps, in the rules' order.
type Funnel struct {
	Trigger string
	Steps   []FunnelStep
}

// Overview is a consistent snapshot of the Sampler: every series and total
// comes from the same samples.
type Overview struct {
	// Since is when the counters behind the totals started: the earliest
	// start time the meter provider reports for them (the process's
	// start), else the first sample's time. Zero before the first sample.
	Since time.Time
	// At is the newest sample's time; zero before the first.
	At time.Time

	// Events is events/s of every status; Applied of status applied.
	Events, Applied Series
	// Decisions is decisions/s; Send, Hold and None those of each
	// verdict.
	Decisions, Send, Hold, None Series
	// DegradedShare is the share of an interval's decisions that were
	// degraded; an interval without decisions has no point.
	DegradedShare Series
	// EventLag is the mean lag (commit time minus occurred_at) of the
	// events applied in an interval, in seconds; an interval without
	// applied events has no point.
	EventLag Series
	// Actions is actions emitted (written to the outbox)/s.
	Actions Series
	// Delivered is actions sent to subscribers/s (redeliveries included).
	Delivered Series
	// WebhookDelivered and WebhookFailed are webhook deliveries accepted
	// and attempts failed/s, of every webhook.
	WebhookDelivered, WebhookFailed Series

	// EventsByStatus counts events by status, DecisionsByVerdict
	// decisions by verdict, and Degraded the degraded decisions, since
	// Since.
	EventsByStatus     map[string]int64
	DecisionsByVerdict map[string]int64
	Degraded           int64
	// Funnels are the triggers and journeys with their steps' outcomes
	// since Since: every trigger of SamplerOptions.Campaigns in file
	// order (with no counts yet, too), each with its steps in order, then
	// the ids counted that the rules do not name (renamed or removed
	// since), each alone, in id order.
	Funnels []Funnel
}

// Sampler turns the daemon's cumulative OpenTelemetry counters into the
// console's overview: it collects them (from its own
// sdkmetric.ManualReader) every SamplerOptions.Every, and keeps the rates
// between consecutive samples for SamplerOptions.Keep.
//
// Concurrency: a Sampler is safe for concurrent use; Samples are taken one
// at a time, in order, and Overview never waits for a collection.
type Sampler struct {
	collect func(context.Context, *metricdata.ResourceMetrics) error
	opt     SamplerOptions

	sampling sync.Mutex // one Sample at a time: readings stay in order

	mu     sync.Mutex
	since  time.Time
	last   *samplerReading // nil before the first sample
	series [samplerSeriesCount][]Point
}

// The series of an Overview, by index in Sampler.series.
const (
	samplerSeriesEvents = iota
	samplerSeriesApplied
	samplerSeriesDecisions
	samplerSeriesDegraded
	samplerSeriesLag
	samplerSeriesActions
	samplerSeriesDelivered
	samplerSeriesHooksDelivered
	samplerSeriesHooksFailed
	samplerSeriesSend // decisions by verdict
	samplerSeriesHold
	samplerSeriesNone
	samplerSeriesCount
)

// NewSampler returns a Sampler reading what collect gathers (typically
// the Collect method of an sdkmetric.ManualReader given to the meter
// provider with sdkmetric.WithReader). Call Run, or Sample.
func NewSampler(collect func(context.Context, *metricdata.ResourceMetrics) error, o SamplerOptions) *Sampler {
	if o.Every <= 0 {
		o.Every = 10 * time.Second
	}
	if o.Keep <= 0 {
		o.Keep = time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Sampler{collect: collect, opt: o}
}

// Run samples at once and then every SamplerOptions.Every until ctx ends,
// and returns nil then. A failed sample is skipped: the next one's rates
// span both intervals. Run returns early only when sampling cannot work:
// the reader was never registered with a meter provider (that error), or
// the provider was shut down (nil).
func (s *Sampler) Run(ctx context.Context) error {
	t := time.NewTicker(s.opt.Every)
	defer t.Stop()
	for {
		err := s.Sample(ctx)
		switch {
		case errors.Is(err, sdkmetric.ErrReaderShutdown):
			return nil
		case errors.Is(err, sdkmetric.ErrReaderNotRegistered):
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sample collects once and adds the rates since the previous sample to
// the series, dropping points older than SamplerOptions.Keep. The first
// sample gives totals only. A collection that fails with data (an
// observable callback's error: the counters read here are still whole)
// is recorded and its error returned; one that fails without data records
// nothing.
func (s *Sampler) Sample(ctx context.Context) error {
	s.sampling.Lock()
	defer s.sampling.Unlock()
	var rm metricdata.ResourceMetrics
	cerr := s.collect(ctx, &rm)
	if cerr != nil && len(rm.ScopeMetrics) == 0 {
		return fmt.Errorf("console: sample metrics: %w", cerr)
	}
	// s.last changes only here, under sampling: reading it needs no mu.
	prev := s.last
	r := samplerRead(&rm, prev, s.opt.Now())

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.since.IsZero() {
		s.since = r.at
		if !r.start.IsZero() && r.start.Before(r.at) {
			s.since = r.start
		}
	}
	if prev != nil && r.at.After(prev.at) {
		s.addPoints(prev, r)
	}
	s.last = r
	cutoff := r.at.Add(-s.opt.Keep)
	for i := range s.series {
		s.series[i] = samplerSince(s.series[i], cutoff)
	}
	if cerr != nil {
		return fmt.Errorf("console: sample metrics (recorded): %w", cerr)
	}
	return nil
}

// addPoints appends the rates (and the degraded share and the mean lag)
// between two readings, cur after prev.
func (s *Sampler) addPoints(prev, cur *samplerReading) {
	// Each series' delta over the interval; of the lag, its seconds.
	var sum [samplerSeriesCount]float64
	var lagCount float64
	for k, v := range cur.values {
		d := max(0, v-prev.values[k]) // a counter that went back was reset
		switch k.metric {
		case samplerEvents:
			sum[samplerSeriesEvents] += d
			if k.a == "applied" {
				sum[samplerSeriesApplied] += d
			}
		case samplerDecisions:
			sum[samplerSeriesDecisions] += d
			if k.b == "true" {
				sum[samplerSeriesDegraded] += d
			}
			switch k.a {
			case "send":
				sum[samplerSeriesSend] += d
			case "hold":
				sum[samplerSeriesHold] += d
			case "none":
				sum[samplerSeriesNone] += d
			}
		case samplerEventLag:
			if k.a == "count" {
				lagCount += d
			} else {
				sum[samplerSeriesLag] += d
			}
		case samplerActionsEmitted:
			sum[samplerSeriesActions] += d
		case samplerActionsDelivered:
			sum[samplerSeriesDelivered] += d
		case samplerWebhookDelivered:
			sum[samplerSeriesHooksDelivered] += d
		case samplerWebhookFailed:
			sum[samplerSeriesHooksFailed] += d
		}
	}
	dt := cur.at.Sub(prev.at).Seconds()
	for i, v := range sum {
		per := dt // a rate
		switch i {
		case samplerSeriesDegraded:
			per = sum[samplerSeriesDecisions] // a share of the decisions
		case samplerSeriesLag:
			per = lagCount // a mean
		}
		if per > 0 { // no share or mean of nothing
			s.series[i] = append(s.series[i], Point{At: cur.at, Value: v / per})
		}
	}
}

// samplerSince returns the points at or after cutoff, a tail of pts: the
// points cut stay in pts's array until an append outgrows it.
func samplerSince(pts []Point, cutoff time.Time) []Point {
	i := 0
	for i < len(pts) && pts[i].At.Before(cutoff) {
		i++
	}
	return pts[i:]
}

// series returns the Overview's series by their index in Sampler.series.
func (o *Overview) series() [samplerSeriesCount]*Series {
	return [samplerSeriesCount]*Series{
		samplerSeriesEvents:         &o.Events,
		samplerSeriesApplied:        &o.Applied,
		samplerSeriesDecisions:      &o.Decisions,
		samplerSeriesDegraded:       &o.DegradedShare,
		samplerSeriesLag:            &o.EventLag,
		samplerSeriesActions:        &o.Actions,
		samplerSeriesDelivered:      &o.Delivered,
		samplerSeriesHooksDelivered: &o.WebhookDelivered,
		samplerSeriesHooksFailed:    &o.WebhookFailed,
		samplerSeriesSend:           &o.Send,
		samplerSeriesHold:           &o.Hold,
		samplerSeriesNone:           &o.None,
	}
}

// Overview returns the series (points within SamplerOptions.Keep of now),
// the totals and the funnels as of the newest sample.
func (s *Sampler) Overview() Overview {
	var campaigns []decision.Campaign
	if s.opt.Campaigns != nil {
		campaigns = s.opt.Campaigns() // outside the lock: it is the caller's code
	}
	cutoff := s.opt.Now().Add(-s.opt.Keep)
	s.mu.Lock()
	defer s.mu.Unlock()
	o := Overview{
		Since:              s.since,
		EventsByStatus:     map[string]int64{},
		DecisionsByVerdict: map[string]int64{},
	}
	for i, dst := range o.series() {
		dst.Points = slices.Clone(samplerSince(s.series[i], cutoff))
	}
	steps := map[string]map[string]int64{} // id -> outcome -> count
	var values map[samplerKey]float64
	if s.last != nil {
		o.At, values = s.last.at, s.last.values
	}
	for k, v := range values {
		n := int64(v)
		switch k.metric {
		case samplerEvents:
			o.EventsByStatus[k.a] += n
		case samplerDecisions:
			o.DecisionsByVerdict[k.a] += n
			if k.b == "true" {
				o.Degraded += n
			}
		case samplerJourneySteps:
			if steps[k.a] == nil {
				steps[k.a] = map[string]int64{}
			}
			steps[k.a][k.b] += n
		}
	}
	o.Funnels = samplerFunnels(campaigns, steps)
	return o
}

// samplerFunnels groups the steps' counts by journey: the rules' triggers
// in order, each with its steps, then the ids the rules do not name.
func samplerFunnels(campaigns []decision.Campaign, steps map[string]map[string]int64) []Funnel {
	var out []Funnel
	used := map[string]bool{}
	step := func(id string) FunnelStep {
		used[id] = true
		// steps is the caller's own, built for this Overview: no copy.
		outcomes := steps[id]
		if outcomes == nil {
			outcomes = map[string]int64{}
		}
		return FunnelStep{ID: id, Outcomes: outcomes}
	}
	at := map[string]int{} // trigger id -> index in out
	for _, c := range campaigns {
		switch c.Kind {
		case decision.CampaignTrigger:
			at[c.ID] = len(out)
			out = append(out, Funnel{Trigger: c.ID, Steps: []FunnelStep{step(c.ID)}})
		case decision.CampaignStep:
			// A step follows its journey's trigger in Campaigns.
			if i, ok := at[c.Journey]; ok {
				out[i].Steps = append(out[i].Steps, step(c.ID))
			}
		}
	}
	var rest []string
	for id := range steps {
		if !used[id] {
			rest = append(rest, id)
		}
	}
	slices.Sort(rest)
	for _, id := range rest {
		out = append(out, Funnel{Trigger: id, Steps: []FunnelStep{step(id)}})
	}
	return out
}

// samplerKey names one cumulative value of a reading: a metric and up to
// two of its attributes (which, depends on the metric; see samplerRead).
type samplerKey struct{ metric, a, b string }

// samplerReading is one sample's cumulative values.
type samplerReading struct {
	at time.Time
	// start is the earliest start time of the data points read.
	start  time.Time
	values map[samplerKey]float64
}

// samplerRead sums rm's data points of the instruments read into
// cumulative values. A metric exported with delta temporality (a reader
// configured so) is added to prev's values, so that every reading is
// cumulative.
func samplerRead(rm *metricdata.ResourceMetrics, prev *samplerReading, at time.Time) *samplerReading {
	r := &samplerReading{at: at, values: map[samplerKey]float64{}}
	delta := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			key := samplerKeyOf(m.Name)
			if key == nil {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				delta[m.Name] = delta[m.Name] || d.Temporality == metricdata.DeltaTemporality
				for _, p := range d.DataPoints {
					r.values[key(p.Attributes)] += float64(p.Value)
					r.started(p.StartTime)
				}
			case metricdata.Sum[float64]:
				delta[m.Name] = delta[m.Name] || d.Temporality == metricdata.DeltaTemporality
				for _, p := range d.DataPoints {
					r.values[key(p.Attributes)] += p.Value
					r.started(p.StartTime)
				}
			case metricdata.Histogram[float64]:
				delta[m.Name] = delta[m.Name] || d.Temporality == metricdata.DeltaTemporality
				for _, p := range d.DataPoints {
					r.values[samplerKey{metric: m.Name, a: "count"}] += float64(p.Count)
					r.values[samplerKey{metric: m.Name, a: "sum"}] += p.Sum
					r.started(p.StartTime)
				}
			}
		}
	}
	if prev != nil {
		for k, v := range prev.values {
			if delta[k.metric] {
				r.values[k] += v
			}
		}
	}
	return r
}

func (r *samplerReading) started(t time.Time) {
	if !t.IsZero() && (r.start.IsZero() || t.Before(r.start)) {
		r.start = t
	}
}

// samplerKeyOf returns how a data point of the metric is keyed, or nil
// for a metric the Sampler does not read. Attributes not in the key (a
// rejection's or a drop's reason, the webhook) are summed over.
func samplerKeyOf(metric string) func(attribute.Set) samplerKey {
	str := func(s attribute.Set, k attribute.Key) string {
		if v, ok := s.Value(k); ok {
			return v.Emit()
		}
		return ""
	}
	switch metric {
	case samplerEvents:
		return func(s attribute.Set) samplerKey { return samplerKey{metric, str(s, samplerKeyStatus), ""} }
	case samplerDecisions:
		return func(s attribute.Set) samplerKey {
			return samplerKey{metric, str(s, samplerKeyVerdict), str(s, samplerKeyDegraded)}
		}
	case samplerJourneySteps:
		return func(s attribute.Set) samplerKey {
			return samplerKey{metric, str(s, samplerKeyTrigger), str(s, samplerKeyOutcome)}
		}
	case samplerEventLag, samplerActionsEmitted, samplerActionsDelivered, samplerWebhookDelivered, samplerWebhookFailed:
		return func(attribute.Set) samplerKey { return samplerKey{metric: metric} }
	}
	return nil
}
