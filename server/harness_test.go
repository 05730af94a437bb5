package server_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// now is the processing time of every test: the server's and the store's
// clock, so windows, retention and versions are deterministic.
var now = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func clock() time.Time { return now }

// waitLimit bounds every wait of a test. Inside a synctest bubble time is
// virtual: the limit passes as soon as the bubble is deadlocked, so a hang
// fails fast instead of reaching the go test timeout.
const waitLimit = 10 * time.Second

// rulesYAML has one trigger (two views within 30 minutes; sms) and three
// offers, enough to tell a decision made on a real profile from one made on
// an empty profile or the fallback.
const rulesYAML = `version: 1
triggers:
  - id: viewed-twice
    on: [view]
    when: profile.count("view", duration("30m")) >= 2
    cooldown: 1h
    action:
      channel: sms
      template: view_nudge
      payload: {kind: views}
      payload_expr: {category: event.category}
offers:
  - id: phones-coupon
    priority: 10
    channels: [sms]
    when: profile.count("view", "phones", duration("24h")) >= 2
    template: phones_coupon
    payload: {discount: "10%"}
  - id: gold-banner
    priority: 5
    channels: [web]
    when: placement == "home_banner" && "tier" in context && context["tier"] == "gold"
    template: gold_banner
    payload_expr:
      tier: context["tier"]
  - id: web-welcome
    channels: [web]
    template: welcome
fallbacks:
  push: {offer_id: push-fallback, template: generic_push}
`

func testRules(t testing.TB) *decision.Live {
	t.Helper()
	r, err := decision.Parse("rules.yaml", []byte(rulesYAML))
	if err != nil {
		t.Fatalf("parse test rules: %v", err)
	}
	return decision.NewLive(r, "inline")
}

// harness is the real server (Server.NewGRPCServer) on an in-memory
// listener, with clients from the generated stubs.
type harness struct {
	srv      *server.Server
	grpc     *grpc.Server
	conn     *grpc.ClientConn
	ingest   nudgev1.IngestServiceClient
	decide   nudgev1.DecisionServiceClient
	profiles nudgev1.ProfileServiceClient
	health   healthpb.HealthClient
}

// start serves store over bufconn until the test ends. Unset Config fields
// get the test clock, a silent logger and otherwise the server defaults.
func start(t testing.TB, store server.Store, cfg server.Config) *harness {
	t.Helper()
	return startRules(t, store, testRules(t), cfg)
}

// startRules is start with other rules.
func startRules(t testing.TB, store server.Store, rules server.RuleSource, cfg server.Config) *harness {
	t.Helper()
	if cfg.Now == nil {
		cfg.Now = clock
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.DefaultBudget == 0 {
		// A budget a noisy 2-core CI box cannot miss: tests of the
		// budget set their own.
		cfg.DefaultBudget = time.Second
	}
	srv, err := server.New(store, rules, cfg)
	if err != nil {
		t.Fatalf("server.New: %v", err)
	}
	lis := bufconn.Listen(1 << 20)
	g := srv.NewGRPCServer()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = g.Serve(lis) // returns when g stops
	}()
	conn, err := grpc.NewClient("passthrough:///bufconn",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		g.Stop()
		<-served
	})
	return &harness{
		srv:      srv,
		grpc:     g,
		conn:     conn,
		ingest:   nudgev1.NewIngestServiceClient(conn),
		decide:   nudgev1.NewDecisionServiceClient(conn),
		profiles: nudgev1.NewProfileServiceClient(conn),
		health:   healthpb.NewHealthClient(conn),
	}
}

// redisStore is a real redisstore.Store on an in-process miniredis, on the
// test clock.
func redisStore(t testing.TB) *redisstore.Store {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	return redisstore.New(rdb, redisstore.Options{Now: clock})
}

// callCtx bounds one call or stream.
func callCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

// wantCode fails the test unless err is a gRPC status with code and a
// message containing msg.
func wantCode(t testing.TB, err error, code codes.Code, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %s containing %q", code, msg)
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("got non-status error %v, want %s containing %q", err, code, msg)
	}
	if st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("got %s %q, want %s containing %q", st.Code(), st.Message(), code, msg)
	}
}

// receive returns the next value from ch, failing the test after waitLimit.
func receive[T any](t testing.TB, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		var zero T
		return zero
	}
}

// ev is a valid event.
func ev(id, user, typ, category string, at time.Time) *nudgev1.Event {
	return &nudgev1.Event{EventId: id, UserId: user, Type: typ, Category: category, OccurredAt: timestamppb.New(at)}
}

// result is the part of an EventResult a test checks.
type result struct {
	id      string
	status  nudgev1.EventStatus
	version uint64
	reason  string // substring; "" means the reason must be empty
}

const (
	applied   = nudgev1.EventStatus_EVENT_STATUS_APPLIED
	duplicate = nudgev1.EventStatus_EVENT_STATUS_DUPLICATE
	rejected  = nudgev1.EventStatus_EVENT_STATUS_REJECTED
)

