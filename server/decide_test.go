package server_test

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

func publish(t *testing.T, h *harness, events ...*nudgev1.Event) {
	t.Helper()
	resp, err := h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: events})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	for _, r := range resp.GetResults() {
		if r.GetStatus() != applied {
			t.Fatalf("setup event %q: %s %s", r.GetEventId(), r.GetStatus(), r.GetReason())
		}
	}
}

func checkProto(t *testing.T, got, want proto.Message) {
	t.Helper()
	if r, ok := got.(*nudgev1.GetDecisionResponse); ok {
		got = checkDecisionIdentity(t, r)
	}
	if !proto.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", prototext.Format(got), prototext.Format(want))
	}
}

var decisionIDRE = regexp.MustCompile(`^d_[0-9a-f]{32}$`)

// checkDecisionIdentity checks the decision id and rules version every
// answer carries, and returns a copy without them for comparison.
func checkDecisionIdentity(t *testing.T, r *nudgev1.GetDecisionResponse) *nudgev1.GetDecisionResponse {
	t.Helper()
	r = proto.Clone(r).(*nudgev1.GetDecisionResponse)
	d := r.GetDecision()
	if !decisionIDRE.MatchString(d.GetDecisionId()) {
		t.Errorf("decision_id %q is not d_ + 32 hex digits", d.GetDecisionId())
	}
	if want := testRulesVersion(t); d.GetRulesVersion() != want {
		t.Errorf("rules_version %q, want %q", d.GetRulesVersion(), want)
	}
	d.DecisionId, d.RulesVersion = "", ""
	return r
}

func testRulesVersion(t testing.TB) string { return testRules(t).Rules().Version() }

func TestGetDecision(t *testing.T) {
	h := start(t, redisStore(t), serverConfig())
	unsubscribe := ev("q3", "u2", "unsubscribe", "", now.Add(-time.Minute))
	unsubscribe.Channel = "sms"
	publish(t, h,
		ev("p1", "u1", "view", "phones", now.Add(-10*time.Minute)),
		ev("p2", "u1", "view", "phones", now.Add(-5*time.Minute)),
		ev("q1", "u2", "view", "phones", now.Add(-10*time.Minute)),
		ev("q2", "u2", "view", "phones", now.Add(-5*time.Minute)),
		unsubscribe,
	)
	eligible := func(id string) []*nudgev1.Reason {
		return []*nudgev1.Reason{{RuleId: id, Message: "offer " + id + " is eligible"}}
	}
	none := &nudgev1.Decision{Verdict: nudgev1.Verdict_VERDICT_NONE, Reasons: []*nudgev1.Reason{{Message: "no eligible offer"}}}
	tests := []struct {
		name string
		req  *nudgev1.GetDecisionRequest
		want *nudgev1.GetDecisionResponse
	}{
		{
			name: "offer on the profile's counts",
			req:  &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"},
			want: &nudgev1.GetDecisionResponse{ProfileVersion: 1, Decision: &nudgev1.Decision{
				Verdict: nudgev1.Verdict_VERDICT_SEND,
				Offer:   &nudgev1.Offer{Id: "phones-coupon", Channel: "sms", Template: "phones_coupon", Payload: map[string]string{"discount": "10%"}},
				Reasons: eligible("phones-coupon"),
			}},
		},
		{
			name: "no offer for the channel",
			req:  &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "email"},
			want: &nudgev1.GetDecisionResponse{ProfileVersion: 1, Decision: none},
		},
		{
			name: "placement and context reach the rules",
			req: &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "web", Placement: "home_banner",
				Context: map[string]string{"tier": "gold"}},
			want: &nudgev1.GetDecisionResponse{ProfileVersion: 1, Decision: &nudgev1.Decision{
				Verdict: nudgev1.Verdict_VERDICT_SEND,
				Offer:   &nudgev1.Offer{Id: "gold-banner", Channel: "web", Template: "gold_banner", Payload: map[string]string{"tier": "gold"}},
				Reasons: eligible("gold-banner"),
			}},
		},
		{
			name: "unknown user decided on an empty profile",
			req:  &nudgev1.GetDecisionRequest{UserId: "nobody", Channel: "web"},
			want: &nudgev1.GetDecisionResponse{Decision: &nudgev1.Decision{
				Verdict: nudgev1.Verdict_VERDICT_SEND,
				Offer:   &nudgev1.Offer{Id: "web-welcome", Channel: "web", Template: "welcome", Payload: map[string]string{}},
				Reasons: eligible("web-welcome"),
			}},
		},
		{
			name: "unknown user, nothing eligible",
			req:  &nudgev1.GetDecisionRequest{UserId: "nobody", Channel: "sms"},
			want: &nudgev1.GetDecisionResponse{Decision: none},
		},
		{
			name: "unsubscribed",
			req:  &nudgev1.GetDecisionRequest{UserId: "u2", Channel: "sms"},
			want: &nudgev1.GetDecisionResponse{ProfileVersion: 1, Decision: &nudgev1.Decision{
				Verdict: nudgev1.Verdict_VERDICT_NONE,
				Reasons: []*nudgev1.Reason{{RuleId: "consent", Message: "user unsubscribed from sms"}},
			}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := h.decide.GetDecision(callCtx(t), tt.req)
			if err != nil {
				t.Fatalf("GetDecision: %v", err)
			}
			checkProto(t, got, tt.want)
		})
	}
}

