package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/examples"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

const (
	adminRPCOps     = "adminrpc-ops-0123456789"
	adminRPCDecider = "adminrpc-decider-0123456789"
)

// adminRPCEnv is nudge on the embedded store (miniredis), on a loopback port,
// with a decision log and an outbox, and tokens for an operator and a
// decider.
type adminRPCEnv struct {
	rdb    *redis.Client
	log    *audit.Log
	outbox *delivery.Outbox
	admin  nudgev1.AdminServiceClient
	addr   string // the server's loopback address, for nudgectl's --addr
}

func newAdminRPCEnv(t *testing.T) *adminRPCEnv {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	l := audit.New(rdb, audit.Options{Sample: 1})
	outbox := delivery.New(rdb, redisstore.NewLayout(1), delivery.Options{})
	rules, err := decision.Parse(examples.RulesName, examples.Rules)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(redisstore.New(rdb, redisstore.Options{Buckets: 1}), decision.NewLive(rules, examples.RulesName), server.Config{
		Logger:      slog.New(slog.NewTextHandler(io.Discard, nil)),
		Audit:       l,
		DecisionLog: l,
		Outbox:      outbox,
		DeadLetters: outbox,
		Tokens: []server.Token{
			{Name: "ops", Secret: adminRPCOps, Roles: []server.Role{server.RoleAdmin}},
			{Name: "decider", Secret: adminRPCDecider, Roles: []server.Role{server.RoleDecide}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := srv.NewGRPCServer()
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		g.Stop()
		<-served
	})
	return &adminRPCEnv{rdb: rdb, log: l, outbox: outbox, admin: nudgev1.NewAdminServiceClient(conn), addr: lis.Addr().String()}
}

func asToken(ctx context.Context, secret string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+secret)
}

// record writes entries to the decision log, as nudged's writer does.
func (e *adminRPCEnv) record(t *testing.T, entries ...audit.Entry) {
	t.Helper()
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { e.log.Run(ctx); close(done) }()
	for _, en := range entries {
		if !e.log.Record(en) {
			t.Fatal("the log dropped an entry")
		}
	}
	stop()
	<-done // Run writes what is queued before it returns
}

// The tail goes through nudged, prints what decisions tail printed when it
// read Redis, honours its limit, ends without an error when interrupted,
// and needs the admin role.
func TestTailDecisionsRPC(t *testing.T) {
	e := newAdminRPCEnv(t)
	at := time.Date(2026, 11, 24, 12, 0, 0, 123e6, time.UTC)
	entries := []audit.Entry{
		{DecisionID: "d1", At: at, UserID: "alice", Channel: "sms", Verdict: "send", OfferID: "o1", ProfileVersion: 3, RulesVersion: "v1",
			Reasons: []audit.Reason{{RuleID: "o1", Message: "offer o1 is eligible"}, {Message: "no rule"}}},
		{DecisionID: "d2", At: at, UserID: "bob", Channel: "web", Placement: "home", Verdict: "none", Degraded: true, Stale: true, Control: true, RulesVersion: "v1"},
		{DecisionID: "d3", At: at, UserID: "carol", Channel: "push", Verdict: "hold", OfferID: "o2", ProfileVersion: 7, RulesVersion: "v2"},
	}
	e.record(t, entries...)
	ctx := asToken(t.Context(), adminRPCOps)

	var got []*nudgev1.DecisionLogEntry
	err := tailDecisionsRPC(ctx, e.admin, true, 2, func(pe *nudgev1.DecisionLogEntry) error {
		got = append(got, pe)
		return nil
	})
	if err != nil || len(got) != 2 {
		t.Fatalf("tail of 2 from the oldest: %d entries, %v", len(got), err)
	}
	wantText := []string{
		"2026-11-24T12:00:00.123Z d1 user=alice channel=sms SEND offer=o1 v3 rules=v1\n    [o1] offer o1 is eligible\n    [] no rule",
		"2026-11-24T12:00:00.123Z d2 user=bob channel=web NONE degraded stale control v0 rules=v1",
	}
	for i, pe := range got {
		if s := formatDecisionLogEntry(pe); s != wantText[i] {
			t.Errorf("entry %d:\n%s\nwant\n%s", i, s, wantText[i])
		}
		want, _ := json.Marshal(entries[i]) // what --json printed from the stream
		if s := decisionLogEntryJSON(pe); s != string(want) {
			t.Errorf("entry %d JSON:\n%s\nwant\n%s", i, s, want)
		}
	}

	// Following from now: an entry recorded later arrives; an interrupt
	// ends the tail without an error.
	follow, interrupt := context.WithCancel(ctx)
	defer interrupt()
	arrived := make(chan *nudgev1.DecisionLogEntry, 1)
	done := make(chan error, 1)
	go func() {
		done <- tailDecisionsRPC(follow, e.admin, false, 0, func(pe *nudgev1.DecisionLogEntry) error {
			arrived <- pe
			return nil
		})
	}()
	deadline := time.After(10 * time.Second)
	var first *nudgev1.DecisionLogEntry
	// The tail's start is not observable from here: record until one
	// entry arrives, each a new one.
	for i := 0; first == nil; i++ {
		e.record(t, audit.Entry{DecisionID: fmt.Sprintf("late-%d", i), At: at, UserID: "dave", Channel: "sms", Verdict: "none", RulesVersion: "v1"})
		select {
		case first = <-arrived:
		case <-time.After(300 * time.Millisecond):
		case <-deadline:
			t.Fatal("no entry arrived at the tail")
		}
	}
	if first.GetUserId() != "dave" {
		t.Errorf("followed %v, want a late entry", first)
	}
	interrupt()
	if err := <-done; err != nil {
		t.Errorf("interrupted tail: %v", err)
	}

	errStop := errors.New("stop")
	if err := tailDecisionsRPC(ctx, e.admin, true, 0, func(*nudgev1.DecisionLogEntry) error { return errStop }); !errors.Is(err, errStop) {
		t.Errorf("emit failing: %v, want its error", err)
	}
	err = tailDecisionsRPC(asToken(t.Context(), adminRPCDecider), e.admin, true, 1, func(*nudgev1.DecisionLogEntry) error { return nil })
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a decide token: %v, want PermissionDenied", err)
	}
	if err := tailDecisionsRPC(ctx, e.admin, true, -1, nil); err == nil {
		t.Error("a negative limit is accepted")
	}
}

