package redisstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// storeNow is the processing clock of every store test, so stored profiles
// and actions are predictable.
var storeNow = time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)

const triggerType = "trigger_me"

// storeEnv is a RedisStore on its own real redis-server.
type storeEnv struct {
	srv   *redistest.Server
	rdb   *redis.Client
	store *redisstore.Store
}

// newStore starts a redis-server and a store on it with 16 buckets and the
// fixed clock storeNow unless opt says otherwise.
func newStore(t *testing.T, opt redisstore.Options) storeEnv {
	t.Helper()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	if opt.Buckets == 0 {
		opt.Buckets = 16
	}
	if opt.Now == nil {
		opt.Now = func() time.Time { return storeNow }
	}
	return storeEnv{srv: srv, rdb: rdb, store: redisstore.New(rdb, opt)}
}

// triggerStep is the step of the store tests: ApplyEvent for each event,
// one action per applied event of type trigger_me, then Compact.
func triggerStep(limits profile.Limits) profile.Step {
	l := limits.WithDefaults()
	return func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		var o profile.Outcome
		for i := range events {
			e := &events[i]
			r := p.ApplyEvent(e, now, l)
			o.Results = append(o.Results, r)
			o.Changed = o.Changed || r.Status == profile.Applied
			if r.Status == profile.Applied && e.Type == triggerType {
				o.Actions = append(o.Actions, triggerAction(e, now))
			}
		}
		p.Compact(now, l)
		return o
	}
}

func triggerAction(e *profile.Event, now time.Time) profile.Action {
	return profile.Action{
		ID:          profile.ActionID(e.UserID, e.ID, triggerType),
		UserID:      e.UserID,
		TriggerID:   triggerType,
		Channel:     "email",
		Template:    "tmpl-" + e.Type,
		Payload:     map[string]string{"event_id": e.ID, "category": e.Category},
		TriggeredAt: now,
		EventID:     e.ID,
	}
}

func uev(user, id, typ string, at time.Time) profile.Event {
	return profile.Event{ID: id, UserID: user, Type: typ, Category: "c", OccurredAt: at}
}

func one(user string, events ...profile.Event) []userEvents {
	return []userEvents{{UserID: user, Events: events}}
}

// applyOne applies one user's events and fails the test on a user error.
func applyOne(t *testing.T, env storeEnv, step profile.Step, user string, events ...profile.Event) userOutcome {
	t.Helper()
	out := applyUsers(t.Context(), env.store, one(user, events...), step)
	if len(out) != 1 {
		t.Fatalf("Apply returned %d outcomes for 1 user", len(out))
	}
	if out[0].Err != nil {
		t.Fatalf("Apply(%s): %v", user, out[0].Err)
	}
	if len(out[0].Results) != len(events) {
		t.Fatalf("Apply(%s): %d results for %d events", user, len(out[0].Results), len(events))
	}
	return out[0]
}

func statuses(rs []profile.Result) []profile.Status {
	var s []profile.Status
	for _, r := range rs {
		s = append(s, r.Status)
	}
	return s
}

func rawProfile(t *testing.T, env storeEnv, user string) []byte {
	t.Helper()
	b, err := env.rdb.Get(t.Context(), env.store.Layout().ProfileKey(user)).Bytes()
	if err != nil {
		t.Fatalf("GET profile of %s: %v", user, err)
	}
	return b
}

// outboxActions returns the decoded outbox entries of a user, in stream
// order.
func outboxActions(t *testing.T, env storeEnv, user string) []profile.Action {
	t.Helper()
	msgs, err := env.rdb.XRange(t.Context(), env.store.Layout().OutboxKey(env.store.Layout().Bucket(user)), "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE: %v", err)
	}
	var actions []profile.Action
	for _, m := range msgs {
		if m.Values["user_id"] != user {
			continue
		}
		a, err := redisstore.DecodeAction(m.Values)
		if err != nil {
			t.Fatalf("DecodeAction(%v): %v", m.Values, err)
		}
		actions = append(actions, a)
	}
	return actions
}

func outboxLen(t *testing.T, env storeEnv, user string) int64 {
	t.Helper()
	n, err := env.rdb.XLen(t.Context(), env.store.Layout().OutboxKey(env.store.Layout().Bucket(user))).Result()
	if err != nil {
		t.Fatalf("XLEN: %v", err)
	}
	return n
}

// sameBucketUser returns a user id other than user in the same bucket.
func sameBucketUser(t *testing.T, s *redisstore.Store, user string) string {
	t.Helper()
	for i := range 10000 {
		other := fmt.Sprintf("neighbour-%d", i)
		if s.Layout().Bucket(other) == s.Layout().Bucket(user) {
			return other
		}
	}
	t.Fatalf("no user in the bucket of %s", user)
	return ""
}