// TestGetDecisionDegraded: a slow or failing store gives an answer, never
// an error.
func TestGetDecisionDegraded(t *testing.T) {
	tests := []struct {
		name   string
		get    func(ctx context.Context, userID string) (*profile.Profile, error)
		budget time.Duration
		reason string
	}{
		{
			name: "read past the budget",
			get: func(ctx context.Context, _ string) (*profile.Profile, error) {
				<-ctx.Done()
				return nil, fmt.Errorf("get: %w", ctx.Err())
			},
			budget: 20 * time.Millisecond,
			reason: "profile read exceeded its budget of 18.5ms",
		},
		{
			name: "read past the default budget",
			get: func(ctx context.Context, _ string) (*profile.Profile, error) {
				<-ctx.Done()
				return nil, ctx.Err()
			},
			reason: "profile read exceeded its budget of 8.5ms",
		},
		// Why a read failed is decision.Rules.Answer's (TestAnswer); here,
		// that the server gives it the read's error and budget.
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, &fakeStore{get: tt.get}, server.Config{DefaultBudget: 10 * time.Millisecond})
			req := &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "web"}
			if tt.budget > 0 {
				req.Budget = durationpb.New(tt.budget)
			}
			got, err := h.decide.GetDecision(callCtx(t), req)
			if err != nil {
				t.Fatalf("GetDecision: %v", err)
			}
			d := got.GetDecision()
			if d.GetVerdict() != nudgev1.Verdict_VERDICT_NONE || !d.GetDegraded() || d.GetOffer() != nil || got.GetProfileVersion() != 0 {
				t.Fatalf("got %v, want a degraded NONE", got)
			}
			// The cause first, then the fallback's own reason (web has no
			// fallback offer in the test rules).
			if r := d.GetReasons(); len(r) != 2 || r[0].GetRuleId() != "degraded" || !strings.Contains(r[0].GetMessage(), tt.reason) || r[1].GetRuleId() != "fallback" {
				t.Fatalf("reasons = %v, want a degraded reason containing %q, then the fallback's", r, tt.reason)
			}
		})
	}
}