// Dead actions come through nudged page by page, printed as actions dead
// printed them when it read Redis.
func TestListDeadRPC(t *testing.T) {
	e := newAdminRPCEnv(t)
	ctx := t.Context()
	const n = deadPage + 3
	pipe := e.rdb.Pipeline()
	for i := range n {
		a := &profile.Action{ID: fmt.Sprintf("a%d", i), UserID: fmt.Sprintf("u%d", i), TriggerID: "t", Channel: "sms", Template: "tpl",
			TriggeredAt: time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC), EventID: fmt.Sprintf("e%d", i), RulesVersion: "v1"}
		if i%2 == 0 {
			a.Payload = map[string]string{"k": "v"}
			a.DueAt = a.TriggeredAt.Add(time.Hour)
		}
		values := append(redisstore.ActionFields(a), "dead_group", "g", "dead_stream", "nudge:{0}:out", "dead_id", fmt.Sprintf("1-%d", i), "delivery_count", "5")
		pipe.XAdd(ctx, &redis.XAddArgs{Stream: redisstore.DeadStream, Values: values})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	old, err := e.outbox.DeadAfter(ctx, "", n) // what actions dead read from Redis
	if err != nil {
		t.Fatal(err)
	}

	all, err := listDeadRPC(asToken(ctx, adminRPCOps), e.admin, 0)
	if err != nil || len(all) != n {
		t.Fatalf("all dead actions: %d, %v; want %d", len(all), err, n)
	}
	for i, d := range all {
		want, _ := json.Marshal(map[string]any{"id": old[i].ID, "group": old[i].Group, "delivery_count": old[i].DeliveryCount, "fields": old[i].Values})
		if s := deadActionJSON(d); s != string(want) {
			t.Fatalf("dead action %d JSON:\n%s\nwant\n%s", i, s, want)
		}
	}
	rows := deadActionRows(all[:1])
	if want := (deadLetterRow{ID: old[0].ID, Group: "g", Deliveries: 5, Action: "a0", User: "u0", Trigger: "t", Channel: "sms"}); len(rows) != 1 || rows[0] != want {
		t.Errorf("rows = %+v, want %+v", rows, want)
	}

	some, err := listDeadRPC(asToken(ctx, adminRPCOps), e.admin, 2)
	if err != nil || len(some) != 2 || some[1].GetId() != old[1].ID {
		t.Errorf("2 dead actions: %v, %v", some, err)
	}
	_, err = listDeadRPC(asToken(ctx, adminRPCDecider), e.admin, 2)
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a decide token: %v, want PermissionDenied", err)
	}
}
