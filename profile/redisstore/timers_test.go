package redisstore_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// waitType is the event type the timer tests' step schedules a timer for,
// due a minute after the event.
const waitType = "wait_me"

// timerStep applies events, scheduling a timer for each wait_me event.
func timerStep() profile.Step {
	l := profile.Limits{}.WithDefaults()
	return func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		var o profile.Outcome
		for i := range events {
			e := events[i]
			r := p.ApplyEvent(&e, now, l)
			o.Results = append(o.Results, r)
			if r.Status != profile.Applied {
				continue
			}
			o.Changed = true
			if e.Type == waitType {
				due := e.OccurredAt.Add(time.Minute)
				p.Schedule(profile.Timer{Trigger: "t", Due: due, Wake: due, From: e.OccurredAt, Event: e}, l.MaxTimers)
			}
		}
		return o
	}
}

// fireStep emits one action per due timer.
func fireStep(p *profile.Profile, _ []profile.Event, now time.Time) profile.Outcome {
	var o profile.Outcome
	for _, t := range p.TakeDue(now) {
		o.Changed = true
		o.Actions = append(o.Actions, profile.Action{
			ID: profile.ActionID(p.UserID, t.Event.ID, t.Trigger), UserID: p.UserID, TriggerID: t.Trigger,
			Channel: "push", Template: "x", TriggeredAt: now, DueAt: t.Due, EventID: t.Event.ID,
		})
	}
	return o
}

func scheduleUsers(t *testing.T, env storeEnv, n int, at time.Time) []string {
	t.Helper()
	var users []userEvents
	var ids []string
	for i := range n {
		u := fmt.Sprintf("tu-%d", i)
		ids = append(ids, u)
		users = append(users, userEvents{UserID: u, Events: []profile.Event{uev(u, "w-"+u, waitType, at)}})
	}
	for _, o := range applyUsers(t.Context(), env.store, users, timerStep()) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
	}
	return ids
}

func TestTimersDueIndex(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	ctx := t.Context()
	at := storeNow.Add(-time.Minute) // due at storeNow, the store's clock
	users := scheduleUsers(t, env, 50, at)
	if n, err := env.store.Pending(ctx); err != nil || n != 50 {
		t.Fatalf("Pending = %d, %v; want 50", n, err)
	}
	// Not due yet.
	if got, shards, err := env.store.Due(ctx, at.Add(59*time.Second), 1000); err != nil || len(got) != 0 || len(shards) != 0 {
		t.Fatalf("Due before the due time: %v %v %v", got, shards, err)
	}
	due, shards, err := env.store.Due(ctx, at.Add(time.Minute), 1000)
	if err != nil || len(due) != len(users) {
		t.Fatalf("Due: %d users, %v; want %d", len(due), err, len(users))
	}
	out := env.store.Fire(ctx, due, fireStep)
	for _, o := range out.Events {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
	}
	if len(out.Actions) != len(users) {
		t.Fatalf("fired %d actions, want %d", len(out.Actions), len(users))
	}
	if err := env.store.RaiseDue(ctx, shards); err != nil {
		t.Fatal(err)
	}
	if n, _ := env.store.Pending(ctx); n != 0 {
		t.Errorf("Pending = %d after firing, want 0", n)
	}
	// The indexes are gone with their shards: an idle poll reads nothing.
	for b := range env.store.Layout().Buckets() {
		if n := env.rdb.Exists(ctx, env.store.Layout().DueIndexKey(b)).Val(); n != 0 {
			t.Errorf("bucket %d: the due index is left", b)
		}
	}
	// Firing again fires nothing: the timers left with the transaction.
	again := env.store.Fire(ctx, due, fireStep)
	if len(again.Actions) != 0 {
		t.Errorf("a second firing emitted %d actions", len(again.Actions))
	}
	if got := allOutboxActions(t, env); len(got) != len(users) {
		t.Errorf("the outboxes hold %d actions, want %d", len(got), len(users))
	}
}

