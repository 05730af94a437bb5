package server_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc/codes"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// The tokens of the group tests.
const (
	smsSecret      = "secret-sms-sender-1"
	pushSecret     = "secret-push-team-22"
	noGroupsSecret = "secret-no-groups-333"
	everySecret    = "secret-every-group-4"
	opsSecret      = "secret-operator-5555"
)

func groupTokens() []server.Token {
	sub := []server.Role{server.RoleSubscribe}
	return []server.Token{
		{Name: "sms-sender", Secret: smsSecret, Roles: sub, Groups: []string{"sms"}},
		{Name: "push-team", Secret: pushSecret, Roles: sub, Groups: []string{"push-*"}},
		{Name: "no-groups", Secret: noGroupsSecret, Roles: sub},
		{Name: "every-group", Secret: everySecret, Roles: sub, Groups: []string{"*"}},
		{Name: "ops", Secret: opsSecret, Roles: []server.Role{server.RoleAdmin}},
	}
}

const groupBuckets = 4

// outboxEnv is the server with a real outbox on a real redis-server,
// holding n actions, alternately on sms and push.
type outboxEnv struct {
	h       *harness
	rdb     redis.UniversalClient
	keys    redisstore.Layout
	actions nudgev1.ActionServiceClient
	admin   nudgev1.AdminServiceClient
}

func newOutboxEnv(t *testing.T, n int, tokens []server.Token) *outboxEnv {
	t.Helper()
	rdb := redistest.Start(t).Client(t)
	keys := redisstore.NewLayout(groupBuckets)
	for i := range n {
		a := &profile.Action{ID: fmt.Sprintf("a%d", i), UserID: fmt.Sprintf("u%d", i), TriggerID: "t",
			Channel: []string{"sms", "push"}[i%2], Template: "tpl", TriggeredAt: now}
		if err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: keys.OutboxKey(i % groupBuckets), Values: redisstore.ActionFields(a)}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// One action per stream and read, and at most 2 unacknowledged per
	// member: a member's stream holds 4 actions pending (one read) and
	// hands over 2 until it acknowledges, so what stays undelivered is
	// known.
	outbox := delivery.New(rdb, keys, delivery.Options{Block: 50 * time.Millisecond, Visibility: time.Hour, Count: groupBuckets, Now: clock})
	h := start(t, okStore(), server.Config{Tokens: tokens, Outbox: outbox, MaxUnacked: 2})
	return &outboxEnv{h: h, rdb: rdb, keys: keys, actions: nudgev1.NewActionServiceClient(h.conn), admin: nudgev1.NewAdminServiceClient(h.conn)}
}

