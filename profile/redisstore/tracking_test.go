package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// tracked starts Track on a store with a near-cache over rdb, stops it
// when the test ends, and waits until tracking is up.
func tracked(t *testing.T, rdb redis.UniversalClient, opt redisstore.Options) *redisstore.Store {
	t.Helper()
	if opt.Buckets == 0 {
		opt.Buckets = 16
	}
	if opt.NearCache.MaxBytes == 0 {
		opt.NearCache.MaxBytes = 64 << 20
	}
	if opt.NearCache.MaxSilence == 0 {
		// Tests that want cache hits must not lose them to a heartbeat
		// made late by a loaded machine (make test runs the integration
		// package beside this one): the default 250 ms bypassed the cache
		// in two clean-clone runs. The silence test sets its own.
		opt.NearCache.MaxSilence = 10 * time.Second
	}
	s := redisstore.New(rdb, opt)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Track(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Track: %v", err)
		}
	})
	waitFor(t, "tracking up", func() bool { return s.NearCache().Up })
	return s
}

// waitFor polls cond until it holds, failing the test after 10s: a wait
// for a state, not a timing assertion.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// peek is the version the near-cache serves for user: -1 when it serves
// no profile (the user has none), 0 when it cannot serve the user.
func peek(s *redisstore.Store, user string, min uint64) int {
	p, found, err := s.Peek(user, min)
	switch {
	case !found:
		return 0
	case errors.Is(err, profile.ErrNotFound):
		return -1
	}
	return int(p.Version)
}

func view(user, id string) profile.Event {
	return uev(user, id, "view", storeNow.Add(-time.Minute))
}

// Two instances on one Redis: A caches, B writes. A serves its cache
// until B's write invalidates it, and reads its own writes at once.
func TestNearCacheCoherentAcrossInstances(t *testing.T) {
	srv := redistest.Start(t)
	a := tracked(t, srv.Client(t), redisstore.Options{Now: func() time.Time { return storeNow }})
	b := storeEnv{srv: srv, rdb: srv.Client(t), store: redisstore.New(srv.Client(t), redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})}
	step := triggerStep(profile.Limits{})
	ctx := t.Context()

	// Absence is cached, and the profile's creation elsewhere invalidates it.
	if _, err := a.Get(ctx, "u1"); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("Get of a new user: %v, want ErrNotFound", err)
	}
	if got := peek(a, "u1", 0); got != -1 {
		t.Fatalf("peek after a miss = %d, want the absence cached", got)
	}
	applyOne(t, b, step, "u1", view("u1", "e1"))
	waitFor(t, "B's creation of u1 to invalidate A's cache", func() bool { return peek(a, "u1", 0) == 0 })
	if p, err := a.Get(ctx, "u1"); err != nil || p.Version != 1 {
		t.Fatalf("Get after B's write = %v, %v; want version 1", p, err)
	}
	if got := peek(a, "u1", 0); got != 1 {
		t.Fatalf("peek = %d, want version 1 cached", got)
	}
	// read-your-writes across instances: a minimum version above the
	// cached one is not served from the cache.
	if got := peek(a, "u1", 2); got != 0 {
		t.Fatalf("peek at least version 2 = %d, want a miss", got)
	}

	// B writes again: A's copy goes.
	applyOne(t, b, step, "u1", view("u1", "e2"))
	waitFor(t, "B's update of u1 to invalidate A's cache", func() bool { return peek(a, "u1", 0) == 0 })
	if p, err := a.Get(ctx, "u1"); err != nil || p.Version != 2 {
		t.Fatalf("Get after B's second write = %v, %v; want version 2", p, err)
	}

	// A's own write: the cached copy is gone when Apply returns.
	out := applyUsers(ctx, a, one("u1", view("u1", "e3")), step)
	if out[0].Err != nil {
		t.Fatal(out[0].Err)
	}
	if got := peek(a, "u1", 0); got != 0 {
		t.Fatalf("peek right after A's own write = %d, want a miss", got)
	}
	if p, err := a.Get(ctx, "u1"); err != nil || p.Version != 3 {
		t.Fatalf("Get after A's write = %v, %v; want version 3", p, err)
	}

	// Any client's write counts, and so does an erasure.
	if _, err := a.Get(ctx, "u1"); err != nil {
		t.Fatal(err)
	}
	if err := b.rdb.Del(ctx, a.Layout().ProfileKey("u1")).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a DEL by another client to invalidate", func() bool { return peek(a, "u1", 0) == 0 })
	if _, err := a.Get(ctx, "u1"); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("Get after DEL: %v, want ErrNotFound", err)
	}

	// GetMany serves what it has and reads the rest in one pipeline.
	applyOne(t, b, step, "u2", view("u2", "e1"))
	ps, errs := a.GetMany(ctx, []string{"u1", "u2", "u3"}, nil)
	if !errors.Is(errs[0], profile.ErrNotFound) || errs[1] != nil || ps[1].Version != 1 || !errors.Is(errs[2], profile.ErrNotFound) {
		t.Fatalf("GetMany = %v, %v", ps, errs)
	}
	// A reply is not cached when an invalidation of its shard (here, of
	// B's write of u2) arrives while it is in flight: read again until
	// both are.
	waitFor(t, "u1 and u2 cached", func() bool {
		if peek(a, "u1", 0) == -1 && peek(a, "u2", 0) == 1 {
			return true
		}
		a.GetMany(ctx, []string{"u1", "u2"}, nil)
		return false
	})
	hits := a.NearCache().Hits
	ps, errs = a.GetMany(ctx, []string{"u1", "u2", "u3"}, []uint64{0, 0, 1})
	if got := a.NearCache().Hits - hits; got != 2 {
		t.Fatalf("second GetMany hit %d users, want 2 (u3 with a minimum version is read)", got)
	}
	if errs[1] != nil || ps[1].Version != 1 {
		t.Fatalf("GetMany from the cache = %v, %v", ps, errs)
	}
	// FLUSHALL empties it.
	if err := b.rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "FLUSHALL to empty the cache", func() bool { return peek(a, "u2", 0) == 0 })
}