// TestTimersTwoStoresFireOnce: two stores (two nudged instances) fire the
// same due users at once; each timer fires once, on the profile's WATCH.
func TestTimersTwoStoresFireOnce(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	other := redisstore.New(env.srv.Client(t), redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})
	ctx := t.Context()
	users := scheduleUsers(t, env, 200, storeNow.Add(-2*time.Minute))
	var wg sync.WaitGroup
	for _, s := range []*redisstore.Store{env.store, other} {
		wg.Go(func() {
			due, shards, err := s.Due(ctx, storeNow, 1000)
			if err != nil {
				t.Error(err)
				return
			}
			for _, o := range s.Fire(ctx, due, fireStep).Events {
				if o.Err != nil {
					t.Error(o.Err)
				}
			}
			if err := s.RaiseDue(ctx, shards); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got := allOutboxActions(t, env)
	seen := map[string]int{}
	for _, a := range got {
		seen[a.UserID]++
	}
	for _, u := range users {
		if seen[u] != 1 {
			t.Errorf("user %s: %d actions, want 1", u, seen[u])
		}
	}
	if len(got) != len(users) {
		t.Errorf("%d actions for %d users", len(got), len(users))
	}
}

// TestTimersStaleEntries: a due entry whose profile expired or was erased
// is removed by its firing; erasure removes the entry itself.
func TestTimersStaleEntries(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	ctx := t.Context()
	users := scheduleUsers(t, env, 2, storeNow.Add(-2*time.Minute))
	l := env.store.Layout()
	// An expired profile: its key gone, its entry left.
	env.rdb.Del(ctx, l.ProfileKey(users[0]))
	if _, err := env.store.Delete(ctx, users[1]); err != nil {
		t.Fatal(err)
	}
	if n, _ := env.store.Pending(ctx); n != 1 {
		t.Fatalf("Pending = %d, want 1 (the erased user's entry is gone)", n)
	}
	due, shards, err := env.store.Due(ctx, storeNow, 10)
	if err != nil || len(due) != 1 || due[0] != users[0] {
		t.Fatalf("Due = %v, %v", due, err)
	}
	if out := env.store.Fire(ctx, due, fireStep); len(out.Actions) != 0 || out.Events[0].Err != nil {
		t.Fatalf("firing an expired profile: %+v", out)
	}
	if err := env.store.RaiseDue(ctx, shards); err != nil {
		t.Fatal(err)
	}
	if n, _ := env.store.Pending(ctx); n != 0 {
		t.Errorf("Pending = %d, want 0", n)
	}
	if n := env.rdb.Exists(ctx, l.ProfileKey(users[0])).Val(); n != 0 {
		t.Error("firing an expired profile created one")
	}
}

// TestTimersKeepTheProfile: a profile with a timer due past its TTL is
// kept until the timer can fire.
func TestTimersKeepTheProfile(t *testing.T) {
	env := newStore(t, redisstore.Options{TTL: time.Hour})
	ctx := t.Context()
	user := "far"
	step := func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		due := now.Add(48 * time.Hour)
		p.Schedule(profile.Timer{Trigger: "t", Due: due, Wake: due, Event: profile.Event{ID: "e"}}, 10)
		return profile.Outcome{Changed: true}
	}
	if _, err := env.store.Update(ctx, user, func(p *profile.Profile, now time.Time) bool { return step(p, nil, now).Changed }); err != nil {
		t.Fatal(err)
	}
	ttl := env.rdb.TTL(ctx, env.store.Layout().ProfileKey(user)).Val()
	if ttl < 48*time.Hour {
		t.Errorf("TTL %v, want at least the 48h to the timer (plus the store's TTL)", ttl)
	}
}

// allOutboxActions reads every action of every bucket's outbox.
func allOutboxActions(t *testing.T, env storeEnv) []profile.Action {
	t.Helper()
	var out []profile.Action
	for _, key := range env.store.Layout().OutboxKeys() {
		msgs, err := env.rdb.XRange(t.Context(), key, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			a, err := redisstore.DecodeAction(m.Values)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, a)
		}
	}
	return out
}

// TestTimerShardsSpreadABucket: a bucket's users spread over every timer
// shard (a hash correlated with the bucket's put them all in one).
func TestTimerShardsSpreadABucket(t *testing.T) {
	l := redisstore.NewLayout(1024)
	per := map[int]int{}
	n := 0
	for i := 0; n < 1600; i++ {
		u := fmt.Sprintf("user-%d", i)
		if l.Bucket(u) != 7 {
			continue
		}
		n++
		per[l.TimerShard(u)]++
	}
	for k := range redisstore.TimerShards {
		if per[k] < 50 || per[k] > 150 {
			t.Errorf("shard %d holds %d of bucket 7's 1600 users, want about 100", k, per[k])
		}
	}
}
