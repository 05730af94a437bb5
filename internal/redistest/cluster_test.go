package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
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