func TestRedisStoreKeys(t *testing.T) {
	s := redisstore.New(nil, redisstore.Options{Buckets: 16})
	if s.Layout().Buckets() != 16 {
		t.Errorf("Buckets() = %d, want 16", s.Layout().Buckets())
	}
	if got := redisstore.New(nil, redisstore.Options{}).Layout().Buckets(); got != 1024 {
		t.Errorf("default Buckets() = %d, want 1024", got)
	}
	seen := map[int]bool{}
	for i := range 200 {
		user := fmt.Sprintf("user-%d", i)
		b := s.Layout().Bucket(user)
		if b < 0 || b >= 16 {
			t.Fatalf("Bucket(%s) = %d, out of [0, 16)", user, b)
		}
		seen[b] = true
		if again := redisstore.New(nil, redisstore.Options{Buckets: 16}).Layout().Bucket(user); again != b {
			t.Errorf("Bucket(%s) differs between stores: %d and %d", user, b, again)
		}
		if got, want := s.Layout().ProfileKey(user), fmt.Sprintf("nudge:{%d}:p:%s", b, user); got != want {
			t.Errorf("ProfileKey(%s) = %q, want %q", user, got, want)
		}
	}
	if len(seen) != 16 {
		t.Errorf("200 users used %d of 16 buckets", len(seen))
	}
	if got := s.Layout().OutboxKey(7); got != "nudge:{7}:out" {
		t.Errorf("OutboxKey(7) = %q", got)
	}
}

func TestRedisStoreApplyAndGet(t *testing.T) {
	env := newStore(t, redisstore.Options{TTL: time.Hour})
	step := triggerStep(profile.Limits{})
	const user = "alice"
	key := env.store.Layout().ProfileKey(user)
	at := storeNow.Add(-time.Minute)

	// Each step runs after the previous one; wantWrite says whether the
	// batch commits. A batch that does not commit must not write at all:
	// the key's TTL is lowered to 100s before each batch, and a write would
	// set it back to the configured hour.
	steps := []struct {
		name        string
		events      []profile.Event
		want        []profile.Status
		wantVersion uint64
		wantWrite   bool
	}{
		{"first batch", []profile.Event{uev(user, "e1", "view", at), uev(user, "e2", triggerType, at), uev(user, "e3", "view", at)},
			[]profile.Status{profile.Applied, profile.Applied, profile.Applied}, 1, true},
		{"second batch", []profile.Event{uev(user, "e4", "view", at), uev(user, "e5", triggerType, at)},
			[]profile.Status{profile.Applied, profile.Applied}, 2, true},
		{"only duplicates", []profile.Event{uev(user, "e1", "view", at), uev(user, "e5", triggerType, at)},
			[]profile.Status{profile.Duplicate, profile.Duplicate}, 2, false},
		{"only rejected", []profile.Event{uev(user, "old", "view", storeNow.Add(-91*24*time.Hour))},
			[]profile.Status{profile.Rejected}, 2, false},
		{"duplicate, rejected and new", []profile.Event{
			uev(user, "e2", triggerType, at), uev(user, "future", "view", storeNow.Add(time.Hour)), uev(user, "e6", "view", at),
		}, []profile.Status{profile.Duplicate, profile.Rejected, profile.Applied}, 3, true},
		{"duplicate within the batch", []profile.Event{uev(user, "e7", "view", at), uev(user, "e7", "view", at)},
			[]profile.Status{profile.Applied, profile.Duplicate}, 4, true},
	}
	model := &profile.Profile{}
	var commits uint64
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if commits > 0 {
				if err := env.rdb.Expire(t.Context(), key, 100*time.Second).Err(); err != nil {
					t.Fatal(err)
				}
			}
			var before []byte
			xlenBefore := outboxLen(t, env, user)
			if commits > 0 {
				before = rawProfile(t, env, user)
			}

			out := applyOne(t, env, step, user, st.events...)
			if got := statuses(out.Results); !reflect.DeepEqual(got, st.want) {
				t.Errorf("statuses = %v, want %v", got, st.want)
			}
			if out.Version != st.wantVersion {
				t.Errorf("outcome version = %d, want %d", out.Version, st.wantVersion)
			}

			// The same step run locally predicts the stored profile.
			local := step(model, st.events, storeNow)
			if !reflect.DeepEqual(local.Results, out.Results) {
				t.Errorf("results = %+v, local model says %+v", out.Results, local.Results)
			}
			if st.wantWrite {
				commits++
				model.Version = commits
				model.UpdatedAt = storeNow
			}
			got, err := env.store.Get(t.Context(), user)
			if err != nil {
				t.Fatalf("Get: %v", err)
			}
			if !reflect.DeepEqual(got, model) {
				t.Errorf("stored profile:\n got %+v\nwant %+v", got, model)
			}

			ttl, err := env.rdb.TTL(t.Context(), key).Result()
			if err != nil {
				t.Fatal(err)
			}
			xlen := outboxLen(t, env, user)
			if st.wantWrite {
				if ttl <= 100*time.Second {
					t.Errorf("TTL after a commit = %v, want it reset to about 1h", ttl)
				}
				if want := xlenBefore + int64(len(out.Actions)); xlen != want {
					t.Errorf("outbox length = %d, want %d", xlen, want)
				}
			} else {
				if ttl > 100*time.Second {
					t.Errorf("TTL = %v: a batch without applied events rewrote the profile", ttl)
				}
				if after := rawProfile(t, env, user); !bytes.Equal(after, before) {
					t.Errorf("a batch without applied events changed the stored bytes")
				}
				if len(out.Actions) != 0 || xlen != xlenBefore {
					t.Errorf("a batch without applied events emitted %d actions (outbox %d -> %d)", len(out.Actions), xlenBefore, xlen)
				}
			}
			if s := env.store.Stats(); s.Transactions != commits {
				t.Errorf("Stats().Transactions = %d, want %d", s.Transactions, commits)
			}
		})
	}
	if s := env.store.Stats(); s.Conflicts != 0 || s.ErrorRetries != 0 || s.Exhausted != 0 {
		t.Errorf("Stats() = %+v, want no conflicts or retries without contention", s)
	}
}

