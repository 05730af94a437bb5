package delivery_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

const buckets = 4

// keys is the layout of the tests' outboxes.
var keys = redisstore.NewLayout(buckets)

func outboxKey(b int) string { return keys.OutboxKey(b) }

// addActions writes n actions spread over the buckets, as the store would.
func addActions(t *testing.T, rdb redis.UniversalClient, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: outboxKey(i % buckets), Values: []any{
			"action_id", fmt.Sprintf("a%d", i), "user_id", fmt.Sprintf("u%d", i), "trigger_id", "t", "channel", []string{"sms", "push"}[i%2],
			"template", "tpl", "payload", "{}", "triggered_at", "2026-11-24T12:00:00Z", "event_id", fmt.Sprintf("e%d", i),
		}}).Err()
		if err != nil {
			t.Fatal(err)
		}
	}
}

func newOutbox(rdb redis.UniversalClient, opt delivery.Options) *delivery.Outbox {
	if opt.Block == 0 {
		opt.Block = 50 * time.Millisecond
	}
	return delivery.New(rdb, keys, opt)
}

// backends are the Redis deployments every outbox test runs against: a
// standalone redis-server, where Read blocks on one XREADGROUP over every
// stream, and a 3-master Redis Cluster, where Read polls per stream and
// dead-lettering is not one transaction.
var backends = []struct {
	name  string
	start func(t *testing.T) redis.UniversalClient
}{
	{"standalone", func(t *testing.T) redis.UniversalClient { return redistest.Start(t).Client(t) }},
	{"cluster", func(t *testing.T) redis.UniversalClient { return redistest.StartCluster(t, 3).Client(t) }},
}

// forBackends runs test once per backend, as a subtest.
func forBackends(t *testing.T, test func(t *testing.T, rdb redis.UniversalClient)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) { test(t, b.start(t)) })
	}
}

// drain reads (and acks, if ack) until n distinct actions were seen or the
// deadline passes; it returns the action ids seen and how often.
func drain(t *testing.T, o *delivery.Outbox, group, consumer string, n int, ack bool) map[string]int {
	t.Helper()
	seen := map[string]int{}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for len(seen) < n && ctx.Err() == nil {
		ds, err := o.Read(ctx, group, consumer)
		if err != nil && ctx.Err() == nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range ds {
			seen[d.Action.ID]++
			ids = append(ids, d.AckID)
		}
		if ack && len(ids) > 0 {
			if _, err := o.Ack(ctx, group, consumer, ids); err != nil {
				t.Fatal(err)
			}
		}
	}
	return seen
}

func TestEveryGroupGetsEveryActionMembersShare(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		addActions(t, rdb, 0, 400)
		o := newOutbox(rdb, delivery.Options{Count: 50})
		for _, g := range []string{"sms-sender", "analytics"} {
			// Two members alternate reads until the group has everything.
			seen := map[string]int{}
			for i := 0; len(seen) < 400 && i < 1000; i++ {
				for id, c := range drain(t, o, g, fmt.Sprintf("m%d", i%2), 1, true) {
					seen[id] += c
				}
			}
			if len(seen) != 400 {
				t.Fatalf("group %s got %d distinct actions, want 400", g, len(seen))
			}
			for id, c := range seen {
				if c != 1 {
					t.Errorf("group %s got %s %d times", g, id, c)
				}
			}
		}
	})
}

func TestUnackedActionsAreRedeliveredThenDeadLettered(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		addActions(t, rdb, 0, 10)
		o := newOutbox(rdb, delivery.Options{Visibility: 100 * time.Millisecond, MaxDeliveries: 3})
		// A member takes everything and dies without acking.
		if got := drain(t, o, "g", "dead-member", 10, false); len(got) != 10 {
			t.Fatalf("first member got %d", len(got))
		}
		// Another member gets them again once they are idle past the
		// visibility timeout, with their delivery count.
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		counts := map[string]int64{}
		for len(counts) < 10 && ctx.Err() == nil {
			ds, err := o.Read(ctx, "g", "live-member")
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				counts[d.Action.ID] = d.Count
			}
		}
		for id, c := range counts {
			if c != 2 {
				t.Errorf("%s redelivered with count %d, want 2", id, c)
			}
		}
		// Never acked, they are delivered a third time, and then go to the
		// dead-letter stream instead of a fourth.
		var dead []delivery.DeadEntry
		for len(dead) < 10 && ctx.Err() == nil {
			if _, err := o.Read(ctx, "g", "live-member"); err != nil {
				t.Fatal(err)
			}
			var err error
			if dead, err = o.DeadAfter(ctx, "", 100); err != nil {
				t.Fatal(err)
			}
		}
		if len(dead) != 10 {
			t.Fatalf("%d dead letters, want 10", len(dead))
		}
		for _, d := range dead {
			// Three deliveries were made: the claim that found the fourth
			// one past MaxDeliveries is not a delivery.
			if d.Group != "g" || d.DeliveryCount != 3 || d.Values["action_id"] == "" {
				t.Errorf("dead letter %+v, want group g and 3 deliveries", d)
			}
		}
		pending, err := rdb.XPending(ctx, outboxKey(0), "g").Result()
		if err != nil || pending.Count != 0 {
			t.Errorf("dead-lettered actions still pending: %+v, %v", pending, err)
		}
	})
}