func checkResults(t testing.TB, got []*nudgev1.EventResult, want []result) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d results, want %d: %v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.GetEventId() != w.id || g.GetStatus() != w.status || g.GetProfileVersion() != w.version {
			t.Errorf("result %d = {%q %s v%d %q}, want {%q %s v%d}", i,
				g.GetEventId(), g.GetStatus(), g.GetProfileVersion(), g.GetReason(), w.id, w.status, w.version)
		}
		if (w.reason == "" && g.GetReason() != "") || !strings.Contains(g.GetReason(), w.reason) {
			t.Errorf("result %d (%q) reason = %q, want %q", i, w.id, g.GetReason(), w.reason)
		}
	}
}

// fakeStore runs the given functions; a nil one answers an error that
// becomes Internal, which no test expects.
type fakeStore struct {
	apply func(ctx context.Context, users []userEvents, step profile.Step) []userOutcome
	get   func(ctx context.Context, userID string) (*profile.Profile, error)
	del   func(ctx context.Context, userID string) (profile.DeleteResult, error)
}

func (f *fakeStore) Update(ctx context.Context, userID string, fn func(p *profile.Profile, now time.Time) bool) (uint64, error) {
	p, err := f.Get(ctx, userID)
	switch {
	case errors.Is(err, profile.ErrNotFound):
		p = &profile.Profile{}
	case err != nil:
		return 0, err
	}
	fn(p, now)
	return p.Version, nil
}

var _ server.Store = (*fakeStore)(nil)

var errUnexpectedCall = errors.New("fakeStore: unexpected call")

func (f *fakeStore) Apply(ctx context.Context, events []profile.Event, step profile.Step) profile.BatchOutcome {
	apply := f.apply
	if apply == nil {
		apply = func(_ context.Context, users []userEvents, _ profile.Step) []userOutcome {
			return failAll(users, errUnexpectedCall)
		}
	}
	return server.ApplyByUser(ctx, events, step, apply)
}

// userEvents and userOutcome are a fake store's view of a batch (see
// export_test.go).
type (
	userEvents  = server.UserEvents
	userOutcome = server.UserOutcome
)

func (f *fakeStore) Get(ctx context.Context, userID string) (*profile.Profile, error) {
	if f.get == nil {
		return nil, errUnexpectedCall
	}
	return f.get(ctx, userID)
}

// Peek finds nothing: the fake store has no near-cache.
func (f *fakeStore) Peek(string, uint64) (*profile.Profile, bool, error) { return nil, false, nil }

func (f *fakeStore) Load(ctx context.Context, userID string, _ uint64) (*profile.Profile, error) {
	return f.Get(ctx, userID)
}

// ReadMany is LoadMany: the fake keeps no near-cache.
func (f *fakeStore) ReadMany(ctx context.Context, userIDs []string) ([]*profile.Profile, []error) {
	return f.LoadMany(ctx, userIDs)
}

// LoadMany answers each user with get, as a pipeline would.
func (f *fakeStore) LoadMany(ctx context.Context, userIDs []string) ([]*profile.Profile, []error) {
	ps, errs := make([]*profile.Profile, len(userIDs)), make([]error, len(userIDs))
	for i, id := range userIDs {
		ps[i], errs[i] = f.Get(ctx, id)
	}
	return ps, errs
}

func (f *fakeStore) Delete(ctx context.Context, userID string) (profile.DeleteResult, error) {
	if f.del == nil {
		return profile.DeleteResult{}, errUnexpectedCall
	}
	return f.del(ctx, userID)
}

// stepAll runs step on empty profiles, as a store would for new users.
func stepAll(users []userEvents, step profile.Step) []userOutcome {
	out := make([]userOutcome, len(users))
	for i, u := range users {
		out[i] = userOutcome{Outcome: step(&profile.Profile{}, u.Events, now), Version: 1}
	}
	return out
}

func failAll(users []userEvents, err error) []userOutcome {
	out := make([]userOutcome, len(users))
	for i := range out {
		out[i].Err = err
	}
	return out
}

// blockingStore's Apply reports each call on entered (the first user's id)
// and returns, as a new-user store would, only once it takes a value from
// release, or with the context's error.
type blockingStore struct {
	fakeStore
	entered chan string
	release chan struct{}

	mu          sync.Mutex
	active, max int
}

func newBlockingStore() *blockingStore {
	b := &blockingStore{entered: make(chan string, 64), release: make(chan struct{})}
	b.apply = b.block
	return b
}

func (b *blockingStore) block(ctx context.Context, users []userEvents, step profile.Step) []userOutcome {
	b.mu.Lock()
	b.active++
	b.max = max(b.max, b.active)
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.active--
		b.mu.Unlock()
	}()
	b.entered <- users[0].UserID
	select {
	case <-b.release:
		return stepAll(users, step)
	case <-ctx.Done():
		return failAll(users, ctx.Err())
	}
}

// maxActive is the most Apply calls that were running at the same time.
func (b *blockingStore) maxActive() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.max
}