// TestGetDecisionBreaker: after 3 reads in a row fail, decisions degrade at
// once without reading, until a probe finds the store back. Reads that fail
// only because the caller gave them less than the default budget do not
// count.
func TestGetDecisionBreaker(t *testing.T) {
	var mu sync.Mutex
	calls, healthy := 0, false
	store := &fakeStore{get: func(ctx context.Context, _ string) (*profile.Profile, error) {
		mu.Lock()
		calls++
		ok := healthy
		mu.Unlock()
		if ok {
			return nil, profile.ErrNotFound
		}
		<-ctx.Done() // a paused store
		return nil, ctx.Err()
	}}
	h := start(t, store, server.Config{DefaultBudget: 10 * time.Millisecond, BreakerCooldown: 500 * time.Millisecond})
	decide := func(budget time.Duration) *nudgev1.Decision {
		t.Helper()
		req := &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "web"}
		if budget > 0 {
			req.Budget = durationpb.New(budget)
		}
		got, err := h.decide.GetDecision(callCtx(t), req)
		if err != nil {
			t.Fatalf("GetDecision: %v", err)
		}
		return got.GetDecision()
	}
	storeCalls := func() int {
		mu.Lock()
		defer mu.Unlock()
		return calls
	}
	// Small budgets time out without telling anything about the store: the
	// breaker stays closed, so the next 3 reads with the default budget go
	// to the store, and fail.
	for range 5 {
		if d := decide(2 * time.Millisecond); !d.GetDegraded() {
			t.Fatalf("got %v, want degraded", d)
		}
	}
	for i := range 3 {
		d := decide(0)
		if !d.GetDegraded() || !strings.Contains(d.GetReasons()[0].GetMessage(), "exceeded its budget") {
			t.Fatalf("read %d: got %v, want degraded past its budget", i, d)
		}
	}
	// The answer leaves when the budget is spent; the breaker hears of the
	// abandoned read when the read returns, just after: wait for the
	// third failure to be counted.
	paused := func(d *nudgev1.Decision) bool {
		return d.GetDegraded() && strings.Contains(d.GetReasons()[0].GetMessage(), "the last 3 reads failed, so reads are paused")
	}
	for wait := time.Now().Add(5 * time.Second); !paused(decide(0)); {
		if time.Now().After(wait) {
			t.Fatal("reads not paused 5s after 3 reads failed")
		}
	}
	before := storeCalls()
	if d := decide(0); !paused(d) {
		t.Fatalf("got %v, want degraded at once while reads are paused", d)
	}
	if after := storeCalls(); after != before {
		t.Fatalf("%d store reads during a decision while reads are paused, want none", after-before)
	}
	// The store comes back: a probe (after the cooldown) finds it, and
	// decisions are fresh again.
	mu.Lock()
	healthy = true
	mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for decide(0).GetDegraded() {
		if time.Now().After(deadline) {
			t.Fatal("still degraded 10s after the store came back")
		}
	}
	// Closed again (on a loaded machine a read may itself outlast 10 ms
	// and degrade, so what is checked is that none is refused for the
	// breaker).
	if d := decide(0); paused(d) {
		t.Fatalf("got %v after a successful probe, want the breaker closed", d)
	}
}

// TestGetDecisionBreakerIgnoresOneUser: a user whose profile is corrupt,
// or whose read comes back after its deadline (a huge profile's decoding),
// gets degraded decisions, but the store did not fail: the breaker stays
// closed and another user's decisions are fresh.
func TestGetDecisionBreakerIgnoresOneUser(t *testing.T) {
	store := &fakeStore{get: func(ctx context.Context, user string) (*profile.Profile, error) {
		switch user {
		case "late":
			<-ctx.Done() // the bytes arrived; decoding them took the rest
			return &profile.Profile{Version: 1}, nil
		case "corrupt":
			return nil, fmt.Errorf("user %q: %w: the profile key holds another Redis type", user, profile.ErrCorrupt)
		}
		return nil, profile.ErrNotFound
	}}
	h := start(t, store, server.Config{DefaultBudget: 10 * time.Millisecond, BreakerFailures: 3})
	decide := func(user string) *nudgev1.Decision {
		t.Helper()
		got, err := h.decide.GetDecision(callCtx(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "web"})
		if err != nil {
			t.Fatalf("GetDecision(%s): %v", user, err)
		}
		return got.GetDecision()
	}
	// Five late reads in a row span 40 ms, five times the streak that
	// would open it were they failures.
	for _, user := range []string{"late", "late", "late", "late", "late", "corrupt", "corrupt", "corrupt"} {
		if d := decide(user); !d.GetDegraded() {
			t.Fatalf("%s: got %v, want degraded", user, d)
		}
	}
	// The breaker, not the budget: on a loaded machine (CI runs this under
	// -race beside the integration tests) a healthy read may itself take
	// longer than 10 ms and degrade, which says nothing of the breaker.
	d := decide("good")
	for _, r := range d.GetReasons() {
		if strings.Contains(r.GetMessage(), "reads are paused") {
			t.Fatalf("a healthy user got %v: one user's profile opened the breaker for everyone", d)
		}
	}
}

