package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// startReplicated starts a redis-server and a replica of it, and waits
// until the master reports the replica online (synced), so that WAIT 1 can
// succeed.
func startReplicated(t *testing.T) (master, replica *redistest.Server) {
	t.Helper()
	master = redistest.Start(t, "--repl-diskless-sync-delay", "0")
	host, port, _ := net.SplitHostPort(master.Addr)
	replica = redistest.Start(t, "--replicaof", host, port)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rdb := master.Client(t)
	for {
		info, err := rdb.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "state=online") {
			return master, replica
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the replica did not come online: %v (last INFO error: %v)\n%s", ctx.Err(), err, info)
		case <-time.After(20 * time.Millisecond): // replication sync has nothing to wait on but polling
		}
	}
}

func TestWaitReplicasAcknowledged(t *testing.T) {
	master, replica := startReplicated(t)
	rdb := master.Client(t)
	store := redisstore.New(rdb, redisstore.Options{
		Buckets: 16, WaitReplicas: 1, WaitTimeout: 5 * time.Second,
		Now: func() time.Time { return storeNow },
	})
	step := triggerStep(profile.Limits{})
	at := storeNow.Add(-time.Minute)
	var users []userEvents
	for u := range 50 {
		id := fmt.Sprintf("u%d", u)
		users = append(users, userEvents{UserID: id, Events: []profile.Event{uev(id, id+"-e1", "view", at), uev(id, id+"-e2", triggerType, at)}})
	}
	for i, o := range applyUsers(t.Context(), store, users, step) {
		if o.Err != nil {
			t.Fatalf("Apply(%s): %v", users[i].UserID, o.Err)
		}
	}
	if _, err := store.Update(t.Context(), users[0].UserID, func(p *profile.Profile, _ time.Time) bool {
		p.Totals["updated"]++
		return true
	}); err != nil {
		t.Fatalf("Update: %v", err)
	}
	// WAIT returned: the replica has every write already, no
	// polling needed.
	rr := replica.Client(t)
	for _, u := range users {
		raw, err := rr.Get(t.Context(), store.Layout().ProfileKey(u.UserID)).Bytes()
		if err != nil {
			t.Fatalf("GET %s on the replica: %v", u.UserID, err)
		}
		p, err := profile.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		if p.Total("view") != 1 || p.Total(triggerType) != 1 {
			t.Errorf("%s on the replica: totals %v, want one view and one %s", u.UserID, p.Totals, triggerType)
		}
	}
	if s := store.Stats(); s.ReplicationWaitsFailed != 0 {
		t.Errorf("Stats().ReplicationWaitsFailed = %d, want 0", s.ReplicationWaitsFailed)
	}
}

// TestWaitReplicasShortfall asks for a replica that does not exist: the
// write lands on the master, but Apply (and Update) fail with a
// ReplicationError, an ErrUnavailable, within the timeout. A re-send finds
// the events applied and still fails (the duplicate is not acknowledged
// before it is replicated either), and nothing counts twice.
func TestWaitReplicasShortfall(t *testing.T) {
	const timeout = 100 * time.Millisecond
	env := newStore(t, redisstore.Options{WaitReplicas: 1, WaitTimeout: timeout})
	step := triggerStep(profile.Limits{})
	const user = "carol"
	ev := uev(user, "e1", "view", storeNow.Add(-time.Minute))

	for try := range 2 {
		start := time.Now()
		out := applyUsers(t.Context(), env.store, one(user, ev), step)
		took := time.Since(start)
		err := out[0].Err
		var rerr *profile.ReplicationError
		if !errors.Is(err, profile.ErrUnavailable) || !errors.As(err, &rerr) {
			t.Fatalf("send %d: err %v, want a ReplicationError matching ErrUnavailable", try+1, err)
		}
		if rerr.Acked != 0 || rerr.Want != 1 || !strings.Contains(err.Error(), "acknowledged by 0 of 1 replicas") {
			t.Errorf("send %d: %v (%+v)", try+1, err, *rerr)
		}
		if took < timeout || took > timeout+5*time.Second {
			t.Errorf("send %d took %v, want the WAIT timeout %v and little more", try+1, took, timeout)
		}
		if len(out[0].Results) != 0 {
			t.Errorf("send %d: results %v reported with the error", try+1, out[0].Results)
		}
	}
	if s := env.store.Stats(); s.ReplicationWaitsFailed != 2 {
		t.Errorf("Stats().ReplicationWaitsFailed = %d, want 2 (one per send)", s.ReplicationWaitsFailed)
	}

	// The write is on the master, once: a store without WAIT
	// reports the event as a duplicate.
	plain := redisstore.New(env.rdb, redisstore.Options{Buckets: 16, Now: func() time.Time { return storeNow }})
	out := applyUsers(t.Context(), plain, one(user, ev), step)
	if out[0].Err != nil || len(out[0].Results) != 1 || out[0].Results[0].Status != profile.Duplicate {
		t.Fatalf("re-send without WAIT: %+v, want one duplicate", out[0])
	}
	p, err := plain.Get(t.Context(), user)
	if err != nil {
		t.Fatal(err)
	}
	if p.Total("view") != 1 || p.Version != 1 {
		t.Errorf("stored: %d views at version %d, want 1 at version 1", p.Total("view"), p.Version)
	}

	_, err = env.store.Update(t.Context(), user, func(p *profile.Profile, _ time.Time) bool {
		p.Totals["updated"]++
		return true
	})
	if !errors.Is(err, profile.ErrUnavailable) {
		t.Errorf("Update: %v, want ErrUnavailable", err)
	}
}

// TestWaitReplicasOff checks the zero value sends no WAIT: against a
// master without replicas nothing waits or fails.
func TestWaitReplicasOff(t *testing.T) {
	env := newStore(t, redisstore.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var (
		mu   sync.Mutex
		cmds []string
	)
	env.rdb.AddHook(cmdRecorder{&mu, &cmds})
	out := applyUsers(ctx, env.store, one("dave", uev("dave", "e1", "view", storeNow)), triggerStep(profile.Limits{}))
	if out[0].Err != nil {
		t.Fatal(out[0].Err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(cmds) == 0 {
		t.Fatal("the hook saw no command")
	}
	for _, c := range cmds {
		if c == "wait" {
			t.Errorf("a WAIT was sent with WaitReplicas 0: %v", cmds)
		}
	}
}

// cmdRecorder records the names of the commands a client sends, from
// every goroutine of the store.
type cmdRecorder struct {
	mu    *sync.Mutex
	names *[]string
}

func (r cmdRecorder) DialHook(next redis.DialHook) redis.DialHook { return next }
func (r cmdRecorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.mu.Lock()
		*r.names = append(*r.names, cmd.Name())
		r.mu.Unlock()
		return next(ctx, cmd)
	}
}
func (r cmdRecorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.mu.Lock()
		for _, c := range cmds {
			*r.names = append(*r.names, c.Name())
		}
		r.mu.Unlock()
		return next(ctx, cmds)
	}
}
