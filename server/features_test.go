package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// featuresYAML is the test rules with a features section: two counts, the
// purchases, and one that fails on a user without purchases (1/0 is not a
// finite number).
const featuresYAML = rulesYAML + `features:
  - {name: views_7d, expr: 'profile.count("view", duration("168h"))'}
  - {name: views_24h, expr: 'profile.count("view", duration("24h"))'}
  - {name: purchases, expr: 'profile.purchase_count()'}
  - {name: per_purchase, expr: 'double(profile.count("view", duration("24h"))) / double(profile.purchase_count())'}
`

// featureRules are the rules of featuresYAML.
func featureRules(t testing.TB) *decision.Live {
	t.Helper()
	r, err := decision.Parse("features.yaml", []byte(featuresYAML))
	if err != nil {
		t.Fatalf("parse the features rules: %v", err)
	}
	return decision.NewLive(r, "inline")
}

// featureRow is a row as the tests compare it.
func featureRow(user string, found bool, version uint64, values map[string]float64, errs ...string) *nudgev1.FeatureRow {
	r := &nudgev1.FeatureRow{UserId: user, Found: found, ProfileVersion: version, Values: values}
	for i := 0; i+1 < len(errs); i += 2 {
		if r.Errors == nil {
			r.Errors = map[string]string{}
		}
		r.Errors[errs[i]] = errs[i+1]
	}
	return r
}

// wantRows compares rows, an error message by its start.
func wantRows(t *testing.T, got, want []*nudgev1.FeatureRow) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d rows, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		ok := g.GetUserId() == w.GetUserId() && g.GetFound() == w.GetFound() && g.GetProfileVersion() == w.GetProfileVersion() &&
			len(g.GetValues()) == len(w.GetValues()) && len(g.GetErrors()) == len(w.GetErrors())
		for k, v := range w.GetValues() {
			if gv, in := g.GetValues()[k]; !in || gv != v {
				ok = false
			}
		}
		for k, msg := range w.GetErrors() {
			if !strings.HasPrefix(g.GetErrors()[k], msg) {
				ok = false
			}
		}
		if !ok {
			t.Errorf("row %d = %v, want %v", i, g, w)
		}
	}
}

