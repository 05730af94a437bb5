package server_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// logBackends runs test on the embedded store of nudged (miniredis) and
// on a real redis-server.
func logBackends(t *testing.T, test func(t *testing.T, rdb redis.UniversalClient)) {
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		test(t, rdb)
	})
	t.Run("redis-server", func(t *testing.T) {
		test(t, redistest.Start(t).Client(t))
	})
}

// logEnv is the server on a real store whose every decision goes to the
// decision log, with the log's writer running.
type logEnv struct {
	h     *harness
	log   *audit.Log
	admin nudgev1.AdminServiceClient
}

func newLogEnv(t *testing.T, rdb redis.UniversalClient, tokens []server.Token) *logEnv {
	t.Helper()
	l := audit.New(rdb, audit.Options{Sample: 1, Batch: 2})
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
	store := redisstore.New(rdb, redisstore.Options{Now: clock})
	h := start(t, store, server.Config{Audit: l, DecisionLog: l, Tokens: tokens})
	return &logEnv{h: h, log: l, admin: nudgev1.NewAdminServiceClient(h.conn)}
}

// decide asks for n decisions on the web channel (users <prefix>0...)
// and waits until the log has written them, with written before.
func (e *logEnv) decide(ctx context.Context, t *testing.T, prefix string, n int, written uint64) []*nudgev1.Decision {
	t.Helper()
	var out []*nudgev1.Decision
	for i := range n {
		resp, err := e.h.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: fmt.Sprintf("%s%d", prefix, i), Channel: "web"})
		if err != nil {
			t.Fatalf("GetDecision: %v", err)
		}
		out = append(out, resp.GetDecision())
	}
	for deadline := time.Now().Add(waitLimit); e.log.Stats().Written < written+uint64(n); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the log wrote %+v, want %d entries", e.log.Stats(), written+uint64(n))
		}
	}
	return out
}

// recvEntries receives n entries from a tail, failing on an error.
func recvEntries(t *testing.T, tail nudgev1.AdminService_TailDecisionsClient, n int) []*nudgev1.DecisionLogEntry {
	t.Helper()
	var got []*nudgev1.DecisionLogEntry
	for len(got) < n {
		resp, err := tail.Recv()
		if err != nil {
			t.Fatalf("after %d entries of %d: %v", len(got), n, err)
		}
		if len(resp.GetEntries()) == 0 {
			t.Fatal("a response without entries")
		}
		got = append(got, resp.GetEntries()...)
	}
	return got
}

// checkEntry compares a log entry with the decision it logs.
func checkEntry(t *testing.T, got *nudgev1.DecisionLogEntry, d *nudgev1.Decision, user string) {
	t.Helper()
	want := &nudgev1.DecisionLogEntry{
		DecisionId: d.GetDecisionId(), At: got.GetAt(), UserId: user, Channel: "web", Verdict: d.GetVerdict(),
		OfferId: d.GetOffer().GetId(), Degraded: d.GetDegraded(), Stale: d.GetStale(), Control: d.GetControl(),
		RulesVersion: d.GetRulesVersion(), Reasons: d.GetReasons(),
	}
	if !proto.Equal(got, want) {
		t.Errorf("entry %v\nwant %v", got, want)
	}
	if !got.GetAt().AsTime().Equal(now) {
		t.Errorf("entry at %v, want the server's clock %v", got.GetAt().AsTime(), now)
	}
}

// TailDecisions follows the decisions made after it started, or from the
// oldest kept, ends after limit entries and when the caller cancels.
func TestTailDecisions(t *testing.T) {
	logBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		e := newLogEnv(t, rdb, nil)
		ctx := callCtx(t)
		old := e.decide(ctx, t, "old-", 2, 0)
		if old[0].GetVerdict() != nudgev1.Verdict_VERDICT_SEND || len(old[0].GetReasons()) == 0 {
			t.Fatalf("decision %v: want a send with reasons, to compare", old[0])
		}

		tailCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		tail, err := e.admin.TailDecisions(tailCtx, &nudgev1.TailDecisionsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tail.Header(); err != nil { // the starting point is fixed
			t.Fatal(err)
		}
		fresh := e.decide(ctx, t, "new-", 3, 2)
		got := recvEntries(t, tail, 3)
		if len(got) != 3 {
			t.Fatalf("got %d entries, want the 3 decisions made after the tail started", len(got))
		}
		for i := range fresh {
			checkEntry(t, got[i], fresh[i], fmt.Sprintf("new-%d", i))
		}
		cancel()
		if _, err := tail.Recv(); status.Code(err) != codes.Canceled {
			t.Fatalf("after cancel: %v, want Canceled", err)
		}

		oldest, err := e.admin.TailDecisions(ctx, &nudgev1.TailDecisionsRequest{FromOldest: true, Limit: 4})
		if err != nil {
			t.Fatal(err)
		}
		got = recvEntries(t, oldest, 4)
		if _, err := oldest.Recv(); !errors.Is(err, io.EOF) {
			t.Fatalf("after the limit: %v, want the end of the stream", err)
		}
		if len(got) != 4 {
			t.Fatalf("got %d entries, want the limit, 4", len(got))
		}
		checkEntry(t, got[0], old[0], "old-0")
		checkEntry(t, got[1], old[1], "old-1")
		checkEntry(t, got[2], fresh[0], "new-0")
		checkEntry(t, got[3], fresh[1], "new-1")
	})
}

