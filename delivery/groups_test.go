package delivery_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// testClock is an Outbox's clock that a test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

// newTestClock starts at the current time, in whole milliseconds as
// activity is recorded.
func newTestClock() *testClock { return &testClock{now: time.Now().Truncate(time.Millisecond)} }

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	return c.now
}

// readAll reads for a member until it has n deliveries, acknowledging
// none.
func readAll(t *testing.T, o *delivery.Outbox, group, consumer string, n int) []delivery.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var out []delivery.Delivery
	for len(out) < n && ctx.Err() == nil {
		ds, err := o.Read(ctx, group, consumer)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ds...)
	}
	if len(out) < n {
		t.Fatalf("%s/%s read %d deliveries, want %d", group, consumer, len(out), n)
	}
	return out
}

// pendingIDs is the set of a group's pending entries on every stream, as
// ack ids, each with its owner.
func pendingIDs(t *testing.T, rdb redis.UniversalClient, group string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for b := range buckets {
		p, err := rdb.XPendingExt(t.Context(), &redis.XPendingExtArgs{Stream: outboxKey(b), Group: group, Start: "-", End: "+", Count: 10000}).Result()
		if err != nil && !redisstore.IsNoGroup(err) {
			t.Fatal(err)
		}
		for _, e := range p {
			out[fmt.Sprintf("%d/%s", b, e.ID)] = e.Consumer
		}
	}
	return out
}

// Ack ids are guessable (bucket/stream id). Each attack below acknowledged
// entries before Ack checked what was delivered to whom; now none of
// them counts or changes anything.
func TestAckOnlyWhatWasDeliveredToTheCaller(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := t.Context()
		addActions(t, rdb, 0, 40)
		o := newOutbox(rdb, delivery.Options{Count: 8, Visibility: time.Hour})
		// The victim group has read a part of the outbox: alice holds it.
		victim := readAll(t, o, "victim", "alice", 8)
		// The attacker's group has read everything, so it knows every id.
		all := readAll(t, o, "attacker", "mallory", 40)
		victimHas := map[string]bool{}
		for _, d := range victim {
			victimHas[d.AckID] = true
		}
		var notDelivered []string // to the victim group
		for _, d := range all {
			if !victimHas[d.AckID] {
				notDelivered = append(notDelivered, d.AckID)
			}
		}

		attacks := []struct {
			name            string
			group, consumer string
			ids             []string
		}{
			{"ids the group was never handed", "victim", "", notDelivered},
			{"ids the group was never handed, as a made-up member", "victim", "mallory", notDelivered},
			{"another member's deliveries", "victim", "mallory", ackIDs(victim)},
			{"guessed ids past the end of the streams", "victim", "", []string{"0/99999999999999-0", "1/1-0", "3/18446744073709551615-18446744073709551615"}},
		}
		before := pendingIDs(t, rdb, "victim")
		for _, a := range attacks {
			t.Run(a.name, func(t *testing.T) {
				n, err := o.Ack(ctx, a.group, a.consumer, a.ids)
				if err != nil || n != 0 {
					t.Fatalf("Ack = %d, %v; want 0 acknowledged", n, err)
				}
				if after := pendingIDs(t, rdb, "victim"); fmt.Sprint(after) != fmt.Sprint(before) {
					t.Fatalf("the victim's pending entries changed:\nbefore %v\nafter  %v", before, after)
				}
			})
		}
		// The entries never handed to the victim group still reach it.
		rest := readAll(t, o, "victim", "alice", len(notDelivered))
		if len(victim)+len(rest) != 40 {
			t.Errorf("the victim group got %d + %d actions, want 40", len(victim), len(rest))
		}

		// The member it was delivered to acknowledges it, with or without
		// naming itself; twice counts once.
		if n, err := o.Ack(ctx, "victim", "alice", ackIDs(victim[:4])); err != nil || n != 4 {
			t.Errorf("alice acking 4 of hers = %d, %v; want 4", n, err)
		}
		ids := ackIDs(victim[4:])
		if n, err := o.Ack(ctx, "victim", "", append(ids, ids...)); err != nil || n != len(ids) {
			t.Errorf("the group acking %d of alice's, each twice = %d, %v; want %d", len(ids), n, err, len(ids))
		}
	})
}

