package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestClusterStartsAndRoutes(t *testing.T) {
	c := StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rdb := c.Client(t)

	const keys = 3000
	for i := range keys {
		// A distinct hash tag per key spreads the keys over the slots.
		if err := rdb.Set(ctx, fmt.Sprintf("k:{%d}", i), i, 0).Err(); err != nil {
			t.Fatalf("SET k:{%d}: %v", i, err)
		}
	}
	sum := int64(0)
	for i, s := range c.Nodes {
		n, err := s.Client(t).DBSize(ctx).Result()
		if err != nil {
			t.Fatalf("DBSIZE on node %d (%s): %v", i, s.Addr, err)
		}
		t.Logf("node %d (%s): %d keys", i, s.Addr, n)
		if n == 0 {
			t.Errorf("node %d (%s) holds no keys: the client did not route to it", i, s.Addr)
		}
		sum += n
	}
	if sum != keys {
		t.Errorf("nodes hold %d keys in all, want %d", sum, keys)
	}
}

// redirectCounter is a go-redis hook for the cluster client's per-node
// clients: it counts the MOVED, ASK and TRYAGAIN replies the nodes sent,
// which the ClusterClient follows itself and so never returns.
type redirectCounter struct {
	moved, ask, tryAgain, clusterDown atomic.Int64
}

func (r *redirectCounter) note(err error) {
	if err == nil {
		return
	}
	switch s := err.Error(); {
	case strings.HasPrefix(s, "MOVED "):
		r.moved.Add(1)
	case strings.HasPrefix(s, "ASK "):
		r.ask.Add(1)
	case strings.HasPrefix(s, "TRYAGAIN"):
		r.tryAgain.Add(1)
	case strings.HasPrefix(s, "CLUSTERDOWN"):
		r.clusterDown.Add(1)
	}
}

func (r *redirectCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *redirectCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		// The node's reply comes back as err: go-redis leaves a
		// redirect off cmd, which the cluster client sends again.
		r.note(err)
		return err
	}
}

func (r *redirectCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, cmd := range cmds {
			r.note(cmd.Err())
		}
		return err
	}
}

func (r *redirectCounter) String() string {
	return fmt.Sprintf("MOVED %d, ASK %d, TRYAGAIN %d, CLUSTERDOWN %d",
		r.moved.Load(), r.ask.Load(), r.tryAgain.Load(), r.clusterDown.Load())
}

// retryable reports whether err is a reply meaning the node did not run
// the command (a redirect, or the cluster asking to come back later), so
// that retrying it cannot count an INCR twice.
func retryable(err error) bool {
	if _, ok := redis.IsMovedError(err); ok {
		return true
	}
	if _, ok := redis.IsAskError(err); ok {
		return true
	}
	return redis.IsTryAgainError(err) || redis.IsClusterDownError(err)
}

// ownedSlots counts the slots node id owns in node 0's CLUSTER SLOTS view
// (after WaitStable every node's view is the same).
func ownedSlots(ctx context.Context, t *testing.T, c *Cluster, id string) int {
	t.Helper()
	slots, err := c.admin[0].ClusterSlots(ctx).Result()
	if err != nil {
		t.Fatalf("CLUSTER SLOTS: %v", err)
	}
	n := 0
	for _, s := range slots {
		if len(s.Nodes) > 0 && s.Nodes[0].ID == id {
			n += s.End - s.Start + 1
		}
	}
	return n
}