// trackingClient returns the id of the store's tracking connection.
func trackingClient(t *testing.T, rdb *redis.Client) string {
	t.Helper()
	list, err := rdb.ClientList(t.Context()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(list, "\n") {
		if strings.Contains(line, "name=nudge-tracking") {
			for _, f := range strings.Fields(line) {
				if id, ok := strings.CutPrefix(f, "id="); ok {
					return id
				}
			}
		}
	}
	t.Fatalf("no nudge-tracking connection in CLIENT LIST:\n%s", list)
	return ""
}

// A cut tracking connection empties the cache and bypasses it until
// tracking is back: a write made while nobody was listening is never
// hidden by a cached copy.
func TestNearCacheFlushedWhenTrackingIsCut(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	a := tracked(t, srv.Client(t), redisstore.Options{Now: func() time.Time { return storeNow }})
	env := storeEnv{srv: srv, rdb: rdb, store: redisstore.New(rdb, redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})}
	step := triggerStep(profile.Limits{})
	applyOne(t, env, step, "u1", view("u1", "e1"))
	if _, err := a.Get(t.Context(), "u1"); err != nil {
		t.Fatal(err)
	}
	before := a.NearCache()

	// Kill the tracking connection, then write the profile from another
	// instance, while A may not have noticed yet.
	if err := rdb.Do(t.Context(), "CLIENT", "KILL", "ID", trackingClient(t, rdb)).Err(); err != nil {
		t.Fatal(err)
	}
	applyOne(t, env, step, "u1", view("u1", "e2"))
	waitFor(t, "tracking to come back", func() bool {
		st := a.NearCache()
		return st.Up && st.TrackingFailures > before.TrackingFailures
	})
	if got := peek(a, "u1", 0); got != 0 {
		t.Fatalf("peek after tracking came back = %d, want the cache emptied", got)
	}
	if p, err := a.Get(t.Context(), "u1"); err != nil || p.Version != 2 {
		t.Fatalf("Get = %v, %v; want version 2", p, err)
	}
	if st := a.NearCache(); st.Flushes <= before.Flushes || !strings.Contains(st.LastTrackingError, "tracking connection") {
		t.Fatalf("stats %+v: want a flush and the error", st)
	}
}