// An action redelivered after the visibility timeout belongs to the member
// that took it over: the first member's late ack no longer counts, the
// new owner's does.
func TestAckAfterRedeliveryBelongsToTheNewOwner(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := t.Context()
		addActions(t, rdb, 0, 4)
		o := newOutbox(rdb, delivery.Options{Visibility: 100 * time.Millisecond})
		first := readAll(t, o, "g", "slow", 4)
		second := readAll(t, o, "g", "fast", 4) // claimed once idle past the timeout
		if n, err := o.Ack(ctx, "g", "slow", ackIDs(first)); err != nil || n != 0 {
			t.Errorf("the first member's late ack = %d, %v; want 0", n, err)
		}
		if n, err := o.Ack(ctx, "g", "fast", ackIDs(second)); err != nil || n != 4 {
			t.Errorf("the new owner's ack = %d, %v; want 4", n, err)
		}
	})
}

// Ack finds its ids among many other pending entries of the group, and
// an id it acknowledged before does not count again.
func TestAckAmongManyPendingEntries(t *testing.T) {
	rdb := standalone(t)
	ctx := t.Context()
	addActions(t, rdb, 0, 400) // 100 per stream
	o := newOutbox(rdb, delivery.Options{Count: 4000})
	ds := readAll(t, o, "g", "big", 400)
	byBucket := map[string][]string{}
	for _, d := range ds {
		b := d.AckID[:1]
		byBucket[b] = append(byBucket[b], d.AckID)
	}
	// The first and last entry of each stream, as the group: 98 pending
	// entries lie between them.
	var ids []string
	for _, bs := range byBucket {
		ids = append(ids, bs[0], bs[len(bs)-1])
	}
	if n, err := o.Ack(ctx, "g", "", ids); err != nil || n != len(ids) {
		t.Errorf("Ack of the ends of each stream = %d, %v; want %d", n, err, len(ids))
	}
	// Acknowledged already: nothing more.
	if n, err := o.Ack(ctx, "g", "big", ids); err != nil || n != 0 {
		t.Errorf("Ack again = %d, %v; want 0", n, err)
	}
	if got := len(pendingIDs(t, rdb, "g")); got != 400-len(ids) {
		t.Errorf("%d pending after the ack, want %d", got, 400-len(ids))
	}
}

// standalone is a standalone redis-server's client.
func standalone(t *testing.T) redis.UniversalClient { return backends[0].start(t) }

// A group that stopped reading holds trimming back until it has been idle
// for GroupIdle; then Trim cuts past it at the retention cutoff, counts
// what it removed that way, and a member coming back reads on from what
// is left.
func TestTrimCutsPastAnAbandonedGroup(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := t.Context()
		clock := newTestClock()
		addActions(t, rdb, 0, 100)
		o := newOutbox(rdb, delivery.Options{Count: 1000, GroupIdle: time.Hour, Now: clock.Now})
		total := func() int64 {
			var n int64
			for b := range buckets {
				n += rdb.XLen(ctx, outboxKey(b)).Val()
			}
			return n
		}
		trim := func(retention time.Duration) delivery.Trimmed {
			t.Helper()
			res, err := o.Trim(ctx, retention, clock.Now())
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		drain(t, o, "live", "m", 100, true)
		readAll(t, o, "gone", "m", 10) // then nobody reads for it again

		if res := trim(0); res.Removed != 0 || len(res.Abandoned) != 0 {
			t.Fatalf("Trim while the group is fresh = %+v; want nothing removed", res)
		}
		// Two hours on, "live" reads again and "gone" does not.
		clock.advance(2 * time.Hour)
		if _, err := o.Read(ctx, "live", "m"); err != nil {
			t.Fatal(err)
		}
		// The retention still keeps what is younger than it.
		if res := trim(24 * time.Hour); res.Removed != 0 || !slices.Equal(res.Abandoned, []string{"gone"}) {
			t.Fatalf("Trim with 24h retention = %+v; want nothing removed, gone abandoned", res)
		}
		res := trim(time.Hour) // the cutoff (now - 1h) is past every entry
		if res.Removed != 100 || res.PastAbandoned != 100 || !slices.Equal(res.Abandoned, []string{"gone"}) {
			t.Fatalf("Trim past the abandoned group = %+v; want 100 removed, all past it", res)
		}
		if n := total(); n != 0 {
			t.Fatalf("%d entries left", n)
		}

		// The group comes back: it is live again, gets the new actions,
		// and holds trimming back again.
		addActions(t, rdb, 100, 8)
		got := drain(t, o, "gone", "m2", 8, false)
		if len(got) != 8 {
			t.Fatalf("the returning group got %d of the 8 new actions", len(got))
		}
		drain(t, o, "live", "m", 8, true)
		if res := trim(0); res.Removed != 0 || len(res.Abandoned) != 0 {
			t.Errorf("Trim after the group came back = %+v; want nothing removed", res)
		}
	})
}