// subscribe opens a member's stream and takes n deliveries from it (or
// the stream's error); the stream ends with the test's context.
func (e *outboxEnv) subscribe(ctx context.Context, req *nudgev1.SubscribeRequest, n int) ([]*nudgev1.SubscribeResponse, error) {
	stream, err := e.actions.Subscribe(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*nudgev1.SubscribeResponse
	for len(out) < n {
		resp, err := stream.Recv()
		if err != nil {
			return out, err
		}
		out = append(out, resp)
	}
	return out, nil
}

// groupsOnStreams lists the consumer groups that exist on any outbox
// stream.
func (e *outboxEnv) groupsOnStreams(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, k := range e.keys.OutboxKeys() {
		gs, err := e.rdb.XInfoGroups(t.Context(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range gs {
			if !slices.Contains(out, g.Name) {
				out = append(out, g.Name)
			}
		}
	}
	slices.Sort(out)
	return out
}

// pending is the group's pending entry count over every stream.
func (e *outboxEnv) pending(t *testing.T, group string) int64 {
	t.Helper()
	var n int64
	for _, k := range e.keys.OutboxKeys() {
		p, err := e.rdb.XPending(t.Context(), k, group).Result()
		if err != nil && !redisstore.IsNoGroup(err) {
			t.Fatal(err)
		}
		if p != nil {
			n += p.Count
		}
	}
	return n
}

// drain subscribes a member and acknowledges each delivery as the member,
// until it has n distinct actions; it returns their ids.
func (e *outboxEnv) drain(ctx context.Context, t *testing.T, req *nudgev1.SubscribeRequest, n int) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := e.actions.Subscribe(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < n {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("%s after %d actions: %v", req.GetGroup(), len(seen), err)
		}
		seen[resp.GetAction().GetActionId()] = true
		if _, err := e.actions.Ack(ctx, &nudgev1.AckRequest{Group: req.GetGroup(), Consumer: resp.GetConsumer(), AckIds: []string{resp.GetAckId()}}); err != nil {
			t.Fatal(err)
		}
	}
	return seen
}

func ackIDsOf(ds []*nudgev1.SubscribeResponse) []string {
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.GetAckId()
	}
	return ids
}

// A subscribe token reaches only the groups it names. Each refused call
// below was an attack before tokens were scoped: creating a group on
// every stream, joining a group with a channel filter that drops the
// group's other actions, and acknowledging a group's pending actions.
func TestSubscribeTokensAreScopedToTheirGroups(t *testing.T) {
	e := newOutboxEnv(t, 16, groupTokens())
	ctx, cancel := context.WithCancel(callCtx(t))
	defer cancel() // ends the streams

	// The push group's member was handed 2 actions (4 pending); 12 are
	// not delivered yet.
	held, err := e.subscribe(withToken(ctx, pushSecret), &nudgev1.SubscribeRequest{Group: "push-eu", Consumer: "pusher"}, 2)
	if err != nil {
		t.Fatal(err)
	}
	pendingBefore := e.pending(t, "push-eu")
	if pendingBefore != 4 {
		t.Fatalf("push-eu has %d pending, want 4", pendingBefore)
	}

	denied := func(token, group string) string {
		return `token "` + token + `" may not use consumer group "` + group + `"`
	}
	tests := []struct {
		name   string
		secret string
		call   func(ctx context.Context) error
		msg    string
	}{
		{"subscribe to another team's group", smsSecret, func(ctx context.Context) error {
			_, err := e.subscribe(ctx, &nudgev1.SubscribeRequest{Group: "push-eu"}, 1)
			return err
		}, denied("sms-sender", "push-eu")},
		{"join another team's group with a filter that drops its actions", smsSecret, func(ctx context.Context) error {
			_, err := e.subscribe(ctx, &nudgev1.SubscribeRequest{Group: "push-eu", Channels: []string{"sms"}}, 1)
			return err
		}, denied("sms-sender", "push-eu")},
		{"create a group of a made-up name", smsSecret, func(ctx context.Context) error {
			_, err := e.subscribe(ctx, &nudgev1.SubscribeRequest{Group: "spam-1"}, 1)
			return err
		}, denied("sms-sender", "spam-1")},
		{"ack another team's pending actions", smsSecret, func(ctx context.Context) error {
			_, err := e.actions.Ack(ctx, &nudgev1.AckRequest{Group: "push-eu", AckIds: ackIDsOf(held)})
			return err
		}, denied("sms-sender", "push-eu")},
		{"a prefix is not a wildcard for a longer word", pushSecret, func(ctx context.Context) error {
			_, err := e.subscribe(ctx, &nudgev1.SubscribeRequest{Group: "pushy"}, 1)
			return err
		}, denied("push-team", "pushy")},
		{"a subscribe token without groups may use none", noGroupsSecret, func(ctx context.Context) error {
			_, err := e.subscribe(ctx, &nudgev1.SubscribeRequest{Group: "sms"}, 1)
			return err
		}, denied("no-groups", "sms")},
		{"nor ack for one", noGroupsSecret, func(ctx context.Context) error {
			_, err := e.actions.Ack(ctx, &nudgev1.AckRequest{Group: "push-eu", AckIds: ackIDsOf(held)})
			return err
		}, denied("no-groups", "push-eu")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCode(t, tt.call(withToken(ctx, tt.secret)), codes.PermissionDenied, tt.msg)
		})
	}
	if got := e.groupsOnStreams(t); !slices.Equal(got, []string{"push-eu"}) {
		t.Errorf("groups on the streams = %v; want push-eu alone: a refused call made a group", got)
	}
	if got := e.pending(t, "push-eu"); got != pendingBefore {
		t.Errorf("push-eu has %d pending, had %d: a refused call acknowledged some", got, pendingBefore)
	}
	// The push group still gets every action it was not handed yet, none
	// dropped by another token's channel filter.
	if got := e.drain(withToken(ctx, pushSecret), t, &nudgev1.SubscribeRequest{Group: "push-eu", Consumer: "pusher-2"}, 12); len(got) != 12 {
		t.Errorf("push-eu got %d of its 12 undelivered actions", len(got))
	}

	// The tokens' own groups work.
	for _, c := range []struct{ secret, group string }{{smsSecret, "sms"}, {pushSecret, "push-us"}, {everySecret, "anything"}} {
		if _, err := e.subscribe(withToken(ctx, c.secret), &nudgev1.SubscribeRequest{Group: c.group}, 1); err != nil {
			t.Errorf("subscribe to %s: %v", c.group, err)
		}
	}
}