func TestRedisStoreOutbox(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	step := triggerStep(profile.Limits{})
	at := storeNow.Add(-time.Minute)
	users := []userEvents{
		{UserID: "alice", Events: []profile.Event{
			uev("alice", "a1", triggerType, at), uev("alice", "a2", "view", at), uev("alice", "a3", triggerType, at),
		}},
		{UserID: "bob", Events: []profile.Event{uev("bob", "b1", triggerType, at)}},
		{UserID: "carol", Events: []profile.Event{uev("carol", "c1", "view", at)}},
	}
	out := applyUsers(t.Context(), env.store, users, step)
	if len(out) != len(users) {
		t.Fatalf("%d outcomes for %d users", len(out), len(users))
	}
	for i, u := range users {
		t.Run(u.UserID, func(t *testing.T) {
			if out[i].Err != nil {
				t.Fatalf("Err = %v", out[i].Err)
			}
			var want []profile.Action
			for j := range u.Events {
				if u.Events[j].Type == triggerType {
					want = append(want, triggerAction(&u.Events[j], storeNow))
				}
			}
			if !reflect.DeepEqual(out[i].Actions, want) {
				t.Errorf("outcome actions = %+v\nwant %+v", out[i].Actions, want)
			}
			got := outboxActions(t, env, u.UserID)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("outbox actions = %+v\nwant %+v", got, want)
			}
		})
	}

	t.Run("entry fields", func(t *testing.T) {
		msgs, err := env.rdb.XRange(t.Context(), env.store.Layout().OutboxKey(env.store.Layout().Bucket("bob")), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		var fields map[string]any
		for _, m := range msgs {
			if m.Values["user_id"] == "bob" {
				fields = m.Values
			}
		}
		want := map[string]any{
			"action_id":     profile.ActionID("bob", "b1", triggerType),
			"user_id":       "bob",
			"trigger_id":    triggerType,
			"channel":       "email",
			"template":      "tmpl-trigger_me",
			"payload":       `{"category":"c","event_id":"b1"}`,
			"triggered_at":  "2025-03-10T12:00:00Z",
			"event_id":      "b1",
			"rules_version": "",
		}
		if !reflect.DeepEqual(fields, want) {
			t.Errorf("outbox entry = %v\nwant %v", fields, want)
		}
	})
}

