package server_test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/decision"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

const measureRulesYAML = `version: 1
conversion:
  on: [purchase]
  window: 7d
  value: event.value
triggers:
  - id: coupon
    on: [view]
    ab: {control: 0.5}
    action: {channel: sms, template: coupon}
offers:
  - id: banner
    channels: [web]
    ab: {control: 0.5}
    template: banner
`

func measureHarness(t *testing.T, cfg server.Config) *harness {
	t.Helper()
	r, err := decision.Parse("rules.yaml", []byte(measureRulesYAML))
	if err != nil {
		t.Fatal(err)
	}
	return startRules(t, cfg.Measures.(server.Store), decision.NewLive(r, "inline"), cfg)
}

// The trigger's report counts the users of each variant exactly, with
// the purchases after the view converting and those before not.
func TestCampaignReports(t *testing.T) {
	store := redisStore(t)
	h := measureHarness(t, server.Config{Measures: store})
	admin := nudgev1.NewAdminServiceClient(h.conn)
	want := map[string]*nudgev1.VariantCounts{"treated": {}, "control": {}}
	var events []*nudgev1.Event
	for i := range 60 {
		u := fmt.Sprintf("u%d", i)
		at := now.Add(-time.Hour)
		c := want["treated"]
		if decision.InControl(u, "coupon", 0.5) {
			c = want["control"]
		}
		c.ExposedUsers++
		events = append(events, ev(u+"-v", u, "view", "", at))
		switch i % 3 {
		case 0:
			buy := ev(u+"-p", u, "purchase", "", at.Add(time.Minute))
			buy.Value = 10
			events = append(events, buy)
			c.ConvertedUsers++
			c.ConversionValue += 10
		case 1:
			events = append(events, ev(u+"-p", u, "purchase", "", at.Add(-time.Minute))) // before: no conversion
		}
	}
	publish(t, h, events...)
	for _, c := range want {
		c.ConversionRate = float64(c.ConvertedUsers) / float64(c.ExposedUsers)
	}
	got, err := admin.GetCampaignReport(callCtx(t), &nudgev1.GetCampaignReportRequest{CampaignId: "coupon"})
	if err != nil {
		t.Fatal(err)
	}
	checkProto(t, got.GetTreated(), want["treated"])
	checkProto(t, got.GetControl(), want["control"])
	if got.GetKind() != "trigger" || got.GetControlShare() != 0.5 || got.Uplift == nil || got.PValue == nil {
		t.Errorf("report %v", got)
	}
	if wantUplift := want["treated"].ConversionRate - want["control"].ConversionRate; math.Abs(got.GetUplift()-wantUplift) > 1e-12 {
		t.Errorf("uplift %v, want %v", got.GetUplift(), wantUplift)
	}

	list, err := admin.ListCampaignReports(callCtx(t), &nudgev1.ListCampaignReportsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetReports()) != 2 || list.GetReports()[0].GetCampaignId() != "coupon" || list.GetReports()[1].GetCampaignId() != "banner" {
		t.Errorf("list %v", list)
	}
	if b := list.GetReports()[1]; b.GetKind() != "offer" || b.GetTreated().GetExposedUsers() != 0 || b.Uplift != nil {
		t.Errorf("banner before any exposure: %v", b)
	}

	// GetProfile shows the user's window: u0 viewed, then bought.
	p, err := h.profiles.GetProfile(callCtx(t), &nudgev1.GetProfileRequest{UserId: "u0"})
	if err != nil {
		t.Fatal(err)
	}
	variant := "treated"
	if decision.InControl("u0", "coupon", 0.5) {
		variant = "control"
	}
	checkProto(t, &nudgev1.Profile{Exposures: p.GetProfile().GetExposures()}, &nudgev1.Profile{Exposures: []*nudgev1.CampaignExposure{
		{CampaignId: "coupon", Variant: variant, ExposedAt: timestamppb.New(now.Add(-time.Hour)), Converted: true},
	}})

	_, err = admin.GetCampaignReport(callCtx(t), &nudgev1.GetCampaignReportRequest{CampaignId: "nope"})
	wantCode(t, err, codes.NotFound, `campaign "nope" is not a trigger`)
	_, err = admin.GetCampaignReport(callCtx(t), &nudgev1.GetCampaignReportRequest{CampaignId: "Bad:Id"})
	wantCode(t, err, codes.InvalidArgument, "campaign_id")
}

func TestCampaignReportsNeedAMeasureStore(t *testing.T) {
	h := start(t, redisStore(t), serverConfig())
	_, err := nudgev1.NewAdminServiceClient(h.conn).ListCampaignReports(callCtx(t), &nudgev1.ListCampaignReportsRequest{})
	wantCode(t, err, codes.Unimplemented, "no campaign counters")
}

// A decision that puts a user in an offer's control group is recorded
// after the answer, once per window; a treated user is exposed by the
// send reported.
func TestDecisionsRecordControlExposures(t *testing.T) {
	store := redisStore(t)
	h := measureHarness(t, server.Config{Measures: store})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- h.srv.RunMeasures(ctx, server.MeasureConfig{Refresh: time.Hour}) }()

	var control, treated uint64
	for i := range 40 {
		u := fmt.Sprintf("d%d", i)
		for range 2 { // the second decision is in the same window
			resp, err := h.decide.GetDecision(callCtx(t), &nudgev1.GetDecisionRequest{UserId: u, Channel: "web"})
			if err != nil {
				t.Fatal(err)
			}
			if resp.GetDecision().GetControl() != decision.InControl(u, "banner", 0.5) {
				t.Fatalf("user %s: control %v", u, resp.GetDecision().GetControl())
			}
		}
		if decision.InControl(u, "banner", 0.5) {
			control++
			continue
		}
		treated++
		sent := ev(u+"-sent", u, "message_sent", "", now.Add(-time.Second))
		sent.Channel, sent.Attributes = "web", map[string]string{"offer_id": "banner"}
		publish(t, h, sent)
	}
	cancel() // RunMeasures writes what is queued before it returns
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, err := nudgev1.NewAdminServiceClient(h.conn).GetCampaignReport(callCtx(t), &nudgev1.GetCampaignReportRequest{CampaignId: "banner"})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetControl().GetExposedUsers() != control || got.GetTreated().GetExposedUsers() != treated || control == 0 || treated == 0 {
		t.Errorf("report %v; want %d control and %d treated users exposed", got, control, treated)
	}
}