func TestGetFeatures(t *testing.T) {
	store := redisStore(t)
	h := startRules(t, store, featureRules(t), serverConfig())
	ctx := callCtx(t)
	buy := ev("b1", "buyer", "purchase", "", now.Add(-2*time.Hour))
	buy.Value = 20
	publish(t, h,
		ev("v1", "viewer", "view", "phones", now.Add(-23*time.Hour)),
		ev("v2", "viewer", "view", "tv", now.Add(-time.Hour)),
		ev("v3", "viewer", "view", "", now.Add(-time.Minute)),
		buy,
		ev("b2", "buyer", "view", "phones", now.Add(-time.Hour)),
	)
	c := nudgev1.NewProfileServiceClient(h.conn)

	t.Run("rows in request order", func(t *testing.T) {
		resp, err := c.GetFeatures(ctx, &nudgev1.GetFeaturesRequest{
			UserIds:  []string{"viewer", "nobody", "buyer", "viewer"},
			Features: []string{"purchases", "views_24h", "per_purchase"},
		})
		if err != nil {
			t.Fatalf("GetFeatures: %v", err)
		}
		if !slices.Equal(resp.GetFeatures(), []string{"purchases", "views_24h", "per_purchase"}) {
			t.Errorf("features %v, want the request's", resp.GetFeatures())
		}
		if !resp.GetAt().AsTime().Equal(now) || resp.GetRulesVersion() != featureRules(t).Rules().Version() {
			t.Errorf("at %v rules %q, want the server's clock %v and the rules' version", resp.GetAt().AsTime(), resp.GetRulesVersion(), now)
		}
		viewer := featureRow("viewer", true, 1, map[string]float64{"purchases": 0, "views_24h": 3}, "per_purchase", "features.per_purchase:")
		wantRows(t, resp.GetRows(), []*nudgev1.FeatureRow{
			viewer,
			featureRow("nobody", false, 0, map[string]float64{"purchases": 0, "views_24h": 0}, "per_purchase", "features.per_purchase:"),
			featureRow("buyer", true, 1, map[string]float64{"purchases": 1, "views_24h": 1, "per_purchase": 1}),
			viewer,
		})
	})
	t.Run("every feature by default", func(t *testing.T) {
		resp, err := c.GetFeatures(ctx, &nudgev1.GetFeaturesRequest{UserIds: []string{"buyer"}})
		if err != nil {
			t.Fatalf("GetFeatures: %v", err)
		}
		wantRows(t, resp.GetRows(), []*nudgev1.FeatureRow{
			featureRow("buyer", true, 1, map[string]float64{"views_7d": 1, "views_24h": 1, "purchases": 1, "per_purchase": 1}),
		})
		if !slices.Equal(resp.GetFeatures(), []string{"views_7d", "views_24h", "purchases", "per_purchase"}) {
			t.Errorf("features %v, want every feature in file order", resp.GetFeatures())
		}
	})
	t.Run("GetProfile agrees", func(t *testing.T) {
		p, err := c.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "viewer"})
		if err != nil {
			t.Fatal(err)
		}
		var n24h uint64
		for _, wc := range p.GetProfile().GetCounts() {
			if wc.GetType() == "view" && wc.GetCategory() == "" && wc.GetWindow().AsDuration() == 24*time.Hour {
				n24h = wc.GetCount()
			}
		}
		resp, err := c.GetFeatures(ctx, &nudgev1.GetFeaturesRequest{UserIds: []string{"viewer"}, Features: []string{"views_24h"}})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetRows()[0].GetValues()["views_24h"]; got != float64(n24h) || n24h != 3 {
			t.Errorf("views_24h = %v, GetProfile's 24h view count %d, want both 3", got, n24h)
		}
	})
}

// A corrupt profile is its row's errors, every feature; the others are
// answered.
func TestGetFeaturesCorruptProfile(t *testing.T) {
	bad := fmt.Errorf("%w: unknown encoding version 255", profile.ErrCorrupt)
	store := okStore()
	store.get = func(_ context.Context, id string) (*profile.Profile, error) {
		switch id {
		case "bad":
			return nil, bad
		case "good":
			return &profile.Profile{Version: 4}, nil
		}
		return nil, profile.ErrNotFound
	}
	h := startRules(t, store, featureRules(t), serverConfig())
	resp, err := nudgev1.NewProfileServiceClient(h.conn).GetFeatures(callCtx(t), &nudgev1.GetFeaturesRequest{
		UserIds: []string{"good", "bad"}, Features: []string{"views_24h", "purchases"},
	})
	if err != nil {
		t.Fatalf("GetFeatures: %v", err)
	}
	wantRows(t, resp.GetRows(), []*nudgev1.FeatureRow{
		featureRow("good", true, 4, map[string]float64{"views_24h": 0, "purchases": 0}),
		featureRow("bad", true, 0, nil, "views_24h", "profile: corrupt encoding: unknown encoding version 255", "purchases", "profile: corrupt encoding"),
	})
}

