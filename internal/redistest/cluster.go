package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// clusterSlots is the fixed number of hash slots in a Redis Cluster.
	clusterSlots = 16384
	// clusterCreateTimeout bounds redis-cli --cluster create plus the wait
	// for every node to agree afterwards, each.
	clusterCreateTimeout = 30 * time.Second
	// stableTimeout bounds WaitStable (and the wait in Reshard) when the
	// caller's context has no deadline of its own.
	stableTimeout = 30 * time.Second
	// reshardTimeout bounds the redis-cli reshard run when the caller's
	// context has no deadline of its own.
	reshardTimeout = 2 * time.Minute
	// stablePoll is how often WaitStable asks every node again: the nodes
	// converge by gossip, so there is nothing to wait on but polling.
	stablePoll = 25 * time.Millisecond
)

// Cluster is a Redis Cluster of masters (no replicas) on loopback, owned by
// a test. Its nodes are stopped when the test ends.
type Cluster struct {
	// Nodes are the masters in the order they were started; Addr is
	// "127.0.0.1:port" (the client port, not the bus port).
	Nodes []*Server
	// cli is the redis-cli binary, found once at start so that Reshard
	// cannot fail halfway through a test for want of it.
	cli string
	// admin holds one plain client per node, for the per-node views
	// (CLUSTER INFO / SLOTS / MYID) that a ClusterClient hides.
	admin []*redis.Client
}

// StartCluster starts masters (at least 3, Redis Cluster's minimum) cluster
// enabled redis-server processes on free loopback ports with persistence
// off, plus extra arguments for every node, joins them with redis-cli
// --cluster create (slots split evenly, no replicas), and waits until every
// node reports cluster_state:ok and the same slot map. A client started
// before that agreement can see MOVED storms, as nodes learn the layout by
// gossip. The nodes are stopped when the test ends.
func StartCluster(tb testing.TB, masters int, extra ...string) *Cluster {
	tb.Helper()
	if masters < 3 {
		tb.Fatalf("redistest: a Redis Cluster needs at least 3 masters, got %d", masters)
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		tb.Fatalf("redis-server not found on PATH: install the Debian package redis-server (make test does this when it can): %v", err)
	}
	cli, err := exec.LookPath("redis-cli")
	if err != nil {
		tb.Fatalf("redis-cli not found on PATH: install the Debian package redis-tools (make test does this when it can): %v", err)
	}
	c := &Cluster{cli: cli}
	// Each node needs two ports: its client port and its cluster bus port.
	// The bus port is picked too, instead of Redis's default of port+10000,
	// which can pass 65535 or belong to someone else. freePort closes its
	// listener, so guard against it handing out the same port twice.
	used := map[int]bool{}
	distinctPort := func() int {
		for range 100 {
			if p := freePort(tb); !used[p] {
				used[p] = true
				return p
			}
		}
		tb.Fatalf("redistest: no distinct free port in 100 tries")
		return 0
	}
	for range masters {
		port, bus := distinctPort(), distinctPort()
		dir := tb.TempDir()
		args := []string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", fmt.Sprintf("nodes-%d.conf", port),
			"--cluster-node-timeout", "5000",
			"--save", "", "--appendonly", "no", "--dir", dir,
			"--logfile", filepath.Join(dir, "redis.log"),
		}
		args = append(args, extra...)
		s := &Server{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), Dir: dir, args: append([]string{bin}, args...)}
		// Registered before starting, as in Start: a node that starts
		// but never answers must still be stopped.
		tb.Cleanup(s.Stop)
		s.start(tb)
		c.Nodes = append(c.Nodes, s)
	}
	for _, s := range c.Nodes {
		a := redis.NewClient(s.ClientOptions())
		tb.Cleanup(func() { _ = a.Close() })
		c.admin = append(c.admin, a)
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterCreateTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli %s: %v\n%s%s", strings.Join(args, " "), err, out, c.logs())
	}

	wctx, wcancel := context.WithTimeout(context.Background(), clusterCreateTimeout)
	defer wcancel()
	if err := c.WaitStable(wctx); err != nil {
		tb.Fatalf("redistest: cluster did not settle after create: %v%s", err, c.logs())
	}
	return c
}

// logs returns every node's log, for a failure message: why a node would
// not join or agree is only ever written there.
func (c *Cluster) logs() string {
	var b strings.Builder
	for _, s := range c.Nodes {
		log, _ := os.ReadFile(filepath.Join(s.Dir, "redis.log"))
		fmt.Fprintf(&b, "\n--- %s redis.log ---\n%s", s.Addr, log)
	}
	return b.String()
}

// Addrs returns the nodes' client addresses, in node order.
func (c *Cluster) Addrs() []string {
	addrs := make([]string, len(c.Nodes))
	for i, s := range c.Nodes {
		addrs[i] = s.Addr
	}
	return addrs
}

// Client returns a go-redis cluster client for the cluster, closed when the
// test ends.
func (c *Cluster) Client(tb testing.TB) *redis.ClusterClient {
	tb.Helper()
	cc := redis.NewClusterClient(c.ClusterOptions())
	tb.Cleanup(func() { _ = cc.Close() })
	return cc
}

// ClusterOptions returns new go-redis cluster options seeded with every
// node's address (go-redis defaults otherwise, e.g. MaxRedirects 3), for a
// test that needs to change them.
func (c *Cluster) ClusterOptions() *redis.ClusterOptions {
	return &redis.ClusterOptions{Addrs: c.Addrs()}
}

