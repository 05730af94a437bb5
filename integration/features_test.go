package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/internal/redistest"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// featureRulesYAML: counts over a week and a day, of one category, the
// purchases, and the days since the last one.
const featureRulesYAML = `version: 1
features:
  - {name: views_7d, expr: 'profile.count("view", duration("168h"))'}
  - {name: views_24h, expr: 'profile.count("view", duration("24h"))'}
  - {name: phone_views_24h, expr: 'profile.count("view", "phones", duration("24h"))'}
  - {name: purchases, expr: 'profile.purchase_count()'}
  - {name: days_since_purchase, expr: 'profile.days_since("purchase")'}
`

// The tokens of the features tests: a model's (features only), an
// operator's and a producer's.
const (
	featScorer   = "feat-scorer-0123456789"
	featOperator = "feat-operator-01234567"
	featIngest   = "feat-ingest-0123456789"
)

// startFeaturesNudged starts the built nudged on its own redis-server with
// featureRulesYAML and the features tests' tokens.
func startFeaturesNudged(t *testing.T) *nudged {
	t.Helper()
	dir := t.TempDir()
	rules, tokens := filepath.Join(dir, "rules.yaml"), filepath.Join(dir, "tokens.yaml")
	if err := os.WriteFile(rules, []byte(featureRulesYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokens, []byte("tokens:\n"+
		"- {name: scorer, secret: "+featScorer+", roles: [features]}\n"+
		"- {name: operator, secret: "+featOperator+", roles: [admin]}\n"+
		"- {name: producer, secret: "+featIngest+", roles: [ingest]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return startNudged(t, buildNudged(t), "--redis-addr", redistest.Start(t).Addr, "--rules", rules, "--auth-token-file", tokens)
}

// shopperEvents are the events of shopper i of the features tests, and
// what the features must say of them: i%most+1 views between 1 and 20
// hours ago (so that no window of a day or a week can lose one while the
// test runs), every third in phones, and for every third shopper a
// purchase.
func shopperEvents(user string, i, most int) (events []*nudgev1.Event, views, phones, purchases int) {
	now := time.Now()
	for k := range i%most + 1 {
		cat := []string{"phones", "tv", "books"}[k%3]
		if cat == "phones" {
			phones++
		}
		events = append(events, &nudgev1.Event{
			EventId: fmt.Sprintf("%s-v%d", user, k), UserId: user, Type: "view", Category: cat,
			OccurredAt: timestamppb.New(now.Add(-time.Hour - time.Duration(k*(i+1)%(19*60))*time.Minute)),
		})
	}
	if i%3 == 0 {
		purchases = 1
		events = append(events, &nudgev1.Event{
			EventId: user + "-p", UserId: user, Type: "purchase", Value: float64(10 + i),
			OccurredAt: timestamppb.New(now.Add(-2 * time.Hour)),
		})
	}
	return events, i%most + 1, phones, purchases
}

// GetFeatures against the built nudged on a real Redis: the values of
// every user agree with what its events say and with GetProfile's counts;
// a user never seen gets found false and an empty profile's features; a
// features token calls GetFeatures and ExportFeatures and nothing else of
// ProfileService; an unknown feature is INVALID_ARGUMENT naming the
// defined ones.
func TestGetFeaturesAgainstNudged(t *testing.T) {
	n := startFeaturesNudged(t)
	conn := dial(t, n.addr)
	ctx := ctxT(t)
	const users = 100
	type want struct{ views, phones, purchases int }
	wants := map[string]want{}
	var events []*nudgev1.Event
	var ids []string
	for i := range users {
		u := fmt.Sprintf("feat-shopper-%d", i)
		evs, views, phones, purchases := shopperEvents(u, i, 7)
		events = append(events, evs...)
		wants[u] = want{views, phones, purchases}
		ids = append(ids, u)
	}
	resp, err := nudgev1.NewIngestServiceClient(conn).Publish(bearer(ctx, featIngest), &nudgev1.PublishRequest{Events: events})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range resp.GetResults() {
		wantStatus(t, r, nudgev1.EventStatus_EVENT_STATUS_APPLIED)
	}

	prof := nudgev1.NewProfileServiceClient(conn)
	got, err := prof.GetFeatures(bearer(ctx, featScorer), &nudgev1.GetFeaturesRequest{UserIds: append(ids, "feat-never-seen")})
	if err != nil {
		t.Fatalf("GetFeatures: %v", err)
	}
	if len(got.GetRows()) != users+1 || got.GetRulesVersion() == "" || time.Since(got.GetAt().AsTime()).Abs() > time.Minute {
		t.Fatalf("GetFeatures: %d rows, rules %q, at %v", len(got.GetRows()), got.GetRulesVersion(), got.GetAt().AsTime())
	}
	for i, r := range got.GetRows()[:users] {
		w := wants[ids[i]]
		v := r.GetValues()
		if r.GetUserId() != ids[i] || !r.GetFound() || r.GetProfileVersion() == 0 || len(r.GetErrors()) != 0 ||
			v["views_7d"] != float64(w.views) || v["views_24h"] != float64(w.views) || v["phone_views_24h"] != float64(w.phones) ||
			v["purchases"] != float64(w.purchases) {
			t.Errorf("row %d: %v, want %+v", i, r, w)
		}
		if dsp := v["days_since_purchase"]; (w.purchases == 1) != (dsp > 0.08 && dsp < 0.1) { // 2 hours: 0.083 days
			t.Errorf("%s: days_since_purchase %v with %d purchases", ids[i], dsp, w.purchases)
		}
	}
	never := got.GetRows()[users]
	if never.GetFound() || never.GetProfileVersion() != 0 || never.GetValues()["views_7d"] != 0 || never.GetValues()["days_since_purchase"] != 36500 {
		t.Errorf("a user never seen: %v, want not found, no views, 36500 days since a purchase", never)
	}

	// GetProfile's counts say the same, user by user.
	for i := 0; i < users; i += 9 {
		p, err := prof.GetProfile(bearer(ctx, featOperator), &nudgev1.GetProfileRequest{UserId: ids[i]})
		if err != nil {
			t.Fatal(err)
		}
		v := got.GetRows()[i].GetValues()
		for _, c := range []struct {
			category string
			window   time.Duration
			feature  string
		}{{"", 24 * time.Hour, "views_24h"}, {"phones", 24 * time.Hour, "phone_views_24h"}, {"", 7 * 24 * time.Hour, "views_7d"}} {
			n, ok := profileCount(p.GetProfile(), "view", c.category, c.window)
			if ok && float64(n) != v[c.feature] || !ok && c.window == 24*time.Hour && v[c.feature] != 0 {
				t.Errorf("%s: GetProfile counts %d views (%q, %v), %s is %v", ids[i], n, c.category, c.window, c.feature, v[c.feature])
			}
		}
		if float64(p.GetProfile().GetPurchaseCount()) != v["purchases"] {
			t.Errorf("%s: GetProfile %d purchases, the feature %v", ids[i], p.GetProfile().GetPurchaseCount(), v["purchases"])
		}
	}

	// The features role opens the features, not the profile.
	_, err = prof.GetProfile(bearer(ctx, featScorer), &nudgev1.GetProfileRequest{UserId: ids[0]})
	wantCode(t, err, codes.PermissionDenied, `token "scorer" lacks role "admin"`)
	_, err = prof.DeleteProfile(bearer(ctx, featScorer), &nudgev1.DeleteProfileRequest{UserId: ids[0]})
	wantCode(t, err, codes.PermissionDenied, `lacks role "admin"`)
	_, err = prof.GetFeatures(bearer(ctx, featIngest), &nudgev1.GetFeaturesRequest{UserIds: ids[:1]})
	wantCode(t, err, codes.PermissionDenied, `token "producer" lacks role "features" or "admin"`)
	stream, err := prof.ExportFeatures(bearer(ctx, featScorer), &nudgev1.ExportFeaturesRequest{Features: []string{"purchases"}})
	if err != nil {
		t.Fatal(err)
	}
	exported := 0
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("ExportFeatures with the features token: %v", err)
		}
		exported += len(m.GetRows())
	}
	if exported != users {
		t.Errorf("ExportFeatures with the features token: %d rows, want %d", exported, users)
	}

	_, err = prof.GetFeatures(bearer(ctx, featScorer), &nudgev1.GetFeaturesRequest{UserIds: ids[:1], Features: []string{"views_7d", "ltv_90d"}})
	wantCode(t, err, codes.InvalidArgument, `"ltv_90d" (the rules define views_7d, views_24h, phone_views_24h, purchases, days_since_purchase)`)
}

// profileCount is GetProfile's count of a (type, category) over window,
// false when it reports no such window.
func profileCount(p *nudgev1.Profile, typ, category string, window time.Duration) (uint64, bool) {
	for _, c := range p.GetCounts() {
		if c.GetType() == typ && c.GetCategory() == category && c.GetWindow().AsDuration() == window {
			return c.GetCount(), true
		}
	}
	return 0, false
}

// exportRow is a row of the parquet export of featureRulesYAML, by name.
type exportRow struct {
	UserID            string   `parquet:"user_id"`
	Found             bool     `parquet:"found"`
	ProfileVersion    int64    `parquet:"profile_version"`
	Errors            *string  `parquet:"errors,optional"`
	Views7d           *float64 `parquet:"views_7d,optional"`
	Views24h          *float64 `parquet:"views_24h,optional"`
	PhoneViews24h     *float64 `parquet:"phone_views_24h,optional"`
	Purchases         *float64 `parquet:"purchases,optional"`
	DaysSincePurchase *float64 `parquet:"days_since_purchase,optional"`
}

// nudgectl features export against the built nudged on a real Redis with
// 100,000 users: the parquet file and the JSON lines hold every user
// exactly once, with the export's rules version and instant, and a sample
// of rows equals what GetFeatures answers for the same users.
func TestFeaturesExportAgainstNudged(t *testing.T) {
	start := time.Now()
	n := startFeaturesNudged(t)
	ctl := buildCommand(t, "nudgectl")
	conn := dial(t, n.addr)
	ctx := ctxT(t)
	const users = 100_000
	wants := make([][3]int, users) // views, phones, purchases
	var all []*nudgev1.Event
	for i := range users {
		evs, views, phones, purchases := shopperEvents(fmt.Sprintf("x%d", i), i, 3)
		all = append(all, evs...)
		wants[i] = [3]int{views, phones, purchases}
	}
	seed := time.Now()
	ingest := nudgev1.NewIngestServiceClient(conn)
	batches := slices.Collect(slices.Chunk(all, 5000))
	var wg sync.WaitGroup
	errs := make(chan error, len(batches))
	work := make(chan []*nudgev1.Event)
	for range 4 {
		wg.Go(func() {
			for b := range work {
				resp, err := ingest.Publish(bearer(ctx, featIngest), &nudgev1.PublishRequest{Events: b})
				if err == nil {
					for _, r := range resp.GetResults() {
						if r.GetStatus() != nudgev1.EventStatus_EVENT_STATUS_APPLIED {
							err = fmt.Errorf("event %s: %s %s", r.GetEventId(), r.GetStatus(), r.GetReason())
							break
						}
					}
				}
				errs <- err
			}
		})
	}
	for _, b := range batches {
		work <- b
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("seed: %v", err)
		}
	}
	t.Logf("seeded %d users (%d events) in %v", users, len(all), time.Since(seed).Round(time.Millisecond))

	export := func(args ...string) string {
		t.Helper()
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, ctl, append([]string{"features", "export", "--addr", n.addr, "--insecure"}, args...)...)
		cmd.Env = append(os.Environ(), "NUDGE_TOKEN="+featScorer)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		began := time.Now()
		if err := cmd.Run(); err != nil {
			t.Fatalf("nudgectl features export %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		summary := strings.TrimSpace(stderr.String())
		t.Logf("export %s: %v; %s", strings.Join(args, " "), time.Since(began).Round(time.Millisecond), summary[strings.LastIndexByte(summary, '\n')+1:])
		return summary
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "features.parquet")
	summary := export("--format", "parquet", "-o", path)
	if !strings.Contains(summary, fmt.Sprintf("%d rows (0 with errors)", users)) {
		t.Errorf("summary: %s", summary)
	}
	rows, err := parquet.ReadFile[exportRow](path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		t.Fatal(err)
	}
	atText, _ := pf.Lookup("at")
	version, _ := pf.Lookup("rules_version")
	at, err := time.Parse(time.RFC3339Nano, atText)
	if err != nil || version == "" || len(pf.RowGroups()) < 2 {
		t.Errorf("metadata at=%q rules_version=%q, %d row groups (want 64k rows a group)", atText, version, len(pf.RowGroups()))
	}
	t.Logf("parquet: %d bytes, %d row groups", st.Size(), len(pf.RowGroups()))

	byUser := make(map[string]exportRow, users)
	for _, r := range rows {
		if _, dup := byUser[r.UserID]; dup {
			t.Fatalf("user %s exported twice", r.UserID)
		}
		byUser[r.UserID] = r
	}
	if len(rows) != users || len(byUser) != users {
		t.Fatalf("%d rows, %d distinct users; want %d", len(rows), len(byUser), users)
	}
	for i, w := range wants {
		r, ok := byUser[fmt.Sprintf("x%d", i)]
		if !ok || !r.Found || r.ProfileVersion < 1 || r.Errors != nil || r.Views7d == nil || *r.Views7d != float64(w[0]) ||
			*r.Views24h != float64(w[0]) || *r.PhoneViews24h != float64(w[1]) || *r.Purchases != float64(w[2]) || r.DaysSincePurchase == nil {
			t.Fatalf("x%d: %+v, want views, phone views, purchases %v", i, r, w)
		}
	}

	// A sample against GetFeatures, asked now: the counts compared cannot
	// change within the test (events 1 to 20 hours old, windows of a day
	// and a week), days_since_purchase by the time between the two.
	sample := rand.Perm(users)[:200]
	var ids []string
	for _, i := range sample {
		ids = append(ids, fmt.Sprintf("x%d", i))
	}
	got, err := nudgev1.NewProfileServiceClient(conn).GetFeatures(bearer(ctx, featScorer), &nudgev1.GetFeaturesRequest{UserIds: ids})
	if err != nil {
		t.Fatal(err)
	}
	if got.GetRulesVersion() != version {
		t.Errorf("GetFeatures with rules %q, the export %q", got.GetRulesVersion(), version)
	}
	elapsed := got.GetAt().AsTime().Sub(at).Hours() / 24
	for k, r := range got.GetRows() {
		e := byUser[ids[k]]
		v := r.GetValues()
		if v["views_7d"] != *e.Views7d || v["views_24h"] != *e.Views24h || v["phone_views_24h"] != *e.PhoneViews24h || v["purchases"] != *e.Purchases ||
			uint64(e.ProfileVersion) != r.GetProfileVersion() {
			t.Errorf("%s: GetFeatures %v, the export %+v", ids[k], r, e)
		}
		if d := v["days_since_purchase"] - *e.DaysSincePurchase; *e.Purchases == 1 && (d < elapsed-1e-6 || d > elapsed+1e-6) {
			t.Errorf("%s: days_since_purchase %v in GetFeatures, %v in the export %.6f days earlier", ids[k], v["days_since_purchase"], *e.DaysSincePurchase, elapsed)
		}
	}

	// JSON lines: the same users, the same values.
	jsonl := filepath.Join(dir, "features.jsonl")
	export("--format", "jsonl", "-o", jsonl, "--features", "views_24h,purchases")
	jf, err := os.Open(jsonl)
	if err != nil {
		t.Fatal(err)
	}
	defer jf.Close()
	lines := 0
	seen := make(map[string]bool, users)
	sc := bufio.NewScanner(jf)
	for sc.Scan() {
		var r struct {
			UserID   string             `json:"user_id"`
			Found    bool               `json:"found"`
			Features map[string]float64 `json:"features"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %d: %v", lines+1, err)
		}
		e, ok := byUser[r.UserID]
		if !ok || seen[r.UserID] || !r.Found || len(r.Features) != 2 || r.Features["views_24h"] != *e.Views24h || r.Features["purchases"] != *e.Purchases {
			t.Fatalf("line %d: %s", lines+1, sc.Text())
		}
		seen[r.UserID] = true
		lines++
	}
	if err := sc.Err(); err != nil || lines != users {
		t.Errorf("%d lines (%v), want %d", lines, err, users)
	}
	t.Logf("whole test: %v", time.Since(start).Round(time.Millisecond))
}
