package server_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// TestReadYourWrites: a decision asked with the version an ingest result
// returned is made on that version or a later one; an older stored profile
// is not decided on.
func TestReadYourWrites(t *testing.T) {
	h := start(t, redisStore(t), serverConfig())
	resp, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		ev("w1", "u1", "view", "phones", now.Add(-2*time.Minute)), ev("w2", "u1", "view", "phones", now.Add(-time.Minute)),
	}})
	if err != nil {
		t.Fatal(err)
	}
	v := resp.GetResults()[1].GetProfileVersion()
	tests := []struct {
		name      string
		min       uint64
		wantStale bool
	}{
		{"no minimum", 0, false},
		{"the version written", v, false},
		{"a version not stored yet", v + 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h.decide.GetDecision(callCtx(t), &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms", MinProfileVersion: tt.min})
			if err != nil {
				t.Fatal(err)
			}
			d := got.GetDecision()
			if d.GetStale() != tt.wantStale || got.GetProfileVersion() != v {
				t.Fatalf("stale=%v version=%d, want stale=%v version=%d", d.GetStale(), got.GetProfileVersion(), tt.wantStale, v)
			}
			if tt.wantStale && (d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE || len(d.GetReasons()) != 1 || d.GetReasons()[0].GetRuleId() != "read-your-writes") {
				t.Errorf("stale decision = %v, want NONE with a read-your-writes reason", d)
			}
			if !tt.wantStale && d.GetVerdict() != nudgev1.Verdict_VERDICT_SEND {
				t.Errorf("decision = %v, want SEND", d)
			}
		})
	}
	// An unknown user is at version 0: any minimum makes it stale.
	got, err := h.decide.GetDecision(callCtx(t), &nudgev1.GetDecisionRequest{UserId: "nobody", Channel: "sms", MinProfileVersion: 1})
	if err != nil || !got.GetDecision().GetStale() {
		t.Errorf("unknown user with min version 1 = %v, %v; want stale", got, err)
	}
}

func TestBatchGetDecisions(t *testing.T) {
	h := start(t, redisStore(t), serverConfig())
	if _, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: []*nudgev1.Event{
		ev("b1", "fan", "view", "phones", now.Add(-2*time.Minute)), ev("b2", "fan", "view", "phones", now.Add(-time.Minute)),
	}}); err != nil {
		t.Fatal(err)
	}
	resp, err := h.decide.BatchGetDecisions(callCtx(t), &nudgev1.BatchGetDecisionsRequest{Queries: []*nudgev1.DecisionQuery{
		{UserId: "fan", Channel: "sms"},
		{UserId: "stranger", Channel: "sms"},
		{UserId: "stranger", Channel: "web"},
		{UserId: "fan", Channel: "sms", MinProfileVersion: 9},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		verdict nudgev1.Verdict
		offer   string
		version uint64
		stale   bool
	}{
		{nudgev1.Verdict_VERDICT_SEND, "phones-coupon", 1, false},
		{nudgev1.Verdict_VERDICT_NONE, "", 0, false},
		{nudgev1.Verdict_VERDICT_SEND, "web-welcome", 0, false},
		{nudgev1.Verdict_VERDICT_NONE, "", 1, true},
	}
	if len(resp.GetResults()) != len(want) {
		t.Fatalf("%d results for %d queries", len(resp.GetResults()), len(want))
	}
	ids := map[string]bool{}
	for i, w := range want {
		r := resp.GetResults()[i]
		d := checkDecisionIdentity(t, r).GetDecision()
		if d.GetVerdict() != w.verdict || d.GetOffer().GetId() != w.offer || r.GetProfileVersion() != w.version || d.GetStale() != w.stale {
			t.Errorf("result %d = %v (version %d), want %s %q version %d stale %v", i, d, r.GetProfileVersion(), w.verdict, w.offer, w.version, w.stale)
		}
		ids[r.GetDecision().GetDecisionId()] = true
	}
	if len(ids) != len(want) {
		t.Errorf("decision ids are not unique: %v", ids)
	}

	_, err = h.decide.BatchGetDecisions(callCtx(t), &nudgev1.BatchGetDecisionsRequest{})
	wantCode(t, err, codes.InvalidArgument, "queries")
	_, err = h.decide.BatchGetDecisions(callCtx(t), &nudgev1.BatchGetDecisionsRequest{Queries: []*nudgev1.DecisionQuery{{UserId: "x"}}})
	wantCode(t, err, codes.InvalidArgument, "channel")
}

// TestBatchGetDecisionsDegraded: a store that misses the batch's budget
// degrades every answer; none is an error.
func TestBatchGetDecisionsDegraded(t *testing.T) {
	store := &fakeStore{get: func(ctx context.Context, _ string) (*profile.Profile, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}}
	h := start(t, store, server.Config{DefaultBudget: 5 * time.Millisecond})
	resp, err := h.decide.BatchGetDecisions(callCtx(t), &nudgev1.BatchGetDecisionsRequest{
		Budget:  durationpb.New(20 * time.Millisecond),
		Queries: []*nudgev1.DecisionQuery{{UserId: "a", Channel: "sms"}, {UserId: "b", Channel: "web"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.GetResults() {
		if d := r.GetDecision(); !d.GetDegraded() || d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE || d.GetDecisionId() == "" {
			t.Errorf("result %d = %v, want degraded NONE with an id", i, d)
		}
	}
}

func TestGetRules(t *testing.T) {
	h := start(t, &fakeStore{}, server.Config{})
	resp, err := nudgev1.NewAdminServiceClient(h.conn).GetRules(callCtx(t), &nudgev1.GetRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVersion() != testRulesVersion(t) || resp.GetSource() != "inline" || resp.GetTriggers() != 1 || resp.GetOffers() != 3 || resp.GetLoadedAt().AsTime().IsZero() {
		t.Errorf("GetRules = %v", resp)
	}
	if resp.GetRefusal() != nil {
		t.Errorf("GetRules of fixed rules has a refusal: %v", resp.GetRefusal())
	}
	if resp.GetContent() != "" {
		t.Errorf("GetRules without include_content sent the file")
	}
	resp, err = nudgev1.NewAdminServiceClient(h.conn).GetRules(callCtx(t), &nudgev1.GetRulesRequest{IncludeContent: true})
	if err != nil || resp.GetContent() != rulesYAML {
		t.Errorf("GetRules with include_content: %v; content %q, want the rules file", err, resp.GetContent())
	}
}

// TestGetRulesRefusal: GetRules shows the rules file on disk that
// decision.Live refused (when, why, which content) beside the rules in
// force. (Live's own tests cover when a refusal starts and ends.)
func TestGetRulesRefusal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(rulesYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	live, err := decision.LoadLive(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(rulesYAML+"  - id: broken\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := live.Reload(); err == nil {
		t.Fatal("a broken file was not refused")
	}
	want, _ := live.Refused()
	srv, err := server.New(&fakeStore{}, live, server.Config{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := srv.GetRules(callCtx(t), &nudgev1.GetRulesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := resp.GetRefusal()
	if !got.GetAt().AsTime().Equal(want.At) || got.GetError() != want.Err.Error() || !strings.Contains(got.GetError(), path+":") ||
		got.GetVersion() != want.Version || resp.GetVersion() != testRulesVersion(t) {
		t.Errorf("GetRules = %v, want the rules in force and the refusal %+v", resp, want)
	}
}
