package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// groupBatch returns n users u-<i> with, for each, one trigger_me event
// and one view event; ids are prefixed with tag.
func groupBatch(n int, tag string) []userEvents {
	users := make([]userEvents, n)
	for i := range users {
		u := fmt.Sprintf("u-%d", i)
		users[i] = userEvents{UserID: u, Events: []profile.Event{
			uev(u, tag+"-t", triggerType, storeNow), uev(u, tag+"-v", "view", storeNow),
		}}
	}
	return users
}

// outboxTotal is the number of entries in all the store's outboxes.
func outboxTotal(t *testing.T, env storeEnv) int64 {
	t.Helper()
	var n int64
	for b := range env.store.Layout().Buckets() {
		x, err := env.rdb.XLen(t.Context(), env.store.Layout().OutboxKey(b)).Result()
		if err != nil {
			t.Fatal(err)
		}
		n += x
	}
	return n
}

// TestApplyGroupsTransactions commits 500 users × 2 events in
// ceil(500/64) = 8 transactions, then re-applies the batch: every event
// is a duplicate and nothing is written (what a retry after a lost EXEC
// reply sees).
func TestApplyGroupsTransactions(t *testing.T) {
	const n = 500
	env := newStore(t, redisstore.Options{Shards: 1})
	step := triggerStep(profile.Limits{})
	users := groupBatch(n, "e")
	out := applyUsers(t.Context(), env.store, users, step)
	if len(out) != n {
		t.Fatalf("%d outcomes for %d users", len(out), n)
	}
	for i, o := range out {
		if o.Err != nil || o.Version != 1 || len(o.Actions) != 1 ||
			fmt.Sprint(statuses(o.Results)) != fmt.Sprint([]profile.Status{profile.Applied, profile.Applied}) {
			t.Fatalf("user %d: %+v, want both events applied at version 1 with one action", i, o)
		}
		if o.Actions[0].UserID != users[i].UserID {
			t.Fatalf("outcome %d has the action of %s, want %s", i, o.Actions[0].UserID, users[i].UserID)
		}
	}
	if s := env.store.Stats(); s != (redisstore.Stats{Transactions: (n + 63) / 64}) {
		t.Errorf("Stats() = %+v, want %d transactions and nothing else", s, (n+63)/64)
	}
	ps, errs := env.store.GetMany(t.Context(), []string{"u-0", "u-63", "u-64", "u-499"}, nil)
	for i, p := range ps {
		if errs[i] != nil || p.Total(triggerType) != 1 || p.Total("view") != 1 || p.Version != 1 {
			t.Errorf("profile %d: %+v, %v; want one of each event at version 1", i, p, errs[i])
		}
	}
	if got := outboxTotal(t, env); got != n {
		t.Errorf("outboxes hold %d entries, want %d", got, n)
	}

	before := rawProfile(t, env, "u-7")
	again := applyUsers(t.Context(), env.store, users, step)
	for i, o := range again {
		if o.Err != nil || o.Version != 1 || len(o.Actions) != 0 ||
			fmt.Sprint(statuses(o.Results)) != fmt.Sprint([]profile.Status{profile.Duplicate, profile.Duplicate}) {
			t.Fatalf("re-applied user %d: %+v, want duplicates at version 1", i, o)
		}
	}
	if s := env.store.Stats(); s.Transactions != (n+63)/64 {
		t.Errorf("Stats().Transactions = %d after a batch of duplicates, want %d", s.Transactions, (n+63)/64)
	}
	if got := rawProfile(t, env, "u-7"); !bytes.Equal(got, before) {
		t.Errorf("a duplicate batch rewrote a profile")
	}
	if got := outboxTotal(t, env); got != n {
		t.Errorf("outboxes hold %d entries after duplicates, want %d", got, n)
	}
}

// groupInterfering wraps step so that its first n calls on user write
// other to the user's key with a second client, between the group's read
// and its EXEC. calls counts the step's calls on user.
func groupInterfering(t *testing.T, env storeEnv, user string, other []byte, n int32, step profile.Step) (profile.Step, *atomic.Int32) {
	intruder := env.srv.Client(t)
	var calls atomic.Int32
	return func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		if events[0].UserID == user && calls.Add(1) <= n {
			if err := intruder.Set(context.Background(), env.store.Layout().ProfileKey(user), other, 0).Err(); err != nil {
				t.Errorf("intruding write: %v", err)
			}
		}
		return step(p, events, now)
	}, &calls
}