// Without tokens every group is open, as before tokens named groups.
func TestGroupsOpenWithoutAuth(t *testing.T) {
	e := newOutboxEnv(t, 4, nil)
	ctx, cancel := context.WithCancel(callCtx(t))
	defer cancel()
	got, err := e.subscribe(ctx, &nudgev1.SubscribeRequest{Group: "any-group"}, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.actions.Ack(ctx, &nudgev1.AckRequest{Group: "any-group", AckIds: ackIDsOf(got), Consumer: got[0].GetConsumer()}); err != nil {
		t.Fatal(err)
	}
}

// Within a group a token may use, an ack counts only for what was
// delivered to the member it names, and across groups only for what was
// delivered to the group: acknowledging another member's or another
// group's deliveries has no effect.
func TestAckOfOthersDeliveriesHasNoEffect(t *testing.T) {
	e := newOutboxEnv(t, 16, groupTokens())
	ctx, cancel := context.WithCancel(withToken(callCtx(t), everySecret))
	defer cancel()

	// alice, a member the server names, was handed 2 actions of group a
	// (4 pending).
	alice, err := e.subscribe(ctx, &nudgev1.SubscribeRequest{Group: "a"}, 2)
	if err != nil {
		t.Fatal(err)
	}
	name := alice[0].GetConsumer()
	if !strings.HasPrefix(name, "c-") {
		t.Fatalf("delivery names its member %q; want the name the server made up", name)
	}
	// No member of group b was handed anything.
	for _, c := range []struct {
		name            string
		group, consumer string
	}{
		{"another member of the group", "a", "mallory"},
		{"another group", "b", ""},
		{"another group, as the member", "b", name},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := e.actions.Ack(ctx, &nudgev1.AckRequest{Group: c.group, Consumer: c.consumer, AckIds: ackIDsOf(alice)})
			if err != nil || resp.GetAcked() != 0 {
				t.Fatalf("Ack = %v, %v; want 0 acknowledged", resp, err)
			}
		})
	}
	if got := e.pending(t, "a"); got != 4 {
		t.Fatalf("group a has %d pending, want alice's 4", got)
	}
	// alice's own ack, with the name the delivery gave her, counts.
	resp, err := e.actions.Ack(ctx, &nudgev1.AckRequest{Group: "a", Consumer: name, AckIds: ackIDsOf(alice)})
	if err != nil || resp.GetAcked() != 2 {
		t.Fatalf("alice's ack = %v, %v; want 2", resp, err)
	}
}

func TestListAndDeleteGroups(t *testing.T) {
	e := newOutboxEnv(t, 8, groupTokens())
	member, leave := context.WithCancel(callCtx(t))
	if _, err := e.subscribe(withToken(member, smsSecret), &nudgev1.SubscribeRequest{Group: "sms", Consumer: "m1"}, 2); err != nil {
		t.Fatal(err)
	}
	leave() // the member goes away; its actions are released, still pending
	ctx := callCtx(t)
	ops := withToken(ctx, opsSecret)

	resp, err := e.admin.ListGroups(ops, &nudgev1.ListGroupsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetGroups()) != 1 {
		t.Fatalf("ListGroups = %v; want the sms group", resp)
	}
	g := resp.GetGroups()[0]
	if g.GetName() != "sms" || g.GetPending()+g.GetUndelivered() != 8 || g.GetConsumers() != 1 ||
		!g.GetLastActive().AsTime().Equal(now) || g.GetIdle().AsDuration() != 0 || g.GetAbandoned() {
		t.Errorf("sms = %v; want 8 actions in its backlog, 1 member, active now", g)
	}

	// Not for a subscribe token.
	_, err = e.admin.ListGroups(withToken(ctx, smsSecret), &nudgev1.ListGroupsRequest{})
	wantCode(t, err, codes.PermissionDenied, `lacks role "admin"`)
	_, err = e.admin.DeleteGroup(withToken(ctx, smsSecret), &nudgev1.DeleteGroupRequest{Group: "sms"})
	wantCode(t, err, codes.PermissionDenied, `lacks role "admin"`)

	del, err := e.admin.DeleteGroup(ops, &nudgev1.DeleteGroupRequest{Group: "sms"})
	if err != nil || del.GetStreams() != groupBuckets {
		t.Fatalf("DeleteGroup = %v, %v; want %d streams", del, err, groupBuckets)
	}
	if got := e.groupsOnStreams(t); len(got) != 0 {
		t.Errorf("groups left on the streams: %v", got)
	}
	_, err = e.admin.DeleteGroup(ops, &nudgev1.DeleteGroupRequest{Group: "sms"})
	wantCode(t, err, codes.NotFound, `no such consumer group: "sms"`)
	_, err = e.admin.DeleteGroup(ops, &nudgev1.DeleteGroupRequest{Group: "Not A Group"})
	wantCode(t, err, codes.InvalidArgument, "group")
}

// A member's channel filter drops the other channels' actions for its
// group (SubscribeRequest.channels): the server acknowledges what it read
// and will not send before it sends the rest, so once the member has its
// last action the group has nothing left, pending or undelivered.
func TestChannelFilterDropsTheOtherChannelsForItsGroup(t *testing.T) {
	e := newOutboxEnv(t, 8, groupTokens())
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	got := e.drain(withToken(ctx, smsSecret), t, &nudgev1.SubscribeRequest{Group: "sms", Channels: []string{"sms"}}, 4)
	for id := range got {
		var i int
		if _, err := fmt.Sscanf(id, "a%d", &i); err != nil || i%2 != 0 {
			t.Errorf("the sms filter delivered %q, a push action", id)
		}
	}
	if p := e.pending(t, "sms"); p != 0 {
		t.Errorf("group sms has %d pending after its filtered member took the sms actions, want 0", p)
	}
	var lag int64
	for _, k := range e.keys.OutboxKeys() {
		gs, err := e.rdb.XInfoGroups(t.Context(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range gs {
			lag += g.Lag
		}
	}
	if lag != 0 {
		t.Errorf("group sms has %d undelivered, want 0: the push actions were read and dropped", lag)
	}
}
