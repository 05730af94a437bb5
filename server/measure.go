package server

import (
	"cmp"
	"context"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// This file measures campaigns on the server's side (decision/measure.go
// says what an exposure and a conversion are):
//
//   - the exposures decisions make (a user put in an offer's control
//     group) are queued by the answer and written after it by
//     RunMeasures, so that they add no round trip to GetDecision; a full
//     queue loses the exposure, counted in nudge.exposures.lost;
//   - RunMeasures also reads the counters of the offers that compete by
//     Thompson sampling every Refresh (only theirs, and only when the
//     rules have some): the sampler draws from this copy, never from
//     Redis on the decision path; and every campaign's every
//     MetricsRefresh, for the campaign metrics. Reading every bucket's
//     counters costs Redis in proportion to buckets x campaigns, so the
//     two are paced apart;
//   - GetCampaignReport and ListCampaignReports read the counters when
//     asked, and compare the variants (decision.Compare).

// MeasureStore records exposures made outside events and reads the
// campaign counters (profile/redisstore, measure.go).
type MeasureStore interface {
	Run(ctx context.Context, userIDs []string, steps []profile.Step) profile.BatchOutcome
	Counts(ctx context.Context, campaignIDs []string) (map[string]profile.CampaignCounts, error)
}

// MeasureConfig paces RunMeasures.
type MeasureConfig struct {
	// Refresh is how often the counters of the thompson offers are read
	// for the sampler: how far behind it may be. Default 5s.
	Refresh time.Duration
	// MetricsRefresh is how often every campaign's counters are read for
	// the campaign metrics. Default 30s.
	MetricsRefresh time.Duration
	// Batch is the most queued exposures written in one call of the
	// store. Default 500.
	Batch int
}

func (c MeasureConfig) withDefaults() MeasureConfig {
	if c.Refresh <= 0 {
		c.Refresh = 5 * time.Second
	}
	if c.MetricsRefresh <= 0 {
		c.MetricsRefresh = 30 * time.Second
	}
	if c.Batch <= 0 {
		c.Batch = 500
	}
	return c
}

// exposure is a control exposure a decision made, waiting to be written.
type exposure struct {
	userID, offerID string
	at              time.Time
}

// measurement is the server's measurement state.
type measurement struct {
	// running is set from New (when the server has a MeasureStore) until
	// RunMeasures returns: decisions queue exposures only then.
	running atomic.Bool
	queue   chan exposure
	// counts is the last read of the thompson offers' counters, metrics
	// of every campaign's (nil before the first).
	counts, metrics atomic.Pointer[map[string]profile.CampaignCounts]
	// sampler draws from counts (Request.Sampler).
	sampler decision.Sampler
}

func newMeasurement(queue int) *measurement {
	m := &measurement{queue: make(chan exposure, queue)}
	m.sampler = decision.BetaSampler{Counts: m.treated}
	return m
}

// treated returns an offer's treated users exposed and converted, as
// last read.
func (m *measurement) treated(offerID string) (int64, int64) {
	c := m.counts.Load()
	if c == nil {
		return 0, 0
	}
	t := (*c)[offerID].Treated
	return t.Exposed, t.Converted
}

// sampler is the Request.Sampler of the server's decisions: nil without
// a MeasureStore, so that thompson offers win in file order rather than
// at random.
func (s *Server) sampler() decision.Sampler {
	if s.cfg.Measures == nil {
		return nil
	}
	return s.meas.sampler
}

// recordControl queues the exposure of a decision that put the user in
// an offer's control group, without blocking.
func (s *Server) recordControl(ctx context.Context, d decision.Decision, userID string, at time.Time) {
	if !d.Control || d.ControlOffer == "" || !s.meas.running.Load() {
		return
	}
	select {
	case s.meas.queue <- exposure{userID: userID, offerID: d.ControlOffer, at: at}:
	default:
		s.metrics.exposuresLost.Add(ctx, 1, s.metrics.lostQueueFull)
	}
}

// RunMeasures writes the exposures decisions queue and refreshes the
// campaign counters until ctx ends, then writes what is still queued
// (for at most 5 seconds): decisions queue exposures from New until it
// returns, so run it once per server, and stop it after the last
// decision. Without Config.Measures it only waits for ctx.
func (s *Server) RunMeasures(ctx context.Context, cfg MeasureConfig) error {
	ms := s.cfg.Measures
	if ms == nil {
		<-ctx.Done()
		return nil
	}
	cfg = cfg.withDefaults()
	s.refreshSampler(ctx, ms)
	s.refreshMetrics(ctx, ms)
	tick := time.NewTicker(cfg.Refresh)
	defer tick.Stop()
	metricsTick := time.NewTicker(cfg.MetricsRefresh)
	defer metricsTick.Stop()
	batch := make([]exposure, 0, cfg.Batch)
	// Writes are not cut short by the end of ctx: what was taken from the
	// queue is written (each write bounded).
	write := func(batch []exposure) {
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), exposureWriteTimeout)
		defer cancel()
		s.writeExposures(wctx, ms, batch)
	}
	for {
		select {
		case <-ctx.Done():
			s.meas.running.Store(false)
			deadline := time.Now().Add(exposureWriteTimeout)
			for time.Now().Before(deadline) {
				batch = s.takeExposures(batch[:0], cfg.Batch)
				if len(batch) == 0 {
					return nil
				}
				write(batch)
			}
			return nil
		case e := <-s.meas.queue:
			batch = s.takeExposures(append(batch[:0], e), cfg.Batch)
			write(batch)
		case <-tick.C:
			s.refreshSampler(ctx, ms)
		case <-metricsTick.C:
			s.refreshMetrics(ctx, ms)
		}
	}
}

