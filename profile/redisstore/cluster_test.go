package redisstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// clusterStore is a store on a ClusterClient configured as nudged does
// (deadlines cut I/O, nudge retries itself).
func clusterStore(t *testing.T, c *redistest.Cluster, opt redisstore.Options) (*redisstore.Store, *redis.ClusterClient) {
	t.Helper()
	o := c.ClusterOptions()
	o.ContextTimeoutEnabled = true
	o.MaxRetries = -1
	o.MaxRedirects = 8
	rdb := redis.NewClusterClient(o)
	t.Cleanup(func() { _ = rdb.Close() })
	if opt.Now == nil {
		opt.Now = func() time.Time { return storeNow }
	}
	return redisstore.New(rdb, opt), rdb
}

// TestClusterApplyGroupsPerBucket: on a cluster a group transaction holds
// the users of one bucket (one slot), so a batch commits in one
// transaction per bucket (while a bucket has at most MaxGroupUsers users),
// reads back across nodes, re-applies as duplicates, and Update and Delete
// work on the slot's master.
func TestClusterApplyGroupsPerBucket(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	store, rdb := clusterStore(t, c, redisstore.Options{Buckets: 8})
	const n = 400
	users := groupBatch(n, "e")
	perBucket := map[int]int{}
	for _, u := range users {
		perBucket[store.Layout().Bucket(u.UserID)]++
	}
	wantTxns := uint64(0)
	for _, k := range perBucket {
		wantTxns += uint64((k + 63) / 64)
	}

	out := applyUsers(t.Context(), store, users, triggerStep(profile.Limits{}))
	for i, o := range out {
		if o.Err != nil || o.Version != 1 || len(o.Actions) != 1 || o.Actions[0].UserID != users[i].UserID {
			t.Fatalf("user %s: %+v, want both events applied at version 1 with its action", users[i].UserID, o)
		}
	}
	if s := store.Stats(); s != (redisstore.Stats{Transactions: wantTxns}) {
		t.Errorf("Stats() = %+v, want %d transactions (one per bucket and 64 users) and nothing else", s, wantTxns)
	}

	ids := make([]string, n)
	for i := range users {
		ids[i] = users[i].UserID
	}
	ps, errs := store.GetMany(t.Context(), ids, nil)
	for i, p := range ps {
		if errs[i] != nil || p.Total("view") != 1 || p.Total(triggerType) != 1 {
			t.Fatalf("profile of %s: %+v, %v; want one of each event", ids[i], p, errs[i])
		}
	}
	var actions int64
	for b := range store.Layout().Buckets() {
		actions += rdb.XLen(t.Context(), store.Layout().OutboxKey(b)).Val()
	}
	if actions != n {
		t.Errorf("%d actions in the outboxes, want %d", actions, n)
	}

	again := applyUsers(t.Context(), store, groupBatch(n, "e"), triggerStep(profile.Limits{}))
	for i, o := range again {
		if o.Err != nil || o.Changed || len(o.Actions) != 0 {
			t.Fatalf("re-applied user %d: %+v, want duplicates only", i, o)
		}
	}

	v, err := store.Update(t.Context(), "u-7", func(p *profile.Profile, _ time.Time) bool {
		p.Attributes = map[string]profile.Attribute{"tier": {Value: "gold", At: storeNow}}
		return true
	})
	if err != nil || v != 2 {
		t.Fatalf("Update = %d, %v; want version 2", v, err)
	}
	res, err := store.Delete(t.Context(), "u-7")
	if err != nil || !res.Existed || res.Actions != 1 {
		t.Fatalf("Delete = %+v, %v; want the profile and its one action erased", res, err)
	}
	if _, err := store.Get(t.Context(), "u-7"); err != profile.ErrNotFound {
		t.Fatalf("Get after Delete: %v, want ErrNotFound", err)
	}
}