// TestApplyGroupsConflictSplits has another client write one user of a
// 20-user group between the group's read and its EXEC: the EXEC aborts, the
// group splits in halves, and both commit exactly once.
func TestApplyGroupsConflictSplits(t *testing.T) {
	intruder := profile.Encode(&profile.Profile{Version: 41, Totals: map[string]uint64{"other": 1}})
	const hot = "u-7"

	t.Run("one conflict", func(t *testing.T) {
		env := newStore(t, redisstore.Options{Shards: 1})
		step, calls := groupInterfering(t, env, hot, intruder, 1, triggerStep(profile.Limits{}))
		users := groupBatch(20, "e")
		out := applyUsers(t.Context(), env.store, users, step)
		for i, o := range out {
			want := uint64(1)
			if users[i].UserID == hot {
				want = 42
			}
			if o.Err != nil || o.Version != want || len(o.Actions) != 1 || o.Results[0].Status != profile.Applied {
				t.Errorf("user %s: %+v, want applied at version %d", users[i].UserID, o, want)
			}
		}
		if calls.Load() != 2 {
			t.Errorf("step ran %d times on the contended user, want 2", calls.Load())
		}
		p, err := env.store.Get(t.Context(), hot)
		if err != nil || p.Total("other") != 1 || p.Total(triggerType) != 1 {
			t.Errorf("contended profile %+v, %v: the retry must build on the intruder's write", p, err)
		}
		if s := env.store.Stats(); s != (redisstore.Stats{Transactions: 2, Conflicts: 1}) {
			t.Errorf("Stats() = %+v, want 1 conflict and 2 transactions (the halves)", s)
		}
		if got := outboxTotal(t, env); got != 20 {
			t.Errorf("outboxes hold %d entries, want 20 (the aborted EXEC wrote none)", got)
		}
	})

	t.Run("contended user exhausted alone", func(t *testing.T) {
		env := newStore(t, redisstore.Options{MaxAttempts: 3, Shards: 1})
		step, calls := groupInterfering(t, env, hot, intruder, 1<<30, triggerStep(profile.Limits{}))
		users := groupBatch(8, "e") // u-7 is last: 8 -> 4 -> 2 -> 1
		out := applyUsers(t.Context(), env.store, users, step)
		for i, o := range out[:7] {
			if o.Err != nil || o.Version != 1 {
				t.Errorf("user %d: %+v, want committed: a contended neighbour must not fail it", i, o)
			}
		}
		if err := out[7].Err; !errors.Is(err, profile.ErrConflict) || len(out[7].Results) != 0 {
			t.Errorf("contended user: %+v, want an empty outcome wrapping ErrConflict", out[7])
		}
		// 3 attempts shared with neighbours, then MaxAttempts alone.
		if calls.Load() != 6 {
			t.Errorf("step ran %d times on the contended user, want 6", calls.Load())
		}
		if got := rawProfile(t, env, hot); !bytes.Equal(got, intruder) {
			t.Errorf("the contended user's profile is not the intruder's")
		}
		if s := env.store.Stats(); s != (redisstore.Stats{Transactions: 3, Conflicts: 6, Exhausted: 1}) {
			t.Errorf("Stats() = %+v, want 3 transactions, 6 conflicts, 1 exhausted", s)
		}
		if got := outboxTotal(t, env); got != 7 {
			t.Errorf("outboxes hold %d entries, want 7", got)
		}
	})
}

// TestApplyGroupsFailAlone checks that a user whose profile is corrupt, or
// whose step panics, fails alone: the rest of its group commits, and
// nothing of that user is written.
func TestApplyGroupsFailAlone(t *testing.T) {
	const bad = "u-3"
	tests := []struct {
		name    string
		setup   func(t *testing.T, env storeEnv)
		step    profile.Step
		wantErr func(error) bool
	}{
		{"corrupt profile", func(t *testing.T, env storeEnv) {
			if err := env.rdb.Set(t.Context(), env.store.Layout().ProfileKey(bad), "garbage", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}, triggerStep(profile.Limits{}), func(err error) bool {
			return errors.Is(err, profile.ErrCorrupt) && strings.Contains(err.Error(), bad)
		}},
		{"step panics", func(*testing.T, storeEnv) {}, func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
			if events[0].UserID == bad {
				panic("boom")
			}
			return triggerStep(profile.Limits{})(p, events, now)
		}, func(err error) bool {
			var pe *profile.PanicError
			return errors.As(err, &pe) && pe.Value == "boom"
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newStore(t, redisstore.Options{Shards: 1})
			tt.setup(t, env)
			before, _ := env.rdb.Get(t.Context(), env.store.Layout().ProfileKey(bad)).Bytes()
			users := groupBatch(10, "e")
			out := applyUsers(t.Context(), env.store, users, tt.step)
			for i, o := range out {
				if users[i].UserID == bad {
					if !tt.wantErr(o.Err) || len(o.Results) != 0 || o.Version != 0 {
						t.Errorf("failing user: %+v (err %v)", o, o.Err)
					}
					continue
				}
				if o.Err != nil || o.Version != 1 || len(o.Actions) != 1 {
					t.Errorf("user %s: %+v, want committed", users[i].UserID, o)
				}
			}
			after, _ := env.rdb.Get(t.Context(), env.store.Layout().ProfileKey(bad)).Bytes()
			if !bytes.Equal(after, before) {
				t.Errorf("the failing user's key changed from %q to %q", before, after)
			}
			if got := outboxActions(t, env, bad); len(got) != 0 {
				t.Errorf("%d outbox entries of the failing user", len(got))
			}
			if got := outboxTotal(t, env); got != 9 {
				t.Errorf("outboxes hold %d entries, want 9", got)
			}
			if s := env.store.Stats(); s != (redisstore.Stats{Transactions: 1}) {
				t.Errorf("Stats() = %+v, want 1 transaction and no retry", s)
			}
		})
	}
}