// A Redis restarted (its data gone) is a new Redis: the cache is emptied.
func TestNearCacheFlushedWhenRedisRestarts(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	a := tracked(t, srv.Client(t), redisstore.Options{Now: func() time.Time { return storeNow }})
	env := storeEnv{srv: srv, rdb: rdb, store: redisstore.New(rdb, redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})}
	applyOne(t, env, triggerStep(profile.Limits{}), "u1", view("u1", "e1"))
	if _, err := a.Get(t.Context(), "u1"); err != nil {
		t.Fatal(err)
	}
	failures := a.NearCache().TrackingFailures
	srv.Restart(t)
	waitFor(t, "tracking to come back after the restart", func() bool {
		st := a.NearCache()
		return st.Up && st.TrackingFailures > failures
	})
	if _, err := a.Get(t.Context(), "u1"); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("Get after the restart: %v, want ErrNotFound (the data went with it)", err)
	}
}

// A tracking connection that stops answering (CLIENT PAUSE) is not
// trusted past the max silence: reads bypass the cache.
func TestNearCacheBypassedWhenTrackingIsSilent(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	a := tracked(t, srv.Client(t), redisstore.Options{NearCache: redisstore.NearCacheOptions{
		Heartbeat: 10 * time.Millisecond, MaxSilence: 50 * time.Millisecond,
	}})
	// With a 50 ms max silence, a busy machine (the race detector, CI)
	// can make a heartbeat late and the cache bypassed for a moment: read
	// again until the absence is cached.
	waitFor(t, "the absence cached", func() bool {
		if _, err := a.Get(t.Context(), "u1"); !errors.Is(err, profile.ErrNotFound) {
			t.Fatal(err)
		}
		return peek(a, "u1", 0) == -1
	})
	if err := rdb.Do(t.Context(), "CLIENT", "PAUSE", "2000", "ALL").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rdb.Do(context.Background(), "CLIENT", "UNPAUSE").Err() })
	waitFor(t, "the cache to be bypassed", func() bool { return peek(a, "u1", 0) == 0 })
	if st := a.NearCache(); st.Bypasses == 0 {
		t.Fatalf("stats %+v: want bypasses counted", st)
	}
	if err := rdb.Do(t.Context(), "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "tracking back after the pause", func() bool { return a.NearCache().Up })
}

// The embedded store offers no tracking: Track says so, and reads go to it.
func TestTrackUnsupported(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	s := redisstore.New(rdb, redisstore.Options{NearCache: redisstore.NearCacheOptions{MaxBytes: 1 << 20}})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := s.Track(ctx); !errors.Is(err, redisstore.ErrTrackingUnsupported) {
		t.Fatalf("Track on the embedded store: %v, want ErrTrackingUnsupported", err)
	}
	if _, err := s.Get(ctx, "u1"); !errors.Is(err, profile.ErrNotFound) {
		t.Fatalf("Get: %v", err)
	}
	if st := s.NearCache(); st.Up || st.Hits != 0 {
		t.Fatalf("stats %+v: want the cache down", st)
	}
}