// TestClusterTwoStoresRaceExactly: two stores (two servers) applying the
// same users at once on a cluster keep every count exact; WATCH on the
// slot's master catches the other store's writes.
func TestClusterTwoStoresRaceExactly(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	const users, rounds = 50, 20
	stores := make([]*redisstore.Store, 2)
	for i := range stores {
		stores[i], _ = clusterStore(t, c, redisstore.Options{Buckets: 4, MaxAttempts: 1000})
	}
	var wg sync.WaitGroup
	fails := make(chan string, 2*rounds*users)
	for si, s := range stores {
		wg.Go(func() {
			for r := range rounds {
				batch := make([]userEvents, users)
				for u := range batch {
					id := fmt.Sprintf("u-%d", u)
					batch[u] = userEvents{UserID: id, Events: []profile.Event{uev(id, fmt.Sprintf("s%d-r%d", si, r), "view", storeNow)}}
				}
				for i, o := range applyUsers(t.Context(), s, batch, triggerStep(profile.Limits{})) {
					if o.Err != nil || len(o.Results) != 1 || o.Results[0].Status != profile.Applied {
						fails <- fmt.Sprintf("store %d round %d user %d: %+v", si, r, i, o)
					}
				}
			}
		})
	}
	wg.Wait()
	close(fails)
	for f := range fails {
		t.Fatal(f)
	}
	for u := range users {
		p, err := stores[0].Get(t.Context(), fmt.Sprintf("u-%d", u))
		if err != nil || p.Total("view") != 2*rounds {
			t.Fatalf("u-%d: %+v, %v; want %d views", u, p, err, 2*rounds)
		}
	}
	conflicts := stores[0].Stats().Conflicts + stores[1].Stats().Conflicts
	t.Logf("conflicts retried: %d", conflicts)
	if conflicts == 0 {
		t.Error("no WATCH conflict between two stores writing the same 50 users 20 times each: the race was not exercised")
	}
}

// TestClusterReshardDuringApply moves 1,000 slots from one master to
// another while batches are applied, and keeps going after the move: no
// event is lost or counted twice, no user fails (MOVED, ASK and TRYAGAIN
// are retried), and the redirect path did run.
func TestClusterReshardDuringApply(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	store, _ := clusterStore(t, c, redisstore.Options{})
	const users, batch = 3000, 500
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	done := make(chan error, 1)
	go func() { done <- c.Reshard(ctx, 0, 1, 1000) }()

	applied := make([]uint64, users) // events acknowledged Applied, per user
	var reshardErr error
	resharded, passes, failed := false, 0, 0
	// Until the reshard is over, and two passes more: the store's slot map
	// is stale until a MOVED makes it reload.
	for after := 0; after < 2 && passes < 400; passes++ {
		if resharded {
			after++
		}
		for start := 0; start < users; start += batch {
			b := make([]userEvents, batch)
			for i := range b {
				id := fmt.Sprintf("u-%d", start+i)
				b[i] = userEvents{UserID: id, Events: []profile.Event{uev(id, fmt.Sprintf("p%d", passes), "view", storeNow)}}
			}
			for i, o := range applyUsers(ctx, store, b, triggerStep(profile.Limits{})) {
				switch {
				case o.Err != nil:
					failed++
					t.Errorf("pass %d user %d: %v", passes, start+i, o.Err)
				case o.Results[0].Status == profile.Applied:
					applied[start+i]++
				}
			}
		}
		if !resharded {
			select {
			case reshardErr = <-done:
				resharded = true
			default:
			}
		}
	}
	if !resharded {
		reshardErr = <-done
	}
	if reshardErr != nil {
		t.Fatalf("reshard: %v", reshardErr)
	}
	ids := make([]string, users)
	for i := range ids {
		ids[i] = fmt.Sprintf("u-%d", i)
	}
	ps, errs := store.GetMany(ctx, ids, nil)
	for i, p := range ps {
		if errs[i] != nil {
			t.Fatalf("read %s: %v", ids[i], errs[i])
		}
		if p.Total("view") != applied[i] {
			t.Fatalf("%s: %d views stored, %d acknowledged applied", ids[i], p.Total("view"), applied[i])
		}
	}
	s := store.Stats()
	t.Logf("%d passes of %d users, reshard of 1000 slots during them; %+v", passes, users, s)
	if s.Redirects == 0 {
		t.Error("no transaction was redirected: the moved slots were never met")
	}
	if failed > 0 {
		t.Errorf("%d user outcomes failed", failed)
	}
}