// A member that goes away has its unacknowledged actions released: another
// member's next Read gets them, long before the visibility timeout, with
// their delivery count, less the deliveries it cannot have handled; what
// it acknowledged stays acknowledged.
func TestReleaseHandsAGoneMembersActionsToTheGroup(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		addActions(t, rdb, 0, 4400)
		// The visibility timeout is far beyond the test's own deadline:
		// only Release can hand the actions over in time.
		o := newOutbox(rdb, delivery.Options{Visibility: time.Hour, Count: 4000})
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		// The member takes everything (more than one XPENDING batch per
		// stream) and acknowledges the first 100 it was handed.
		var took []delivery.Delivery
		for len(took) < 4400 && ctx.Err() == nil {
			ds, err := o.Read(ctx, "g", "gone")
			if err != nil {
				t.Fatal(err)
			}
			took = append(took, ds...)
		}
		acked := map[string]bool{}
		for _, d := range took[:100] {
			acked[d.Action.ID] = true
		}
		if _, err := o.Ack(ctx, "g", "gone", ackIDs(took[:100])); err != nil {
			t.Fatal(err)
		}
		// Nothing is claimable yet: a live member's read finds nothing.
		if ds, err := o.Read(ctx, "g", "live"); err != nil || len(ds) != 0 {
			t.Fatalf("before the release the live member read %d actions (err %v), want 0", len(ds), err)
		}
		// The server passes what it sent, in order (here only the most
		// recent part). The first of them still pending keeps its count:
		// the member may have died handling it. The others, and those not
		// in the list, were never being handled: their count goes back down.
		want := map[string]int64{} // the delivery count each gets next
		for _, d := range took[100:] {
			want[d.Action.ID] = 1
		}
		want[took[2000].Action.ID] = 2
		n, err := o.Release(ctx, "g", "gone", ackIDs(took[2000:4300]))
		if err != nil {
			t.Fatal(err)
		}
		if n != 4300 {
			t.Fatalf("released %d, want the 4300 unacknowledged", n)
		}
		got := map[string]int64{}
		for len(got) < 4300 && ctx.Err() == nil {
			ds, err := o.Read(ctx, "g", "live")
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range ds {
				got[d.Action.ID] = d.Count
			}
		}
		if len(got) != 4300 {
			t.Fatalf("the live member got %d of the 4300 released actions", len(got))
		}
		for id, c := range got {
			if acked[id] {
				t.Errorf("%s was acknowledged, and delivered again", id)
			}
			if c != want[id] {
				t.Errorf("%s delivered with count %d, want %d", id, c, want[id])
			}
		}
		if n, err := o.Release(ctx, "g", "gone", nil); err != nil || n != 0 {
			t.Errorf("second release: %d, %v; want nothing left to release", n, err)
		}
	})
}

func ackIDs(ds []delivery.Delivery) []string {
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.AckID
	}
	return ids
}