func TestGetFeaturesErrors(t *testing.T) {
	down := okStore()
	down.get = func(context.Context, string) (*profile.Profile, error) {
		return nil, fmt.Errorf("%w: connection refused", profile.ErrUnavailable)
	}
	tests := []struct {
		name  string
		store server.Store
		rules *decision.Live
		req   *nudgev1.GetFeaturesRequest
		code  codes.Code
		msg   string
	}{
		{"no users", okStore(), featureRules(t), &nudgev1.GetFeaturesRequest{}, codes.InvalidArgument, "user_ids"},
		{"too many users", okStore(), featureRules(t), &nudgev1.GetFeaturesRequest{UserIds: slices.Repeat([]string{"u"}, 1001)}, codes.InvalidArgument, "user_ids"},
		{"an empty user id", okStore(), featureRules(t), &nudgev1.GetFeaturesRequest{UserIds: []string{"u", ""}}, codes.InvalidArgument, "user_ids[1]"},
		{"a user id with a space", okStore(), featureRules(t), &nudgev1.GetFeaturesRequest{UserIds: []string{"a b"}}, codes.InvalidArgument, "user_ids[0]"},
		{"a feature twice", okStore(), featureRules(t), &nudgev1.GetFeaturesRequest{UserIds: []string{"u"}, Features: []string{"purchases", "purchases"}}, codes.InvalidArgument, "features"},
		{"a malformed feature name", okStore(), featureRules(t), &nudgev1.GetFeaturesRequest{UserIds: []string{"u"}, Features: []string{"Views"}}, codes.InvalidArgument, "features[0]"},
		{"an unknown feature", okStore(), featureRules(t), &nudgev1.GetFeaturesRequest{UserIds: []string{"u"}, Features: []string{"purchases", "ltv"}},
			codes.InvalidArgument, `"ltv" (the rules define views_7d, views_24h, purchases, per_purchase)`},
		{"rules without features", okStore(), testRules(t), &nudgev1.GetFeaturesRequest{UserIds: []string{"u"}}, codes.FailedPrecondition, "no features"},
		{"the store down", down, featureRules(t), &nudgev1.GetFeaturesRequest{UserIds: []string{"u"}}, codes.Unavailable, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startRules(t, tt.store, tt.rules, serverConfig())
			_, err := nudgev1.NewProfileServiceClient(h.conn).GetFeatures(callCtx(t), tt.req)
			wantCode(t, err, tt.code, tt.msg)
		})
	}
}

// exportAll runs ExportFeatures and returns its messages.
func exportAll(t *testing.T, c nudgev1.ProfileServiceClient, ctx context.Context, features ...string) ([]*nudgev1.ExportFeaturesResponse, error) {
	t.Helper()
	stream, err := c.ExportFeatures(ctx, &nudgev1.ExportFeaturesRequest{Features: features})
	if err != nil {
		return nil, err
	}
	var out []*nudgev1.ExportFeaturesResponse
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, resp)
	}
}