// loseExecReply is a go-redis hook that, once armed, fails the first
// MULTI/EXEC pipeline after Redis has run it: a reply lost on the way back.
type loseExecReply struct{ armed atomic.Bool }

func (*loseExecReply) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (*loseExecReply) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *loseExecReply) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		if err == nil && len(cmds) > 0 && cmds[0].Name() == "multi" && h.armed.CompareAndSwap(true, false) {
			return errors.New("simulated lost EXEC reply")
		}
		return err
	}
}

// TestApplyGroupsLostExecReply loses the reply of a group's applied EXEC:
// the retry re-reads the group's profiles and answers DUPLICATE for every
// event, so nothing counts twice and no action is emitted twice.
func TestApplyGroupsLostExecReply(t *testing.T) {
	env := newStore(t, redisstore.Options{Shards: 1})
	hook := &loseExecReply{}
	env.rdb.AddHook(hook)
	hook.armed.Store(true)
	users := groupBatch(10, "e")
	out := applyUsers(t.Context(), env.store, users, triggerStep(profile.Limits{}))
	for i, o := range out {
		if o.Err != nil || o.Version != 1 || len(o.Actions) != 0 ||
			fmt.Sprint(statuses(o.Results)) != fmt.Sprint([]profile.Status{profile.Duplicate, profile.Duplicate}) {
			t.Errorf("user %d: %+v, want duplicates at version 1 (the lost EXEC applied them)", i, o)
		}
	}
	if hook.armed.Load() {
		t.Fatal("no EXEC reply was lost")
	}
	p, err := env.store.Get(t.Context(), "u-4")
	if err != nil || p.Total(triggerType) != 1 || p.Version != 1 {
		t.Errorf("Get = %+v, %v; want the events counted once", p, err)
	}
	if got := outboxTotal(t, env); got != 10 {
		t.Errorf("outboxes hold %d entries, want 10 (one per trigger event)", got)
	}
	if s := env.store.Stats(); s.ErrorRetries != 1 || s.Conflicts != 0 {
		t.Errorf("Stats() = %+v, want 1 error retry and no conflict", s)
	}
}

// TestApplyGroupsReleasesWatch checks that a group that writes nothing
// leaves no WATCH on its pooled connection: otherwise a later write to
// those keys would abort the next, unrelated transaction on it.
func TestApplyGroupsReleasesWatch(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	env := storeEnv{srv: srv, rdb: rdb, store: redisstore.New(rdb, redisstore.Options{
		Buckets: 16, Now: func() time.Time { return storeNow },
	})}
	step := triggerStep(profile.Limits{})
	first := groupBatch(4, "e")
	applyUsers(t.Context(), env.store, first, step)
	applyUsers(t.Context(), env.store, first, step) // duplicates only: no EXEC
	if err := srv.Client(t).Set(t.Context(), env.store.Layout().ProfileKey("u-0"), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	others := []userEvents{
		{UserID: "v-1", Events: []profile.Event{uev("v-1", "f", "view", storeNow)}},
		{UserID: "v-2", Events: []profile.Event{uev("v-2", "f", "view", storeNow)}},
	}
	for _, o := range applyUsers(t.Context(), env.store, others, step) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
	}
	if s := env.store.Stats(); s.Conflicts != 0 {
		t.Errorf("Stats().Conflicts = %d: a WATCH of a group without EXEC outlived it", s.Conflicts)
	}
}