// A group without an activity record (made before records existed, or
// whose record was lost) is seen anew: abandoned GroupIdle after a Trim
// first saw it, not at once. With a negative GroupIdle no group is ever
// abandoned.
func TestGroupsWithoutActivityRecordAreSeenAnew(t *testing.T) {
	rdb := standalone(t)
	ctx := t.Context()
	clock := newTestClock()
	addActions(t, rdb, 0, 20)
	for b := range buckets {
		if err := rdb.XGroupCreate(ctx, outboxKey(b), "legacy", "0").Err(); err != nil {
			t.Fatal(err)
		}
	}
	never := newOutbox(rdb, delivery.Options{GroupIdle: -1, Now: clock.Now})
	o := newOutbox(rdb, delivery.Options{GroupIdle: time.Hour, Now: clock.Now})
	for _, step := range []struct {
		o             *delivery.Outbox
		advance       time.Duration
		wantAbandoned bool
	}{
		{o, 0, false},                 // first seen now
		{o, 59 * time.Minute, false},  // seen an hour ago, almost
		{never, 2 * time.Hour, false}, // never abandoned
		{o, 0, true},                  // idle for 2h59m
	} {
		res, err := step.o.Trim(ctx, 0, clock.advance(step.advance))
		if err != nil {
			t.Fatal(err)
		}
		if got := len(res.Abandoned) == 1; got != step.wantAbandoned || (got && res.Removed != 20) || (!got && res.Removed != 0) {
			t.Fatalf("at +%v: Trim = %+v; want abandoned %v", step.advance, res, step.wantAbandoned)
		}
	}
}

func TestGroupsListAndDelete(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := t.Context()
		clock := newTestClock()
		addActions(t, rdb, 0, 40)
		o := newOutbox(rdb, delivery.Options{Count: 8, GroupIdle: time.Hour, Now: clock.Now})
		other := newOutbox(rdb, delivery.Options{Count: 8, Now: clock.Now}) // another server
		start := clock.Now()
		readAll(t, o, "sms", "a", 8)
		readAll(t, other, "sms", "b", 8)
		readAll(t, o, "old", "a", 4)
		clock.advance(90 * time.Minute)
		readAll(t, o, "sms", "a", 1)
		now := clock.advance(time.Minute)
		got, err := o.Groups(ctx, now)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 2 || got[0].Name != "old" || got[1].Name != "sms" {
			t.Fatalf("Groups = %+v; want old and sms", got)
		}
		old, sms := got[0], got[1]
		if old.Pending < 4 || old.Pending+old.Undelivered != 40 || old.Consumers != 1 || !old.LastActive.Equal(start.Truncate(time.Millisecond)) || !old.Abandoned || old.Idle != 91*time.Minute {
			t.Errorf("old = %+v; want 40 actions in its backlog, 1 member, last active at the start, abandoned", old)
		}
		if sms.Pending < 17 || sms.Pending+sms.Undelivered != 40 || sms.Consumers != 2 || sms.Abandoned || sms.Idle != time.Minute {
			t.Errorf("sms = %+v; want 2 members, 40 actions in its backlog, active a minute ago", sms)
		}

		n, err := o.DeleteGroup(ctx, "old")
		if err != nil || n != buckets {
			t.Fatalf("DeleteGroup = %d, %v; want %d streams", n, err, buckets)
		}
		if _, err := o.DeleteGroup(ctx, "old"); !errors.Is(err, delivery.ErrGroupNotFound) {
			t.Errorf("DeleteGroup again: %v; want ErrGroupNotFound", err)
		}
		if _, err := o.DeleteGroup(ctx, "never-made"); !errors.Is(err, delivery.ErrGroupNotFound) {
			t.Errorf("DeleteGroup of an unknown group: %v; want ErrGroupNotFound", err)
		}
		if got, err := o.Groups(ctx, now); err != nil || len(got) != 1 || got[0].Name != "sms" {
			t.Errorf("Groups after the delete = %+v, %v; want sms alone", got, err)
		}
		if rdb.HExists(ctx, redisstore.GroupsKey, "old").Val() {
			t.Error("the deleted group's activity record is left")
		}

		// Deleted while another server's member reads: its next read
		// fails, and the one after makes the group again, from the oldest
		// action kept.
		if _, err := other.DeleteGroup(ctx, "sms"); err != nil {
			t.Fatal(err)
		}
		if _, err := o.Read(ctx, "sms", "a"); err == nil {
			t.Log("the read after the delete found the group made again") // the claim may have dropped it first
		}
		if again := readAll(t, o, "sms", "a", 40); len(again) != 40 {
			t.Errorf("the group made again got %d actions, want 40", len(again))
		}
	})
}
