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

// Cluster is a Redis Cluster on loopback, of masters only (StartCluster)
// or of masters with replicas (StartClusterReplicas), owned by a test. Its
// nodes are stopped when the test ends.
type Cluster struct {
	// Nodes are the nodes in the order they were started; Addr is
	// "127.0.0.1:port" (the client port, not the bus port). With replicas,
	// which nodes are masters is redis-cli's choice at create, and changes
	// on a failover: see Role, Masters and ReplicasOf.
	Nodes []*Server
	// cli is the redis-cli binary, found once at start so that Reshard
	// cannot fail halfway through a test for want of it.
	cli string
	// admin holds one plain client per node, for the per-node views
	// (CLUSTER INFO / SLOTS / MYID) that a ClusterClient hides.
	admin []*redis.Client
	// replicas is the number of replicas per master asked at start.
	replicas int
	// down marks the nodes KillMaster killed and RestartNode has not
	// restarted: WaitFailover leaves them out, WaitStable waits for them.
	down []bool
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
	return startCluster(tb, masters, 0, "5000", extra)
}

// failoverNodeTimeout is the cluster-node-timeout of a cluster with
// replicas: how long a master must be unreachable before the others mark
// it failed and its replica takes over (about this plus 1 s in all).
// Short, for tests; extra arguments may override it.
const failoverNodeTimeout = "2000"

// StartClusterReplicas is StartCluster with replicas replicas (at least 1)
// per master: masters*(1+replicas) nodes, created with redis-cli --cluster
// create --cluster-replicas, with a cluster-node-timeout of 2 s so that a
// killed master fails over within about 3 s, and diskless replication
// without delay so that a (re)started replica syncs at once. extra applies
// to every node (e.g. "--appendonly", "yes", "--appendfsync", "everysec";
// a later "--cluster-node-timeout" overrides). It returns once every
// master reports its replicas online, besides what StartCluster waits for.
func StartClusterReplicas(tb testing.TB, masters, replicas int, extra ...string) *Cluster {
	tb.Helper()
	if replicas < 1 {
		tb.Fatalf("redistest: StartClusterReplicas with %d replicas per master; use StartCluster for none", replicas)
	}
	return startCluster(tb, masters, replicas, failoverNodeTimeout, extra)
}

func startCluster(tb testing.TB, masters, replicas int, nodeTimeout string, extra []string) *Cluster {
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
	c := &Cluster{cli: cli, replicas: replicas}
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
	for range masters * (1 + replicas) {
		port, bus := distinctPort(), distinctPort()
		dir := tb.TempDir()
		args := []string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--cluster-enabled", "yes", "--cluster-port", strconv.Itoa(bus),
			"--cluster-config-file", fmt.Sprintf("nodes-%d.conf", port),
			"--cluster-node-timeout", nodeTimeout,
			"--repl-diskless-sync-delay", "0",
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
		c.down = append(c.down, false)
	}
	for _, s := range c.Nodes {
		a := redis.NewClient(s.ClientOptions())
		tb.Cleanup(func() { _ = a.Close() })
		c.admin = append(c.admin, a)
	}

	ctx, cancel := context.WithTimeout(context.Background(), clusterCreateTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.Addrs()...)
	args = append(args, "--cluster-replicas", strconv.Itoa(replicas), "--cluster-yes")
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
// or importing, all nodes report the same slot map (CLUSTER SLOTS, by node
// ID) and, in a cluster with replicas, every master has as many replicas
// online (synced) as asked at start. A node killed by KillMaster and not
// restarted keeps it from returning: after a kill, see WaitFailover. Nodes
// learn of each other and of slot moves by gossip, so right after a create
// or a reshard they can disagree for a while. Without a deadline on ctx the
// wait is bounded at 30 s.
func (c *Cluster) WaitStable(ctx context.Context) error {
	return poll(ctx, "cluster not stable", c.stable)
}

// poll calls check every stablePoll until it returns nil, or fails as what
// with its last error at ctx's deadline (stableTimeout without one).
func poll(ctx context.Context, what string, check func(context.Context) error) error {
	ctx, cancel := withDefaultTimeout(ctx, stableTimeout)
	defer cancel()
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redistest: %s: %w (last: %v)", what, ctx.Err(), err)
		case <-time.After(stablePoll):
		}
	}
}