// A tail started on an empty log gets the first decisions; an entry that
// is not a decision is skipped.
func TestTailDecisionsFromAnEmptyLogSkipsForeignEntries(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	e := newLogEnv(t, rdb, nil)
	ctx := callCtx(t)
	tail, err := e.admin.TailDecisions(ctx, &nudgev1.TailDecisionsRequest{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tail.Header(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: audit.DefaultStream, Values: []any{"not", "a decision"}}).Err(); err != nil {
		t.Fatal(err)
	}
	d := e.decide(ctx, t, "u", 1, 0)
	got := recvEntries(t, tail, 1)
	checkEntry(t, got[0], d[0], "u0")
	if _, err := tail.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the limit: %v, want the end of the stream", err)
	}
}

// A graceful stop does not wait for a tail: it ends with UNAVAILABLE.
func TestTailDecisionsEndsOnShutdown(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	e := newLogEnv(t, rdb, nil)
	tail, err := e.admin.TailDecisions(callCtx(t), &nudgev1.TailDecisionsRequest{FromOldest: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tail.Header(); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	e.h.srv.Shutdown(e.h.grpc, waitLimit)
	if took := time.Since(begin); took > 2*time.Second {
		t.Errorf("Shutdown took %v with a tail open", took)
	}
	_, err = tail.Recv()
	wantCode(t, err, codes.Unavailable, "shutting down")
}

// ListDeadActions lists the actions the outbox dead-lettered, with their
// group and delivery count, a page at a time.
func TestListDeadActions(t *testing.T) {
	logBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := callCtx(t)
		layout := redisstore.NewLayout(2)
		want := map[string]*nudgev1.Action{}
		for i := range 5 {
			a := &profile.Action{ID: fmt.Sprintf("a%d", i), UserID: fmt.Sprintf("u%d", i), TriggerID: "t", Channel: "sms",
				Template: "tpl", Payload: map[string]string{"n": fmt.Sprint(i)}, TriggeredAt: now, EventID: fmt.Sprintf("e%d", i), RulesVersion: "v1"}
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: layout.OutboxKey(i % 2), Values: redisstore.ActionFields(a)}).Err(); err != nil {
				t.Fatal(err)
			}
			want[a.ID] = &nudgev1.Action{ActionId: a.ID, UserId: a.UserID, TriggerId: "t", Channel: "sms", Template: "tpl",
				Payload: a.Payload, TriggeredAt: timestamppb.New(now), EventId: a.EventID, RulesVersion: "v1"}
		}
		// Delivered once and never acknowledged, each goes to the
		// dead-letter stream when the visibility timeout passes.
		o := delivery.New(rdb, layout, delivery.Options{Visibility: 20 * time.Millisecond, MaxDeliveries: 1, Block: 20 * time.Millisecond})
		begin := time.Now()
		for {
			if _, err := o.Read(ctx, "g", "m"); err != nil {
				t.Fatal(err)
			}
			dead, err := o.DeadAfter(ctx, "", 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(dead) == 5 {
				break
			}
		}
		h := start(t, okStore(), server.Config{Outbox: o, DeadLetters: o})
		admin := nudgev1.NewAdminServiceClient(h.conn)
		resp, err := admin.ListDeadActions(ctx, &nudgev1.ListDeadActionsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		all := resp.GetDeadActions()
		if len(all) != 5 {
			t.Fatalf("%d dead actions, want 5: %v", len(all), all)
		}
		for _, d := range all {
			if w := want[d.GetAction().GetActionId()]; !proto.Equal(d.GetAction(), w) {
				t.Errorf("dead action %v\nwant %v", d.GetAction(), w)
			}
			if d.GetGroup() != "g" || d.GetDeliveryCount() != 1 || !slices.Contains(layout.OutboxKeys(), d.GetOutboxStream()) || d.GetOutboxId() == "" {
				t.Errorf("dead action %v: want group g, 1 delivery and where it was", d)
			}
			if at := d.GetDeadLetteredAt().AsTime(); at.Before(begin.Add(-time.Second)) || at.After(time.Now().Add(time.Second)) {
				t.Errorf("dead-lettered at %v, want between %v and now", at, begin)
			}
		}

		var paged []*nudgev1.DeadAction
		after := ""
		for range 3 {
			resp, err := admin.ListDeadActions(ctx, &nudgev1.ListDeadActionsRequest{Limit: 2, After: after})
			if err != nil {
				t.Fatal(err)
			}
			page := resp.GetDeadActions()
			if want := min(2, 5-len(paged)); len(page) != want {
				t.Fatalf("page after %q has %d, want %d", after, len(page), want)
			}
			paged = append(paged, page...)
			after = page[len(page)-1].GetId()
		}
		for i := range all {
			if !proto.Equal(paged[i], all[i]) {
				t.Errorf("paged %d = %v, want %v", i, paged[i], all[i])
			}
		}
	})
}

