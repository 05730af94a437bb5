package integration

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// ingestRounds streams rounds of one view event per user (ids
// <tag>r<round>-<user>) through publishers, one per stream, until more()
// says stop, and returns the rounds sent and the publishers' summed stats.
// Every event is acknowledged (Flush) before it returns. It may run on a
// goroutine of its own: it reports failures as an error.
func ingestRounds(ctx context.Context, tag string, pubs []*client.Publisher, users int, more func(round int) bool) (int, client.Stats, error) {
	at := timestamppb.New(time.Now().Add(-time.Minute))
	rounds := 0
	for ; more(rounds); rounds++ {
		for u := range users {
			user := fmt.Sprintf("cu-%d", u)
			ev := &nudgev1.Event{EventId: fmt.Sprintf("%sr%d-%s", tag, rounds, user), UserId: user, Type: "view", Category: "phones", OccurredAt: at}
			if err := pubs[u%len(pubs)].Publish(ctx, ev); err != nil {
				return rounds, client.Stats{}, fmt.Errorf("publish %s: %w", ev.EventId, err)
			}
		}
	}
	for _, p := range pubs {
		if err := p.Flush(ctx); err != nil {
			return rounds, client.Stats{}, fmt.Errorf("flush: %w", err)
		}
	}
	return rounds, sumStats(pubs), nil
}

// wantViews reads the profiles of users cu-0..cu-<users-1> straight from
// Redis and fails the test unless each counts want views.
func wantViews(ctx context.Context, t *testing.T, rdb redis.UniversalClient, users int, want uint64) {
	t.Helper()
	ids := make([]string, users)
	for u := range ids {
		ids[u] = fmt.Sprintf("cu-%d", u)
	}
	ps, errs := redisstore.New(rdb, redisstore.Options{}).GetMany(ctx, ids, nil)
	for u, p := range ps {
		if errs[u] != nil {
			t.Fatalf("read %s: %v", ids[u], errs[u])
		}
		if p.Total("view") != want {
			t.Fatalf("%s: %d views stored, want %d", ids[u], p.Total("view"), want)
		}
	}
}

// metricValue is the sum of a counter's samples in a /metrics scrape.
func metricValue(t *testing.T, scrape, name string) float64 {
	t.Helper()
	var sum float64
	for _, m := range regexp.MustCompile(`(?m)^`+name+`(?:\{[^}]*\})? (\S+)$`).FindAllStringSubmatch(scrape, -1) {
		v, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		sum += v
	}
	return sum
}

// TestNudgedClusterReshardDuringIngest runs the built nudged on a 3-master
// Redis Cluster (--redis-cluster) and streams one event per user and round
// over 4 streams while redis-cli moves 1,000 slots from one master to
// another, and for two rounds after the move. Every event must be
// acknowledged applied exactly once (no failure, no duplicate) and each
// user's stored count must equal the rounds sent; the store must have met
// and followed moved slots.
func TestNudgedClusterReshardDuringIngest(t *testing.T) {
	c := redistest.StartCluster(t, 3)
	n := startNudged(t, buildNudged(t), "--redis-cluster", strings.Join(c.Addrs(), ","), "--metrics-listen", "127.0.0.1:0")
	if !strings.Contains(n.drainLogs(), `msg="using Redis Cluster"`) {
		t.Fatal("nudged did not log that it uses the Redis Cluster")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cl, err := client.Dial(n.addr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	pubs := make([]*client.Publisher, 4)
	for i := range pubs {
		pubs[i] = cl.NewPublisher(client.MaxBatch(500))
	}

	const users = 3000
	reshard := make(chan error, 1)
	started, finished, after := false, false, 0
	var reshardErr error
	rounds, st, err := ingestRounds(ctx, "", pubs, users, func(round int) bool {
		switch {
		case round == 1:
			started = true
			go func() { reshard <- c.Reshard(ctx, 0, 1, 1000) }()
		case started && !finished:
			select {
			case reshardErr = <-reshard:
				finished = true
			default:
			}
		}
		if finished {
			after++
		}
		return after <= 2 && round < 200
	})
	if err != nil {
		t.Fatal(err)
	}
	if !finished {
		reshardErr = <-reshard
	}
	if reshardErr != nil {
		t.Fatalf("reshard: %v", reshardErr)
	}
	sent := uint64(rounds * users)
	t.Logf("%d rounds of %d users over 4 streams, 1000 slots resharded during them: %+v", rounds, users, st)
	if st.Published != sent || st.Applied != sent || st.Duplicate != 0 || st.Failed != 0 || st.Rejected != 0 {
		t.Errorf("publisher stats %+v: want all %d events applied once, none failed", st, sent)
	}

	rdb := redis.NewClusterClient(c.ClusterOptions())
	t.Cleanup(func() { _ = rdb.Close() })
	wantViews(ctx, t, rdb, users, uint64(rounds))
	scrape := httpGet(t, n.metrics)
	if r := metricValue(t, scrape, "nudge_store_redirects_total"); r == 0 {
		t.Error("nudge_store_redirects_total is 0: no transaction met a moved slot")
	} else {
		t.Logf("transactions redirected: %v", r)
	}
}

// TestTwoNudgedSameUsersExact runs two nudged processes on one Redis (a
// standalone server, then a cluster), as two replicas behind a balancer,
// and streams events of the same users through both at once: WATCH catches
// the other process's writes, so every count is exact.
func TestTwoNudgedSameUsersExact(t *testing.T) {
	bin := buildNudged(t)
	for _, tc := range []struct {
		name  string
		start func(t *testing.T) (args []string, rdb redis.UniversalClient)
	}{
		{"standalone", func(t *testing.T) ([]string, redis.UniversalClient) {
			s := redistest.Start(t)
			return []string{"--redis-addr", s.Addr}, s.Client(t)
		}},
		{"cluster", func(t *testing.T) ([]string, redis.UniversalClient) {
			c := redistest.StartCluster(t, 3)
			return []string{"--redis-cluster", strings.Join(c.Addrs(), ",")}, c.Client(t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, rdb := tc.start(t)
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			const users, rounds = 200, 30
			type result struct {
				st      client.Stats
				err     error
				metrics string
			}
			results := make(chan result, 2)
			for i := range 2 {
				n := startNudged(t, bin, append(args, "--metrics-listen", "127.0.0.1:0")...)
				cl, err := client.Dial(n.addr, client.WithInsecure())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = cl.Close() })
				pubs := []*client.Publisher{cl.NewPublisher(client.MaxBatch(100)), cl.NewPublisher(client.MaxBatch(100))}
				go func() {
					_, st, err := ingestRounds(ctx, fmt.Sprintf("n%d", i), pubs, users, func(r int) bool { return r < rounds })
					results <- result{st, err, n.metrics}
				}()
			}
			var conflicts float64
			for range 2 {
				r := <-results
				if r.err != nil {
					t.Fatal(r.err)
				}
				if r.st.Applied != users*rounds || r.st.Failed != 0 || r.st.Duplicate != 0 {
					t.Errorf("publisher stats %+v: want %d events applied once", r.st, users*rounds)
				}
				conflicts += metricValue(t, httpGet(t, r.metrics), "nudge_store_conflicts_total")
			}
			wantViews(ctx, t, rdb, users, 2*rounds)
			t.Logf("%d users × %d rounds through each of two nudged: counts exact; WATCH conflicts retried: %v", users, rounds, conflicts)
		})
	}
}
