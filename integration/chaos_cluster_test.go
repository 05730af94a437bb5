package integration

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nudge-dm/nudge/internal/redistest"
)

// waitChoiceRE is nudged's start-up line saying what WAIT it decided on.
var waitChoiceRE = regexp.MustCompile(`wait_replicas=(\d+)`)

// Scenario 10: a Redis Cluster of 3 masters with one replica each (AOF,
// appendfsync everysec), one nudged on it, 4 producers streaming. After a
// third of the events are acknowledged, one master is killed with SIGKILL;
// the cluster promotes its replica (WaitFailover), and the killed node is
// restarted after a pause and rejoins as the new master's replica. The
// producers re-send whatever was not acknowledged (nudged answers
// UNAVAILABLE while the slots have no master, and, with WAIT, while the
// promoted master has no replica).
//
// Two faults:
//   - "kill": the master alone is killed. On loopback its replica still
//     receives everything the master wrote to the replication socket
//     before dying (the kernel delivers it), so even without WAIT little
//     or nothing is lost.
//   - "partition": the replica is partitioned from its master first
//     (redistest.CutReplication: the link drops and cannot come back,
//     while nudged still reaches the master), and the master is killed
//     150 ms later: the writes made in between exist only on the master.
//     This is the window asynchronous replication leaves open.
//
// And two settings:
//   - "wait": nudged's default, redis.wait_replicas auto, which finds a
//     replica on every master and waits for 1: an acknowledged event is on
//     the replica that gets promoted, so nothing acknowledged is lost.
//   - "nowait": redis.wait_replicas 0. Replication is asynchronous, so the
//     events acknowledged but not yet replicated when the master dies are
//     missing from the promoted replica: the test reports how many;
//     nothing may count twice, and everything is acknowledged in the end.
func TestChaosClusterFailover(t *testing.T) {
	bin := buildNudged(t)
	for _, tc := range []struct {
		name, waitReplicas string
		wantWait           string // the wait_replicas nudged must log
		partition          bool   // cut the replication link before the kill
	}{
		{"wait/kill", "auto", "1", false},
		{"nowait/kill", "0", "0", false},
		{"wait/partition", "auto", "1", true},
		{"nowait/partition", "0", "0", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events, users := chaosSize(20_000, 100_000), chaosSize(1_000, 5_000)
			// After the failover, before the killed node returns.
			down := time.Duration(chaosSize(500, 5000)) * time.Millisecond
			// A 1 s node timeout: the replica takes over about 2 s after
			// the kill.
			c := redistest.StartClusterReplicas(t, 3, 1, "--appendonly", "yes", "--appendfsync", "everysec", "--cluster-node-timeout", "1000")
			args := []string{"--redis-cluster", strings.Join(c.Addrs(), ","), "--metrics-listen", "127.0.0.1:0"}
			if tc.waitReplicas != "auto" { // auto is the default: leave it unsaid
				args = append(args, "--redis-wait-replicas", tc.waitReplicas)
			}
			n := startNudged(t, bin, args...)
			if m := waitChoiceRE.FindStringSubmatch(n.drainLogs()); m == nil || m[1] != tc.wantWait {
				t.Fatalf("nudged logged wait_replicas %v, want %s", m, tc.wantWait)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
			defer cancel()

			led := newLedger()
			prod := newChaosProducer(t, []string{n.addr}, 4, 500, led)
			started := time.Now()
			done := prod.start(ctx, t, strings.ReplaceAll(tc.name, "/", "-"), events, users)
			masters, err := c.Masters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			victim := masters[0]
			heirs, err := c.ReplicasOf(ctx, victim)
			if err != nil || len(heirs) != 1 {
				t.Fatalf("replicas of the victim: %v, %v; want one", heirs, err)
			}
			prod.waitAcked(ctx, t, uint64(events/3), done)
			before := prod.stats()
			if tc.partition {
				if err := c.CutReplication(ctx, heirs[0]); err != nil {
					t.Fatal(err)
				}
				time.Sleep(150 * time.Millisecond) // the pace of the fault: writes reach the master only
			}
			atKill := prod.stats()
			lag := replicationLag(ctx, t, c, victim, heirs[0])
			if _, err := c.KillMaster(ctx, victim); err != nil {
				t.Fatal(err)
			}
			killed := time.Now()
			if err := c.WaitFailover(ctx); err != nil {
				t.Fatal(err)
			}
			failover := time.Since(killed)
			if tc.partition {
				if err := c.HealReplication(ctx, heirs[0]); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(down) // the pace of the fault: the promoted master runs without a replica
			c.RestartNode(t, victim)
			if err := c.WaitStable(ctx); err != nil {
				t.Fatalf("the killed node did not rejoin: %v", err)
			}
			rejoined := time.Since(killed)
			select {
			case <-done:
			case <-ctx.Done():
				t.Fatalf("the producers did not finish: %v; publisher %+v", ctx.Err(), prod.stats())
			}
			st := prod.stats()
			scrape := httpGet(t, n.metrics)
			t.Logf("wait_replicas %s, %s: master %s killed after %d acknowledged events (%d acknowledged since the fault began), its replica %d bytes of replication behind: replica promoted after %v, killed node back as a replica after %v; all %d events acknowledged after %v",
				tc.wantWait, fault(tc.partition), c.Nodes[victim].Addr, atKill.Applied+atKill.Duplicate, atKill.Applied+atKill.Duplicate-before.Applied-before.Duplicate, lag, failover.Round(time.Millisecond), rejoined.Round(time.Millisecond), events, time.Since(started).Round(time.Millisecond))
			t.Logf("publisher %+v; nudged: %v replication waits failed, %v redirects, %v error retries",
				st, metricValue(t, scrape, "nudge_store_replication_waits_failed_total"),
				metricValue(t, scrape, "nudge_store_redirects_total"), metricValue(t, scrape, "nudge_store_error_retries_total"))
			if st.Failed != 0 {
				t.Errorf("publisher stats %+v: want no failure", st)
			}
			if got := metricValue(t, scrape, "nudge_store_wait_replicas"); strconv.FormatFloat(got, 'f', -1, 64) != tc.wantWait {
				t.Errorf("nudge_store_wait_replicas %v, want %s", got, tc.wantWait)
			}

			v := led.check(ctx, t, c.Client(t))
			if tc.wantWait != "0" {
				wantExact(t, v)
				return
			}
			// Without WAIT the events acknowledged but not yet replicated
			// when the master died are lost; nothing counts twice, and what
			// was not acknowledged was re-sent until it was.
			t.Logf("checker: %v", v)
			t.Logf("wait_replicas 0, %s: %d acknowledged events lost in the failover (asynchronous replication)", fault(tc.partition), v.lost)
			if v.doubleCounted != 0 || v.unacked != 0 || v.duplicateActns != 0 {
				t.Errorf("not at most once per event: %v", v)
			}
		})
	}
}

func fault(partition bool) string {
	if partition {
		return "replica partitioned 150ms before the kill"
	}
	return "master killed"
}

// replicationLag is how far, in bytes of the replication stream, replica
// is behind master (INFO replication offsets).
func replicationLag(ctx context.Context, t *testing.T, c *redistest.Cluster, master, replica int) int64 {
	t.Helper()
	offset := func(i int) int64 {
		info, err := c.Nodes[i].Client(t).Info(ctx, "replication").Result()
		if err != nil {
			t.Fatalf("INFO replication on %s: %v", c.Nodes[i].Addr, err)
		}
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "master_repl_offset:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		t.Fatalf("INFO replication on %s: no master_repl_offset", c.Nodes[i].Addr)
		return 0
	}
	behind := offset(replica) // first: the master's offset can only be larger later
	return offset(master) - behind
}
