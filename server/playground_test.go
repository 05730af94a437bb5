package server_test

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// countingAudit samples every decision and counts what it is given.
type countingAudit struct{ records atomic.Int64 }

func (*countingAudit) Sampled(string) bool { return true }

func (a *countingAudit) Record(audit.Entry) bool {
	a.records.Add(1)
	return true
}

var _ server.AuditLog = (*countingAudit)(nil)

// playgroundStore is a real redisstore.Store on a miniredis the test can
// dump, to see that nothing was written.
func playgroundStore(t *testing.T) (*miniredis.Miniredis, *redisstore.Store) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return mr, redisstore.New(rdb, redisstore.Options{Now: clock})
}

// playRules are the playground's rules in the tests: the test rules with
// a second sms offer, so that a decision tells them from the rules in
// force.
var playRules = strings.Replace(rulesYAML, "offers:\n", `offers:
  - id: sms-everyone
    priority: 20
    channels: [sms]
    template: hello
`, 1)

func decisionsOf(resp *nudgev1.TestRulesResponse) map[string]*nudgev1.Decision {
	out := map[string]*nudgev1.Decision{}
	for _, cd := range resp.GetDecisions() {
		out[cd.GetChannel()] = cd.GetDecision()
	}
	return out
}

func TestPlaygroundRules(t *testing.T) {
	h := start(t, okStore(), serverConfig())
	admin := nudgev1.NewAdminServiceClient(h.conn)
	ctx := callCtx(t)

	t.Run("rules that do not load: OK with their problems", func(t *testing.T) {
		bad := strings.Replace(playRules, `when: profile.count("view", duration("30m")) >= 2`, `when: profile.count("view") >=`, 1)
		bad = strings.Replace(bad, "channels: [web]\n    template: welcome", "channels: [Web]\n    template: welcome", 1)
		resp, err := admin.TestRules(ctx, &nudgev1.TestRulesRequest{Rules: bad, Event: ev("e1", "u1", "view", "", now)})
		if err != nil {
			t.Fatalf("TestRules: %v", err)
		}
		ps := resp.GetProblems()
		if len(ps) != 2 {
			t.Fatalf("problems %v, want 2", ps)
		}
		if p := ps[0]; p.GetLine() != 5 || p.GetKind() != "trigger" || p.GetRuleId() != "viewed-twice" || p.GetField() != "when" ||
			!strings.HasPrefix(p.GetText(), `playground.yaml:5: trigger "viewed-twice": when: `) || p.GetMessage() == "" {
			t.Errorf("first problem %v, want the when of line 5", p)
		}
		if p := ps[1]; p.GetKind() != "offer" || p.GetRuleId() != "web-welcome" || p.GetLine() == 0 {
			t.Errorf("second problem %v, want web-welcome's channel", p)
		}
		if resp.GetRulesVersion() != "" || len(resp.GetDecisions()) != 0 || resp.GetEvent() != nil {
			t.Errorf("a response with problems says more: %v", resp)
		}
	})

	t.Run("an event fires a trigger, and each channel is decided with its trace", func(t *testing.T) {
		second := ev("e2", "u1", "view", "phones", now)
		resp, err := admin.TestRules(ctx, &nudgev1.TestRulesRequest{
			Rules:    playRules,
			History:  []*nudgev1.Event{ev("e1", "u1", "view", "phones", now.Add(-10*time.Minute))},
			Event:    second,
			Channels: []string{"sms", "web", "push"},
		})
		if err != nil {
			t.Fatalf("TestRules: %v", err)
		}
		if len(resp.GetProblems()) != 0 {
			t.Fatalf("problems: %v", resp.GetProblems())
		}
		want, err := decision.Parse("x", []byte(playRules))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetRulesVersion() != want.Version() || resp.GetRulesVersion() == testRulesVersion(t) {
			t.Errorf("rules version %q, want the playground's %q", resp.GetRulesVersion(), want.Version())
		}
		if resp.GetUserId() != "u1" || !resp.GetNow().AsTime().Equal(now) || resp.GetProfileFound() {
			t.Errorf("user %q, now %v, found %v", resp.GetUserId(), resp.GetNow().AsTime(), resp.GetProfileFound())
		}
		if h := resp.GetHistory(); len(h) != 1 || h[0].GetEventId() != "e1" || h[0].GetStatus() != applied {
			t.Errorf("history %v", h)
		}
		if e := resp.GetEvent(); e.GetEventId() != "e2" || e.GetStatus() != applied {
			t.Errorf("event %v", e)
		}
		acts := resp.GetActions()
		if len(acts) != 1 || acts[0].GetTriggerId() != "viewed-twice" || acts[0].GetUserId() != "u1" || acts[0].GetChannel() != "sms" ||
			acts[0].GetPayload()["category"] != "phones" || acts[0].GetEventId() != "e2" {
			t.Errorf("actions %v", acts)
		}
		if n := resp.GetNotes(); len(n) != 1 || n[0].GetKind() != "fired" || n[0].GetTriggerId() != "viewed-twice" {
			t.Errorf("notes %v", n)
		}
		var chs []string
		for _, cd := range resp.GetDecisions() {
			chs = append(chs, cd.GetChannel())
			d := cd.GetDecision()
			if len(d.GetTrace()) == 0 || d.GetTrace()[0].GetRuleId() != "consent" || d.GetDecisionId() != "" {
				t.Errorf("decision on %s: %v, want a trace and no id", cd.GetChannel(), d)
			}
		}
		if strings.Join(chs, ",") != "sms,web,push" {
			t.Errorf("channels %v, want the request's order", chs)
		}
		ds := decisionsOf(resp)
		if d := ds["sms"]; d.GetVerdict() != nudgev1.Verdict_VERDICT_SEND || d.GetOffer().GetId() != "sms-everyone" {
			t.Errorf("sms: %v, want the playground's offer", d)
		}
		if d := ds["web"]; d.GetOffer().GetId() != "web-welcome" {
			t.Errorf("web: %v", d)
		}
		if p := resp.GetProfile(); p.GetUserId() != "u1" || p.GetTotals()["view"] != 2 {
			t.Errorf("profile %v, want two views", p)
		}
	})

	t.Run("empty rules: the rules in force", func(t *testing.T) {
		resp, err := admin.TestRules(ctx, &nudgev1.TestRulesRequest{Event: ev("e1", "u1", "view", "", now)})
		if err != nil {
			t.Fatalf("TestRules: %v", err)
		}
		if resp.GetRulesVersion() != testRulesVersion(t) {
			t.Errorf("rules version %q, want the rules in force %q", resp.GetRulesVersion(), testRulesVersion(t))
		}
		var chs []string
		for _, cd := range resp.GetDecisions() {
			chs = append(chs, cd.GetChannel())
		}
		// Every channel the rules name: the sms trigger and offer, web
		// offers, the push fallback.
		if strings.Join(chs, ",") != "push,sms,web" {
			t.Errorf("channels %v", chs)
		}
		if d := decisionsOf(resp)["sms"]; d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE {
			t.Errorf("sms: %v, want none (one view, no sms-everyone offer)", d)
		}
	})

	t.Run("now, placement and context", func(t *testing.T) {
		later := now.Add(48 * time.Hour)
		resp, err := admin.TestRules(ctx, &nudgev1.TestRulesRequest{
			UserId:    "u9",
			Channels:  []string{"web"},
			Placement: "home_banner",
			Context:   map[string]string{"tier": "gold"},
			Now:       timestamppb.New(later),
		})
		if err != nil {
			t.Fatalf("TestRules: %v", err)
		}
		if !resp.GetNow().AsTime().Equal(later) || resp.GetUserId() != "u9" || resp.GetProfileFound() {
			t.Errorf("now %v, user %q, found %v", resp.GetNow().AsTime(), resp.GetUserId(), resp.GetProfileFound())
		}
		if d := decisionsOf(resp)["web"]; d.GetOffer().GetId() != "gold-banner" || d.GetOffer().GetPayload()["tier"] != "gold" {
			t.Errorf("web: %v, want the gold banner", d)
		}
	})

	t.Run("a journey's firings", func(t *testing.T) {
		journey := `version: 1
triggers:
  - id: cart
    on: [add_to_cart]
    wait: 1h
    action: {channel: push, template: cart}
`
		resp, err := admin.TestRules(ctx, &nudgev1.TestRulesRequest{Rules: journey, Event: ev("c1", "u1", "add_to_cart", "", now)})
		if err != nil {
			t.Fatalf("TestRules: %v", err)
		}
		due := now.Add(time.Hour)
		if ts := resp.GetTimers(); len(ts) != 1 || ts[0].GetTriggerId() != "cart" || !ts[0].GetDue().AsTime().Equal(due) {
			t.Errorf("timers %v", ts)
		}
		l := resp.GetLater()
		if len(l) != 1 || !l[0].GetAt().AsTime().Equal(due) || len(l[0].GetActions()) != 1 ||
			!l[0].GetActions()[0].GetDueAt().AsTime().Equal(due) || resp.GetLaterTruncated() {
			t.Errorf("later %v", l)
		}
	})
}