// servesAllSlots returns a node's CLUSTER INFO fields, or why it does not
// report cluster_state:ok with every slot assigned.
func servesAllSlots(ctx context.Context, a *redis.Client, addr string) (map[string]string, error) {
	info, err := a.ClusterInfo(ctx).Result()
	if err != nil {
		return nil, fmt.Errorf("CLUSTER INFO on %s: %w", addr, err)
	}
	fields := parseInfo(info)
	if got := fields["cluster_state"]; got != "ok" {
		return nil, fmt.Errorf("%s: cluster_state:%s", addr, got)
	}
	if got := fields["cluster_slots_assigned"]; got != strconv.Itoa(clusterSlots) {
		return nil, fmt.Errorf("%s: cluster_slots_assigned:%s", addr, got)
	}
	return fields, nil
}

// stable reports why the cluster is not yet stable, or nil.
func (c *Cluster) stable(ctx context.Context) error {
	var first string
	for i, a := range c.admin {
		addr := c.Nodes[i].Addr
		if c.down[i] {
			return fmt.Errorf("%s was killed and not restarted", addr)
		}
		if c.replicas > 0 {
			if err := c.replicasOnline(ctx, i); err != nil {
				return err
			}
		}
		fields, err := servesAllSlots(ctx, a, addr)
		if err != nil {
			return err
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
		if first == "" {
			first = m
		} else if m != first {
			return fmt.Errorf("%s and %s disagree on slots: %s vs %s", c.Nodes[0].Addr, addr, first, m)
		}
	}
	return nil
}

// replicasOnline reports why node i, if a master, does not yet have the
// replicas per master asked at start online, or nil.
func (c *Cluster) replicasOnline(ctx context.Context, i int) error {
	info, err := c.admin[i].Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("INFO replication on %s: %w", c.Nodes[i].Addr, err)
	}
	fields := parseInfo(info)
	if fields["role"] != "master" {
		return nil
	}
	if online := strings.Count(info, "state=online"); online < c.replicas {
		return fmt.Errorf("master %s has %d replicas online, want %d", c.Nodes[i].Addr, online, c.replicas)
	}
	return nil
}

// Role returns node i's replication role, "master" or "slave" (INFO
// replication).
func (c *Cluster) Role(ctx context.Context, i int) (string, error) {
	if i < 0 || i >= len(c.Nodes) {
		return "", fmt.Errorf("redistest: node %d out of range [0,%d)", i, len(c.Nodes))
	}
	info, err := c.admin[i].Info(ctx, "replication").Result()
	if err != nil {
		return "", fmt.Errorf("redistest: INFO replication on %s: %w", c.Nodes[i].Addr, err)
	}
	return parseInfo(info)["role"], nil
}

// Masters returns the indexes of the live nodes that are masters now.
func (c *Cluster) Masters(ctx context.Context) ([]int, error) {
	var masters []int
	for i := range c.Nodes {
		if c.down[i] {
			continue
		}
		role, err := c.Role(ctx, i)
		if err != nil {
			return nil, err
		}
		if role == "master" {
			masters = append(masters, i)
		}
	}
	return masters, nil
}

// KillMaster kills node i, which must be a live master, with SIGKILL (no
// shutdown, no last AOF write beyond what appendfsync already did), and
// returns its node ID. In a cluster with replicas, the others then mark it
// failed after cluster-node-timeout and promote one of its replicas: see
// WaitFailover. RestartNode brings it back.
func (c *Cluster) KillMaster(ctx context.Context, i int) (string, error) {
	role, err := c.Role(ctx, i)
	if err != nil {
		return "", err
	}
	if role != "master" {
		return "", fmt.Errorf("redistest: node %d (%s) is a %s, not a master", i, c.Nodes[i].Addr, role)
	}
	id, err := c.NodeID(ctx, i)
	if err != nil {
		return "", err
	}
	c.Nodes[i].Stop()
	c.down[i] = true
	return id, nil
}

// ReplicasOf returns the indexes of the live nodes that replicate node i
// now (INFO replication: their master_port is node i's port).
func (c *Cluster) ReplicasOf(ctx context.Context, i int) ([]int, error) {
	if i < 0 || i >= len(c.Nodes) {
		return nil, fmt.Errorf("redistest: node %d out of range [0,%d)", i, len(c.Nodes))
	}
	_, port, _ := net.SplitHostPort(c.Nodes[i].Addr)
	var replicas []int
	for j := range c.Nodes {
		if c.down[j] || j == i {
			continue
		}
		info, err := c.admin[j].Info(ctx, "replication").Result()
		if err != nil {
			return nil, fmt.Errorf("redistest: INFO replication on %s: %w", c.Nodes[j].Addr, err)
		}
		if f := parseInfo(info); f["role"] == "slave" && f["master_port"] == port {
			replicas = append(replicas, j)
		}
	}
	return replicas, nil
}

