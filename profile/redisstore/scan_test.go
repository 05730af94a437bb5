package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// seedProfiles stores a profile of version i%7+1 for users p-0..p-(n-1)
// with SET, in one pipeline, and returns the users.
func seedProfiles(t *testing.T, rdb redis.UniversalClient, keys redisstore.Layout, n int) []string {
	t.Helper()
	users := make([]string, n)
	_, err := rdb.Pipelined(t.Context(), func(pipe redis.Pipeliner) error {
		for i := range users {
			users[i] = fmt.Sprintf("p-%d", i)
			pipe.Set(t.Context(), keys.ProfileKey(users[i]), profile.Encode(&profile.Profile{Version: uint64(i%7 + 1)}), 0)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("seed: %v", err)
	}
	return users
}

// scanned is one user a scan gave.
type scanned struct {
	Profile *profile.Profile
	Err     error
}

// scanAll runs ScanProfiles and returns what it gave, by user, failing
// the test when a user comes twice or a page is larger than pageSize.
func scanAll(t *testing.T, store *redisstore.Store, pageSize int) map[string]scanned {
	t.Helper()
	got := map[string]scanned{}
	err := store.ScanProfiles(t.Context(), pageSize, func(users []string, ps []*profile.Profile, errs []error) error {
		if len(users) == 0 || len(users) > pageSize || len(ps) != len(users) || len(errs) != len(users) {
			t.Errorf("a page of %d users, %d profiles, %d errors, want 1 to %d of each", len(users), len(ps), len(errs), pageSize)
		}
		for i, u := range users {
			if _, dup := got[u]; dup {
				t.Errorf("user %s given twice", u)
			}
			got[u] = scanned{ps[i], errs[i]}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ScanProfiles: %v", err)
	}
	return got
}

// wantScanned checks that got holds exactly users (of seedProfiles),
// each with its seeded version.
func wantScanned(t *testing.T, got map[string]scanned, users []string) {
	t.Helper()
	if len(got) != len(users) {
		t.Errorf("%d users scanned, want %d", len(got), len(users))
	}
	for _, u := range users {
		var i uint64
		if _, err := fmt.Sscanf(u, "p-%d", &i); err != nil {
			t.Fatalf("user %q is not seedProfiles'", u)
		}
		sp, ok := got[u]
		switch {
		case !ok:
			t.Fatalf("user %s not scanned", u)
		case sp.Err != nil || sp.Profile == nil || sp.Profile.Version != i%7+1:
			t.Fatalf("user %s: %+v, want version %d", u, sp, i%7+1)
		}
	}
}

// Every profile once, pages of at most the page size; corrupt profiles
// reported with their user, not failing the scan; keys that are not
// profiles of the layout (other buckets, outboxes, timers) not read; an
// empty store scans to nothing.
func TestScanProfiles(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	ctx := t.Context()
	if got := scanAll(t, env.store, 10); len(got) != 0 {
		t.Fatalf("an empty store scanned %d profiles", len(got))
	}
	keys := env.store.Layout()
	users := seedProfiles(t, env.rdb, keys, 1234)
	// Corrupt: an unknown encoding, and a key of another Redis type.
	must(t, env.rdb.Set(ctx, keys.ProfileKey("garbled"), "\xffnot a profile", 0).Err())
	must(t, env.rdb.RPush(ctx, keys.ProfileKey("listed"), "x").Err())
	// Not profiles of this layout, or not profiles at all.
	must(t, env.rdb.Set(ctx, "nudge:{99}:p:other-layout", profile.Encode(&profile.Profile{}), 0).Err())
	wrong := (keys.Bucket("misplaced") + 1) % keys.Buckets()
	must(t, env.rdb.Set(ctx, fmt.Sprintf("nudge:{%d}:p:misplaced", wrong), profile.Encode(&profile.Profile{}), 0).Err())
	must(t, env.rdb.Set(ctx, "nudge:{03}:p:x", profile.Encode(&profile.Profile{}), 0).Err())
	must(t, env.rdb.XAdd(ctx, &redis.XAddArgs{Stream: keys.OutboxKey(1), Values: []any{"a", "b"}}).Err())
	must(t, env.rdb.ZAdd(ctx, keys.DueKey(1, 2), redis.Z{Member: "p-1", Score: 1}).Err())
	// A user id with the layout's separators in it is still its user.
	odd := "a}:p:b{c}"
	must(t, env.rdb.Set(ctx, keys.ProfileKey(odd), profile.Encode(&profile.Profile{Version: 9}), 0).Err())

	got := scanAll(t, env.store, 100)
	for _, u := range []string{"garbled", "listed"} {
		if sp := got[u]; !errors.Is(sp.Err, profile.ErrCorrupt) || sp.Profile != nil {
			t.Errorf("%s: %+v, want profile.ErrCorrupt", u, sp)
		}
		delete(got, u)
	}
	if sp := got[odd]; sp.Err != nil || sp.Profile.Version != 9 {
		t.Errorf("user %q: %+v, want version 9", odd, sp)
	}
	delete(got, odd)
	wantScanned(t, got, users)
}

// A page of keys SCAN returns twice (as it may while Redis rehashes) gives
// its users once; a key deleted between SCAN and GET is skipped.
func TestScanProfilesDuplicatesAndVanishedKeys(t *testing.T) {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	other := srv.Client(t)
	keys := redisstore.NewLayout(16)
	users := seedProfiles(t, rdb, keys, 300)
	h := &scanHook{other: other, vanish: keys.ProfileKey(users[7])}
	rdb.AddHook(h)
	store := redisstore.New(rdb, redisstore.Options{Buckets: 16})
	got := scanAll(t, store, 50)
	if _, ok := got[users[7]]; ok {
		t.Errorf("user %s, deleted after SCAN returned its key, was given", users[7])
	}
	if h.duplicated == 0 {
		t.Fatal("the hook duplicated no key")
	}
	wantScanned(t, got, append(users[:7:7], users[8:]...))
}

// scanHook doubles every page SCAN returns and deletes key vanish (with
// client other) right after SCAN first returns it.
type scanHook struct {
	other      *redis.Client
	vanish     string
	mu         sync.Mutex
	duplicated int
}

func (h *scanHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scanHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *scanHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		sc, ok := cmd.(*redis.ScanCmd)
		if !ok || err != nil {
			return err
		}
		page, cursor := sc.Val()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, k := range page {
			if k == h.vanish {
				if err := h.other.Del(ctx, k).Err(); err != nil {
					return err
				}
				h.vanish = ""
			}
		}
		h.duplicated += len(page)
		sc.SetVal(append(page, page...), cursor)
		return nil
	}
}

// fn's error stops the scan and is returned; so is the context's.
func TestScanProfilesStops(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	store := redisstore.New(rdb, redisstore.Options{Buckets: 8})
	seedProfiles(t, rdb, store.Layout(), 100)

	stop := errors.New("enough")
	calls := 0
	err := store.ScanProfiles(t.Context(), 10, func([]string, []*profile.Profile, []error) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("ScanProfiles = %v after %d pages, want fn's error after 1", err, calls)
	}

	ctx, cancel := context.WithCancel(t.Context())
	calls = 0
	err = store.ScanProfiles(ctx, 10, func([]string, []*profile.Profile, []error) error {
		calls++
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) || calls != 1 {
		t.Errorf("ScanProfiles = %v after %d pages, want context.Canceled after 1", err, calls)
	}

	// The embedded store (miniredis) scans too.
	if got := scanAll(t, store, 7); len(got) != 100 {
		t.Errorf("miniredis: %d profiles scanned, want 100", len(got))
	}
}

// Redis down: a wrapped profile.ErrUnavailable.
func TestScanProfilesRedisDown(t *testing.T) {
	srv := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	store := redisstore.New(rdb, redisstore.Options{Buckets: 8})
	srv.Stop()
	err := store.ScanProfiles(t.Context(), 10, func([]string, []*profile.Profile, []error) error { return nil })
	if !errors.Is(err, profile.ErrUnavailable) {
		t.Errorf("ScanProfiles with Redis down = %v, want profile.ErrUnavailable", err)
	}
}

// On a cluster every master is scanned: every profile once, whatever node
// its slot is on.
func TestClusterScanProfiles(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	store, rdb := clusterStore(t, c, redisstore.Options{Buckets: 64})
	users := seedProfiles(t, rdb, store.Layout(), 2000)
	wantScanned(t, scanAll(t, store, 64), users)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