func TestDecodeAction(t *testing.T) {
	valid := func() map[string]any {
		return map[string]any{
			"action_id": "a_1", "user_id": "u", "trigger_id": "t", "channel": "sms", "template": "x",
			"payload": `{"k":"v"}`, "triggered_at": "2025-03-10T12:00:00.123456789Z", "event_id": "e",
		}
	}
	with := func(k string, v any) map[string]any {
		m := valid()
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name    string
		values  map[string]any
		want    profile.Action
		corrupt bool
	}{
		{"complete", valid(), profile.Action{
			ID: "a_1", UserID: "u", TriggerID: "t", Channel: "sms", Template: "x",
			Payload: map[string]string{"k": "v"}, TriggeredAt: time.Date(2025, 3, 10, 12, 0, 0, 123456789, time.UTC), EventID: "e",
		}, false},
		{"no payload", with("payload", nil), profile.Action{
			ID: "a_1", UserID: "u", TriggerID: "t", Channel: "sms", Template: "x",
			TriggeredAt: time.Date(2025, 3, 10, 12, 0, 0, 123456789, time.UTC), EventID: "e",
		}, false},
		{"no action id", with("action_id", nil), profile.Action{}, true},
		{"empty user id", with("user_id", ""), profile.Action{}, true},
		{"non-string user id", with("user_id", 7), profile.Action{}, true},
		{"bad payload", with("payload", "{"), profile.Action{}, true},
		{"payload not an object of strings", with("payload", `{"k":1}`), profile.Action{}, true},
		{"no triggered_at", with("triggered_at", nil), profile.Action{}, true},
		{"bad triggered_at", with("triggered_at", "yesterday"), profile.Action{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := redisstore.DecodeAction(tt.values)
			if tt.corrupt {
				if !errors.Is(err, profile.ErrCorrupt) {
					t.Errorf("DecodeAction error = %v, want one wrapping ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("DecodeAction: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DecodeAction = %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

// TestRedisStoreConcurrentHotUser runs 50 writers on one user through 5
// stores with their own connections, as 5 servers would: WATCH must catch
// the other stores' writes, and no update may be lost.
func TestRedisStoreConcurrentHotUser(t *testing.T) {
	const goroutines, perGoroutine, servers = 50, 20, 5
	srv := redistest.Start(t)
	stores := make([]*redisstore.Store, servers)
	for i := range stores {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: goroutines / servers})
		t.Cleanup(func() { _ = rdb.Close() })
		stores[i] = redisstore.New(rdb, redisstore.Options{
			Buckets: 16, MaxAttempts: 1000, Now: func() time.Time { return storeNow },
		})
	}
	step := triggerStep(profile.Limits{})
	const user = "hot"

	start := make(chan struct{})
	errs := make(chan error, goroutines*perGoroutine)
	var wg sync.WaitGroup
	for g := range goroutines {
		store := stores[g%servers]
		wg.Go(func() {
			<-start
			for i := range perGoroutine {
				e := uev(user, fmt.Sprintf("g%d-e%d", g, i), triggerType, storeNow)
				out := applyUsers(t.Context(), store, one(user, e), step)
				switch {
				case out[0].Err != nil:
					errs <- fmt.Errorf("event %s: %w", e.ID, out[0].Err)
				case len(out[0].Results) != 1 || out[0].Results[0].Status != profile.Applied:
					errs <- fmt.Errorf("event %s: results %+v, want applied", e.ID, out[0].Results)
				}
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	const total = goroutines * perGoroutine
	p, err := stores[0].Get(t.Context(), user)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got := p.Total(triggerType); got != total {
		t.Errorf("Total = %d, want %d", got, total)
	}
	if got := p.Count(triggerType, "", 0, storeNow); got != total {
		t.Errorf("Count = %d, want %d", got, total)
	}
	var s redisstore.Stats
	for _, st := range stores {
		x := st.Stats()
		s.Transactions += x.Transactions
		s.Conflicts += x.Conflicts
		s.ErrorRetries += x.ErrorRetries
		s.Exhausted += x.Exhausted
	}
	// Each store's shard merges the calls queued for the user while it
	// commits, so there are at most as many commits as events, and the
	// version counts them.
	if p.Version != s.Transactions || s.Transactions > total || p.RememberedIDs() != total {
		t.Errorf("version %d after %d commits with %d seen ids, want the version to count the commits (at most %d) and %d ids",
			p.Version, s.Transactions, p.RememberedIDs(), total, total)
	}
	if s.Conflicts == 0 {
		t.Errorf("Stats().Conflicts = 0: %d writers in %d stores on one key never conflicted, so retries went untested", goroutines, servers)
	}
	if s.Exhausted != 0 || s.ErrorRetries != 0 {
		t.Errorf("Stats() = %+v, want no exhausted users and no error retries", s)
	}
	t.Logf("%d commits, %d conflicts", s.Transactions, s.Conflicts)

	// Aborted attempts wrote no actions: exactly one per event.
	msgs, err := srv.Client(t).XRange(t.Context(), stores[0].Layout().OutboxKey(stores[0].Layout().Bucket(user)), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[any]bool{}
	for _, m := range msgs {
		ids[m.Values["action_id"]] = true
	}
	if len(msgs) != total || len(ids) != total {
		t.Errorf("outbox has %d entries with %d distinct action ids, want %d", len(msgs), len(ids), total)
	}
}

func TestRedisStoreReapplyIsDuplicate(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	step := triggerStep(profile.Limits{})
	const user = "bob"
	at := storeNow.Add(-10 * time.Minute)
	batch := []profile.Event{
		uev(user, "e1", triggerType, at), uev(user, "e2", "view", at), uev(user, "e3", triggerType, at.Add(time.Minute)),
		uev(user, "e4", "purchase", at), uev(user, "e5", "unsubscribe", at),
	}
	first := applyOne(t, env, step, user, batch...)
	if first.Version != 1 || len(first.Actions) != 2 {
		t.Fatalf("first apply: version %d, %d actions; want 1, 2", first.Version, len(first.Actions))
	}
	stored := rawProfile(t, env, user)
	xlen := outboxLen(t, env, user)

	reversed := append([]profile.Event(nil), batch...)
	for i, j := 0, len(reversed)-1; i < j; i, j = i+1, j-1 {
		reversed[i], reversed[j] = reversed[j], reversed[i]
	}
	tests := []struct {
		name   string
		events []profile.Event
	}{
		{"same batch", batch},
		{"same batch reversed", reversed},
		{"one event", batch[2:3]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := applyOne(t, env, step, user, tt.events...)
			for i, r := range out.Results {
				if r.Status != profile.Duplicate {
					t.Errorf("event %s: %v, want duplicate", tt.events[i].ID, r.Status)
				}
			}
			if out.Version != 1 || len(out.Actions) != 0 {
				t.Errorf("version %d, %d actions; want 1, 0", out.Version, len(out.Actions))
			}
			if got := rawProfile(t, env, user); !bytes.Equal(got, stored) {
				t.Errorf("stored profile bytes changed")
			}
			if got := outboxLen(t, env, user); got != xlen {
				t.Errorf("outbox length %d, want %d", got, xlen)
			}
		})
	}
	if s := env.store.Stats(); s.Transactions != 1 {
		t.Errorf("Stats().Transactions = %d, want 1", s.Transactions)
	}
}

func TestRedisStoreDelete(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	step := triggerStep(profile.Limits{})
	const user = "alice"
	other := sameBucketUser(t, env.store, user)
	ctx := t.Context()

	// 1200 actions of the user interleaved with 300 of the neighbour: more
	// than one page (1000) of the outbox.
	batch := func(u string, from, n int) []profile.Event {
		var es []profile.Event
		for i := range n {
			es = append(es, uev(u, fmt.Sprintf("%s-%d", u, from+i), triggerType, storeNow))
		}
		return es
	}
	applyOne(t, env, step, user, batch(user, 0, 600)...)
	applyOne(t, env, step, other, batch(other, 0, 150)...)
	applyOne(t, env, step, user, batch(user, 600, 600)...)
	applyOne(t, env, step, other, batch(other, 150, 150)...)
	otherBefore := outboxActions(t, env, other)
	otherProfile := rawProfile(t, env, other)
	if n := len(outboxActions(t, env, user)); n != 1200 {
		t.Fatalf("user has %d outbox entries before Delete, want 1200", n)
	}

	res, err := env.store.Delete(ctx, user)
	if err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if want := (profile.DeleteResult{Existed: true, Actions: 1200}); res != want {
		t.Errorf("Delete = %+v, want %+v", res, want)
	}
	if n, err := env.rdb.Exists(ctx, env.store.Layout().ProfileKey(user)).Result(); err != nil || n != 0 {
		t.Errorf("EXISTS profile key = %d, %v; want 0", n, err)
	}
	if got := outboxActions(t, env, user); len(got) != 0 {
		t.Errorf("%d outbox entries of the deleted user remain", len(got))
	}
	var keys []string
	iter := env.rdb.Scan(ctx, 0, "*"+user+"*", 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Errorf("keys naming the deleted user remain: %q", keys)
	}
	if _, err := env.store.Get(ctx, user); !errors.Is(err, profile.ErrNotFound) {
		t.Errorf("Get after Delete = %v, want ErrNotFound", err)
	}

	if got := outboxActions(t, env, other); !reflect.DeepEqual(got, otherBefore) {
		t.Errorf("neighbour's outbox entries changed: %d before, %d after", len(otherBefore), len(got))
	}
	if got := rawProfile(t, env, other); !bytes.Equal(got, otherProfile) {
		t.Errorf("neighbour's profile changed")
	}

	res, err = env.store.Delete(ctx, user)
	if err != nil || res != (profile.DeleteResult{}) {
		t.Errorf("second Delete = %+v, %v; want nothing erased", res, err)
	}
	res, err = env.store.Delete(ctx, "never-seen")
	if err != nil || res != (profile.DeleteResult{}) {
		t.Errorf("Delete of an unknown user = %+v, %v; want nothing erased", res, err)
	}

	// Events after the erasure start a new profile; their ids are no
	// longer remembered.
	out := applyOne(t, env, step, user, uev(user, "alice-0", triggerType, storeNow))
	if out.Results[0].Status != profile.Applied || out.Version != 1 {
		t.Errorf("after Delete: %v at version %d, want applied at version 1", out.Results[0].Status, out.Version)
	}
}

func TestRedisStoreTTL(t *testing.T) {
	tests := []struct {
		name    string
		ttl     time.Duration
		wantMax time.Duration // 0: no expiry
	}{
		{"configured", time.Hour, time.Hour},
		{"default 91 days", 0, 91 * 24 * time.Hour},
		{"negative means no expiry", -1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newStore(t, redisstore.Options{TTL: tt.ttl})
			step := triggerStep(profile.Limits{})
			key := env.store.Layout().ProfileKey("u")
			check := func(when string) {
				t.Helper()
				ttl, err := env.rdb.TTL(t.Context(), key).Result()
				if err != nil {
					t.Fatal(err)
				}
				switch {
				case tt.wantMax == 0 && ttl != -1:
					t.Errorf("%s: TTL = %v, want no expiry (-1)", when, ttl)
				case tt.wantMax > 0 && (ttl <= 0 || ttl > tt.wantMax):
					t.Errorf("%s: TTL = %v, want in (0, %v]", when, ttl, tt.wantMax)
				}
			}
			applyOne(t, env, step, "u", uev("u", "e1", "view", storeNow))
			check("after the first commit")

			// A later commit refreshes (or, without expiry, removes) a
			// shorter expiry.
			if err := env.rdb.Expire(t.Context(), key, 10*time.Second).Err(); err != nil {
				t.Fatal(err)
			}
			applyOne(t, env, step, "u", uev("u", "e2", "view", storeNow))
			check("after a second commit")
			if ttl, _ := env.rdb.TTL(t.Context(), key).Result(); tt.wantMax > 0 && ttl <= 10*time.Second {
				t.Errorf("second commit did not refresh the TTL: %v", ttl)
			}
		})
	}
}

func TestRedisStoreGetNotFound(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	p, err := env.store.Get(t.Context(), "nobody")
	if !errors.Is(err, profile.ErrNotFound) || p != nil {
		t.Errorf("Get(unknown) = %v, %v; want nil, ErrNotFound", p, err)
	}
}

func TestRedisStoreUnavailable(t *testing.T) {
	srv := redistest.Start(t)
	// A client that gives up at once, so each store call sees one refusal
	// instead of go-redis's own dial and command retries.
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = rdb.Close() })
	env := storeEnv{srv: srv, rdb: rdb, store: redisstore.New(rdb, redisstore.Options{
		Buckets: 16, MaxErrorRetries: 1, Now: func() time.Time { return storeNow },
	})}
	step := triggerStep(profile.Limits{})
	// A first commit, so the client holds pooled connections that the
	// server's death cuts.
	applyOne(t, env, step, "u", uev("u", "e1", triggerType, storeNow))
	env.srv.Stop()

	// A bound so a hang fails the test instead of stalling it; the server
	// refuses connections at once, well before it.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()

	p, err := env.store.Get(ctx, "u")
	if !errors.Is(err, profile.ErrUnavailable) || p != nil {
		t.Errorf("Get = %v, %v; want an error wrapping ErrUnavailable", p, err)
	}
	before := env.store.Stats()
	out := applyUsers(ctx, env.store, one("u", uev("u", "e2", triggerType, storeNow)), step)
	if err := out[0].Err; !errors.Is(err, profile.ErrUnavailable) {
		t.Errorf("Apply Err = %v, want one wrapping ErrUnavailable", err)
	}
	if len(out[0].Results) != 0 || len(out[0].Actions) != 0 || out[0].Version != 0 {
		t.Errorf("failed Apply has a non-empty outcome: %+v", out[0])
	}
	after := env.store.Stats()
	if got := after.ErrorRetries - before.ErrorRetries; got != 1 {
		t.Errorf("ErrorRetries grew by %d, want 1 (MaxErrorRetries)", got)
	}
	if after.Transactions != before.Transactions {
		t.Errorf("Transactions grew from %d to %d with the server down", before.Transactions, after.Transactions)
	}
	if _, err := env.store.Delete(ctx, "u"); !errors.Is(err, profile.ErrUnavailable) {
		t.Errorf("Delete = %v, want an error wrapping ErrUnavailable", err)
	}
	if ctx.Err() != nil {
		t.Errorf("the test context expired (%v): the errors above may be timeouts, not refusals", ctx.Err())
	}
}

func TestRedisStoreCorruptProfile(t *testing.T) {
	valid := profile.Encode(&profile.Profile{Version: 3, Totals: map[string]uint64{"view": 2}, Seen: []profile.SeenDay{{Day: 1, Hashes: []uint64{7}}}})
	tests := []struct {
		name   string
		stored []byte
	}{
		{"text", []byte("this is not a profile")},
		{"unknown version", append([]byte{0x02}, valid[1:]...)},
		{"truncated", valid[:len(valid)-3]},
		{"empty string", []byte{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newStore(t, redisstore.Options{})
			step := triggerStep(profile.Limits{})
			const user = "u"
			key := env.store.Layout().ProfileKey(user)
			if err := env.rdb.Set(t.Context(), key, tt.stored, 0).Err(); err != nil {
				t.Fatal(err)
			}
			out := applyUsers(t.Context(), env.store, one(user, uev(user, "e1", triggerType, storeNow)), step)
			if err := out[0].Err; !errors.Is(err, profile.ErrCorrupt) || errors.Is(err, profile.ErrUnavailable) {
				t.Errorf("Apply Err = %v, want one wrapping ErrCorrupt only", err)
			}
			if got := rawProfile(t, env, user); !bytes.Equal(got, tt.stored) {
				t.Errorf("the corrupt profile was overwritten with %x", got)
			}
			if n := outboxLen(t, env, user); n != 0 {
				t.Errorf("%d outbox entries written for a corrupt profile", n)
			}
			if _, err := env.store.Get(t.Context(), user); !errors.Is(err, profile.ErrCorrupt) {
				t.Errorf("Get = %v, want an error wrapping ErrCorrupt", err)
			}
			if s := env.store.Stats(); s != (redisstore.Stats{}) {
				t.Errorf("Stats() = %+v: a corrupt profile must not be retried", s)
			}
		})
	}
}

// interferingStep wraps step so that the first n calls write other to the
// user's profile key with a second client, between the transaction's read
// and its EXEC: a concurrent writer on cue. It breaks the rule that a step
// has no side effects, on purpose, to make conflicts deterministic.
func interferingStep(t *testing.T, env storeEnv, user string, other []byte, n int32, step profile.Step, onCall func()) (profile.Step, *atomic.Int32) {
	intruder := env.srv.Client(t)
	var calls atomic.Int32
	return func(p *profile.Profile, events []profile.Event, now time.Time) profile.Outcome {
		if calls.Add(1) <= n {
			if err := intruder.Set(context.Background(), env.store.Layout().ProfileKey(user), other, 0).Err(); err != nil {
				t.Errorf("intruding write: %v", err)
			}
			if onCall != nil {
				onCall()
			}
		}
		return step(p, events, now)
	}, &calls
}

func TestRedisStoreConflicts(t *testing.T) {
	intruderProfile := &profile.Profile{Version: 41, Totals: map[string]uint64{"other": 1}}
	intruder := profile.Encode(intruderProfile)
	const user = "u"
	e := uev(user, "e1", triggerType, storeNow)

	t.Run("retried after a conflict", func(t *testing.T) {
		env := newStore(t, redisstore.Options{})
		step, calls := interferingStep(t, env, user, intruder, 1, triggerStep(profile.Limits{}), nil)
		out := applyOne(t, env, step, user, e)
		if out.Version != 42 || out.Results[0].Status != profile.Applied || len(out.Actions) != 1 {
			t.Errorf("outcome %+v, want applied at version 42 with one action", out)
		}
		if calls.Load() != 2 {
			t.Errorf("step called %d times, want 2", calls.Load())
		}
		p, err := env.store.Get(t.Context(), user)
		if err != nil {
			t.Fatal(err)
		}
		if p.Version != 42 || p.Total("other") != 1 || p.Total(triggerType) != 1 {
			t.Errorf("stored profile %+v: the retry must build on the intruder's write", p)
		}
		if got := outboxActions(t, env, user); len(got) != 1 {
			t.Errorf("%d outbox entries, want 1 (the aborted attempt writes none)", len(got))
		}
		if s := env.store.Stats(); s != (redisstore.Stats{Transactions: 1, Conflicts: 1}) {
			t.Errorf("Stats() = %+v, want 1 transaction and 1 conflict", s)
		}
	})

	t.Run("attempts exhausted", func(t *testing.T) {
		env := newStore(t, redisstore.Options{MaxAttempts: 3})
		step, calls := interferingStep(t, env, user, intruder, 1<<30, triggerStep(profile.Limits{}), nil)
		out := applyUsers(t.Context(), env.store, one(user, e), step)
		if err := out[0].Err; !errors.Is(err, profile.ErrConflict) {
			t.Errorf("Err = %v, want one wrapping ErrConflict", err)
		}
		if len(out[0].Results) != 0 || len(out[0].Actions) != 0 {
			t.Errorf("exhausted user has a non-empty outcome: %+v", out[0])
		}
		if calls.Load() != 3 {
			t.Errorf("step called %d times, want MaxAttempts = 3", calls.Load())
		}
		if got := rawProfile(t, env, user); !bytes.Equal(got, intruder) {
			t.Errorf("stored profile is not the intruder's")
		}
		if n := outboxLen(t, env, user); n != 0 {
			t.Errorf("%d outbox entries, want 0", n)
		}
		if s := env.store.Stats(); s != (redisstore.Stats{Conflicts: 3, Exhausted: 1}) {
			t.Errorf("Stats() = %+v, want 3 conflicts and 1 exhausted", s)
		}
	})
}

func TestRedisStoreContextCancelled(t *testing.T) {
	const user = "u"
	e := uev(user, "e1", triggerType, storeNow)

	t.Run("before Apply", func(t *testing.T) {
		env := newStore(t, redisstore.Options{})
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		out := applyUsers(ctx, env.store, one(user, e), triggerStep(profile.Limits{}))
		if err := out[0].Err; !errors.Is(err, context.Canceled) {
			t.Errorf("Apply Err = %v, want one wrapping context.Canceled", err)
		}
		if n, err := env.rdb.Exists(t.Context(), env.store.Layout().ProfileKey(user)).Result(); err != nil || n != 0 {
			t.Errorf("EXISTS = %d, %v; want nothing written", n, err)
		}
		if _, err := env.store.Get(ctx, user); !errors.Is(err, context.Canceled) {
			t.Errorf("Get Err = %v, want one wrapping context.Canceled", err)
		}
	})

	t.Run("during a conflicting attempt", func(t *testing.T) {
		env := newStore(t, redisstore.Options{})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		intruder := profile.Encode(&profile.Profile{Version: 9})
		step, calls := interferingStep(t, env, user, intruder, 1<<30, triggerStep(profile.Limits{}), cancel)
		out := applyUsers(ctx, env.store, one(user, e), step)
		if err := out[0].Err; !errors.Is(err, context.Canceled) {
			t.Errorf("Apply Err = %v, want one wrapping context.Canceled", err)
		}
		if calls.Load() != 1 {
			t.Errorf("step called %d times after the context was cancelled, want 1", calls.Load())
		}
		if got := rawProfile(t, env, user); !bytes.Equal(got, intruder) {
			t.Errorf("stored profile is not the intruder's")
		}
		if n := outboxLen(t, env, user); n != 0 {
			t.Errorf("%d outbox entries, want 0", n)
		}
	})
}

// TestRedisStoreApplyManyUsers applies 300 events of 40 users,
// interleaved, in one call: each event's outcome comes back at its index,
// and the actions user after user (in the order of their first events),
// each user's in event order.
func TestRedisStoreApplyManyUsers(t *testing.T) {
	env := newStore(t, redisstore.Options{Parallelism: 4})
	step := triggerStep(profile.Limits{})
	var events []profile.Event
	want := map[string]uint64{}
	var order []string              // users by first event
	byUser := map[string][]string{} // event ids per user, in order
	for i := range 300 {
		user := fmt.Sprintf("user-%d", i*7%40)
		events = append(events, uev(user, fmt.Sprintf("e%d", i), triggerType, storeNow))
		if want[user]++; want[user] == 1 {
			order = append(order, user)
		}
		byUser[user] = append(byUser[user], events[i].ID)
	}
	out := env.store.Apply(t.Context(), events, step)
	if len(out.Events) != len(events) {
		t.Fatalf("%d outcomes for %d events", len(out.Events), len(events))
	}
	for i, o := range out.Events {
		if o.Err != nil || o.Status != profile.Applied || o.Version != 1 {
			t.Errorf("event %d (%s): %+v, want applied at version 1", i, events[i].UserID, o)
		}
	}
	var wantActions []string
	for _, u := range order {
		for _, id := range byUser[u] {
			wantActions = append(wantActions, u+"/"+id)
		}
	}
	var gotActions []string
	for _, a := range out.Actions {
		gotActions = append(gotActions, a.UserID+"/"+a.EventID)
	}
	if !reflect.DeepEqual(gotActions, wantActions) {
		t.Errorf("actions %v\nwant %v", gotActions, wantActions)
	}
	buckets := map[int]bool{}
	for u, n := range want {
		p, err := env.store.Get(t.Context(), u)
		if err != nil {
			t.Fatal(err)
		}
		if p.Total(triggerType) != n {
			t.Errorf("user %s: Total = %d, want %d", u, p.Total(triggerType), n)
		}
		buckets[env.store.Layout().Bucket(u)] = true
	}
	// Users go to shards by bucket, and each shard's 40 users or fewer fit
	// in one group (default MaxGroupUsers 64): one EXEC per bucket used.
	if s := env.store.Stats(); s.Transactions != uint64(len(buckets)) {
		t.Errorf("Stats().Transactions = %d, want %d (one group per bucket)", s.Transactions, len(buckets))
	}
	if out := env.store.Apply(t.Context(), nil, step); len(out.Events) != 0 || len(out.Actions) != 0 {
		t.Errorf("Apply(no events) = %+v, want empty", out)
	}
}

// TestRedisStoreSerialisesUsersInProcess checks that one store never races
// itself on a user: concurrent Apply calls for one user in one process wait
// for each other instead of conflicting in Redis.
func TestRedisStoreSerialisesUsersInProcess(t *testing.T) {
	const goroutines, perGoroutine = 50, 10
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, PoolSize: goroutines})
	t.Cleanup(func() { _ = rdb.Close() })
	store := redisstore.New(rdb, redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})
	step := triggerStep(profile.Limits{})
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range perGoroutine {
				e := uev("solo", fmt.Sprintf("g%d-e%d", g, i), "view", storeNow)
				if out := applyUsers(t.Context(), store, one("solo", e), step); out[0].Err != nil {
					t.Error(out[0].Err)
				}
			}
		})
	}
	wg.Wait()
	p, err := store.Get(t.Context(), "solo")
	if err != nil {
		t.Fatal(err)
	}
	if p.Total("view") != goroutines*perGoroutine {
		t.Errorf("Total = %d, want %d", p.Total("view"), goroutines*perGoroutine)
	}
	if s := store.Stats(); s.Conflicts != 0 {
		t.Errorf("one store conflicted with itself %d times", s.Conflicts)
	}
}