// On a Redis Cluster every master is tracked, and a slot moved between
// masters leaves no stale copy: every write made after the move, through
// another instance, reaches the cache.
func TestNearCacheClusterSlotMigration(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	a := tracked(t, c.Client(t), redisstore.Options{Now: func() time.Time { return storeNow }})
	b := storeEnv{store: redisstore.New(c.Client(t), redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})}
	ctx := t.Context()
	for _, addr := range c.Addrs() {
		node := redis.NewClient(&redis.Options{Addr: addr})
		trackingClient(t, node) // fails the test without one
		_ = node.Close()
	}
	step := triggerStep(profile.Limits{})
	users := make([]string, 64)
	for i := range users {
		users[i] = fmt.Sprintf("user-%d", i)
		applyOne(t, b, step, users[i], view(users[i], "e1"))
	}
	check := func(want uint64) {
		t.Helper()
		for _, u := range users {
			waitFor(t, u+" at version "+fmt.Sprint(want), func() bool {
				p, err := a.Get(ctx, u)
				return err == nil && p.Version == want
			})
			if got := peek(a, u, 0); got != int(want) {
				t.Fatalf("%s cached at %d, want %d", u, got, want)
			}
		}
	}
	check(1)
	if err := c.Reshard(ctx, 0, 1, 5461); err != nil { // all of node 0's slots
		t.Fatal(err)
	}
	for _, u := range users {
		applyOne(t, b, step, u, view(u, "e2"))
	}
	check(2)
	if st := a.NearCache(); !st.Up || st.Invalidations == 0 {
		t.Fatalf("stats %+v", st)
	}
}

// holdGets is a go-redis hook that counts the GETs of one key and holds
// each until release is closed.
type holdGets struct {
	key     string
	gets    atomic.Int64
	entered chan struct{}
	release chan struct{}
}

func (h *holdGets) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *holdGets) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *holdGets) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "get" && len(cmd.Args()) == 2 && cmd.Args()[1] == h.key {
			if h.gets.Add(1) == 1 {
				close(h.entered)
			}
			<-h.release
		}
		return next(ctx, cmd)
	}
}

// Concurrent decisions' reads of one user share one GET; a caller that
// needs a newer profile than the shared read found reads on its own.
func TestNearCacheSharesConcurrentReads(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	hook := &holdGets{entered: make(chan struct{}), release: make(chan struct{})}
	rdb.AddHook(hook)
	a := tracked(t, rdb, redisstore.Options{Now: func() time.Time { return storeNow }})
	hook.key = a.Layout().ProfileKey("hot")
	env := storeEnv{srv: srv, rdb: srv.Client(t), store: redisstore.New(srv.Client(t), redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})}
	before := a.NearCache().Invalidations
	applyOne(t, env, triggerStep(profile.Limits{}), "hot", view("hot", "e1"))
	// The write's invalidation must arrive before the leader's read is
	// decided: arriving after, it would (rightly) keep the followers from
	// joining a read that might predate the write, and each would send a
	// GET of its own, held by the hook. On a loaded machine it can take a
	// while; Redis sends one message for all of the transaction's keys.
	waitFor(t, "the write's invalidation", func() bool { return a.NearCache().Invalidations > before })

	const callers = 10
	type result struct {
		version uint64
		err     error
	}
	results := make(chan result, callers)
	load := func(min uint64) {
		p, err := a.Load(t.Context(), "hot", min)
		r := result{err: err}
		if p != nil {
			r.version = p.Version
		}
		results <- r
	}
	go load(0)
	<-hook.entered // the leader's GET is sent (and held)
	for range callers - 2 {
		go load(0)
	}
	go load(2) // needs version 2, which the shared read will not find
	waitFor(t, "the followers to join", func() bool { return a.NearCache().Shared == callers-1 })
	close(hook.release)
	for range callers {
		r := <-results
		if r.err != nil || r.version != 1 {
			t.Fatalf("a Load returned version %d, %v; want 1", r.version, r.err)
		}
	}
	if got := hook.gets.Load(); got != 2 {
		t.Fatalf("%d GETs for %d concurrent Loads, want 2 (one shared, and the one that needed version 2)", got, callers)
	}
}