// NodeID returns node i's cluster node ID (CLUSTER MYID), which redis-cli
// --cluster commands and CLUSTER SLOTS name nodes by.
func (c *Cluster) NodeID(ctx context.Context, i int) (string, error) {
	if i < 0 || i >= len(c.Nodes) {
		return "", fmt.Errorf("redistest: node %d out of range [0,%d)", i, len(c.Nodes))
	}
	id, err := c.admin[i].ClusterMyID(ctx).Result()
	if err != nil {
		return "", fmt.Errorf("redistest: CLUSTER MYID on %s: %w", c.Nodes[i].Addr, err)
	}
	return id, nil
}

// Reshard moves slots hash slots, with their keys, from node from to node
// to by running
//
//	redis-cli --cluster reshard <from addr> --cluster-from <id> --cluster-to <id> --cluster-slots N --cluster-yes
//
// and then waits (WaitStable) until every node agrees on the new layout, so
// that a check made after Reshard returns sees the move on every node. The
// error from a failed redis-cli run includes its combined output. Without a
// deadline on ctx the run is bounded at 2 minutes and the wait at 30 s.
func (c *Cluster) Reshard(ctx context.Context, from, to, slots int) error {
	if from == to {
		return fmt.Errorf("redistest: reshard from node %d to itself", from)
	}
	if slots <= 0 || slots >= clusterSlots {
		return fmt.Errorf("redistest: reshard of %d slots", slots)
	}
	fromID, err := c.NodeID(ctx, from)
	if err != nil {
		return err
	}
	toID, err := c.NodeID(ctx, to)
	if err != nil {
		return err
	}
	rctx, cancel := withDefaultTimeout(ctx, reshardTimeout)
	defer cancel()
	args := []string{
		"--cluster", "reshard", c.Nodes[from].Addr,
		"--cluster-from", fromID, "--cluster-to", toID,
		"--cluster-slots", strconv.Itoa(slots), "--cluster-yes",
	}
	if out, err := exec.CommandContext(rctx, c.cli, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("redistest: redis-cli %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return c.WaitStable(ctx)
}

// WaitStable waits until every node reports cluster_state:ok with all
// slots assigned and every node known, no node has a slot still migrating
// or importing, and all nodes report the same slot map (CLUSTER SLOTS, by
// node ID). Nodes learn of each other and of slot moves by gossip, so right
// after a create or a reshard they can disagree for a while. Without a
// deadline on ctx the wait is bounded at 30 s.
func (c *Cluster) WaitStable(ctx context.Context) error {
	ctx, cancel := withDefaultTimeout(ctx, stableTimeout)
	defer cancel()
	for {
		err := c.stable(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redistest: cluster not stable: %w (last: %v)", ctx.Err(), err)
		case <-time.After(stablePoll):
		}
	}
}

// stable reports why the cluster is not yet stable, or nil.
func (c *Cluster) stable(ctx context.Context) error {
	var first string
	for i, a := range c.admin {
		addr := c.Nodes[i].Addr
		info, err := a.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER INFO on %s: %w", addr, err)
		}
		fields := parseInfo(info)
		if got := fields["cluster_state"]; got != "ok" {
			return fmt.Errorf("%s: cluster_state:%s", addr, got)
		}
		if got := fields["cluster_slots_assigned"]; got != strconv.Itoa(clusterSlots) {
			return fmt.Errorf("%s: cluster_slots_assigned:%s", addr, got)
		}
		if got := fields["cluster_known_nodes"]; got != strconv.Itoa(len(c.Nodes)) {
			return fmt.Errorf("%s: cluster_known_nodes:%s, want %d", addr, got, len(c.Nodes))
		}
		nodes, err := a.ClusterNodes(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER NODES on %s: %w", addr, err)
		}
		// An open slot shows as [slot->-id] or [slot-<-id] on the
		// line of the node migrating or importing it.
		if strings.Contains(nodes, "[") {
			return fmt.Errorf("%s: slot still migrating or importing:\n%s", addr, nodes)
		}
		slots, err := a.ClusterSlots(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER SLOTS on %s: %w", addr, err)
		}
		m := slotMap(slots)
		if i == 0 {
			first = m
		} else if m != first {
			return fmt.Errorf("%s and %s disagree on slots: %s vs %s", c.Nodes[0].Addr, addr, first, m)
		}
	}
	return nil
}

// slotMap renders a CLUSTER SLOTS reply as a canonical string of
// "start-end:master-id" ranges, so that two nodes' views compare equal when
// they assign every slot to the same master. Masters are named by ID: a
// node's address for itself can differ in form from others' view of it.
func slotMap(slots []redis.ClusterSlot) string {
	ranges := make([]string, 0, len(slots))
	sorted := append([]redis.ClusterSlot(nil), slots...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Start < sorted[j].Start })
	for _, s := range sorted {
		master := ""
		if len(s.Nodes) > 0 {
			master = s.Nodes[0].ID
		}
		ranges = append(ranges, fmt.Sprintf("%d-%d:%s", s.Start, s.End, master))
	}
	return strings.Join(ranges, ",")
}

// parseInfo splits a CLUSTER INFO reply into its fields.
func parseInfo(info string) map[string]string {
	fields := map[string]string{}
	for _, line := range strings.Split(info, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = v
		}
	}
	return fields
}

// withDefaultTimeout bounds ctx by d unless it already has a deadline, so
// that every wait in the harness ends.
func withDefaultTimeout(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, d)
}