// TestRedisStoreGetMany reads several users in one pipeline: found, absent
// and corrupt profiles each get their own answer.
func TestRedisStoreGetMany(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	store := redisstore.New(rdb, redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})
	step := triggerStep(profile.Limits{})
	for _, u := range []string{"a", "b"} {
		if out := applyUsers(t.Context(), store, one(u, uev(u, u+"1", "view", storeNow)), step); out[0].Err != nil {
			t.Fatal(out[0].Err)
		}
	}
	if err := rdb.Set(t.Context(), store.Layout().ProfileKey("bad"), "garbage", 0).Err(); err != nil {
		t.Fatal(err)
	}
	ps, errs := store.GetMany(t.Context(), []string{"a", "missing", "bad", "b"}, nil)
	if errs[0] != nil || ps[0].Total("view") != 1 || errs[3] != nil || ps[3].Total("view") != 1 {
		t.Errorf("found users: %v %v / %v %v", ps[0], errs[0], ps[3], errs[3])
	}
	if !errors.Is(errs[1], profile.ErrNotFound) || ps[1] != nil {
		t.Errorf("missing user: %v, %v", ps[1], errs[1])
	}
	if !errors.Is(errs[2], profile.ErrCorrupt) {
		t.Errorf("corrupt profile: %v", errs[2])
	}

	srv.Stop()
	_, errs = store.GetMany(t.Context(), []string{"a", "b"}, nil)
	for i, err := range errs {
		if !errors.Is(err, profile.ErrUnavailable) {
			t.Errorf("user %d with Redis down: %v, want ErrUnavailable", i, err)
		}
	}
}