// ExportFeatures streams every stored profile once, in pages of at most
// 500 rows, each message with the rules version and the one instant; a
// corrupt profile is a row of errors; an empty store one message without
// rows.
func TestExportFeatures(t *testing.T) {
	rdb, store := redisClientStore(t)
	h := startRules(t, store, featureRules(t), serverConfig())
	c := nudgev1.NewProfileServiceClient(h.conn)
	ctx := callCtx(t)
	version := featureRules(t).Rules().Version()

	msgs, err := exportAll(t, c, ctx)
	if err != nil || len(msgs) != 1 || len(msgs[0].GetRows()) != 0 || msgs[0].GetRulesVersion() != version || !msgs[0].GetAt().AsTime().Equal(now) ||
		!slices.Equal(msgs[0].GetFeatures(), []string{"views_7d", "views_24h", "purchases", "per_purchase"}) {
		t.Fatalf("an empty store's export: %v, %v; want the header alone, with every feature in file order", msgs, err)
	}

	const users = 1234
	var events []*nudgev1.Event
	for i := range users {
		events = append(events, ev(fmt.Sprintf("e%d", i), fmt.Sprintf("u%d", i), "view", "", now.Add(-time.Duration(i%20)*time.Hour)))
	}
	for batch := range slices.Chunk(events, 500) {
		publish(t, h, batch...)
	}
	if err := rdb.Set(ctx, store.Layout().ProfileKey("garbled"), "\xffnot a profile", 0).Err(); err != nil {
		t.Fatal(err)
	}

	msgs, err = exportAll(t, c, ctx, "views_24h")
	if err != nil {
		t.Fatalf("ExportFeatures: %v", err)
	}
	if h := msgs[0]; len(h.GetRows()) != 0 || !slices.Equal(h.GetFeatures(), []string{"views_24h"}) {
		t.Fatalf("header %v, want no rows and the feature asked for", h)
	}
	seen := map[string]bool{}
	for _, m := range msgs[1:] {
		if len(m.GetFeatures()) != 0 {
			t.Errorf("a page repeats the features: %v", m.GetFeatures())
		}
		if n := len(m.GetRows()); n == 0 || n > 500 {
			t.Errorf("a message of %d rows, want 1 to 500", n)
		}
		if m.GetRulesVersion() != version || !m.GetAt().AsTime().Equal(now) {
			t.Errorf("a message with rules %q at %v, want %q at %v", m.GetRulesVersion(), m.GetAt().AsTime(), version, now)
		}
		for _, r := range m.GetRows() {
			if seen[r.GetUserId()] {
				t.Errorf("user %s exported twice", r.GetUserId())
			}
			seen[r.GetUserId()] = true
			want := featureRow(r.GetUserId(), true, 1, map[string]float64{"views_24h": 1})
			if r.GetUserId() == "garbled" {
				want = featureRow("garbled", true, 0, nil, "views_24h", "profile: corrupt encoding")
			}
			wantRows(t, []*nudgev1.FeatureRow{r}, []*nudgev1.FeatureRow{want})
		}
	}
	if len(seen) != users+1 || len(msgs) < 4 {
		t.Errorf("%d users exported in %d messages, want %d in at least 3 pages", len(seen), len(msgs), users+1)
	}
}

// Export's errors: as GetFeatures' for the request and the rules; a store
// that cannot scan: UNIMPLEMENTED.
func TestExportFeaturesErrors(t *testing.T) {
	_, store := redisClientStore(t)
	tests := []struct {
		name     string
		store    server.Store
		rules    *decision.Live
		features []string
		code     codes.Code
		msg      string
	}{
		{"an unknown feature", store, featureRules(t), []string{"ltv"}, codes.InvalidArgument, `"ltv"`},
		{"a malformed feature name", store, featureRules(t), []string{"a-b"}, codes.InvalidArgument, "features[0]"},
		{"rules without features", store, testRules(t), nil, codes.FailedPrecondition, "no features"},
		{"a store that cannot scan", okStore(), featureRules(t), nil, codes.Unimplemented, "cannot list its profiles"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startRules(t, tt.store, tt.rules, serverConfig())
			_, err := exportAll(t, nudgev1.NewProfileServiceClient(h.conn), callCtx(t), tt.features...)
			wantCode(t, err, tt.code, tt.msg)
		})
	}
}

// A draining server ends an export with UNAVAILABLE at its next page; a
// caller that goes away stops it.
func TestExportFeaturesStops(t *testing.T) {
	rdb, store := redisClientStore(t)
	h := startRules(t, store, featureRules(t), serverConfig())
	ctx := callCtx(t)
	_, err := rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i := range 3000 {
			pipe.Set(ctx, store.Layout().ProfileKey(fmt.Sprintf("u%d", i)), profile.Encode(&profile.Profile{Version: 1}), 0)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c := nudgev1.NewProfileServiceClient(h.conn)

	cctx, cancel := context.WithCancel(ctx)
	stream, err := c.ExportFeatures(cctx, &nudgev1.ExportFeaturesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the header, a page
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("first page: %v", err)
		}
	}
	cancel()
	for err == nil {
		_, err = stream.Recv()
	}
	wantCode(t, err, codes.Canceled, "")

	stream, err = c.ExportFeatures(ctx, &nudgev1.ExportFeaturesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the header, a page
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("first page: %v", err)
		}
	}
	h.srv.Drain()
	rows := 0
	for {
		var resp *nudgev1.ExportFeaturesResponse
		if resp, err = stream.Recv(); err != nil {
			break
		}
		rows += len(resp.GetRows())
	}
	wantCode(t, err, codes.Unavailable, "shutting down")
	if rows >= 3000-500 {
		t.Errorf("%d more rows after the drain, want the export stopped", rows)
	}
}