// TestApplyGroupsConcurrentStores runs two stores (two servers) on one
// Redis, each with several callers, applying batches of overlapping users:
// every event must count exactly once, with one outbox entry per trigger
// event, however the groups conflict and split.
func TestApplyGroupsConcurrentStores(t *testing.T) {
	const servers, callers, batches, pool, perBatch = 2, 4, 15, 48, 40
	srv := redistest.Start(t)
	stores := make([]*redisstore.Store, servers)
	for i := range stores {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: callers * 4})
		t.Cleanup(func() { _ = rdb.Close() })
		// Groups of 8, so a batch is several groups committed at once.
		stores[i] = redisstore.New(rdb, redisstore.Options{
			Buckets: 16, MaxAttempts: 1000, MaxGroupUsers: 8, Now: func() time.Time { return storeNow },
		})
	}
	step := triggerStep(profile.Limits{})

	var mu sync.Mutex
	want := map[string]uint64{}    // trigger events per user
	applies := map[string]uint64{} // Apply calls naming the user
	start := make(chan struct{})
	var wg sync.WaitGroup
	for c := range servers * callers {
		store := stores[c%servers]
		rng := rand.New(rand.NewPCG(uint64(c), 7))
		wg.Go(func() {
			<-start
			for b := range batches {
				var events []profile.Event
				for k := range perBatch {
					u := fmt.Sprintf("u-%d", rng.IntN(pool))
					events = append(events, uev(u, fmt.Sprintf("c%d-b%d-%d", c, b, k), triggerType, storeNow))
				}
				out := store.Apply(t.Context(), events, step)
				mu.Lock()
				named := map[string]bool{}
				for i, o := range out.Events {
					u := events[i].UserID
					if o.Err != nil || o.Status != profile.Applied {
						t.Errorf("user %s: %+v, want applied", u, o)
						continue
					}
					want[u]++
					if !named[u] {
						named[u] = true
						applies[u]++
					}
				}
				mu.Unlock()
			}
		})
	}
	close(start)
	wg.Wait()

	var total uint64
	for u, n := range want {
		p, err := stores[0].Get(t.Context(), u)
		if err != nil {
			t.Fatalf("Get(%s): %v", u, err)
		}
		// A shard merges the calls queued for a user into one commit, so
		// the version counts commits: at most one per call.
		if p.Total(triggerType) != n || p.Version < 1 || p.Version > applies[u] {
			t.Errorf("user %s: total %d at version %d, want %d at a version in [1, %d]", u, p.Total(triggerType), p.Version, n, applies[u])
		}
		total += n
	}
	if total != servers*callers*batches*perBatch {
		t.Errorf("%d events counted, want %d", total, servers*callers*batches*perBatch)
	}
	env := storeEnv{srv: srv, rdb: srv.Client(t), store: stores[0]}
	if got := outboxTotal(t, env); got != int64(total) {
		t.Errorf("outboxes hold %d entries, want %d", got, total)
	}
	var s redisstore.Stats
	for _, st := range stores {
		x := st.Stats()
		s.Transactions += x.Transactions
		s.Conflicts += x.Conflicts
		s.ErrorRetries += x.ErrorRetries
		s.Exhausted += x.Exhausted
	}
	if s.Conflicts == 0 {
		t.Errorf("Stats() = %+v: two stores on overlapping users never conflicted, so splits went untested", s)
	}
	if s.Exhausted != 0 || s.ErrorRetries != 0 {
		t.Errorf("Stats() = %+v, want no exhausted users and no error retries", s)
	}
	t.Logf("%d commits, %d conflicts", s.Transactions, s.Conflicts)
}

// TestApplyGroupsTracing checks a group's one transaction span: the
// group's size and events, its attempts and conflicts, never a user id.
func TestApplyGroupsTracing(t *testing.T) {
	ts := newTracedStore(t, redisstore.Options{Shards: 1})
	if err := ts.rdb.Set(t.Context(), ts.store.Layout().ProfileKey("u-1"), "garbage", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s := ts.traced(t, func(ctx context.Context) {
		applyUsers(ctx, ts.store, groupBatch(3, "f"), triggerStep(profile.Limits{}))
	})
	// The group committed (two users) and failed (the corrupt one).
	wantSpan(t, s, "nudge.profile.transaction", codes.Error, []attribute.KeyValue{
		attribute.Int("nudge.profile.users", 3), attribute.Int("nudge.profile.events", 6),
		attribute.Int("nudge.profile.attempts", 1), attribute.Int("nudge.profile.conflicts", 0),
		attribute.String("nudge.profile.outcome", "committed"),
	}, "u-0", "u-1", "u-2")
}