// Without a decision log or dead letters the RPCs are UNIMPLEMENTED;
// invalid requests are refused first.
func TestLogRPCsUnconfiguredAndInvalid(t *testing.T) {
	h := start(t, okStore(), server.Config{})
	admin := nudgev1.NewAdminServiceClient(h.conn)
	ctx := callCtx(t)
	tail := func(req *nudgev1.TailDecisionsRequest) error {
		s, err := admin.TailDecisions(ctx, req)
		if err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}
	wantCode(t, tail(&nudgev1.TailDecisionsRequest{}), codes.Unimplemented, "no audit log configured")
	wantCode(t, tail(&nudgev1.TailDecisionsRequest{Limit: 1_000_001}), codes.InvalidArgument, "limit")
	_, err := admin.ListDeadActions(ctx, &nudgev1.ListDeadActionsRequest{})
	wantCode(t, err, codes.Unimplemented, "no outbox configured")
	_, err = admin.ListDeadActions(ctx, &nudgev1.ListDeadActionsRequest{Limit: 1001})
	wantCode(t, err, codes.InvalidArgument, "limit")
	_, err = admin.ListDeadActions(ctx, &nudgev1.ListDeadActionsRequest{After: "x"})
	wantCode(t, err, codes.InvalidArgument, "after")
}

// Only the admin role reads the logs: not decide, and not explain, which
// sees the reasons of its own decisions but may not list every user's.
func TestLogRPCsNeedTheAdminRole(t *testing.T) {
	const explainSecret = "secret-explain-e1e1"
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	e := newLogEnv(t, rdb, append(testTokens(),
		server.Token{Name: "explainer", Secret: explainSecret, Roles: []server.Role{server.RoleDecide, server.RoleExplain}}))
	e.decide(withToken(callCtx(t), decideSecret), t, "u", 1, 0)
	calls := []struct {
		name   string
		method string
		call   func(ctx context.Context) error
	}{
		{"TailDecisions", "/nudge.v1.AdminService/TailDecisions", func(ctx context.Context) error {
			s, err := e.admin.TailDecisions(ctx, &nudgev1.TailDecisionsRequest{FromOldest: true, Limit: 1})
			if err != nil {
				return err
			}
			if _, err := s.Recv(); err != nil {
				return err
			}
			if _, err = s.Recv(); !errors.Is(err, io.EOF) {
				return err
			}
			return nil
		}},
		{"ListDeadActions", "/nudge.v1.AdminService/ListDeadActions", func(ctx context.Context) error {
			_, err := e.admin.ListDeadActions(ctx, &nudgev1.ListDeadActionsRequest{})
			return err
		}},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			for _, tok := range []struct{ name, secret string }{{"decider", decideSecret}, {"explainer", explainSecret}} {
				err := c.call(withToken(callCtx(t), tok.secret))
				wantCode(t, err, codes.PermissionDenied, `token "`+tok.name+`" lacks role "admin", required by `+c.method)
			}
			// No dead-letter source here: past the role check, UNIMPLEMENTED.
			if err := c.call(withToken(callCtx(t), adminSecret)); err != nil && status.Code(err) != codes.Unimplemented {
				t.Errorf("admin: %v", err)
			}
		})
	}
}