// TestPlaygroundWritesNothing: with user_id the play starts from the
// stored profile, and writes nothing: no profile, outbox entry, audit
// record or anything else in Redis.
func TestPlaygroundWritesNothing(t *testing.T) {
	mr, store := playgroundStore(t)
	var log countingAudit
	cfg := serverConfig()
	cfg.Audit = &log
	h := start(t, store, cfg)
	admin := nudgev1.NewAdminServiceClient(h.conn)
	ctx := callCtx(t)
	publish(t, h, ev("p1", "u1", "view", "phones", now.Add(-20*time.Minute))) // one view: nothing fires
	stored, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u1"})
	if err != nil {
		t.Fatalf("GetProfile: %v", err)
	}
	before := mr.Dump()

	tests := []struct {
		name string
		req  *nudgev1.TestRulesRequest
		// The stored view and the event make the trigger fire.
		wantActions int
		found       bool
	}{
		{"an event on the stored profile", &nudgev1.TestRulesRequest{UserId: "u1", Event: ev("p2", "u1", "view", "phones", now)}, 1, true},
		{"the playground's rules", &nudgev1.TestRulesRequest{UserId: "u1", Rules: playRules, Event: ev("p2", "u1", "view", "phones", now)}, 1, true},
		{"a dry-run decision", &nudgev1.TestRulesRequest{UserId: "u1", Channels: []string{"sms"}}, 0, true},
		{"a user never seen", &nudgev1.TestRulesRequest{UserId: "u404", Event: ev("p2", "u404", "view", "phones", now)}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := admin.TestRules(ctx, tt.req)
			if err != nil {
				t.Fatalf("TestRules: %v", err)
			}
			if resp.GetProfileFound() != tt.found || (tt.found && resp.GetProfileVersion() != stored.GetProfile().GetVersion()) {
				t.Errorf("found %v, version %d; want %v, %d", resp.GetProfileFound(), resp.GetProfileVersion(), tt.found, stored.GetProfile().GetVersion())
			}
			if len(resp.GetActions()) != tt.wantActions {
				t.Errorf("actions %v, want %d", resp.GetActions(), tt.wantActions)
			}
			if len(resp.GetDecisions()) == 0 {
				t.Error("no decision")
			}
		})
	}
	if after := mr.Dump(); after != before {
		t.Errorf("TestRules wrote to Redis:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if n := log.records.Load(); n != 0 {
		t.Errorf("%d decisions audited", n)
	}
	got, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u1"})
	if err != nil || got.GetProfile().GetVersion() != stored.GetProfile().GetVersion() {
		t.Errorf("profile version after: %d (%v), want %d", got.GetProfile().GetVersion(), err, stored.GetProfile().GetVersion())
	}
}