// partitionUser is the ACL user a partitioned replica tries to
// authenticate to its master as: no master has it, so the replication
// handshake fails until HealReplication.
const partitionUser = "redistest-partitioned"

// CutReplication partitions replica node i from its master, as a network
// fault between the two would, while clients still reach both: it drops
// the replica's link (CLIENT KILL TYPE master on the replica), so what the
// master had sent and the replica had not read is gone, and makes every
// reconnection fail (the replica authenticates as a user no master has;
// Redis otherwise reconnects and resyncs within a millisecond). The writes
// that follow reach only the master, until HealReplication.
func (c *Cluster) CutReplication(ctx context.Context, i int) error {
	if i < 0 || i >= len(c.Nodes) {
		return fmt.Errorf("redistest: node %d out of range [0,%d)", i, len(c.Nodes))
	}
	a := c.admin[i]
	if role, err := c.Role(ctx, i); err != nil {
		return err
	} else if role != "slave" {
		return fmt.Errorf("redistest: %s is a %s, not a replica", c.Nodes[i].Addr, role)
	}
	if err := a.ConfigSet(ctx, "masteruser", partitionUser).Err(); err != nil {
		return fmt.Errorf("redistest: CONFIG SET masteruser on %s: %w", c.Nodes[i].Addr, err)
	}
	if err := a.ConfigSet(ctx, "masterauth", partitionUser).Err(); err != nil {
		return fmt.Errorf("redistest: CONFIG SET masterauth on %s: %w", c.Nodes[i].Addr, err)
	}
	if err := a.ClientKillByFilter(ctx, "TYPE", "master").Err(); err != nil {
		return fmt.Errorf("redistest: CLIENT KILL TYPE master on %s: %w", c.Nodes[i].Addr, err)
	}
	return nil
}

// HealReplication ends CutReplication's partition of node i: it
// reconnects to its master (if it is still a replica) at its next
// replication cron, within about a second, and resyncs.
func (c *Cluster) HealReplication(ctx context.Context, i int) error {
	if i < 0 || i >= len(c.Nodes) {
		return fmt.Errorf("redistest: node %d out of range [0,%d)", i, len(c.Nodes))
	}
	for _, k := range []string{"masteruser", "masterauth"} {
		if err := c.admin[i].ConfigSet(ctx, k, "").Err(); err != nil {
			return fmt.Errorf("redistest: CONFIG SET %s on %s: %w", k, c.Nodes[i].Addr, err)
		}
	}
	return nil
}

// RestartNode restarts node i after KillMaster, with its arguments and
// directory (its nodes.conf, and its AOF when on). A master that was
// failed over rejoins as a replica of the master that replaced it. Use
// WaitStable to wait until it is synced.
func (c *Cluster) RestartNode(tb testing.TB, i int) {
	tb.Helper()
	c.Nodes[i].Restart(tb)
	c.down[i] = false
}

// WaitFailover waits until the cluster serves every slot again without the
// nodes KillMaster killed: every live node reports cluster_state:ok with
// all slots assigned, every slot's master is a live node, and the live
// nodes agree on the slot map. It is how long the cluster refuses the
// killed master's slots (CLUSTERDOWN, or a dead connection) before a
// replica is promoted; with no replica to promote it never ends but at
// ctx's deadline (30 s without one).
func (c *Cluster) WaitFailover(ctx context.Context) error {
	return poll(ctx, "no failover", c.failedOver)
}

// failedOver reports why the live nodes do not yet serve every slot, or
// nil.
func (c *Cluster) failedOver(ctx context.Context) error {
	live := map[string]bool{}
	for i := range c.Nodes {
		if c.down[i] {
			continue
		}
		id, err := c.NodeID(ctx, i)
		if err != nil {
			return err
		}
		live[id] = true
	}
	var first, firstAddr string
	for i, a := range c.admin {
		if c.down[i] {
			continue
		}
		addr := c.Nodes[i].Addr
		if _, err := servesAllSlots(ctx, a, addr); err != nil {
			return err
		}
		slots, err := a.ClusterSlots(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER SLOTS on %s: %w", addr, err)
		}
		for _, s := range slots {
			if len(s.Nodes) == 0 || !live[s.Nodes[0].ID] {
				return fmt.Errorf("%s: slots %d-%d still served by a dead master", addr, s.Start, s.End)
			}
		}
		m := slotMap(slots)
		if first == "" {
			first, firstAddr = m, addr
		} else if m != first {
			return fmt.Errorf("%s and %s disagree on slots: %s vs %s", firstAddr, addr, first, m)
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