// TestRedisStoreWrongTypeKey: a profile key holding another Redis type is
// that user's problem (ErrCorrupt), not the store's (ErrUnavailable), in
// Get, in GetMany and in Apply, where the other users read and write fine.
func TestRedisStoreWrongTypeKey(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	if err := env.rdb.LPush(t.Context(), env.store.Layout().ProfileKey("listed"), "x").Err(); err != nil {
		t.Fatal(err)
	}
	applyOne(t, env, triggerStep(profile.Limits{}), "fine", uev("fine", "e1", "view", storeNow))
	_, err := env.store.Get(t.Context(), "listed")
	if !errors.Is(err, profile.ErrCorrupt) || errors.Is(err, profile.ErrUnavailable) {
		t.Errorf("Get = %v, want ErrCorrupt and not ErrUnavailable", err)
	}
	ps, errs := env.store.GetMany(t.Context(), []string{"fine", "listed", "nobody"}, nil)
	if errs[0] != nil || ps[0] == nil || ps[0].Total("view") != 1 {
		t.Errorf("GetMany fine = %+v, %v; want its profile", ps[0], errs[0])
	}
	if !errors.Is(errs[1], profile.ErrCorrupt) || errors.Is(errs[1], profile.ErrUnavailable) {
		t.Errorf("GetMany listed = %v, want ErrCorrupt and not ErrUnavailable", errs[1])
	}
	if !errors.Is(errs[2], profile.ErrNotFound) {
		t.Errorf("GetMany nobody = %v, want ErrNotFound", errs[2])
	}
	// Ingest does not overwrite it: that user's events fail, the others'
	// in the same transaction commit, and the list is left for an operator.
	out := env.store.Apply(t.Context(), []profile.Event{uev("listed", "l1", "view", storeNow), uev("fine", "e2", "view", storeNow)}, triggerStep(profile.Limits{}))
	if err := out.Events[0].Err; !errors.Is(err, profile.ErrCorrupt) {
		t.Errorf("Apply to the listed user: %v, want ErrCorrupt", err)
	}
	if o := out.Events[1]; o.Err != nil || o.Status != profile.Applied {
		t.Errorf("Apply to the fine user beside it: %+v, want applied", o)
	}
	if typ, err := env.rdb.Type(t.Context(), env.store.Layout().ProfileKey("listed")).Result(); err != nil || typ != "list" {
		t.Errorf("the listed key is now a %q (%v), want it left a list", typ, err)
	}
}