// exposureWriteTimeout bounds one write of exposures, and the flush of
// the queue when RunMeasures stops.
const exposureWriteTimeout = 5 * time.Second

// takeExposures appends to batch what is queued, up to max in all,
// without waiting.
func (s *Server) takeExposures(batch []exposure, max int) []exposure {
	for len(batch) < max {
		select {
		case e := <-s.meas.queue:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

// writeExposures writes a batch of exposures through the store's
// transactions, with the rules in force.
func (s *Server) writeExposures(ctx context.Context, ms MeasureStore, batch []exposure) {
	rules := s.rules.Rules()
	users := make([]string, len(batch))
	steps := make([]profile.Step, len(batch))
	for i, e := range batch {
		users[i] = e.userID
		steps[i] = rules.ExposeControl(s.cfg.Limits, e.offerID, e.at)
	}
	out := ms.Run(ctx, users, steps)
	var lost int64
	var first error
	for _, o := range out.Events {
		if o.Err != nil {
			lost++
			first = cmp.Or(first, o.Err)
		}
	}
	if lost > 0 {
		s.metrics.exposuresLost.Add(ctx, lost, s.metrics.lostStoreError)
		s.cfg.Logger.WarnContext(ctx, "recording decisions' control exposures failed", "lost", lost, "err", s.redactUsers(first.Error()))
	}
}

// refreshSampler reads the counters of the thompson offers of the rules
// in force, if any, for the sampler.
func (s *Server) refreshSampler(ctx context.Context, ms MeasureStore) {
	var ids []string
	for _, c := range s.rules.Rules().Campaigns() {
		if c.Thompson {
			ids = append(ids, c.ID)
		}
	}
	if len(ids) == 0 {
		return
	}
	c, err := ms.Counts(ctx, ids)
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.WarnContext(ctx, "reading the thompson offers' counters failed; the sampler keeps the last read", "err", err)
		}
		return
	}
	s.meas.counts.Store(&c)
}

// refreshMetrics reads every campaign's counters for the metrics.
func (s *Server) refreshMetrics(ctx context.Context, ms MeasureStore) {
	c, err := ms.Counts(ctx, campaignIDs(s.rules.Rules().Campaigns()))
	if err != nil {
		if ctx.Err() == nil {
			s.cfg.Logger.WarnContext(ctx, "reading the campaign counters failed; the campaign metrics keep the last read", "err", err)
		}
		return
	}
	s.meas.metrics.Store(&c)
}

func campaignIDs(cs []decision.Campaign) []string {
	ids := make([]string, len(cs))
	for i, c := range cs {
		ids[i] = c.ID
	}
	return ids
}

// registerCampaignMetrics reports the counters as last read, for the
// campaigns of the rules in force (so the series are bounded by the
// rules' limits): every instance reports the same totals, so aggregate
// them with max, not sum.
func (s *Server) registerCampaignMetrics(m metric.Meter) error {
	users, err := m.Int64ObservableGauge("nudge.campaign.users",
		metric.WithDescription("Users of a campaign, by variant (treated, control) and outcome (exposed, converted), over every instance as last read."))
	if err != nil {
		return err
	}
	value, err := m.Float64ObservableGauge("nudge.campaign.conversion_value",
		metric.WithDescription("Conversion value attributed to a campaign, by variant, over every instance as last read."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		c := s.meas.metrics.Load()
		if c == nil {
			return nil
		}
		for _, cp := range s.rules.Rules().Campaigns() {
			counts := (*c)[cp.ID]
			for _, v := range [...]struct {
				name string
				arm  profile.Arm
			}{{"treated", counts.Treated}, {"control", counts.Control}} {
				o.ObserveInt64(users, v.arm.Exposed, metric.WithAttributes(attribute.String("campaign", cp.ID),
					attribute.String("variant", v.name), attribute.String("outcome", "exposed")))
				o.ObserveInt64(users, v.arm.Converted, metric.WithAttributes(attribute.String("campaign", cp.ID),
					attribute.String("variant", v.name), attribute.String("outcome", "converted")))
				o.ObserveFloat64(value, v.arm.Value, metric.WithAttributes(attribute.String("campaign", cp.ID),
					attribute.String("variant", v.name)))
			}
		}
		return nil
	}, users, value)
	return err
}

// GetCampaignReport reports one campaign.
func (s *Server) GetCampaignReport(ctx context.Context, req *nudgev1.GetCampaignReportRequest) (*nudgev1.GetCampaignReportResponse, error) {
	if err := s.validator.Validate(req); err != nil {
		return nil, invalidArgument(err)
	}
	id := req.GetCampaignId()
	counts, err := s.readCampaigns(ctx, []string{id})
	if err != nil {
		return nil, err
	}
	var cp decision.Campaign
	found := false
	for _, c := range s.rules.Rules().Campaigns() {
		if c.ID == id {
			cp, found = c, true
			break
		}
	}
	c := counts[id]
	if !found && c == (profile.CampaignCounts{}) {
		return nil, status.Errorf(codes.NotFound, "campaign %q is not a trigger, journey step or offer of the rules in force, and has no counts", id)
	}
	if !found {
		cp = decision.Campaign{ID: id}
	}
	return campaignReport(cp, c), nil
}

// ListCampaignReports reports every campaign of the rules in force.
func (s *Server) ListCampaignReports(ctx context.Context, _ *nudgev1.ListCampaignReportsRequest) (*nudgev1.ListCampaignReportsResponse, error) {
	campaigns := s.rules.Rules().Campaigns()
	counts, err := s.readCampaigns(ctx, campaignIDs(campaigns))
	if err != nil {
		return nil, err
	}
	resp := &nudgev1.ListCampaignReportsResponse{Reports: make([]*nudgev1.GetCampaignReportResponse, len(campaigns))}
	for i, cp := range campaigns {
		resp.Reports[i] = campaignReport(cp, counts[cp.ID])
	}
	return resp, nil
}

// readCampaigns reads the campaigns' counters now.
func (s *Server) readCampaigns(ctx context.Context, ids []string) (map[string]profile.CampaignCounts, error) {
	ms := s.cfg.Measures
	if ms == nil {
		return nil, errNoMeasures
	}
	counts, err := ms.Counts(ctx, ids)
	switch {
	case err != nil && ctx.Err() != nil:
		return nil, toStatus(ctx.Err())
	case err != nil:
		return nil, unavailable("read the campaign counters", err)
	}
	return counts, nil
}

func campaignReport(cp decision.Campaign, c profile.CampaignCounts) *nudgev1.GetCampaignReportResponse {
	r := &nudgev1.GetCampaignReportResponse{
		CampaignId: cp.ID,
		Treated:    variantCounts(c.Treated),
		Control:    variantCounts(c.Control),
		Kind:       cp.Kind,
		Thompson:   cp.Thompson,
	}
	if cp.HasControl {
		r.ControlShare = cp.Control
	}
	cmp := decision.Compare(c.Treated, c.Control)
	if cmp.HasUplift {
		r.Uplift = &cmp.Uplift
	}
	if cmp.HasLift {
		r.Lift, r.LiftCiLow, r.LiftCiHigh = &cmp.Lift, &cmp.LiftLow, &cmp.LiftHigh
	}
	if cmp.HasPValue {
		r.PValue = &cmp.PValue
	}
	return r
}

func variantCounts(a profile.Arm) *nudgev1.VariantCounts {
	return &nudgev1.VariantCounts{
		ExposedUsers:    uint64(max(a.Exposed, 0)),
		ConvertedUsers:  uint64(max(a.Converted, 0)),
		ConversionValue: a.Value,
		ConversionRate:  a.Rate(),
	}
}