// TestGetDecisionBudget checks the deadline the store's read gets: the
// request's budget, the default without one, never more than MaxBudget.
func TestGetDecisionBudget(t *testing.T) {
	tests := []struct {
		name   string
		cfg    server.Config
		budget time.Duration // 0: none in the request
		limit  time.Duration
	}{
		{"capped to MaxBudget", server.Config{MaxBudget: 50 * time.Millisecond}, 30 * time.Second, 50 * time.Millisecond},
		{"request budget", server.Config{MaxBudget: time.Second}, 20 * time.Millisecond, 20 * time.Millisecond},
		{"default budget", server.Config{DefaultBudget: 10 * time.Millisecond}, 0, 10 * time.Millisecond},
		{"default capped to MaxBudget", server.Config{DefaultBudget: 2 * time.Second, MaxBudget: 100 * time.Millisecond}, 0, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			type read struct {
				remaining time.Duration
				ok        bool
			}
			reads := make(chan read, 1)
			h := start(t, &fakeStore{get: func(ctx context.Context, _ string) (*profile.Profile, error) {
				deadline, ok := ctx.Deadline()
				reads <- read{time.Until(deadline), ok}
				return nil, profile.ErrNotFound
			}}, tt.cfg)
			req := &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"}
			if tt.budget > 0 {
				req.Budget = durationpb.New(tt.budget)
			}
			if _, err := h.decide.GetDecision(callCtx(t), req); err != nil {
				t.Fatalf("GetDecision: %v", err)
			}
			r := receive(t, reads, "the store read")
			if !r.ok {
				t.Fatal("the store read has no deadline")
			}
			if r.remaining > tt.limit {
				t.Fatalf("the store read had %v left, want at most %v", r.remaining, tt.limit)
			}
		})
	}
}

func TestGetDecisionInvalid(t *testing.T) {
	h := start(t, &fakeStore{}, server.Config{})
	tooMany := make(map[string]string)
	for i := range 33 {
		tooMany[fmt.Sprint("k", i)] = "v"
	}
	tests := []struct {
		name  string
		req   *nudgev1.GetDecisionRequest
		field string
	}{
		{"missing channel", &nudgev1.GetDecisionRequest{UserId: "u1"}, "channel: value is required"},
		{"bad channel", &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "SMS"}, "channel: does not match regex pattern"},
		{"missing user", &nudgev1.GetDecisionRequest{Channel: "sms"}, "user_id: value is required"},
		{"user id with a space", &nudgev1.GetDecisionRequest{UserId: "u 1", Channel: "sms"}, "user_id: does not match regex pattern"},
		{"negative budget", &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms", Budget: durationpb.New(-time.Second)}, "budget"},
		{"budget over 60s", &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms", Budget: durationpb.New(61 * time.Second)}, "budget"},
		{"too much context", &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms", Context: tooMany}, "context"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := h.decide.GetDecision(callCtx(t), tt.req)
			wantCode(t, err, codes.InvalidArgument, tt.field)
		})
	}
}