// A slow group that has not acknowledged (or not even read) actions keeps
// them through trimming; once every group acknowledged, they go.
func TestTrimNeverDeletesWhatAGroupStillNeeds(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := t.Context()
		addActions(t, rdb, 0, 100)
		o := newOutbox(rdb, delivery.Options{Count: 1000})
		total := func() int64 {
			var n int64
			for b := range buckets {
				n += rdb.XLen(ctx, outboxKey(b)).Val()
			}
			return n
		}
		pendingOf := func(group string) map[int][]string {
			out := map[int][]string{}
			for b := range buckets {
				p, err := rdb.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: outboxKey(b), Group: group, Start: "-", End: "+", Count: 1000}).Result()
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range p {
					out[b] = append(out[b], e.ID)
				}
			}
			return out
		}
		trim := func() int64 {
			t.Helper()
			res, err := o.Trim(ctx, 0, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if res.PastAbandoned != 0 || len(res.Abandoned) != 0 {
				t.Errorf("Trim took live groups for abandoned: %+v", res)
			}
			return res.Removed
		}

		if n := trim(); n != 0 {
			t.Fatalf("Trim without groups removed %d", n)
		}
		drain(t, o, "fast", "m", 100, true)  // acked everything
		drain(t, o, "slow", "m", 100, false) // took everything, acked nothing
		if n := trim(); n != 0 || total() != 100 {
			t.Fatalf("Trim with a slow group's 100 pending removed %d, %d left", n, total())
		}

		// The slow group acknowledges the older half of each stream; 20 new
		// actions arrive that it has not read. Only the acknowledged half may go.
		acked := 0
		for b, ids := range pendingOf("slow") {
			var half []string
			for _, id := range ids[:len(ids)/2] {
				half = append(half, fmt.Sprintf("%d/%s", b, id))
			}
			n, err := o.Ack(ctx, "slow", "m", half)
			if err != nil || n != len(half) {
				t.Fatalf("Ack = %d, %v; want %d", n, err, len(half))
			}
			acked += n
		}
		addActions(t, rdb, 100, 20)
		if n := trim(); n != int64(acked) {
			t.Errorf("Trim after the slow group acked the oldest %d removed %d", acked, n)
		}
		for b, ids := range pendingOf("slow") {
			for _, id := range ids {
				if msgs := rdb.XRange(ctx, outboxKey(b), id, id).Val(); len(msgs) != 1 {
					t.Errorf("pending entry %s of the slow group was trimmed", id)
				}
			}
		}
		if want := int64(100 - acked + 20); total() != want {
			t.Errorf("%d entries left, want %d (pending + unread)", total(), want)
		}

		// Both groups take and acknowledge everything: all but the last
		// delivered entry of each stream can go.
		for b, ids := range pendingOf("slow") {
			for _, id := range ids {
				if _, err := o.Ack(ctx, "slow", "", []string{fmt.Sprintf("%d/%s", b, id)}); err != nil {
					t.Fatal(err)
				}
			}
		}
		drain(t, o, "fast", "m", 20, true)
		drain(t, o, "slow", "m", 20, true)
		trim()
		if left := total(); left > int64(buckets) {
			t.Errorf("%d entries left after every group acknowledged everything", left)
		}

		// Retention keeps recent entries even when acknowledged.
		addActions(t, rdb, 200, 8)
		drain(t, o, "fast", "m", 8, true)
		drain(t, o, "slow", "m", 8, true)
		before := total()
		if res, err := o.Trim(ctx, time.Hour, time.Now()); err != nil || res.Removed != 0 || total() != before {
			t.Errorf("Trim with 1h retention removed %d recent entries (%v)", res.Removed, err)
		}
	})
}

func TestAckRejectsForeignIDs(t *testing.T) {
	rdb := redistest.Start(t).Client(t)
	o := newOutbox(rdb, delivery.Options{})
	for _, id := range []string{"", "x", "9/1-0", "-1/1-0", "0/abc", "0/1"} {
		if _, err := o.Ack(t.Context(), "g", "", []string{id}); !errors.Is(err, delivery.ErrBadAckID) {
			t.Errorf("Ack(%q) = %v, want ErrBadAckID", id, err)
		}
	}
}

func TestBacklogsCountPendingAndUndeliveredPerGroup(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		o := newOutbox(rdb, delivery.Options{Count: 10})
		if b, err := o.Backlogs(t.Context()); err != nil || len(b) != 0 {
			t.Fatalf("Backlogs before any group = %v, %v; want empty", b, err)
		}
		addActions(t, rdb, 0, 40)
		// "fast" reads 10 per stream (40 in all) and acks 5 of them; "slow"
		// reads once without acking.
		ds, err := o.Read(t.Context(), "fast", "m")
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range ds[:5] {
			ids = append(ids, d.AckID)
		}
		if _, err := o.Ack(t.Context(), "fast", "m", ids); err != nil {
			t.Fatal(err)
		}
		slow, err := o.Read(t.Context(), "slow", "m")
		if err != nil {
			t.Fatal(err)
		}
		addActions(t, rdb, 40, 8)
		got, err := o.Backlogs(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]delivery.Backlog{
			"fast": {Pending: int64(len(ds) - 5), Undelivered: int64(48 - len(ds))},
			"slow": {Pending: int64(len(slow)), Undelivered: int64(48 - len(slow))},
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("Backlogs = %v, want %v", got, want)
		}
	})
}
