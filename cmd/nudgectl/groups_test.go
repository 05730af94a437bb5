package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/examples"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	"github.com/nudge-dm/nudge/server"
)

const (
	opsSecret    = "ops-secret-0123456789"
	senderSecret = "sender-secret-0123456789"
)

// settableClock is the clock of the test's server and outbox.
type settableClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *settableClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *settableClock) set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// groupsServer serves nudge on a loopback port with a real outbox on a
// real redis-server holding n actions over 4 buckets, with an admin token
// and a subscribe token for the group sms-sender.
func groupsServer(t *testing.T, n int, clock *settableClock) (addr string, rdb *redis.Client, outbox *delivery.Outbox) {
	t.Helper()
	rdb = redistest.Start(t).Client(t)
	keys := redisstore.NewLayout(4)
	for i := range n {
		a := &profile.Action{ID: fmt.Sprintf("a%d", i), UserID: fmt.Sprintf("u%d", i), TriggerID: "t", Channel: "sms", Template: "tpl", TriggeredAt: clock.Now()}
		if err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: keys.OutboxKey(i % 4), Values: redisstore.ActionFields(a)}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	rules, err := decision.Parse(examples.RulesName, examples.Rules)
	if err != nil {
		t.Fatal(err)
	}
	outbox = delivery.New(rdb, keys, delivery.Options{Block: 50 * time.Millisecond, GroupIdle: time.Hour, Now: clock.Now})
	srv, err := server.New(redisstore.New(rdb, redisstore.Options{Buckets: 4}), decision.NewLive(rules, examples.RulesName), server.Config{
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Outbox: outbox,
		Now:    clock.Now,
		Tokens: []server.Token{
			{Name: "ops", Secret: opsSecret, Roles: []server.Role{server.RoleAdmin}},
			{Name: "sender", Secret: senderSecret, Roles: []server.Role{server.RoleSubscribe}, Groups: []string{"sms-sender"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, srv), rdb, outbox
}

// serve serves srv on a free loopback port until the test ends.
func serve(t *testing.T, srv *server.Server) (addr string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := srv.NewGRPCServer()
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() {
		g.Stop()
		<-served
	})
	return lis.Addr().String()
}

// ctl runs nudgectl with the token in NUDGE_TOKEN against a plaintext
// loopback server.
func ctl(t *testing.T, token string, args ...string) (status int, stdout, stderr string) {
	t.Helper()
	t.Setenv("NUDGE_TOKEN", token)
	var out, errOut bytes.Buffer
	status = run(append(args, "--insecure"), &out, &errOut)
	return status, out.String(), errOut.String()
}

func TestGroupsListAndDelete(t *testing.T) {
	start := time.Now().Truncate(time.Second)
	clock := &settableClock{now: start}
	addr, rdb, outbox := groupsServer(t, 8, clock)
	ctx := t.Context()
	// "old" read at the start and never again; "sms-sender" read two
	// hours later.
	if _, err := outbox.Read(ctx, "old", "m1"); err != nil {
		t.Fatal(err)
	}
	clock.set(start.Add(2 * time.Hour))
	if _, err := outbox.Read(ctx, "sms-sender", "m1"); err != nil {
		t.Fatal(err)
	}
	clock.set(start.Add(2*time.Hour + time.Minute))

	status, out, errOut := ctl(t, opsSecret, "groups", "list", "--addr", addr)
	if status != 0 {
		t.Fatalf("groups list: status %d: %s", status, errOut)
	}
	t.Logf("groups list:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "GROUP") ||
		!strings.Contains(lines[1], "old") || !strings.Contains(lines[1], "2h1m0s") || !strings.HasSuffix(lines[1], "abandoned") ||
		!strings.Contains(lines[2], "sms-sender") || !strings.Contains(lines[2], "1m0s") || !strings.HasSuffix(lines[2], "live") {
		t.Errorf("groups list:\n%s", out)
	}

	status, out, errOut = ctl(t, opsSecret, "groups", "list", "--json", "--addr", addr)
	if status != 0 {
		t.Fatalf("groups list --json: status %d: %s", status, errOut)
	}
	var listed struct {
		Groups []struct {
			Name        string
			Pending     string // uint64 in proto JSON
			Undelivered string
			Consumers   int
			Abandoned   bool
		}
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("groups list --json is not JSON: %v\n%s", err, out)
	}
	if len(listed.Groups) != 2 || listed.Groups[0].Name != "old" || listed.Groups[0].Pending != "8" || !listed.Groups[0].Abandoned ||
		listed.Groups[1].Consumers != 1 || listed.Groups[1].Abandoned {
		t.Errorf("groups list --json = %+v", listed)
	}

	tests := []struct {
		name       string
		token      string
		args       []string
		wantStatus int
		wantOut    string
		wantErr    string
	}{
		{"delete", opsSecret, []string{"groups", "delete", "old"}, 0, "deleted consumer group old from 4 outbox streams", ""},
		{"delete again", opsSecret, []string{"groups", "delete", "old"}, 1, "",
			`nudgectl groups delete: NotFound: delivery: no such consumer group: "old"`},
		{"delete an invalid name", opsSecret, []string{"groups", "delete", "Old Group"}, 1, "", "nudgectl groups delete: InvalidArgument:"},
		{"list without the admin role", senderSecret, []string{"groups", "list"}, 1, "",
			`nudgectl groups list: PermissionDenied: token "sender" lacks role "admin"`},
		{"no subcommand", opsSecret, []string{"groups"}, 2, "", "Usage:\n  nudgectl groups [command]\n\nAvailable Commands:\n  delete"},
		{"delete without a name", opsSecret, []string{"groups", "delete"}, 2, "",
			"nudgectl groups delete: takes one NAME, got 0 arguments\nRun 'nudgectl groups delete --help' for usage."},
		{"unknown subcommand", opsSecret, []string{"groups", "purge"}, 2, "", `nudgectl groups: unknown command "purge" for "nudgectl groups"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, out, errOut := ctl(t, tt.token, append(tt.args, "--addr", addr)...)
			if status != tt.wantStatus || !strings.Contains(out, tt.wantOut) || !strings.Contains(errOut, tt.wantErr) {
				t.Errorf("status %d, want %d\nstdout: %s\nstderr: %s", status, tt.wantStatus, out, errOut)
			}
		})
	}
	if groups, err := rdb.XInfoGroups(ctx, redisstore.NewLayout(4).OutboxKey(0)).Result(); err != nil || len(groups) != 1 || groups[0].Name != "sms-sender" {
		t.Errorf("groups on a stream after the delete: %+v, %v; want sms-sender alone", groups, err)
	}
}

// actions tail --ack acknowledges as the member the server named, and a
// token is refused a group it does not name.
func TestActionsTailAcksAsItsMember(t *testing.T) {
	clock := &settableClock{now: time.Now()}
	addr, rdb, _ := groupsServer(t, 8, clock)
	status, out, errOut := ctl(t, senderSecret, "actions", "tail", "--group", "sms-sender", "--ack", "-n", "3", "--json", "--addr", addr)
	if status != 0 || strings.Count(out, "\n") != 3 {
		t.Fatalf("actions tail: status %d\nstdout: %s\nstderr: %s", status, out, errOut)
	}
	// The other 5 stay pending for the group (released when the stream
	// ended), the 3 printed are acknowledged.
	var pending int64
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for b := range 4 {
		p, err := rdb.XPending(ctx, redisstore.NewLayout(4).OutboxKey(b), "sms-sender").Result()
		if err != nil {
			t.Fatal(err)
		}
		pending += p.Count
	}
	if pending != 5 {
		t.Errorf("%d actions pending after 3 of 8 were acknowledged, want 5", pending)
	}

	status, _, errOut = ctl(t, senderSecret, "actions", "tail", "--group", "push-sender", "-n", "1", "--addr", addr)
	if status != 1 || !strings.Contains(errOut, `nudgectl actions tail: PermissionDenied: token "sender" may not use consumer group "push-sender"`) ||
		!strings.Contains(errOut, "groups name it") {
		t.Errorf("actions tail of another group: status %d\nstderr: %s", status, errOut)
	}
}
