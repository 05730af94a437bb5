package integration

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// This file is about problems of one key: a profile that cannot be decoded,
// a key of another Redis type, a profile far larger than the rest. Each
// concerns its user alone: the other users' events are applied and their
// decisions are fresh.

// TestCorruptProfileFailsItsUserOnly: a batch mixing a user whose stored
// profile is garbage with a healthy user, over Publish and Stream: the
// healthy events are applied (and trigger), the broken user's are rejected
// one by one with the reason, nothing else fails, and the garbage is left
// for an operator to see.
func TestCorruptProfileFailsItsUserOnly(t *testing.T) {
	forBackends(t, func(t *testing.T, b backend) {
		e := b.newEnv(t, redisstore.Options{})
		garbage := []byte("this is not a profile")
		key := e.store.Layout().ProfileKey("broken")
		if err := e.rdb.Set(ctxT(t), key, garbage, 0).Err(); err != nil {
			t.Fatal(err)
		}
		batch := func(healthy string) []*nudgev1.Event {
			return []*nudgev1.Event{
				ev("broken", "view", "phones", 9*time.Minute),
				ev(healthy, "view", "phones", 9*time.Minute),
				ev(healthy, "view", "phones", 6*time.Minute),
				ev("broken", "purchase", "phones", 5*time.Minute),
				ev(healthy, "view", "phones", 3*time.Minute),
			}
		}
		check := func(t *testing.T, results []*nudgev1.EventResult, actions []*nudgev1.Action, healthy string) {
			t.Helper()
			for i, r := range results {
				if i == 0 || i == 3 {
					if r.Status != nudgev1.EventStatus_EVENT_STATUS_REJECTED || !strings.Contains(r.Reason, "stored profile cannot be read") ||
						!strings.Contains(r.Reason, profile.ErrCorrupt.Error()) {
						t.Errorf("broken user's event %d: %s %q, want rejected with the reason", i, r.Status, r.Reason)
					}
					continue
				}
				wantStatus(t, r, nudgev1.EventStatus_EVENT_STATUS_APPLIED)
			}
			if len(actions) != 1 || actions[0].UserId != healthy {
				t.Errorf("actions %v, want the healthy user's coupon", actions)
			}
		}

		resp := e.publish(t, batch("healthy-1")...)
		check(t, resp.Results, resp.Actions, "healthy-1")

		stream, err := e.ingest.Stream(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&nudgev1.StreamRequest{Seq: 1, Events: batch("healthy-2")}); err != nil {
			t.Fatal(err)
		}
		sresp, err := stream.Recv()
		if err != nil {
			t.Fatalf("Stream: %v, want the batch answered", err)
		}
		check(t, sresp.Results, sresp.Actions, "healthy-2")
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}

		if got, err := e.rdb.Get(ctxT(t), key).Bytes(); err != nil || string(got) != string(garbage) {
			t.Errorf("the broken key now holds %q, %v; want it untouched", got, err)
		}
		for _, u := range []string{"healthy-1", "healthy-2"} {
			if n := e.profile(t, u).Totals["view"]; n != 3 {
				t.Errorf("%s: %d views, want 3", u, n)
			}
		}
		_, err = e.prof.GetProfile(ctxT(t), &nudgev1.GetProfileRequest{UserId: "broken"})
		wantCode(t, err, codes.DataLoss, "corrupt")
	})
}

// TestBreakerIgnoresBadKeys: while a user with a ~200 KB profile and a
// user whose key is a Redis list are asked for decisions in a loop (with
// the default 10 ms budget), a healthy user decides at 200/s: none of its
// decisions is degraded. Its own budget is large, so only the breaker,
// which one user's problem must not open, could degrade it.
func TestBreakerIgnoresBadKeys(t *testing.T) {
	// The healthy user's budget is far above any stall of the machine, so
	// only the breaker (which fails reads at once) can degrade it.
	e := newEnvConfig(t, redisstore.Options{}, server.Config{DefaultBudget: 10 * time.Millisecond, MaxBudget: time.Minute})
	// What 100,000 views over the last day in 60 categories build: every
	// minute of every series, and the full dedup memory. (Built directly:
	// applying 100k events one by one takes minutes under -race.)
	now := time.Now()
	huge := &profile.Profile{Version: 1, UpdatedAt: now, Totals: map[string]uint64{"view": 100_000}}
	last := now.Unix() / 60
	for c := range 60 {
		s := profile.Series{Type: "view", Category: fmt.Sprintf("c%d", c)}
		for m := last - 1439; m <= last; m++ {
			s.Minutes = append(s.Minutes, profile.Bucket{At: m, Count: 1 + uint32(m%3)})
		}
		huge.Series = append(huge.Series, s)
	}
	day := profile.SeenDay{Day: now.Unix() / 86400}
	for i := range profile.DefaultLimits().DedupMax {
		day.Hashes = append(day.Hashes, profile.HashEventID(fmt.Sprintf("h%d", i)))
	}
	slices.Sort(day.Hashes)
	huge.Seen = []profile.SeenDay{day}
	raw := profile.Encode(huge)
	if len(raw) < 150_000 {
		t.Fatalf("the huge profile is %d bytes, want over 150 KB", len(raw))
	}
	ctx := ctxT(t)
	if err := e.rdb.Set(ctx, e.store.Layout().ProfileKey("huge"), raw, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.rdb.RPush(ctx, e.store.Layout().ProfileKey("listed"), "not", "a", "profile").Err(); err != nil {
		t.Fatal(err)
	}
	e.publish(t, ev("healthy", "view", "phones", time.Minute))

	stop := make(chan struct{})
	var bad atomic.Int64
	var wg sync.WaitGroup
	for _, user := range []string{"huge", "listed"} {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := e.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: user, Channel: "sms"})
				if err != nil {
					t.Errorf("GetDecision(%s): %v", user, err)
					return
				}
				if user == "listed" && !resp.GetDecision().GetDegraded() {
					t.Errorf("listed: %v, want degraded (its key is a list)", resp.GetDecision())
					return
				}
				bad.Add(1)
			}
		})
	}
	const decisions = 400 // 2 s at 200/s
	tick := time.NewTicker(5 * time.Millisecond)
	var degraded []string
	for range decisions {
		<-tick.C
		resp, err := e.decide.GetDecision(ctx, &nudgev1.GetDecisionRequest{UserId: "healthy", Channel: "sms", Budget: durationpb.New(30 * time.Second)})
		if err != nil {
			t.Fatalf("GetDecision(healthy): %v", err)
		}
		if d := resp.GetDecision(); d.GetDegraded() {
			degraded = append(degraded, d.GetReasons()[0].GetMessage())
		}
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	if len(degraded) > 0 {
		t.Errorf("%d of %d healthy decisions degraded, first: %q", len(degraded), decisions, degraded[0])
	}
	if n := bad.Load(); n < 50 {
		t.Errorf("only %d decisions for the bad keys ran alongside: the test did not load the breaker", n)
	}
	t.Logf("%d decisions for the bad keys alongside %d healthy ones", bad.Load(), decisions)
}