// redisClientStore is redisStore with its client, to write keys the
// store would not.
func redisClientStore(t testing.TB) (*redis.Client, *redisstore.Store) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return rdb, redisstore.New(rdb, redisstore.Options{Now: clock})
}

// The features role opens GetFeatures and ExportFeatures and nothing else
// of ProfileService (GetProfile shows the whole profile); admin opens
// them too; any other role is refused naming both.
func TestFeaturesRole(t *testing.T) {
	const featuresSecret = "secret-features-fea7"
	cfg := authConfig()
	cfg.Tokens = append(cfg.Tokens, server.Token{Name: "scorer", Secret: featuresSecret, Roles: []server.Role{server.RoleFeatures}})
	_, store := redisClientStore(t)
	h := startRules(t, store, featureRules(t), cfg)
	c := nudgev1.NewProfileServiceClient(h.conn)
	getFeatures := func(ctx context.Context) error {
		_, err := c.GetFeatures(ctx, &nudgev1.GetFeaturesRequest{UserIds: []string{"u1"}})
		return err
	}
	export := func(ctx context.Context) error {
		_, err := exportAll(t, c, ctx)
		return err
	}
	for _, tt := range []struct {
		name, secret string
		call         func(context.Context) error
		code         codes.Code
		msg          string
	}{
		{"features: GetFeatures", featuresSecret, getFeatures, codes.OK, ""},
		{"features: ExportFeatures", featuresSecret, export, codes.OK, ""},
		{"admin: GetFeatures", adminSecret, getFeatures, codes.OK, ""},
		{"admin: ExportFeatures", adminSecret, export, codes.OK, ""},
		{"features: GetProfile", featuresSecret, func(ctx context.Context) error {
			_, err := c.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u1"})
			return err
		}, codes.PermissionDenied, `token "scorer" lacks role "admin", required by /nudge.v1.ProfileService/GetProfile`},
		{"features: DeleteProfile", featuresSecret, func(ctx context.Context) error {
			_, err := c.DeleteProfile(ctx, &nudgev1.DeleteProfileRequest{UserId: "u1"})
			return err
		}, codes.PermissionDenied, `lacks role "admin"`},
		{"features: GetDecision", featuresSecret, func(ctx context.Context) error {
			_, err := h.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"})
			return err
		}, codes.PermissionDenied, `lacks role "decide"`},
		{"features: GetRules", featuresSecret, func(ctx context.Context) error {
			_, err := nudgev1.NewAdminServiceClient(h.conn).GetRules(ctx, &nudgev1.GetRulesRequest{})
			return err
		}, codes.PermissionDenied, `lacks role "admin"`},
		{"decide: GetFeatures", decideSecret, getFeatures, codes.PermissionDenied,
			`token "decider" lacks role "features" or "admin", required by /nudge.v1.ProfileService/GetFeatures`},
		{"no role: ExportFeatures", noRoleSecret, export, codes.PermissionDenied,
			`token "nobody" lacks role "features" or "admin", required by /nudge.v1.ProfileService/ExportFeatures`},
		{"no token: GetFeatures", "", getFeatures, codes.Unauthenticated, "missing bearer token"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := callCtx(t)
			if tt.secret != "" {
				ctx = withToken(ctx, tt.secret)
			}
			err := tt.call(ctx)
			if tt.code == codes.OK {
				if err != nil {
					t.Fatalf("got %v, want OK", err)
				}
				return
			}
			wantCode(t, err, tt.code, tt.msg)
		})
	}
}
