package delivery_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/profile"
)

// tailWait bounds every wait of the tail tests for something that should
// happen: a failure, not a timing assertion.
const tailWait = 20 * time.Second

// startTail runs o.Tail in a goroutine, handing entries to the returned
// channel; done receives Tail's result.
func startTail(ctx context.Context, o *delivery.Outbox) (entries <-chan delivery.TailEntry, done <-chan error) {
	ch := make(chan delivery.TailEntry)
	errc := make(chan error, 1)
	go func() {
		errc <- o.Tail(ctx, func(e delivery.TailEntry) error {
			select {
			case ch <- e:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	return ch, errc
}

// addMarker writes a well-formed action "marker-<n>" to bucket 0's stream.
func addMarker(t *testing.T, rdb redis.UniversalClient, n int) {
	t.Helper()
	err := rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: outboxKey(0), Values: []any{
		"action_id", fmt.Sprintf("marker-%d", n), "user_id", "u", "trigger_id", "t", "channel", "sms",
		"template", "tpl", "payload", "{}", "triggered_at", "2026-11-24T12:00:00Z", "event_id", "e",
	}}).Err()
	if err != nil {
		t.Fatal(err)
	}
}

func isMarker(e delivery.TailEntry) bool { return strings.HasPrefix(e.Action.ID, "marker-") }

// awaitTailing writes markers, one per 20ms, until the tail reports one:
// Tail has no "started" signal, and only an entry seen proves it fixed its
// start points. It fails the test if the tail reports anything but
// markers first (entries written before Tail are not to be seen).
func awaitTailing(t *testing.T, rdb redis.UniversalClient, entries <-chan delivery.TailEntry, done <-chan error) {
	t.Helper()
	deadline := time.NewTimer(tailWait)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		addMarker(t, rdb, n)
		select {
		case e := <-entries:
			if !isMarker(e) {
				t.Fatalf("tail reported %s %s (%q) from before it started", e.Stream, e.ID, e.Action.ID)
			}
			return
		case err := <-done:
			t.Fatalf("Tail returned %v before reporting anything", err)
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("tail reported no marker in %v", tailWait)
		}
	}
}

// streamID parses a stream entry id, for ordering.
func streamID(t *testing.T, id string) [2]uint64 {
	t.Helper()
	ms, seq, _ := strings.Cut(id, "-")
	a, err1 := strconv.ParseUint(ms, 10, 64)
	b, err2 := strconv.ParseUint(seq, 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("bad stream id %q", id)
	}
	return [2]uint64{a, b}
}

func less(a, b [2]uint64) bool { return a[0] < b[0] || a[0] == b[0] && a[1] < b[1] }

// groupState is what a consumer group holds on each stream.
func groupState(t *testing.T, rdb redis.UniversalClient, group string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for b := range buckets {
		k := outboxKey(b)
		p, err := rdb.XPending(t.Context(), k, group).Result()
		if err != nil {
			t.Fatal(err)
		}
		gs, err := rdb.XInfoGroups(t.Context(), k).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range gs {
			if g.Name == group {
				out[k] = fmt.Sprintf("pending %d, last delivered %s", p.Count, g.LastDeliveredID)
			}
		}
	}
	return out
}

// Tail reports the actions written after it starts, each stream in order,
// none from before, and a malformed entry as such; it takes nothing from
// a consumer group; each's error ends it; ctx's end ends it with nil. On a
// cluster, the streams are on several masters.
func TestTailFollowsTheOutboxWithoutConsuming(t *testing.T) {
	forBackends(t, func(t *testing.T, rdb redis.UniversalClient) {
		ctx := t.Context()
		if cc, ok := rdb.(*redis.ClusterClient); ok {
			masters := map[string]bool{}
			for b := range buckets {
				m, err := cc.MasterForKey(ctx, outboxKey(b))
				if err != nil {
					t.Fatal(err)
				}
				masters[m.Options().Addr] = true
			}
			if len(masters) < 2 {
				t.Fatalf("the %d outbox streams are on %d master(s); the test needs them spread", buckets, len(masters))
			}
		}
		addActions(t, rdb, 0, 20) // before the tail
		o := newOutbox(rdb, delivery.Options{})
		// A group holds some actions unacknowledged.
		if got := drain(t, o, "g", "m", 8, false); len(got) < 8 {
			t.Fatalf("group read %d actions, want at least 8", len(got))
		}
		before := groupState(t, rdb, "g")

		tctx, cancel := context.WithCancel(ctx)
		defer cancel()
		entries, done := startTail(tctx, o)
		awaitTailing(t, rdb, entries, done)

		const from, n = 100, 40
		addActions(t, rdb, from, n)
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: outboxKey(1), Values: []any{"not", "an action"}}).Err(); err != nil {
			t.Fatal(err)
		}
		// Per stream: the last id seen. Ids in order are actions in order:
		// addActions writes each stream's actions in number order.
		last := map[string][2]uint64{}
		seen, malformed := map[string]bool{}, 0
		deadline := time.NewTimer(tailWait)
		defer deadline.Stop()
		for len(seen) < n || malformed == 0 {
			var e delivery.TailEntry
			select {
			case e = <-entries:
			case err := <-done:
				t.Fatalf("Tail returned %v", err)
			case <-deadline.C:
				t.Fatalf("tail reported %d of %d actions and %d malformed entries in %v", len(seen), n, malformed, tailWait)
			}
			id := streamID(t, e.ID)
			if prev, ok := last[e.Stream]; ok && !less(prev, id) {
				t.Errorf("%s: %s after %v: out of order", e.Stream, e.ID, prev)
			}
			last[e.Stream] = id
			switch {
			case e.Err != nil:
				if !errors.Is(e.Err, profile.ErrCorrupt) || e.Stream != outboxKey(1) {
					t.Errorf("malformed entry reported as %s: %v", e.Stream, e.Err)
				}
				malformed++
			case isMarker(e):
			default:
				k, err := strconv.Atoi(strings.TrimPrefix(e.Action.ID, "a"))
				if err != nil || k < from || k >= from+n {
					t.Fatalf("tail reported %q (%s %s), not written after it started", e.Action.ID, e.Stream, e.ID)
				}
				if want := outboxKey(k % buckets); e.Stream != want {
					t.Errorf("%s reported on %s, written to %s", e.Action.ID, e.Stream, want)
				}
				if seen[e.Action.ID] {
					t.Errorf("%s reported twice", e.Action.ID)
				}
				seen[e.Action.ID] = true
			}
		}
		if malformed != 1 {
			t.Errorf("%d malformed entries reported, want 1", malformed)
		}
		if after := groupState(t, rdb, "g"); fmt.Sprint(after) != fmt.Sprint(before) {
			t.Errorf("tailing changed the group:\nbefore %v\nafter  %v", before, after)
		}

		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Tail after its context ended = %v, want nil", err)
			}
		case <-time.After(tailWait):
			t.Fatalf("Tail still running %v after its context ended", tailWait)
		}

		// each's error ends the tail and is what Tail returns.
		errStop := errors.New("stop")
		stopped := make(chan error, 1)
		go func() { stopped <- o.Tail(ctx, func(delivery.TailEntry) error { return errStop }) }()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			addMarker(t, rdb, 1000+i)
			select {
			case err := <-stopped:
				if err != errStop {
					t.Errorf("Tail whose each failed = %v, want each's error", err)
				}
				return
			case <-tick.C:
			case <-deadline.C:
				t.Fatalf("Tail whose each fails did not return in %v", tailWait)
			}
		}
	})
}