func TestClusterReshardUnderWrites(t *testing.T) {
	c := StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	id0, err := c.NodeID(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	id1, err := c.NodeID(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	before0, before1 := ownedSlots(ctx, t, c, id0), ownedSlots(ctx, t, c, id1)

	rdb := c.Client(t)
	var redirects redirectCounter
	// Before the first command, so that every node client gets the hook.
	rdb.OnNewNode(func(n *redis.Client) { n.AddHook(&redirects) })

	const (
		counters   = 2000
		minPasses  = 2
		maxPasses  = 500
		maxRetries = 20
	)
	var (
		counts    [counters]int64 // successful INCRs per counter
		surfaced  = map[string]int{}
		otherErrs []error
		passes    int
		done      = make(chan struct{})
		wg        sync.WaitGroup
	)
	key := func(i int) string { return "c:{" + strconv.Itoa(i) + "}" }
	wg.Add(1)
	go func() {
		defer wg.Done()
		for passes = 0; passes < maxPasses; {
			for i := range counters {
				for try := 0; ; try++ {
					err := rdb.Incr(ctx, key(i)).Err()
					if err == nil {
						counts[i]++
						break
					}
					if !retryable(err) {
						// Not knowing whether the INCR ran, the
						// counter's exact count is lost.
						otherErrs = append(otherErrs, fmt.Errorf("INCR %s: %w", key(i), err))
						if ctx.Err() != nil {
							return
						}
						break
					}
					surfaced[strings.Fields(err.Error())[0]]++
					if try == maxRetries {
						otherErrs = append(otherErrs, fmt.Errorf("INCR %s: still %w after %d retries", key(i), err, maxRetries))
						break
					}
				}
			}
			passes++
			select {
			case <-done:
				if passes >= minPasses {
					return
				}
			default:
			}
		}
	}()

	start := time.Now()
	reshardErr := c.Reshard(ctx, 0, 1, 1000)
	took := time.Since(start)
	close(done)
	wg.Wait()
	if reshardErr != nil {
		t.Fatalf("reshard: %v", reshardErr)
	}
	t.Logf("reshard of 1000 slots (redis-cli plus settling) took %v; writer made %d passes over %d counters", took, passes, counters)
	t.Logf("node replies the cluster client followed itself: %v", &redirects)
	t.Logf("errors the cluster client returned and were retried: %v", surfaced)

	for _, err := range otherErrs {
		t.Errorf("writer: %v", err)
	}
	wrong := 0
	for i := range counters {
		got, err := rdb.Get(ctx, key(i)).Int64()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatalf("GET %s: %v", key(i), err)
		}
		if got != counts[i] {
			if wrong++; wrong <= 10 {
				t.Errorf("%s = %d, want %d successful INCRs", key(i), got, counts[i])
			}
		}
	}
	if wrong > 10 {
		t.Errorf("... %d counters wrong in all", wrong)
	}

	after0, after1 := ownedSlots(ctx, t, c, id0), ownedSlots(ctx, t, c, id1)
	t.Logf("node 0 slots %d -> %d, node 1 slots %d -> %d", before0, after0, before1, after1)
	if after1-before1 < 1000 {
		t.Errorf("node 1 owns %d slots after the reshard, %d before: want at least 1000 more", after1, before1)
	}
	if before0-after0 != 1000 {
		t.Errorf("node 0 owns %d slots after the reshard, %d before: want 1000 fewer", after0, before0)
	}
}

// TestClusterBusPortsAreOwn checks the nodes gossip over the bus ports the
// harness picked, not the default port+10000.
func TestClusterBusPortsAreOwn(t *testing.T) {
	c := StartCluster(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	nodes, err := c.admin[0].ClusterNodes(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range c.Nodes {
		_, p, _ := net.SplitHostPort(s.Addr)
		port, _ := strconv.Atoi(p)
		if strings.Contains(nodes, fmt.Sprintf("%s@%d", s.Addr, port+10000)) {
			t.Errorf("node %s uses the default bus port:\n%s", s.Addr, nodes)
		}
		if !strings.Contains(nodes, s.Addr+"@") {
			t.Errorf("node %s missing from CLUSTER NODES:\n%s", s.Addr, nodes)
		}
	}
}

// TestClusterFailover kills a master of a cluster with one replica per
// master: WaitFailover returns once its replica serves its slots, every key
// written (and replicated) before the kill is still readable, and the
// killed node, restarted, rejoins as a replica.
func TestClusterFailover(t *testing.T) {
	c := StartClusterReplicas(t, 3, 1)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if len(c.Nodes) != 6 {
		t.Fatalf("%d nodes, want 6", len(c.Nodes))
	}
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(masters) != 3 {
		t.Fatalf("masters %v, want 3", masters)
	}

	rdb := c.Client(t)
	const keys = 3000
	for i := range keys {
		if err := rdb.Set(ctx, fmt.Sprintf("k:{%d}", i), i, 0).Err(); err != nil {
			t.Fatalf("SET k:{%d}: %v", i, err)
		}
	}
	// Replication is asynchronous: wait until the replicas hold every
	// key, so that the kill loses nothing.
	for {
		held := int64(0)
		for i := range c.Nodes {
			if role, err := c.Role(ctx, i); err != nil {
				t.Fatal(err)
			} else if role == "slave" {
				n, err := c.admin[i].DBSize(ctx).Result()
				if err != nil {
					t.Fatal(err)
				}
				held += n
			}
		}
		if held == keys {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("replicas hold %d keys of %d: %v", held, keys, ctx.Err())
		case <-time.After(stablePoll): // replication has nothing to wait on but polling
		}
	}

	victim := masters[1]
	heirs, err := c.ReplicasOf(ctx, victim)
	if err != nil || len(heirs) != 1 {
		t.Fatalf("replicas of node %d: %v, %v; want one", victim, heirs, err)
	}
	// A partitioned replica misses the writes that follow, until healed
	// (the WaitStable at the end checks it is back online).
	others, err := c.ReplicasOf(ctx, masters[0])
	if err != nil || len(others) != 1 {
		t.Fatalf("replicas of node %d: %v, %v; want one", masters[0], others, err)
	}
	if err := c.CutReplication(ctx, others[0]); err != nil {
		t.Fatal(err)
	}
	if err := c.CutReplication(ctx, masters[0]); err == nil {
		t.Error("CutReplication on a master succeeded")
	}
	key := ""
	for i := 0; key == ""; i++ {
		k := fmt.Sprintf("p:{%d}", i)
		if owner, err := rdb.MasterForKey(ctx, k); err != nil {
			t.Fatal(err)
		} else if owner.Options().Addr == c.Nodes[masters[0]].Addr {
			key = k
		}
	}
	if err := rdb.Set(ctx, key, "after the cut", 0).Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the pace of the fault: longer than a replication cron
	conn := c.admin[others[0]].Conn()
	defer conn.Close()
	if err := conn.ReadOnly(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := conn.Get(ctx, key).Err(); !errors.Is(err, redis.Nil) {
		t.Errorf("the partitioned replica has %s: %v", key, err)
	}
	if err := c.HealReplication(ctx, others[0]); err != nil {
		t.Fatal(err)
	}
	for conn.Get(ctx, key).Val() != "after the cut" {
		select {
		case <-ctx.Done():
			t.Fatalf("the healed replica never got %s: %v", key, ctx.Err())
		case <-time.After(stablePoll): // it reconnects at its next replication cron
		}
	}
	id, err := c.KillMaster(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := c.WaitFailover(ctx); err != nil {
		t.Fatalf("%v%s", err, c.logs())
	}
	t.Logf("master %s (%s) killed: its replica serves its slots after %v", c.Nodes[victim].Addr, id, time.Since(killed).Round(time.Millisecond))
	after, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 3 || slices.Contains(after, victim) || !slices.Contains(after, heirs[0]) {
		t.Errorf("masters after the failover %v, want 3 with node %d, without node %d", after, heirs[0], victim)
	}
	if _, err := c.KillMaster(ctx, victim); err == nil {
		t.Error("KillMaster of a dead node succeeded")
	}

	// A fresh client learns the new layout; the keys are all there.
	fresh := c.Client(t)
	for i := range keys {
		got, err := fresh.Get(ctx, fmt.Sprintf("k:{%d}", i)).Int()
		if err != nil || got != i {
			t.Fatalf("GET k:{%d} after the failover: %d, %v", i, got, err)
		}
	}

	c.RestartNode(t, victim)
	if err := c.WaitStable(ctx); err != nil {
		t.Fatalf("after restarting node %d: %v%s", victim, err, c.logs())
	}
	if role, err := c.Role(ctx, victim); err != nil || role != "slave" {
		t.Errorf("restarted node %d is %q (%v), want a replica", victim, role, err)
	}
}
