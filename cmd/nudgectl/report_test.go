package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

const shopSecret = "shop-secret-0123456789"

// reportRules measure a trigger with a control group and a thompson offer
// without one.
const reportRules = `version: 1
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
    select: thompson
    template: banner
`

// reportServer serves nudge with campaign measurement on a real
// redis-server, with an admin, an ingest and a subscribe token.
func reportServer(t *testing.T) (addr string) {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	rules, err := decision.Parse("rules.yaml", []byte(reportRules))
	if err != nil {
		t.Fatal(err)
	}
	store := redisstore.New(rdb, redisstore.Options{Buckets: 4})
	srv, err := server.New(store, decision.NewLive(rules, "rules.yaml"), server.Config{
		Logger:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Measures: store,
		Tokens: []server.Token{
			{Name: "ops", Secret: opsSecret, Roles: []server.Role{server.RoleAdmin}},
			{Name: "shop", Secret: shopSecret, Roles: []server.Role{server.RoleIngest}},
			{Name: "sender", Secret: senderSecret, Roles: []server.Role{server.RoleSubscribe}, Groups: []string{"sms-sender"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, srv)
}

// Views expose 60 users to the coupon; two thirds of the treated users
// and a third of the control users buy after it, some others before (no
// conversion). nudgectl report shows each variant's counts as the server
// has them.
func TestReport(t *testing.T) {
	addr := reportServer(t)
	at := time.Now().Add(-time.Hour).UTC()
	want := map[string]*nudgev1.VariantCounts{"treated": {}, "control": {}}
	var events strings.Builder
	for i := range 60 {
		u := fmt.Sprintf("u%d", i)
		c, buys := want["treated"], i%3 != 2
		if decision.InControl(u, "coupon", 0.5) {
			c, buys = want["control"], i%3 == 0
		}
		c.ExposedUsers++
		fmt.Fprintf(&events, `{"event_id": "%s-v", "user_id": "%s", "type": "view", "occurred_at": "%s"}`+"\n", u, u, at.Format(time.RFC3339))
		switch {
		case buys:
			fmt.Fprintf(&events, `{"event_id": "%s-p", "user_id": "%s", "type": "purchase", "value": 10, "occurred_at": "%s"}`+"\n", u, u, at.Add(time.Minute).Format(time.RFC3339))
			c.ConvertedUsers++
			c.ConversionValue += 10
		case i%3 == 1:
			fmt.Fprintf(&events, `{"event_id": "%s-p", "user_id": "%s", "type": "purchase", "value": 10, "occurred_at": "%s"}`+"\n", u, u, at.Add(-time.Minute).Format(time.RFC3339))
		}
	}
	for _, c := range want {
		c.ConversionRate = float64(c.ConvertedUsers) / float64(c.ExposedUsers)
	}
	file := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(file, []byte(events.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if status, out, errOut := ctl(t, shopSecret, "send", file, "--quiet", "--addr", addr); status != 0 {
		t.Fatalf("send: status %d\nstdout: %s\nstderr: %s", status, out, errOut)
	}

	status, out, errOut := ctl(t, opsSecret, "report", "--addr", addr)
	if status != 0 {
		t.Fatalf("report: status %d: %s", status, errOut)
	}
	t.Logf("report:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 5 || !strings.HasPrefix(lines[0], "CAMPAIGN") {
		t.Fatalf("report: want a header and two rows per campaign:\n%s", out)
	}
	tr, ctrl := want["treated"], want["control"]
	for _, row := range []struct {
		line int
		want []string
	}{
		{1, []string{"coupon", "trigger", "treated", fmt.Sprint(tr.ExposedUsers), fmt.Sprint(tr.ConvertedUsers), percent(tr.ConversionRate, 2), fmt.Sprintf("%.2f", tr.ConversionValue)}},
		{2, []string{"control", "50%", fmt.Sprint(ctrl.ExposedUsers), fmt.Sprint(ctrl.ConvertedUsers), percent(ctrl.ConversionRate, 2), fmt.Sprintf("%.2f", ctrl.ConversionValue)}},
		{3, []string{"banner", "offer", "(thompson)", "treated", "0", "0", "0.00%", "0.00", "-", "-", "-"}},
		{4, []string{"control", "0", "0", "0.00%", "0.00"}},
	} {
		if got := strings.Fields(lines[row.line]); len(got) < len(row.want) || !slices.Equal(got[:len(row.want)], row.want) {
			t.Errorf("line %d: %q, want it to start with %q", row.line, got, row.want)
		}
	}
	if !strings.Contains(lines[1], " pp ") || strings.Count(lines[1], "%") < 4 {
		t.Errorf("coupon: want the uplift in pp, the lift with its interval and a p-value: %s", lines[1])
	}

	status, out, errOut = ctl(t, opsSecret, "report", "coupon", "--json", "--addr", addr)
	if status != 0 {
		t.Fatalf("report coupon --json: status %d: %s", status, errOut)
	}
	var one nudgev1.GetCampaignReportResponse
	if err := protojson.Unmarshal([]byte(out), &one); err != nil {
		t.Fatalf("report coupon --json is not a report: %v\n%s", err, out)
	}
	if !proto.Equal(one.GetTreated(), tr) || !proto.Equal(one.GetControl(), ctrl) || one.GetKind() != "trigger" ||
		one.GetControlShare() != 0.5 || one.Uplift == nil || one.PValue == nil || strings.Count(out, "\n") != 1 {
		t.Errorf("report coupon --json = %s\nwant treated %v, control %v", out, tr, ctrl)
	}

	status, out, errOut = ctl(t, opsSecret, "report", "--json", "--addr", addr)
	if status != 0 {
		t.Fatalf("report --json: status %d: %s", status, errOut)
	}
	var list nudgev1.ListCampaignReportsResponse
	if err := protojson.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("report --json is not a list of reports: %v\n%s", err, out)
	}
	if r := list.GetReports(); len(r) != 2 || !proto.Equal(r[0], &one) || r[1].GetCampaignId() != "banner" || !r[1].GetThompson() || r[1].Uplift != nil {
		t.Errorf("report --json = %s", out)
	}

	tests := []struct {
		name       string
		token      string
		args       []string
		wantStatus int
		wantErr    string
	}{
		{"an unknown campaign", opsSecret, []string{"report", "nope"}, 1,
			`nudgectl report: NotFound: campaign "nope" is not a trigger, journey step or offer of the rules in force, and has no counts (nudgectl report without a campaign lists them)`},
		{"an invalid id", opsSecret, []string{"report", "Bad:Id"}, 1, "nudgectl report: InvalidArgument: "},
		{"without the admin role", senderSecret, []string{"report"}, 1, `nudgectl report: PermissionDenied: token "sender" lacks role "admin"`},
		{"two campaigns", opsSecret, []string{"report", "coupon", "banner"}, 2, "nudgectl report: takes at most one CAMPAIGN, got 2 arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, out, errOut := ctl(t, tt.token, append(tt.args, "--addr", addr)...)
			if status != tt.wantStatus || out != "" || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("status %d, want %d\nstdout: %s\nstderr: %s", status, tt.wantStatus, out, errOut)
			}
		})
	}
}

func TestReportWithoutMeasurement(t *testing.T) {
	addr, _, _ := groupsServer(t, 0, &settableClock{now: time.Now()})
	status, out, errOut := ctl(t, opsSecret, "report", "--addr", addr)
	if status != 1 || out != "" || !strings.Contains(errOut, "nudgectl report: Unimplemented: this server keeps no campaign counters") {
		t.Errorf("status %d\nstdout: %s\nstderr: %s", status, out, errOut)
	}
}

func TestPrintCampaignReports(t *testing.T) {
	f := proto.Float64
	reports := []*nudgev1.GetCampaignReportResponse{{
		CampaignId:   "coupon",
		Kind:         "trigger",
		ControlShare: 0.025,
		Treated:      &nudgev1.VariantCounts{ExposedUsers: 9000, ConvertedUsers: 1080, ConversionValue: 21600.5, ConversionRate: 0.12},
		Control:      &nudgev1.VariantCounts{ExposedUsers: 1000, ConvertedUsers: 100, ConversionValue: 2000, ConversionRate: 0.1},
		Uplift:       f(0.02), Lift: f(0.2), LiftCiLow: f(-0.0118), LiftCiHigh: f(0.4572), PValue: f(0.0629),
	}, {
		CampaignId: "banner",
		Kind:       "offer",
		Thompson:   true,
		Treated:    &nudgev1.VariantCounts{ExposedUsers: 500, ConvertedUsers: 5, ConversionRate: 0.01},
		Control:    &nudgev1.VariantCounts{},
	}, {
		// No longer in the rules; no control conversions: no lift.
		CampaignId: "old-promo",
		Treated:    &nudgev1.VariantCounts{ExposedUsers: 20000, ConvertedUsers: 600, ConversionRate: 0.03},
		Control:    &nudgev1.VariantCounts{ExposedUsers: 2000},
		Uplift:     f(0.03), PValue: f(4e-15),
	}}
	want := `CAMPAIGN   KIND              VARIANT       EXPOSED  CONVERTED  RATE    VALUE     UPLIFT    LIFT (95% CI)           P-VALUE
coupon     trigger           treated       9000     1080       12.00%  21600.50  +2.00 pp  +20.0% [-1.2%, +45.7%]  0.063
                             control 2.5%  1000     100        10.00%  2000.00
banner     offer (thompson)  treated       500      5          1.00%   0.00      -         -                       -
                             control       0        0          0.00%   0.00
old-promo  not in rules      treated       20000    600        3.00%   0.00      +3.00 pp  -                       <0.001
                             control       2000     0          0.00%   0.00
`
	var out bytes.Buffer
	printCampaignReports(&out, reports)
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