func TestPlaygroundInvalid(t *testing.T) {
	h := start(t, okStore(), serverConfig())
	admin := nudgev1.NewAdminServiceClient(h.conn)
	badTime := ev("h2", "u1", "view", "", now)
	badTime.OccurredAt = nil
	tests := []struct {
		name string
		req  *nudgev1.TestRulesRequest
		msg  string
	}{
		{"a history event without a time", &nudgev1.TestRulesRequest{History: []*nudgev1.Event{ev("h1", "u1", "view", "", now), badTime}},
			"history[1].occurred_at"},
		{"an event without a user", &nudgev1.TestRulesRequest{Event: ev("e1", "", "view", "", now)}, "event.user_id"},
		{"a history event of another user", &nudgev1.TestRulesRequest{
			History: []*nudgev1.Event{ev("h1", "u1", "view", "", now), ev("h2", "u2", "view", "", now)},
			Event:   ev("e1", "u1", "view", "", now),
		}, `history[1].user_id: the event is for user `}, // the ids redacted, as in every status

		{"an event of another user than user_id", &nudgev1.TestRulesRequest{UserId: "u1", Event: ev("e1", "u2", "view", "", now)},
			`event.user_id: the event is for user `},
		{"a user id with a space", &nudgev1.TestRulesRequest{UserId: "u 1"}, "user_id"},
		{"a channel in capitals", &nudgev1.TestRulesRequest{Channels: []string{"SMS"}}, "channels[0]"},
		{"a channel twice", &nudgev1.TestRulesRequest{Channels: []string{"sms", "sms"}}, "channels"},
		{"rules over 1 MiB", &nudgev1.TestRulesRequest{Rules: strings.Repeat("#", 1<<20+1)}, "rules"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := admin.TestRules(callCtx(t), tt.req)
			wantCode(t, err, codes.InvalidArgument, tt.msg)
		})
	}
}

// TestPlaygroundLimits: the playground's rules are held to the limits of
// the rules in force.
func TestPlaygroundLimits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(path, []byte(rulesYAML), 0o600); err != nil {
		t.Fatal(err)
	}
	live, err := decision.LoadLive(path, decision.WithLimits(decision.Limits{MaxOffers: 3}))
	if err != nil {
		t.Fatal(err)
	}
	h := startRules(t, okStore(), live, serverConfig())
	resp, err := nudgev1.NewAdminServiceClient(h.conn).TestRules(callCtx(t), &nudgev1.TestRulesRequest{Rules: playRules})
	if err != nil {
		t.Fatalf("TestRules: %v", err)
	}
	if ps := resp.GetProblems(); len(ps) != 1 || !strings.Contains(ps[0].GetText(), "max_offers") {
		t.Errorf("problems %v, want max_offers (4 offers, the limit 3)", ps)
	}
}
